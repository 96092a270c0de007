"""Mixers: how the agents' chosen Q-values and the global state become Q_tot.

Every mixer has the signature
    forward(agent_qs [B,T,N], states [B,T,S], *, obs [B,T,N,O], actions_onehot [B,T,N,A], max_qs [B,T,N]) -> [B,T]
and ignores what it does not use. `max_qs` holds each agent's greedy value max_a Q_i (detached).
A mixer with a regulariser (QPLEX's attention-logit penalty) leaves it in `penalty` after each forward;
the learner adds it to the loss.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from baselines.common.value_decomposition import hypernet


class QMixer(nn.Module):
    """QMIX (Rashid et al. 2018): a two-layer mixing network whose weights, produced by hypernetworks of
    the state, are made non-negative (abs), so dQ_tot/dQ_i >= 0; ELU hidden layer; state bias V(s)."""

    def __init__(self, n_agents: int, state_dim: int, embed_dim: int, hypernet_layers: int, hypernet_embed: int):
        super().__init__()
        self.n_agents, self.embed_dim = n_agents, embed_dim
        self.hyper_w1 = hypernet(state_dim, embed_dim * n_agents, hypernet_layers, hypernet_embed)
        self.hyper_b1 = nn.Linear(state_dim, embed_dim)
        self.hyper_w2 = hypernet(state_dim, embed_dim, hypernet_layers, hypernet_embed)
        self.value = nn.Sequential(nn.Linear(state_dim, embed_dim), nn.ReLU(), nn.Linear(embed_dim, 1))

    def forward(self, agent_qs, states, **_):
        B, T, N = agent_qs.shape
        s = states.reshape(B * T, -1)
        q = agent_qs.reshape(B * T, 1, N)
        w1 = self.hyper_w1(s).abs().view(B * T, N, self.embed_dim)
        b1 = self.hyper_b1(s).view(B * T, 1, self.embed_dim)
        hidden = F.elu(torch.bmm(q, w1) + b1)
        w2 = self.hyper_w2(s).abs().view(B * T, self.embed_dim, 1)
        v = self.value(s).view(B * T, 1, 1)
        return (torch.bmm(hidden, w2) + v).view(B, T)


class PerHead(nn.Module):
    """One bias-free linear map per head: x [..., H, E] -> [..., H, D] (QPLEX's per-head query heads)."""

    def __init__(self, heads: int, in_dim: int, out_dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(heads, in_dim, out_dim))
        bound = 1 / math.sqrt(in_dim)  # nn.Linear's default initialisation, per head
        nn.init.uniform_(self.weight, -bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.einsum("...he,hed->...hd", x, self.weight)


class DuplexMixer(nn.Module):
    """QPLEX (Wang et al. 2021): duplex dueling, Q_tot = V_tot + A_tot, as the reference's SMAC mixer
    (wjh720/QPLEX, `dmaq_qatten` with qplex_qatten_sc2.yaml).

    Transformation: Q_i' = w_i(s) Q_i + b(s)/N and V_i' = w_i(s) max_a Q_i + b(s)/N. w_i > 0 is multi-head
    attention over the agents: per head a query from the state (state -> `hypernet_embed` -> ReLU -> D, its
    own first layer per head, no final bias) and a bias-free key from each agent's features (here its
    observation), softmax over agents; w_i = sum over heads (`weighted_head`: each head times |w_h(s)|).
    b(s) = state -> D -> ReLU -> 1. Duplex dueling: A_i' = Q_i' - V_i' <= 0 and
        Q_tot = sum_i Q_i' + sum_i (lambda_i(s, a) - 1) sg[A_i']           (`stop_advantage_gradient`)
    which equals sum_i V_i' + sum_i lambda_i A_i' in value. The agents' utilities and the attention get their
    gradient through sum_i Q_i' only; lambda_i = sum_k (|key_k(s)| + 1e-10) sigmoid(agents_k(s))_i
    sigmoid(action_k(s, a))_i > 0 (`hypernet_layers` deep) learns from the detached advantages. IGM holds:
    the joint greedy action is each agent's greedy action.
    After every forward, `penalty` holds the attention-logit regulariser
    `attend_reg_coef * sum_heads mean(logit^2)` that the learner adds to the TD loss.
    """

    def __init__(self, n_agents: int, n_actions: int, state_dim: int, key_dim: int, embed_dim: int, heads: int,
                 adv_kernels: int, hypernet_layers: int, hypernet_embed: int, weighted_head: bool = False,
                 attend_reg_coef: float = 0.001, stop_advantage_gradient: bool = True):
        super().__init__()
        self.n_agents, self.heads, self.embed_dim, self.kernels = n_agents, heads, embed_dim, adv_kernels
        self.attend_reg_coef, self.stop_advantage_gradient = attend_reg_coef, stop_advantage_gradient
        self.hypernet_embed = hypernet_embed
        # transformation (attention over agents): two layers each, whatever hypernet_layers says
        self.query_hidden = nn.Linear(state_dim, heads * hypernet_embed)
        self.query = PerHead(heads, hypernet_embed, embed_dim)
        self.key = nn.Linear(key_dim, heads * embed_dim, bias=False)
        self.head_weight = hypernet(state_dim, heads, 2, hypernet_embed) if weighted_head else None
        self.bias = nn.Sequential(nn.Linear(state_dim, embed_dim), nn.ReLU(), nn.Linear(embed_dim, 1))
        # advantage weights lambda: `hypernet_layers` deep (Table 9: 1)
        self.lam_key = hypernet(state_dim, adv_kernels, hypernet_layers, hypernet_embed)
        self.lam_agents = hypernet(state_dim, adv_kernels * n_agents, hypernet_layers, hypernet_embed)
        self.lam_action = hypernet(state_dim + n_agents * n_actions, adv_kernels * n_agents, hypernet_layers,
                                   hypernet_embed)
        self.penalty: torch.Tensor | None = None

    def attention(self, states: torch.Tensor, obs: torch.Tensor) -> torch.Tensor:
        """Unscaled attention logits [B,T,H,N]."""
        B, T, N, _ = obs.shape
        H, D = self.heads, self.embed_dim
        hidden = F.relu(self.query_hidden(states)).view(B, T, H, self.hypernet_embed)
        query = self.query(hidden).unsqueeze(-2)                                       # [B,T,H,1,D]
        key = self.key(obs).view(B, T, N, H, D).transpose(2, 3)                         # [B,T,H,N,D]
        return (query * key).sum(-1)

    def weights(self, states: torch.Tensor, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """w [B,T,N] > 0 and the bias b [B,T]; sets `penalty` from the logits."""
        logits = self.attention(states, obs)
        attend = torch.softmax(logits / math.sqrt(self.embed_dim), dim=-1)            # [B,T,H,N]
        if self.head_weight is not None:
            attend = attend * self.head_weight(states).abs().unsqueeze(-1)
        self.penalty = self.attend_reg_coef * (logits ** 2).mean(dim=(0, 1, 3)).sum()
        return attend.sum(2) + 1e-10, self.bias(states).squeeze(-1)

    def lambdas(self, states: torch.Tensor, actions_onehot: torch.Tensor) -> torch.Tensor:
        """lambda_i(s, a) > 0, [B,T,N]."""
        B, T, N, _ = actions_onehot.shape
        K = self.kernels
        key = self.lam_key(states).abs().view(B, T, K, 1) + 1e-10
        agents = torch.sigmoid(self.lam_agents(states)).view(B, T, K, N)
        act = torch.sigmoid(self.lam_action(torch.cat([states, actions_onehot.reshape(B, T, -1)], -1))).view(B, T, K, N)
        return (key * agents * act).sum(2)

    def _parts(self, agent_qs, states, obs, actions_onehot, max_qs):
        w, b = self.weights(states, obs)
        q_i = w * agent_qs + b.unsqueeze(-1) / self.n_agents
        v_i = w * max_qs + b.unsqueeze(-1) / self.n_agents
        return q_i, v_i, self.lambdas(states, actions_onehot)

    def decompose(self, agent_qs, states, *, obs, actions_onehot, max_qs):
        """(V_tot, A_tot), each [B,T], A_tot = sum_i lambda_i A_i' (values only; see `forward` for gradients)."""
        q_i, v_i, lam = self._parts(agent_qs, states, obs, actions_onehot, max_qs)
        return v_i.sum(-1), (lam * (q_i - v_i)).sum(-1)

    def forward(self, agent_qs, states, *, obs, actions_onehot, max_qs, **_):
        q_i, v_i, lam = self._parts(agent_qs, states, obs, actions_onehot, max_qs)
        adv = q_i - v_i
        if self.stop_advantage_gradient:  # the reference: utilities learn through sum_i Q_i' only
            return q_i.sum(-1) + ((lam - 1) * adv.detach()).sum(-1)
        return v_i.sum(-1) + (lam * adv).sum(-1)
