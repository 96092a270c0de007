"""Dropout that is cheap on CPU, and the attention that uses it.

PyTorch's CPU dropout draws one Bernoulli sample per element (about 10 ns each here), and attention
dropout forces scaled_dot_product_attention off its fused kernel onto a path that does the same for
every attention weight: at the paper's size that was 4.6 s of a 24 s world-model step. Here one 64-bit
draw of the default generator gives four 16-bit uniforms, so a mask costs a quarter of a draw per
element; the keep probability is quantized to 1/65536 (0.900009 for p = 0.1). On GPUs PyTorch's own
fused dropout and attention are used unchanged.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


def keep_mask(shape, p: float, device) -> torch.Tensor:
    """Bernoulli(1 - p) mask of `shape`, from the default generator (seeded and checkpointed as usual)."""
    n = math.prod(shape)
    bits = torch.empty((n + 3) // 4, dtype=torch.int64, device=device).random_(-2**63, 2**63 - 1)
    return bits.view(torch.int16)[:n].view(shape) >= -32768 + round(p * 65536)


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


def attention(q, k, v, attn_mask=None, is_causal: bool = False, dropout_p: float = 0.0) -> torch.Tensor:
    """scaled_dot_product_attention; with dropout on CPU, the explicit computation with the cheap mask
    (what PyTorch itself falls back to there, minus the per-element Bernoulli draws)."""
    if dropout_p == 0.0 or q.device.type != "cpu":
        return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal)
    return dropout(attention_weights(q, k, attn_mask, is_causal), dropout_p, True) @ v
