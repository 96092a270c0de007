"""Observation tokenizers: the VQ-VAE of the paper (§3.1, appendix A.1) and the `bins` ablation (Fig. 6).

Both map observations [..., obs_dim] to K integer tokens [..., K] and back. One tokenizer serves all
agents (observations of every agent are just more rows of the same batch).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from vector_quantize_pytorch import VectorQuantize


def mlp(sizes: list[int], act=nn.GELU) -> nn.Sequential:
    layers = []
    for i in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2:
            layers.append(act())
    return nn.Sequential(*layers)


class VQTokenizer(nn.Module):
    """MLP encoder -> K latents of dimension code_dim -> nearest codebook entries (EMA codebook,
    straight-through gradients, commitment coefficient beta) -> MLP decoder."""

    trainable = True

    def __init__(self, obs_dim: int, hidden: int, layers: int, codebook_size: int, tokens: int, code_dim: int,
                 beta: float, ema_decay: float, recon_loss: str = "mse"):
        super().__init__()
        self.obs_dim, self.tokens, self.code_dim, self.vocab = obs_dim, tokens, code_dim, codebook_size
        self.recon_loss = recon_loss
        self.encoder = mlp([obs_dim] + [hidden] * (layers - 1) + [tokens * code_dim])
        self.decoder = mlp([tokens * code_dim] + [hidden] * (layers - 1) + [obs_dim])
        # rotation_trick=False: the plain straight-through estimator of the paper (the library's default
        # since 1.20 is the rotation trick). The codebook itself is updated by EMA, not by gradients.
        self.vq = VectorQuantize(dim=code_dim, codebook_size=codebook_size, decay=ema_decay,
                                 commitment_weight=beta, rotation_trick=False, kmeans_init=False)

    def _latents(self, obs):
        return self.encoder(obs).unflatten(-1, (self.tokens, self.code_dim))

    @torch.no_grad()
    def encode(self, obs: torch.Tensor) -> torch.Tensor:
        """[..., obs_dim] -> tokens [..., K] (long); no codebook update."""
        lead = obs.shape[:-1]
        z = self._latents(obs.reshape(-1, self.obs_dim)).flatten(0, 1)             # [B*K, code_dim]
        codebook = self.vq.codebook                                                # [codebook_size, code_dim]
        # nearest codebook entry (the library's eval-mode lookup, without its per-call overhead)
        dist = (codebook * codebook).sum(-1) - 2 * z @ codebook.t()
        return dist.argmin(-1).reshape(*lead, self.tokens)

    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens [..., K] -> reconstructed observations [..., obs_dim]."""
        lead = tokens.shape[:-1]
        codes = self.vq.codebook[tokens.reshape(-1, self.tokens)]                  # [B, K, code_dim]
        return self.decoder(codes.reshape(-1, self.tokens * self.code_dim)).reshape(*lead, self.obs_dim)

    @torch.no_grad()
    def reconstruct(self, obs: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(obs))

    def loss(self, obs: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """Eq. (7): reconstruction + beta * commitment (the codebook term is replaced by the EMA update,
        which happens inside this call in training mode)."""
        z = self._latents(obs.reshape(-1, self.obs_dim))
        quantized, idx, commit = self.vq(z)
        recon = self.decoder(quantized.flatten(1))
        target = obs.reshape(-1, self.obs_dim)
        rec = F.l1_loss(recon, target) if self.recon_loss == "l1" else F.mse_loss(recon, target)
        total = rec + commit.sum()
        usage = torch.zeros(self.vocab, device=obs.device).index_fill_(0, idx.flatten(), 1.0).mean()
        return total, {"tokenizer_loss": total.detach(), "tokenizer_recon_loss": rec.detach(),
                       "tokenizer_commit_loss": commit.detach().sum(), "tokenizer_codebook_usage": usage}


class BinsTokenizer(nn.Module):
    """Ablation (Fig. 6): one token per observation dimension, m fixed-width bins on [low, high]."""

    trainable = False

    def __init__(self, obs_dim: int, bins: int, low: float, high: float):
        super().__init__()
        self.obs_dim, self.tokens, self.vocab = obs_dim, obs_dim, bins
        self.low, self.high = float(low), float(high)

    @torch.no_grad()
    def encode(self, obs):
        scaled = (obs.clamp(self.low, self.high) - self.low) / (self.high - self.low)
        return (scaled * self.vocab).long().clamp_(0, self.vocab - 1)

    def decode(self, tokens):
        return self.low + (tokens.float() + 0.5) / self.vocab * (self.high - self.low)

    @torch.no_grad()
    def reconstruct(self, obs):
        return self.decode(self.encode(obs))


def build_tokenizer(obs_dim: int, cfg: dict) -> nn.Module:
    if cfg["kind"] == "vq":
        return VQTokenizer(obs_dim, cfg["hidden"], cfg["layers"], cfg["codebook_size"], cfg["tokens"],
                           cfg["code_dim"], cfg["beta"], cfg["ema_decay"], cfg["recon_loss"])
    return BinsTokenizer(obs_dim, cfg["codebook_size"], cfg["bins_low"], cfg["bins_high"])
