"""Perceiver aggregator (§3.2, appendix A.3, Table 4): the joint sequence of all agents' K observation-token
embeddings and action embeddings at one timestep, length n(K+m), is read by n learned latent queries
(one per agent) through cross-attention, refined by bidirectional self-attention layers among the
latents, and returned as one feature e_t^i per agent.

Every timestep of every sequence is one row of the batch: the aggregation of a whole training batch
(B x L timesteps) or of one imagination step (all rollouts) is a single call.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from marie.models.dropout import Dropout, attention, attention_weights


class _Attention(nn.Module):
    def __init__(self, q_dim: int, kv_dim: int, heads: int, dim_head: int, attn_dropout: float):
        super().__init__()
        inner = heads * dim_head
        self.heads, self.dim_head, self.attn_dropout = heads, dim_head, attn_dropout
        self.to_q = nn.Linear(q_dim, inner, bias=False)
        self.to_kv = nn.Linear(kv_dim, 2 * inner, bias=False)
        self.out = nn.Linear(inner, q_dim)
        self.record = False
        self.last_weights = None  # [B, heads, Q, S]

    def forward(self, x, context):
        B, Q, _ = x.shape
        S = context.shape[1]
        q = self.to_q(x).view(B, Q, self.heads, self.dim_head).transpose(1, 2)
        k, v = self.to_kv(context).view(B, S, 2, self.heads, self.dim_head).permute(2, 0, 3, 1, 4).unbind(0)
        if self.record:
            self.last_weights = attention_weights(q, k).detach()
        y = attention(q, k, v, dropout_p=self.attn_dropout if self.training else 0.0)
        return self.out(y.transpose(1, 2).reshape(B, Q, -1))


class _FeedForward(nn.Sequential):
    def __init__(self, dim: int, mult: int, dropout: float):
        super().__init__(nn.LayerNorm(dim), nn.Linear(dim, mult * dim), nn.GELU(), nn.Linear(mult * dim, dim),
                         Dropout(dropout))


class Perceiver(nn.Module):
    def __init__(self, input_dim: int, input_len: int, n_latents: int, latent_dim: int, out_dim: int,
                 cross_heads: int, layers: int, heads: int, dim_head: int, embed_dropout: float,
                 attn_dropout: float, resid_dropout: float):
        super().__init__()
        self.input_pos = nn.Parameter(torch.randn(input_len, input_dim) * 0.02)  # which agent, which token
        self.latents = nn.Parameter(torch.randn(n_latents, latent_dim) * 0.02)
        self.embed_drop = Dropout(embed_dropout)
        self.cross_ln_q = nn.LayerNorm(latent_dim)
        self.cross_ln_kv = nn.LayerNorm(input_dim)
        self.cross = _Attention(latent_dim, input_dim, cross_heads, dim_head, attn_dropout)
        self.cross_drop = Dropout(resid_dropout)
        self.cross_ff = _FeedForward(latent_dim, 4, resid_dropout)
        self.self_ln = nn.ModuleList(nn.LayerNorm(latent_dim) for _ in range(layers))
        self.self_attn = nn.ModuleList(_Attention(latent_dim, latent_dim, heads, dim_head, attn_dropout)
                                       for _ in range(layers))
        self.self_drop = Dropout(resid_dropout)
        self.self_ff = nn.ModuleList(_FeedForward(latent_dim, 4, resid_dropout) for _ in range(layers))
        self.out = nn.Sequential(nn.LayerNorm(latent_dim), nn.Linear(latent_dim, out_dim))

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        """inputs [B, n(K+m), input_dim] -> one feature per latent (agent) [B, n, out_dim]."""
        x = self.embed_drop(inputs + self.input_pos)
        lat = self.latents.expand(x.shape[0], -1, -1)
        lat = lat + self.cross_drop(self.cross(self.cross_ln_q(lat), self.cross_ln_kv(x)))
        lat = lat + self.cross_ff(lat)
        for ln, attn, ff in zip(self.self_ln, self.self_attn, self.self_ff):
            h = ln(lat)
            lat = lat + self.self_drop(attn(h, h))
            lat = lat + ff(lat)
        return self.out(lat)

    def record_attention(self, on: bool) -> None:
        self.cross.record = on
        self.cross.last_weights = None
