"""Actor and critic (appendix B): the actor is a 3-layer ReLU MLP on an agent's reconstructed (optionally
stacked) local observation; the critic is the same kind of MLP followed by one self-attention layer over
all agents of the sample, so that V^i sees every agent's reconstructed observation. Parameters are
shared by all agents (an optional agent-id one-hot in the input tells them apart).
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

NEG = -1e9  # logit of an unavailable action (finite: keeps 0 * log p = 0 in the entropy)


def relu_mlp(sizes: list[int]) -> nn.Sequential:
    layers = []
    for i in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def check_gaussian_params(g, where: str) -> None:
    """The binned-Gaussian actor's block: null (free logits) or {init_std, max_std}, 0 < init_std < max_std."""
    from marie.errors import UserError
    if g is None:
        return
    ok = isinstance(g, dict) and set(g) == {"init_std", "max_std"} and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in g.values())
    if not ok or not 0 < g["init_std"] < g["max_std"]:
        raise UserError(f"{where} must be null or {{init_std, max_std}} with 0 < init_std < max_std, got {g!r}")


class Actor(nn.Module):
    """Logits [..., m, n_choices]: free logits per action dimension (discrete actions; `gaussian` None), or,
    for continuous actions split into n_choices bins over [-1, 1], a binned Gaussian: the logit of bin k is
    the log-density of N(mu(x), sigma) at the bin's centre, so each dimension's distribution is unimodal over
    ordered bins (the official MARIE code's Gaussian policy on MaMuJoCo, restricted to the bin centres the
    world model's action tokens distinguish). gaussian: {init_std, max_std}; sigma = max_std * sigmoid(w),
    one w per dimension (state-independent), floored at half a bin; the mean layer starts near 0 (gain 0.01)."""

    def __init__(self, in_dim: int, hidden: int, layers: int, act_dims: int, n_choices: int,
                 gaussian: dict | None = None):
        super().__init__()
        self.act_dims, self.n_choices, self.gaussian = act_dims, n_choices, gaussian is not None
        self.net = relu_mlp([in_dim] + [hidden] * (layers - 1) + [act_dims * (1 if gaussian else n_choices)])
        if gaussian:
            self.max_std, self.min_std = float(gaussian["max_std"]), 1.0 / n_choices
            ratio = float(gaussian["init_std"]) / self.max_std
            self.std_param = nn.Parameter(torch.full((act_dims,), math.log(ratio / (1 - ratio))))
            self.register_buffer("centres", (torch.arange(n_choices) + 0.5) * (2.0 / n_choices) - 1.0,
                                 persistent=False)
            with torch.no_grad():
                self.net[-1].weight.mul_(0.01)
                self.net[-1].bias.zero_()

    def std(self) -> torch.Tensor:
        return (self.max_std * torch.sigmoid(self.std_param)).clamp(min=self.min_std)

    def forward(self, x: torch.Tensor, avail: torch.Tensor | None = None) -> torch.Tensor:
        """x [..., in_dim] -> masked logits [..., m, n_choices]; avail [..., n_choices] bool (discrete, m=1)."""
        if self.gaussian:
            mean = self.net(x).unsqueeze(-1)                                   # [..., m, 1]
            z = (self.centres.to(mean.dtype) - mean) / self.std().to(mean.dtype).unsqueeze(-1)
            return -0.5 * z * z
        logits = self.net(x).unflatten(-1, (self.act_dims, self.n_choices))
        if avail is not None:
            logits = logits.masked_fill(~avail.unsqueeze(-2), NEG)
        return logits


class Critic(nn.Module):
    def __init__(self, in_dim: int, hidden: int, layers: int, heads: int):
        super().__init__()
        self.enc = nn.Sequential(relu_mlp([in_dim] + [hidden] * (layers - 1)), nn.ReLU())
        self.ln = nn.LayerNorm(hidden)
        self.heads = heads
        self.qkv = nn.Linear(hidden, 3 * hidden)
        self.proj = nn.Linear(hidden, hidden)
        self.out = nn.Linear(hidden, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, N, in_dim] (all agents of each sample) -> values [B, N]."""
        h = self.enc(x)
        B, N, C = h.shape
        q, k, v = self.qkv(self.ln(h)).view(B, N, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4).unbind(0)
        y = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(B, N, C)
        return self.out(h + self.proj(y)).squeeze(-1)


def sample_actions(logits: torch.Tensor, greedy: bool = False) -> torch.Tensor:
    """Categorical sample (Gumbel-max) or argmax over the last dimension."""
    if greedy:
        return logits.argmax(-1)
    u = torch.rand_like(logits).clamp_(1e-20, 1.0)
    return (logits - torch.log(-torch.log(u))).argmax(-1)


def log_prob_entropy(logits: torch.Tensor, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """logits [..., m, C], actions [..., m] -> log π(a) and entropy, summed over the m action dimensions."""
    logp_all = logits.log_softmax(-1)
    logp = logp_all.gather(-1, actions.unsqueeze(-1)).squeeze(-1).sum(-1)
    entropy = -(logp_all.exp() * logp_all).sum(-1).sum(-1)
    return logp, entropy


def policy_input(stack: torch.Tensor, last_action: torch.Tensor | None, agent_id: bool) -> torch.Tensor:
    """stack [..., N, S, O] reconstructed observations (oldest first) and optionally the one-hot last
    action [..., N, A'] -> actor/critic input [..., N, S*O (+A') (+N)]."""
    parts = [stack.flatten(-2)]
    if last_action is not None:
        parts.append(last_action)
    if agent_id:
        N = stack.shape[-3]
        eye = torch.eye(N, device=stack.device, dtype=stack.dtype)
        parts.append(eye.expand(*stack.shape[:-3], N, N))
    return torch.cat(parts, -1) if len(parts) > 1 else parts[0]
