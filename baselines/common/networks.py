"""Networks of the on-policy baselines (MAPPO, HAPPO), in the shape of the MAPPO reference implementation:

    input LayerNorm ("feature normalisation") -> [Linear -> ReLU -> LayerNorm] x layers -> (GRU -> LayerNorm)
    -> head (masked categorical logits, or a Gaussian mean with a state-independent log-std)

Weights are orthogonally initialised (gain sqrt(2) for ReLU layers, the head's gain from the preset), biases
are zero. Every module accepts any number of leading batch dimensions, so one shared actor runs over
[envs, agents] directly, and several per-agent actors run together through `torch.func.vmap`
(see `StackedActors`).
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, stack_module_state, vmap


def orthogonal_linear(n_in: int, n_out: int, gain: float) -> nn.Linear:
    layer = nn.Linear(n_in, n_out)
    nn.init.orthogonal_(layer.weight, gain=gain)
    nn.init.zeros_(layer.bias)
    return layer


class MLPTrunk(nn.Module):
    """Optional input LayerNorm, then `layers` x (Linear, ReLU, LayerNorm)."""

    def __init__(self, n_in: int, hidden: int, layers: int, feature_norm: bool):
        super().__init__()
        self.input_norm = nn.LayerNorm(n_in) if feature_norm else nn.Identity()
        gain = nn.init.calculate_gain("relu")
        blocks = []
        for i in range(layers):
            blocks += [orthogonal_linear(n_in if i == 0 else hidden, hidden, gain), nn.ReLU(), nn.LayerNorm(hidden)]
        self.body = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(self.input_norm(x))


class GRU(nn.Module):
    """A one-layer GRU cell written out, so it batches over any leading dimensions and under vmap."""

    def __init__(self, n_in: int, hidden: int):
        super().__init__()
        self.ih = orthogonal_linear(n_in, 3 * hidden, 1.0)
        self.hh = orthogonal_linear(hidden, 3 * hidden, 1.0)
        self.norm = nn.LayerNorm(hidden)

    def forward(self, x: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        xr, xz, xn = self.ih(x).chunk(3, -1)
        hr, hz, hn = self.hh(h).chunk(3, -1)
        r, z = torch.sigmoid(xr + hr), torch.sigmoid(xz + hz)
        n = torch.tanh(xn + r * hn)
        h = (1 - z) * n + z * h
        return self.norm(h), h


class Actor(nn.Module):
    """One policy. forward(x, h) -> (out, log_std, h'): `out` are logits (discrete) or the Gaussian mean."""

    def __init__(self, n_in: int, n_out: int, *, hidden: int, layers: int, recurrent: bool, feature_norm: bool,
                 head_gain: float, continuous: bool, log_std_init: float):
        super().__init__()
        self.trunk = MLPTrunk(n_in, hidden, layers, feature_norm)
        self.gru = GRU(hidden, hidden) if recurrent else None
        self.head = orthogonal_linear(hidden, n_out, head_gain)
        self.log_std = nn.Parameter(torch.full((n_out,), float(log_std_init))) if continuous else None

    def forward(self, x: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        f = self.trunk(x)
        if self.gru is not None:
            f, h = self.gru(f, h)
        out = self.head(f)
        log_std = self.log_std.expand_as(out) if self.log_std is not None else torch.zeros_like(out[..., :1])
        return out, log_std, h

    def forward_seq(self, x: torch.Tensor, h0: torch.Tensor, first: torch.Tensor):
        """x [L, B, ..., in], h0 [B, ..., H], first [L, B, ...] (bool): the hidden state is zeroed where an episode
        starts. Returns out and log_std of shape [L, B, ..., n_out]."""
        if self.gru is None:
            out, log_std, _ = self.forward(x, h0)
            return out, log_std
        f = self.trunk(x)
        h, feats = h0, []
        for t in range(x.shape[0]):  # the recurrence over the chunk's time steps (at most chunk_length)
            h = h * (~first[t]).unsqueeze(-1).to(h.dtype)
            y, h = self.gru(f[t], h)
            feats.append(y)
        out = self.head(torch.stack(feats))
        log_std = self.log_std.expand_as(out) if self.log_std is not None else torch.zeros_like(out[..., :1])
        return out, log_std


class Critic(nn.Module):
    """V on the critic's input: trunk, optional GRU (rMAPPO's recurrent critic), then a linear output (gain from
    the preset). Any leading batch dimensions; values drop the last dimension."""

    def __init__(self, n_in: int, *, hidden: int, layers: int, feature_norm: bool, head_gain: float,
                 recurrent: bool = False):
        super().__init__()
        self.trunk = MLPTrunk(n_in, hidden, layers, feature_norm)
        self.gru = GRU(hidden, hidden) if recurrent else None
        self.head = orthogonal_linear(hidden, 1, head_gain)

    def forward(self, s: torch.Tensor, h: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One step: s [..., n_in], h [..., H] (recurrent) -> (values [...], h')."""
        f = self.trunk(s)
        if self.gru is not None:
            f, h = self.gru(f, h)
        return self.head(f).squeeze(-1), h

    def forward_seq(self, s: torch.Tensor, h0: torch.Tensor, first: torch.Tensor):
        """s [L, B, ..., n_in], h0 [B, ..., H], first [L, B, ...] (the hidden state is zeroed where an episode
        starts) -> values [L, B, ...] and the hidden state after each step [L, B, ..., H] (h0 repeated if MLP)."""
        if self.gru is None:
            return self.head(self.trunk(s)).squeeze(-1), h0.expand(s.shape[0], *h0.shape)
        f = self.trunk(s)
        h, feats, hs = h0, [], []
        for t in range(s.shape[0]):
            h = h * (~first[t]).unsqueeze(-1).to(h.dtype)
            y, h = self.gru(f[t], h)
            feats.append(y)
            hs.append(h)
        return self.head(torch.stack(feats)).squeeze(-1), torch.stack(hs)


class StackedActors:
    """Runs N per-agent actors (an nn.ModuleList) as one batched call with torch.func.vmap over the agent axis.

    Only for acting (no gradients): the stacked parameters are a snapshot, refreshed by `refresh()` after every
    update of the actors.
    """

    def __init__(self, actors: nn.ModuleList):
        self.actors = actors
        self.base = copy.deepcopy(actors[0]).to("meta")
        self.params = None

    def refresh(self) -> None:
        self.params = None

    def __call__(self, x: torch.Tensor, h: torch.Tensor, agent_dim: int = 1):
        if self.params is None:
            self.params = stack_module_state(list(self.actors))

        def one(params, buffers, xi, hi):
            return functional_call(self.base, (params, buffers), (xi, hi))

        return vmap(one, in_dims=(0, 0, agent_dim, agent_dim), out_dims=agent_dim)(*self.params, x, h)


def masked_logits(logits: torch.Tensor, avail: torch.Tensor) -> torch.Tensor:
    return logits.masked_fill(~avail, torch.finfo(logits.dtype).min)


def log_prob_entropy(out, log_std, actions, avail, dim_mask, continuous: bool):
    """Log-probability of `actions` and the entropy under the policy (out, log_std); per agent, summed over the
    action dimensions of continuous actions (padded dimensions masked out by dim_mask)."""
    if continuous:
        dist = torch.distributions.Normal(out, log_std.exp(), validate_args=False)
        return (dist.log_prob(actions) * dim_mask).sum(-1), (dist.entropy() * dim_mask).sum(-1)
    logits = F.log_softmax(masked_logits(out, avail), -1)
    probs = logits.exp()
    entropy = -(probs * logits.masked_fill(~avail, 0.0)).sum(-1)
    return logits.gather(-1, actions.long().unsqueeze(-1)).squeeze(-1), entropy
