"""Dropout that is cheap on CPU, and the attention that uses it.

PyTorch's CPU dropout draws one Bernoulli sample per element (about 10 ns each here), and attention
dropout forces scaled_dot_product_attention off its fused kernel onto a path that does the same for
every attention weight: at the paper's size that was 4.6 s of a 24 s world-model step. Here one 64-bit
draw of the default generator gives four 16-bit uniforms, so a mask costs a quarter of a draw per
element; the keep probability is quantized to 1/65536 (0.900009 for p = 0.1). On GPUs PyTorch's own
fused dropout and attention are used unchanged.

Attention with dropout on CPU (`DropoutAttention`) computes what `dropout(attention_weights(...)) @ v`
computes, with the same mask from the same draw, in fewer passes over the [T, S] weights, and, when causal,
in blocks of query rows that skip the keys a block cannot see (about 60 % of the work at T = 285).
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


def _uniform16(shape, device) -> torch.Tensor:
    """Uniform int16 of `shape`: four per 64-bit draw of the default generator (seeded and checkpointed)."""
    n = math.prod(shape)
    bits = torch.empty((n + 3) // 4, dtype=torch.int64, device=device).random_(-2**63, 2**63 - 1)
    return bits.view(torch.int16)[:n].view(shape)


def keep_mask(shape, p: float, device) -> torch.Tensor:
    """Bernoulli(1 - p) mask of `shape`, from the default generator."""
    return _uniform16(shape, device) >= -32768 + round(p * 65536)


def drop_mask(shape, p: float, device) -> torch.Tensor:
    """~keep_mask(shape, p, device) from the same draw, without the extra pass."""
    return _uniform16(shape, device) < -32768 + round(p * 65536)


def dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    if not training or p == 0.0:
        return x
    if x.device.type != "cpu":
        return F.dropout(x, p, True)
    return torch.where(keep_mask(x.shape, p, x.device), x * (1.0 / (1.0 - p)), 0.0)


class Dropout(nn.Module):
    """Drop-in for nn.Dropout with the cheap CPU mask."""

    def __init__(self, p: float):
        super().__init__()
        self.p = float(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dropout(x, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}"


def attention_weights(q, k, attn_mask=None, is_causal: bool = False) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) with a boolean mask (True = attend) or the causal mask aligned to the end."""
    scores = (q @ k.transpose(-1, -2)) * q.shape[-1] ** -0.5
    if is_causal:
        T, S = q.shape[-2], k.shape[-2]
        attn_mask = torch.ones(T, S, dtype=torch.bool, device=q.device).tril(diagonal=S - T)
    if attn_mask is not None:
        scores = scores.masked_fill(~attn_mask, float("-inf"))
    return scores.softmax(-1)


BLOCK_ROWS = 64  # query rows per block of causal DropoutAttention (4 blocks at T = 285; none below 128)


class DropoutAttention(torch.autograd.Function):
    """softmax(q k^T / sqrt(d) [+ causal mask]) with dropout, @ v: q, k, v [B, H, T or S, d] -> [B, H, T, d].

    The same draw as `dropout(attention_weights(q, k, None, causal), p, True) @ v`, so the same result up to
    float rounding: the scale goes on q (T x d) and 1/(1-p) on v instead of on the [T, S] weights, the causal
    mask touches the block's own columns only, and the backward is written out (dS = softmax'(dP) from the saved
    probabilities). Causal (T == S): query rows in blocks of about BLOCK_ROWS, each against the keys up to its
    last row only."""

    @staticmethod
    @torch.amp.custom_fwd(device_type="cpu")
    def forward(ctx, q, k, v, p: float, causal: bool):
        B, H, T, d = q.shape
        S = k.shape[-2]
        drop = drop_mask((B, H, T, S), p, q.device)
        # contiguous once here (q, k, v arrive as strided views of the qkv projection), not in every block's matmul
        qs, k, vs = q * d ** -0.5, k.contiguous(), v * (1.0 / (1.0 - p))
        blocks = max(1, T // BLOCK_ROWS) if causal and T == S else 1
        edges = [round(i * T / blocks) for i in range(blocks + 1)]
        out, probs = [], []
        for a, b in zip(edges[:-1], edges[1:]):
            end = b if causal else S
            scores = qs[:, :, a:b] @ k[:, :, :end].transpose(-1, -2)
            if causal:   # row a + i sees keys 0..a + i: only the block's own columns a..b-1 hold hidden ones
                scores[..., a:].masked_fill_(torch.ones(b - a, b - a, dtype=torch.bool, device=q.device).triu_(1),
                                             float("-inf"))
            prob = scores.softmax(-1)
            kept = torch.where(drop[:, :, a:b, :end], 0.0, prob)   # one pass (masked_fill would clone first)
            out.append(kept @ vs[:, :, :end])
            probs += [prob, kept]
        ctx.save_for_backward(qs, k, vs, drop, *probs)
        ctx.edges, ctx.causal, ctx.p = edges, causal, p
        return torch.cat(out, 2) if blocks > 1 else out[0]

    @staticmethod
    @torch.amp.custom_bwd(device_type="cpu")
    def backward(ctx, dy):
        qs, k, vs, drop, *probs = ctx.saved_tensors
        S, d = k.shape[-2], qs.shape[-1]
        dy = dy.contiguous()
        # dk, dv: sums over the blocks, accumulated in place (baddbmm_ into [B*H, end, d] views of their first rows)
        dq, dk, dv = torch.empty_like(qs), torch.zeros_like(k), torch.zeros_like(vs)
        for i, (a, b) in enumerate(zip(ctx.edges[:-1], ctx.edges[1:])):
            end = b if ctx.causal else S
            prob, kept = probs[2 * i], probs[2 * i + 1]
            g = dy[:, :, a:b]
            dv[:, :, :end].flatten(0, 1).baddbmm_(kept.flatten(0, 1).transpose(-1, -2), g.flatten(0, 1))
            dprob = (g @ vs[:, :, :end].transpose(-1, -2)).masked_fill_(drop[:, :, a:b, :end], 0.0)
            dscores = torch._softmax_backward_data(dprob, prob, -1, prob.dtype)
            dq[:, :, a:b] = dscores @ k[:, :, :end]
            dk[:, :, :end].flatten(0, 1).baddbmm_(dscores.flatten(0, 1).transpose(-1, -2), qs[:, :, a:b].flatten(0, 1))
        return dq * d ** -0.5, dk, dv * (1.0 / (1.0 - ctx.p)), None, None


def attention(q, k, v, attn_mask=None, is_causal: bool = False, dropout_p: float = 0.0) -> torch.Tensor:
    """scaled_dot_product_attention; with dropout on CPU, the explicit computation with the cheap mask
    (what PyTorch itself falls back to there, minus the per-element Bernoulli draws): `DropoutAttention`, or
    with an explicit mask the plain formulation."""
    if q.device.type == "cpu" and q.dtype == torch.bfloat16 and dropout_p == 0.0:
        # bf16 autocast on CPU: PyTorch's bf16 flash attention is 2-3x slower there than its float32 one (its
        # backward above all); float32 attention is also the more accurate
        with torch.autocast("cpu", enabled=False):
            return F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=attn_mask,
                                                  is_causal=is_causal).to(q.dtype)
    if dropout_p == 0.0 or q.device.type != "cpu":
        return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal)
    if attn_mask is None:
        return DropoutAttention.apply(q, k, v, dropout_p, is_causal)
    return dropout(attention_weights(q, k, attn_mask, is_causal), dropout_p, True) @ v
