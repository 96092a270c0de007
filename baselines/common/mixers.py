"""Mixers: how the agents' chosen Q-values and the global state become Q_tot.

Every mixer has the signature
    forward(agent_qs [B,T,N], states [B,T,S], *, obs [B,T,N,O], actions_onehot [B,T,N,A], max_qs [B,T,N]) -> [B,T]
and ignores what it does not use. `max_qs` holds each agent's greedy value max_a Q_i (detached).
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


class DuplexMixer(nn.Module):
    """QPLEX (Wang et al. 2021): duplex dueling, Q_tot = V_tot + A_tot.

    Individual transformation: Q_i' = w_i(s) Q_i + b(s)/N and V_i' = w_i(s) max_a Q_i + b(s)/N, with
    w_i >= 0 from multi-head attention over agents (per head: a query from the state, a key from the
    agent's own features -- here its observation -- softmax over agents, times a non-negative head weight
    |w_h(s)|) and b(s) a state bias. A_i' = Q_i' - V_i' <= 0.
    Duplex dueling: V_tot = sum_i V_i', A_tot = sum_i lambda_i(s, a) A_i' with
    lambda_i = sum_k (|key_k(s)| + 1e-10) * sigmoid(agents_k(s))_i * sigmoid(action_k(s, a))_i > 0
    (the DMAQ advantage weights), so the joint greedy action is each agent's greedy action (IGM).
    """

    def __init__(self, n_agents: int, n_actions: int, state_dim: int, key_dim: int, embed_dim: int, heads: int,
                 adv_kernels: int, hypernet_layers: int, hypernet_embed: int):
        super().__init__()
        self.n_agents, self.heads, self.embed_dim, self.kernels = n_agents, heads, embed_dim, adv_kernels
        # transformation (attention over agents)
        self.query = hypernet(state_dim, heads * embed_dim, hypernet_layers, hypernet_embed)
        self.key = nn.Linear(key_dim, heads * embed_dim)
        self.head_weight = hypernet(state_dim, heads, hypernet_layers, hypernet_embed)
        self.bias = hypernet(state_dim, 1, hypernet_layers, hypernet_embed)
        # advantage weights lambda
        self.lam_key = hypernet(state_dim, adv_kernels, hypernet_layers, hypernet_embed)
        self.lam_agents = hypernet(state_dim, adv_kernels * n_agents, hypernet_layers, hypernet_embed)
        self.lam_action = hypernet(state_dim + n_agents * n_actions, adv_kernels * n_agents, hypernet_layers,
                                   hypernet_embed)

    def weights(self, states: torch.Tensor, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """w [B,T,N] >= 0 and the bias b [B,T]."""
        B, T, N, _ = obs.shape
        H, D = self.heads, self.embed_dim
        query = self.query(states).view(B, T, H, 1, D)
        key = self.key(obs).view(B, T, N, H, D).transpose(2, 3)                       # [B,T,H,N,D]
        attend = torch.softmax((query * key).sum(-1) / math.sqrt(D), dim=-1)          # [B,T,H,N]
        head_w = self.head_weight(states).abs().unsqueeze(-1)                          # [B,T,H,1]
        w = (head_w * attend).sum(2) + 1e-10
        return w, self.bias(states).squeeze(-1)

    def lambdas(self, states: torch.Tensor, actions_onehot: torch.Tensor) -> torch.Tensor:
        """lambda_i(s, a) > 0, [B,T,N]."""
        B, T, N, _ = actions_onehot.shape
        K = self.kernels
        key = self.lam_key(states).abs().view(B, T, K, 1) + 1e-10
        agents = torch.sigmoid(self.lam_agents(states)).view(B, T, K, N)
        act = torch.sigmoid(self.lam_action(torch.cat([states, actions_onehot.reshape(B, T, -1)], -1))).view(B, T, K, N)
        return (key * agents * act).sum(2)

    def decompose(self, agent_qs, states, *, obs, actions_onehot, max_qs):
        """(V_tot, A_tot), each [B,T]."""
        w, b = self.weights(states, obs)
        v_i = w * max_qs + b.unsqueeze(-1) / self.n_agents
        a_i = w * (agent_qs - max_qs)
        lam = self.lambdas(states, actions_onehot)
        return v_i.sum(-1), (lam * a_i).sum(-1)

    def forward(self, agent_qs, states, *, obs, actions_onehot, max_qs, **_):
        v_tot, a_tot = self.decompose(agent_qs, states, obs=obs, actions_onehot=actions_onehot, max_qs=max_qs)
        return v_tot + a_tot
