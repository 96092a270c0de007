"""GPT-2-style causal Transformer (pre-norm blocks, PyTorch SDPA attention) with a key/value cache.

The cache is preallocated once per imagination ([B, heads, max_tokens, head_dim] of keys and of values per
layer) and filled in place, so a decoding step never copies or recomputes the context: a step of n
new tokens costs n tokens of work, whatever the length of the context.

A static cache (`static=True`) keeps every decoding call's shapes fixed, for CUDA graphs and
`torch.compile`: its position is a device tensor, new keys and values go in with an in-place `index_put_`
at that position, and each
query attends over all `max_tokens` positions with a mask (the unfilled ones are zeros, masked out). It
reads up to twice the bytes of the growing cache per call, so the CPU default is the growing one.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from marie.models import decode_attention
from marie.models.dropout import Dropout, attention, attention_weights


class KVCache:
    """Keys and values of every layer for a batch of B sequences, up to `max_tokens` positions: k[layer] and
    v[layer], each [B, heads, max_tokens, head_dim] on its own memory (a compiled decoding call then writes
    each one in place instead of copying a tensor of every layer back).
    `storage`: an earlier cache of at least this batch, shape and dtype whose memory this one reuses.
    `kernel`: calls of up to decode_attention.MAX_QUERIES tokens write and attend in the CPU kernel of
    `decode_attention` (the growing cache's path; a static cache never reaches it)."""

    def __init__(self, n_layers: int, batch: int, heads: int, max_tokens: int, head_dim: int,
                 device: torch.device, dtype: torch.dtype, storage: "KVCache | None" = None, static: bool = False,
                 kernel: bool = False):
        shape = (batch, heads, max_tokens, head_dim)
        if storage is not None and storage.fits(n_layers, shape, device, dtype, static):
            self.k, self.v = [k[:batch] for k in storage.k], [v[:batch] for v in storage.v]
        else:  # a static cache reads its unfilled positions (masked): zeros, never NaN garbage
            new = torch.zeros if static else torch.empty
            self.k = [new(shape, device=device, dtype=dtype) for _ in range(n_layers)]
            self.v = [new(shape, device=device, dtype=dtype) for _ in range(n_layers)]
        self.max_tokens = max_tokens
        self.static = static
        self.kernel = kernel
        self.size = 0  # positions filled (host bookkeeping of the growing cache)
        self.pos = torch.zeros((), dtype=torch.long, device=device) if static else None  # the static one's

    def fits(self, n_layers: int, shape, device, dtype, static: bool = False) -> bool:
        k = self.k[0]
        return (len(self.k) == n_layers and k.dtype == dtype and k.device == torch.device(device)
                and k.shape[0] >= shape[0] and k.shape[1:] == shape[1:] and self.static == static)

    def positions(self, n: int) -> torch.Tensor | None:
        """The static cache's positions of the next n tokens (a device tensor; None for the growing cache)."""
        return self.pos + torch.arange(n, device=self.pos.device) if self.static else None

    def advance(self, n: int) -> None:
        if self.static:
            self.pos += n       # on the device: no host sync, no Python int in a captured graph
        else:
            self.size += n

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.k + self.v)


class SelfAttention(nn.Module):
    def __init__(self, dim: int, heads: int, attn_dropout: float, resid_dropout: float):
        super().__init__()
        assert dim % heads == 0, "embedding dimension must be divisible by the number of heads"
        self.heads, self.head_dim = heads, dim // heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.attn_dropout = attn_dropout
        self.resid_drop = Dropout(resid_dropout)
        self.record = False       # analysis: keep the attention weights of the last call
        self.last_weights = None  # [B, heads, T, T_total]

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, layer: int = 0) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        mask, causal = None, True
        if cache is not None and cache.static:
            at = cache.positions(T)                                             # [T]
            cache.k[layer][:, :, at] = k      # compiled: written in place (index_put_ on the layer's buffer)
            cache.v[layer][:, :, at] = v
            k, v = cache.k[layer], cache.v[layer]
            mask = torch.arange(cache.max_tokens, device=x.device) <= at[:, None]   # [T, max_tokens]
            causal = False
        elif cache is not None:
            start = cache.size
            if start + T > cache.max_tokens:
                raise RuntimeError(f"KV cache overflow: {start}+{T} > {cache.max_tokens}")
            if cache.kernel and q.dtype != cache.k[layer].dtype:   # bf16 autocast: the kernel's cache is float32
                q, k, v = q.float(), k.float(), v.float()
            if (cache.kernel and not self.record and not (self.training and self.attn_dropout)
                    and decode_attention.applies(q, cache.k[layer])):
                # writes k and v into the cache itself, then attends causally (CPU, no gradients, no attention dropout)
                y = decode_attention.decode_attention(q, k, v, cache.k[layer], cache.v[layer], start)
                return self.resid_drop(self.proj(y.transpose(1, 2).reshape(B, T, C)))
            cache.k[layer][:, :, start:start + T] = k
            cache.v[layer][:, :, start:start + T] = v
            k = cache.k[layer][:, :, :start + T]
            v = cache.v[layer][:, :, :start + T]
            if T == 1:
                causal = False  # one new query sees the whole context
            elif start > 0:
                causal = False
                mask = torch.ones(T, start + T, dtype=torch.bool, device=x.device).tril(diagonal=start)
        dropout = self.attn_dropout if self.training else 0.0
        if self.record:
            self.last_weights = attention_weights(q, k, mask, causal).detach()
        y = attention(q, k, v, attn_mask=mask, dropout_p=dropout, is_causal=causal)
        y = y.transpose(1, 2).reshape(B, T, C)
        return self.resid_drop(self.proj(y))



class Block(nn.Module):
    def __init__(self, dim: int, heads: int, attn_dropout: float, resid_dropout: float):
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.attn = SelfAttention(dim, heads, attn_dropout, resid_dropout)
        self.ln2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim), Dropout(resid_dropout))

    def forward(self, x, cache=None, layer=0):
        x = x + self.attn(self.ln1(x), cache, layer)
        return x + self.mlp(self.ln2(x))


class Transformer(nn.Module):
    """A stack of GPT blocks over embeddings [B, T, D] (embedding and heads live in the world model)."""

    def __init__(self, dim: int, layers: int, heads: int, attn_dropout: float, resid_dropout: float):
        super().__init__()
        self.dim, self.n_layers, self.heads = dim, layers, heads
        self.blocks = nn.ModuleList(Block(dim, heads, attn_dropout, resid_dropout) for _ in range(layers))
        self.ln_f = nn.LayerNorm(dim)

    def new_cache(self, batch: int, max_tokens: int, device, dtype, storage: KVCache | None = None,
                  static: bool = False, kernel: bool = False) -> KVCache:
        return KVCache(self.n_layers, batch, self.heads, max_tokens, self.dim // self.heads, device, dtype, storage,
                       static, kernel)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        for i, block in enumerate(self.blocks):
            x = block(x, cache, i)
        if cache is not None:
            cache.advance(x.shape[1])
        return self.ln_f(x)

    def record_attention(self, on: bool) -> None:
        for block in self.blocks:
            block.attn.record = on
            block.attn.last_weights = None


def init_gpt_weights(module: nn.Module) -> None:
    """minGPT initialisation: N(0, 0.02) for linear and embedding weights, zero biases, unit LayerNorm."""
    if isinstance(module, (nn.Linear, nn.Embedding)):
        module.weight.data.normal_(0.0, 0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            module.bias.data.zero_()
    elif isinstance(module, nn.LayerNorm):
        module.bias.data.zero_()
        module.weight.data.fill_(1.0)
