"""The world model (§3.2): a shared causal Transformer over each agent's token sequence, the Perceiver
aggregator, and heads for the next observation tokens, reward, discount and available actions.

Token layout of one timestep t of agent i (decentralized, the paper's design):
    [x_t,1 ... x_t,K, a_t,1 ... a_t,m, e_t]          (m = 1 for discrete actions)
where e_t^i is the Perceiver's feature of agent i from all agents' (x_t, a_t). A training sequence of L
transitions holds L such steps followed by the first K-1 tokens of the observation reached by the last
transition, so that the L next observations of Eq. (6) are all targets (imagination produces exactly
this sequence: o_0, a_0, e_0, ..., a_{H-1}, e_{H-1}, o_H).

Predictions (teacher forcing in training, the same positions when decoding):
    output at e_t           -> x_{t+1,1}, reward r_t, discount gamma_t, available actions of t+1
    output at x_{t,k}, k<K  -> x_{t,k+1}
Ablations: `aggregation: none` drops e_t (Fig. 5); `centralized` models one joint stream per timestep
[x^1 ... x^n, a^1 ... a^n] (Fig. 4), with no aggregation.
All agents' sequences are rows of one batch (streams); no loop over agents anywhere.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from marie.models import decode_attention
from marie.models.dropout import Dropout
from marie.models.perceiver import Perceiver
from marie.models.transformer import KVCache, Transformer, init_gpt_weights


def _head(dim: int, out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, out))


class WorldModel(nn.Module):
    def __init__(self, n_agents: int, obs_vocab: int, obs_tokens: int, act_vocab: int, act_tokens: int,
                 n_avail: int, horizon: int, cfg: dict):
        super().__init__()
        N, K, m = n_agents, obs_tokens, act_tokens
        self.N, self.K, self.m, self.horizon = N, K, m, horizon
        self.centralized = bool(cfg["centralized"])
        self.aggregate = cfg["aggregation"] == "perceiver" and not self.centralized
        self.S = 1 if self.centralized else N                     # streams per sample
        self.Ko = N * K if self.centralized else K                # observation tokens per step and stream
        self.Ka = N * m if self.centralized else m                # action tokens per step and stream
        self.tps = self.Ko + self.Ka + int(self.aggregate)        # tokens per step
        self.max_tokens = horizon * self.tps + self.Ko - 1
        self.n_avail = n_avail
        self.static_cache = bool(cfg.get("static_cache", False))   # fixed-shape decoding (CUDA graphs, compile)
        self.cpu_decode_kernel = bool(cfg.get("cpu_decode_kernel", False))  # decoding calls: the C++ kernel
        D = cfg["embed_dim"]
        self.obs_vocab = obs_vocab
        self.obs_emb = nn.Embedding(obs_vocab, D)
        self.act_emb = nn.Embedding(act_vocab, D)
        self.pos_emb = nn.Embedding(self.max_tokens, D)
        self.embed_drop = Dropout(cfg["embed_dropout"])
        self.transformer = Transformer(D, cfg["layers"], cfg["heads"], cfg["attn_dropout"], cfg["resid_dropout"])
        self.obs_head = _head(D, obs_vocab)
        self.reward_head = _head(D, 1)
        self.discount_head = _head(D, N if self.centralized else 1)
        self.avail_head = _head(D, n_avail * (N if self.centralized else 1)) if n_avail else None
        self.apply(init_gpt_weights)
        if self.aggregate:
            p = cfg["perceiver"]
            self.perceiver = Perceiver(D, N * (K + m), N, p["latent_dim"], D, p["cross_heads"], p["layers"],
                                       p["heads"], p["dim_head"], p["embed_dropout"], p["attn_dropout"],
                                       p["resid_dropout"])

    # -- layout: per-agent tensors <-> streams --------------------------------------------------------
    def to_streams(self, x: torch.Tensor) -> torch.Tensor:
        """[B, T, N, X...] -> [B*S, T, ...]: decentralized: one stream per agent (row b*N+i);
        centralized: agents concatenated along the first feature dimension."""
        if self.centralized:
            return x.flatten(2, 3)
        return x.transpose(1, 2).flatten(0, 1)

    def from_streams(self, x: torch.Tensor, B: int) -> torch.Tensor:
        """Per-stream outputs [B*S, T, N_or_1 * X] -> [B, T, N, X]."""
        if self.centralized:  # team-level (1 feature: broadcast) or N agent-major blocks
            return x.unsqueeze(2).expand(-1, -1, self.N, -1) if x.shape[2] == 1 else x.unflatten(2, (self.N, -1))
        return x.unflatten(0, (B, self.N)).transpose(1, 2)

    def step_embeddings(self, obs_tok: torch.Tensor, act_tok: torch.Tensor) -> torch.Tensor:
        """obs tokens [B, T, N, K], action tokens [B, T, N, m] -> token embeddings [B*S, T, tps, D]; the
        Perceiver runs once for all B*T timesteps."""
        B, T = obs_tok.shape[:2]
        xo, xa = self.obs_emb(obs_tok), self.act_emb(act_tok)           # [B,T,N,K,D], [B,T,N,m,D]
        if self.centralized:
            return torch.cat([xo.flatten(2, 3), xa.flatten(2, 3)], 2)   # [B, T, N*K + N*m, D]
        joint = torch.cat([xo, xa], 3)                                  # [B,T,N,K+m,D]
        if self.aggregate:
            e = self.perceiver(joint.flatten(0, 1).flatten(1, 2))       # [B*T, N, D]
            joint = torch.cat([joint, e.view(B, T, self.N, 1, -1)], 3)  # [B,T,N,tps,D]
        return joint.transpose(1, 2).flatten(0, 1)                      # [B*N, T, tps, D]

    def obs_embeddings(self, obs_tok: torch.Tensor) -> torch.Tensor:
        """obs tokens [B, N, K] -> [B*S, Ko, D] in stream order."""
        x = self.obs_emb(obs_tok)
        return x.flatten(1, 2).unsqueeze(1) if self.centralized else x.flatten(0, 1).unsqueeze(1)

    def _stream_obs_tokens(self, obs_tok):  # [B, T, N, K] -> [B*S, T, Ko]
        return self.to_streams(obs_tok)

    def _stream_mask(self, mask):  # [B, T] -> [B*S, T]
        return mask if self.centralized else mask.repeat_interleave(self.N, 0)

    # -- training --------------------------------------------------------------------------------------
    def forward_sequence(self, obs_tok: torch.Tensor, act_tok: torch.Tensor) -> dict:
        """obs_tok [B, L+1, N, K], act_tok [B, L, N, m] -> hidden states at the predicting positions."""
        B, L = act_tok.shape[:2]
        emb = self.step_embeddings(obs_tok[:, :L], act_tok)                  # [BS, L, tps, D]
        final = self.obs_embeddings(obs_tok[:, L])[:, 0, : self.Ko - 1]       # [BS, Ko-1, D]
        x = torch.cat([emb.flatten(1, 2), final], 1)
        x = self.embed_drop(x + self.pos_emb.weight[: x.shape[1]])
        h = self.transformer(x)
        hs = h[:, : L * self.tps].unflatten(1, (L, self.tps))
        h_obs = torch.cat([hs[:, :, : self.Ko - 1], h[:, L * self.tps:].unsqueeze(1)], 1)  # [BS, L+1, Ko-1, D]
        return {"last": hs[:, :, -1], "obs": h_obs, "B": B, "L": L}

    def loss(self, batch: dict, weights: dict) -> tuple[torch.Tensor, dict]:
        """Eq. (6) on a batch of segments. batch: obs_tokens [B,L+1,N,K], actions [B,L,N,m] (long),
        reward [B,L], cont [B,L,N] discount labels, next_avail [B,L,N,A] (optional), step_mask [B,L],
        obs_mask [B,L+1] (float)."""
        out = self.forward_sequence(batch["obs_tokens"], batch["actions"])
        tgt = self._stream_obs_tokens(batch["obs_tokens"])                  # [BS, L+1, Ko]
        obs_mask = self._stream_mask(batch["obs_mask"])
        step_mask = self._stream_mask(batch["step_mask"])
        V = self.obs_vocab
        ce_first = F.cross_entropy(self.obs_head(out["last"]).reshape(-1, V), tgt[:, 1:, 0].reshape(-1),
                                   reduction="none").view_as(tgt[:, 1:, 0])
        ce_rest = F.cross_entropy(self.obs_head(out["obs"]).reshape(-1, V), tgt[:, :, 1:].reshape(-1),
                                  reduction="none").view_as(tgt[:, :, 1:])
        n_obs = (obs_mask[:, 1:].sum() + obs_mask.sum() * (self.Ko - 1)).clamp(min=1)
        obs_loss = ((ce_first * obs_mask[:, 1:]).sum() + (ce_rest * obs_mask[:, :, None]).sum()) / n_obs
        n_steps = step_mask.sum().clamp(min=1)
        reward_pred = self.reward_head(out["last"]).squeeze(-1)            # [BS, L]
        reward_tgt = self._stream_mask(batch["reward"])
        reward_loss = (F.smooth_l1_loss(reward_pred, reward_tgt, reduction="none") * step_mask).sum() / n_steps
        disc_logit = self.discount_head(out["last"])                        # [BS, L, 1 or N]
        cont = self.to_streams(batch["cont"].unsqueeze(-1)).reshape(disc_logit.shape)
        disc_loss = (F.binary_cross_entropy_with_logits(disc_logit, cont, reduction="none").mean(-1)
                     * step_mask).sum() / n_steps
        total = weights["obs"] * obs_loss + weights["reward"] * reward_loss + weights["discount"] * disc_loss
        metrics = {"wm_obs_loss": obs_loss.detach(), "wm_reward_loss": reward_loss.detach(),
                   "wm_discount_loss": disc_loss.detach()}
        if self.avail_head is not None and batch.get("next_avail") is not None:
            logit = self.avail_head(out["last"])                            # [BS, L, A or N*A]
            tgt_av = self.to_streams(batch["next_avail"]).reshape(logit.shape)
            avail_loss = (F.binary_cross_entropy_with_logits(logit, tgt_av, reduction="none").mean(-1)
                          * step_mask).sum() / n_steps
            total = total + weights["avail"] * avail_loss
            metrics["wm_avail_loss"] = avail_loss.detach()
        metrics["wm_loss"] = total.detach()
        return total, metrics

    # -- imagination (KV-cached decoding) -------------------------------------------------------------
    def new_cache(self, B: int, reuse: bool = False) -> KVCache:
        """An empty KV cache for B samples. reuse: on the memory of the last reused cache where it is large
        enough, until `release_cache` (imagination's chunks, one cache at a time): fresh memory costs a page
        fault per 4 KB page on first touch."""
        p = next(self.parameters())
        kernel = (self.cpu_decode_kernel and p.device.type == "cpu" and p.dtype == torch.float32
                  and not self.static_cache and decode_attention.available())   # built here, before decoding
        dtype = p.dtype  # under autocast, keys and values come out of the qkv matmul in the autocast dtype; the
        if torch.is_autocast_enabled(p.device.type) and not kernel:   # CPU kernel keeps them in float32
            dtype = torch.get_autocast_dtype(p.device.type)
        storage = self.__dict__.get("_reused_cache") if reuse else None
        cache = self.transformer.new_cache(B * self.S, self.max_tokens, p.device, dtype, storage, self.static_cache,
                                           kernel)
        if reuse and (storage is None or cache.k[0].data_ptr() != storage.k[0].data_ptr()):
            self.__dict__["_reused_cache"] = cache  # not a module attribute: never in state_dict or .to()
        return cache

    def release_cache(self) -> None:
        """Free the reused cache's memory (the world-model training step that follows needs it)."""
        self.__dict__.pop("_reused_cache", None)

    def _feed(self, x: torch.Tensor, cache: KVCache) -> torch.Tensor:
        at = cache.positions(x.shape[1])
        pos = self.pos_emb(at) if at is not None else self.pos_emb.weight[cache.size: cache.size + x.shape[1]]
        return self.transformer(x + pos, cache)

    def start(self, obs_tok: torch.Tensor, cache: KVCache) -> None:
        """Put the first Ko-1 tokens of the initial observations [B, N, K] into an empty cache."""
        if self.Ko > 1:
            self._feed(self.obs_embeddings(obs_tok)[:, 0, : self.Ko - 1], cache)

    def step(self, obs_tok: torch.Tensor, act_tok: torch.Tensor, cache: KVCache) -> dict:
        """Feed [x_t,Ko, a_t, e_t] for observations [B,N,K] and actions [B,N,m]; returns the predictions
        made at e_t: logits of the first next-observation token [B*S, V], reward [B,N], discount [B,N]
        (the continuation probability, label 0.99 in training), avail logits [B,N,A] or None."""
        B = obs_tok.shape[0]
        emb = self.step_embeddings(obs_tok[:, None], act_tok[:, None])[:, 0]   # [BS, tps, D]
        h = self._feed(emb[:, self.Ko - 1:], cache)[:, -1:]                  # [BS, 1, D]
        reward = self.from_streams(self.reward_head(h), B)[:, 0, :, 0]
        discount = torch.sigmoid(self.from_streams(self.discount_head(h), B)[:, 0, :, 0])
        avail = None
        if self.avail_head is not None:
            avail = self.from_streams(self.avail_head(h), B)[:, 0]
        return {"logits": self.obs_head(h[:, 0]), "reward": reward, "discount": discount, "avail_logits": avail}

    def next_token(self, tok: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """Feed one observation token per stream [B*S]; logits of the next one [B*S, V]."""
        h = self._feed(self.obs_emb(tok)[:, None], cache)
        return self.obs_head(h[:, 0])

    def compile_decoding(self, mode: str | None = None, backend: str = "inductor") -> None:
        """torch.compile imagination's two decoding calls (`step`, `next_token`) as whole graphs. With a
        static cache their shapes never change, so one graph each serves every position (mode
        "reduce-overhead": captured as CUDA graphs on a GPU)."""
        if not self.static_cache:
            raise ValueError("compile_decoding needs static_cache (fixed shapes)")
        cls = type(self)
        self.step = torch.compile(cls.step.__get__(self), mode=mode, backend=backend, fullgraph=True)
        self.next_token = torch.compile(cls.next_token.__get__(self), mode=mode, backend=backend, fullgraph=True)

    def stream_tokens_to_agents(self, toks: torch.Tensor, B: int) -> torch.Tensor:
        """[B*S, Ko] -> [B, N, K]."""
        return toks.view(B, self.N, self.K)

    def record_attention(self, on: bool) -> None:
        self.transformer.record_attention(on)
        if self.aggregate:
            self.perceiver.record_attention(on)
