"""MAMBA's world model: a DreamerV2-style recurrent state-space model per agent, with agents
communicating through self-attention before each recurrent update.

Per agent i and step t (all agents and batch rows at once, no loop over agents):

    e_t^i   = enc(o_t^i)                                           observation embedding
    x_t^i   = act(W [a_{t-1}^i, z_{t-1}^i]) + pos(i)               transition input (+ agent position)
    m_t     = TransformerEncoder(x_t^1..N)                         communication across agents
    h_t^i   = GRU(m_t^i, h_{t-1}^i)                                deterministic state
    prior   p(z_t^i | h_t^i),  posterior q(z_t^i | h_t^i, e_t^i)   32 categoricals x 32 classes
    feat_t^i = [z_t^i, h_t^i]                                      what every head and the actor read

Heads on feat_t^i: observation reconstruction (smooth L1, masked for dead agents), the team reward of
the transition into t, the continuation flag of t, the available actions of t, and the agent's own
action a_{t-1}^i (the action that led into t; MAMBA's auxiliary action-prediction loss).

Continuous actions (MaMuJoCo, `continuous=True`): a_{t-1}^i enters the transition as its vector scaled to
[-1, 1] (n_actions = its dimensions) instead of a one-hot, there is no available-action head, and the
action-prediction head regresses that vector (squared error summed over dimensions).
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn


class RSSMState(NamedTuple):
    deter: torch.Tensor   # [..., N, D]
    stoch: torch.Tensor   # [..., N, S*C] (one-hot samples, straight-through)

    def feat(self) -> torch.Tensor:
        return torch.cat([self.stoch, self.deter], -1)


class AgentPositions(nn.Module):
    """Adds a sinusoidal encoding of the agent index to [..., N, D] (MAMBA's attention encoders: SMAC
    observations carry no agent id, so without it attention over agents cannot tell them apart)."""

    def __init__(self, dim: int, max_agents: int = 64):
        super().__init__()
        pos = torch.arange(max_agents, dtype=torch.float64)[:, None]
        rate = torch.pow(10000.0, 2 * (torch.arange(dim) // 2) / dim).to(torch.float64)
        angle = pos / rate
        table = torch.where(torch.arange(dim) % 2 == 0, angle.sin(), angle.cos()).float()
        self.register_buffer("table", table, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.table[: x.shape[-2]].to(x.dtype)


def mlp(inp: int, hidden: int, out: int, layers: int, act=nn.ELU) -> nn.Sequential:
    """`layers` hidden layers of width `hidden`, then a linear output."""
    mods, d = [], inp
    for _ in range(layers):
        mods += [nn.Linear(d, hidden), act()]
        d = hidden
    mods.append(nn.Linear(d, out))
    return nn.Sequential(*mods)


def mixed_log_probs(logits: torch.Tensor, unimix: float) -> torch.Tensor:
    """Log-probabilities of softmax(logits) mixed with `unimix` of the uniform distribution (last dim)."""
    if unimix <= 0:
        return F.log_softmax(logits, -1)
    probs = (1 - unimix) * F.softmax(logits, -1) + unimix / logits.shape[-1]
    return probs.log()


def straight_through_sample(logp: torch.Tensor) -> torch.Tensor:
    """One-hot samples of the categoricals in the last dim; gradients pass through the probabilities."""
    probs = logp.exp()
    # Gumbel-max: an exact sample of the categorical, one draw from torch's global RNG for the batch.
    gumbel = -torch.empty_like(logp).exponential_().log()
    onehot = F.one_hot((logp + gumbel).argmax(-1), logp.shape[-1]).to(probs.dtype)
    return onehot + probs - probs.detach()


def categorical_kl(logp_p: torch.Tensor, logp_q: torch.Tensor) -> torch.Tensor:
    """KL(p || q) per categorical, summed over the classes (last dim)."""
    return (logp_p.exp() * (logp_p - logp_q)).sum(-1)


def kl_balance(post_logp: torch.Tensor, prior_logp: torch.Tensor, prior_weight: float, post_weight: float,
               free: float = 0.0, reduce: str = "sum") -> torch.Tensor:
    """DreamerV2's balanced KL, per element of the leading dims (summed, or averaged with reduce="mean"
    as MAMBA's code does, over the categoricals):

        prior_weight * KL(sg(post) || prior)  +  post_weight * KL(post || sg(prior))

    The first term trains the prior through the cross-entropy (Table 6: 0.8), the second regularises
    the posterior (its entropy weight, 0.2). `free` nats are granted per element (0 = off)."""
    if reduce not in ("sum", "mean"):
        raise ValueError(f"kl reduce must be sum or mean, got {reduce!r}")
    lhs = getattr(categorical_kl(post_logp.detach(), prior_logp), reduce)(-1)
    rhs = getattr(categorical_kl(post_logp, prior_logp.detach()), reduce)(-1)
    if free > 0:
        lhs, rhs = lhs.clamp(min=free), rhs.clamp(min=free)
    return prior_weight * lhs + post_weight * rhs


class WorldModel(nn.Module):
    def __init__(self, obs_dim: int, n_actions: int, p: dict, continuous: bool = False):
        super().__init__()
        self.obs_dim, self.n_actions, self.continuous = obs_dim, n_actions, continuous
        self.S, self.C, self.D = int(p["categoricals"]), int(p["classes"]), int(p["deter_size"])
        self.unimix = float(p["unimix"])
        H, E, L = int(p["hidden_size"]), int(p["embed_size"]), int(p["mlp_layers"])
        self.stoch_size = self.S * self.C
        self.feat_size = self.stoch_size + self.D
        self.encoder = mlp(obs_dim, H, E, L)
        self.trans_in = nn.Sequential(nn.Linear(n_actions + self.stoch_size, H), nn.ELU())
        self.positions = AgentPositions(H) if p["agent_positions"] else None
        layer = nn.TransformerEncoderLayer(H, int(p["comm_heads"]), dim_feedforward=H, dropout=float(p["comm_dropout"]),
                                           batch_first=True, norm_first=False)
        self.comm = nn.TransformerEncoder(layer, int(p["comm_layers"]), enable_nested_tensor=False)
        self.gru = nn.GRUCell(H, self.D)
        self.prior_net = mlp(self.D, H, self.stoch_size, 1)
        self.post_net = mlp(self.D + E, H, self.stoch_size, 1)
        F_ = self.feat_size
        self.decoder = mlp(F_, H, obs_dim, L)
        self.reward_head = mlp(F_, H, 1, L)
        self.cont_head = mlp(F_, H, 1, L)
        self.avail_head = None if continuous else mlp(F_, H, n_actions, L)
        self.action_head = mlp(F_, H, n_actions, L)

    # -- pieces --------------------------------------------------------------------------------------
    def initial_state(self, batch: tuple, n_agents: int, device, dtype) -> RSSMState:
        return RSSMState(torch.zeros(*batch, n_agents, self.D, device=device, dtype=dtype),
                         torch.zeros(*batch, n_agents, self.stoch_size, device=device, dtype=dtype))

    def _dist(self, net: nn.Module, x: torch.Tensor) -> torch.Tensor:
        logits = net(x).unflatten(-1, (self.S, self.C))
        return mixed_log_probs(logits.float(), self.unimix)

    def action_input(self, action: torch.Tensor, dtype) -> torch.Tensor:
        """What the transition reads of an action: discrete [..., N] long (-1 = none) -> one-hot [..., N, A];
        continuous [..., N, m] in [-1, 1] -> itself."""
        if self.continuous:
            return action.to(dtype)
        return F.one_hot(action.clamp(min=0), self.n_actions).to(dtype)

    def _sample(self, logp: torch.Tensor, dtype) -> torch.Tensor:
        return straight_through_sample(logp).flatten(-2).to(dtype)

    def transition(self, state: RSSMState, action_onehot: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """h_t from (h_{t-1}, z_{t-1}, a_{t-1}) with attention across agents; returns (h_t, prior log-probs)."""
        x = self.trans_in(torch.cat([action_onehot, state.stoch], -1))       # [B, N, H]
        if self.positions is not None:
            x = self.positions(x)
        lead = x.shape[:-2]
        x = self.comm(x.reshape(-1, *x.shape[-2:]))                           # attention over the agents axis
        h = self.gru(x.reshape(-1, x.shape[-1]), state.deter.reshape(-1, self.D)).reshape(*lead, -1, self.D)
        return h, self._dist(self.prior_net, h)

    def img_step(self, state: RSSMState, action_onehot: torch.Tensor) -> RSSMState:
        h, prior = self.transition(state, action_onehot)
        return RSSMState(h, self._sample(prior, h.dtype))

    def obs_step(self, state: RSSMState, action_onehot: torch.Tensor, embed: torch.Tensor):
        """One filtering step: returns (posterior state, prior log-probs, posterior log-probs)."""
        h, prior = self.transition(state, action_onehot)
        post = self._dist(self.post_net, torch.cat([h, embed], -1))
        return RSSMState(h, self._sample(post, h.dtype)), prior, post

    def observe(self, obs: torch.Tensor, prev_action: torch.Tensor, first: torch.Tensor):
        """Filter whole sequences. obs [B, L, N, O]; prev_action [B, L, N] long or [B, L, N, m] float (action
        into step t, ignored where first); first [B, L] bool (reset the state before step t).
        Returns states (deter [B, L, N, D], stoch [B, L, N, S*C]) and prior/posterior log-probs [B, L, N, S, C]."""
        B, L, N, _ = obs.shape
        embed = self.encoder(obs)
        act = self.action_input(prev_action, obs.dtype)
        keep = (~first).to(obs.dtype)[..., None, None]                         # [B, L, 1, 1]
        state = self.initial_state((B,), N, obs.device, obs.dtype)
        deters, stochs, priors, posts = [], [], [], []
        for t in range(L):
            k = keep[:, t]
            state = RSSMState(state.deter * k, state.stoch * k)
            state, prior, post = self.obs_step(state, act[:, t] * k, embed[:, t])
            deters.append(state.deter)
            stochs.append(state.stoch)
            priors.append(prior)
            posts.append(post)
        st = RSSMState(torch.stack(deters, 1), torch.stack(stochs, 1))
        return st, torch.stack(priors, 1), torch.stack(posts, 1)

    # -- the model loss --------------------------------------------------------------------------------
    def loss(self, batch: dict, p: dict) -> tuple[torch.Tensor, dict, RSSMState]:
        """batch: obs [B,L,N,O], avail [B,L,N,A] bool, alive [B,L,N] bool, prev_action [B,L,N], reward [B,L],
        cont [B,L], first [B,L] bool. Returns (loss, metrics as 0-dim tensors, posterior states)."""
        obs, first = batch["obs"], batch["first"]
        states, prior, post = self.observe(obs, batch["prev_action"], first)
        feat = states.feat()
        dt = feat.dtype
        alive = batch["alive"].to(dt)                                           # [B, L, N]
        has_prev = (~first).to(dt)[..., None].expand_as(alive)                  # a transition led into t
        kl = kl_balance(post, prior, float(p["kl_prior_weight"]), float(p["kl_post_weight"]), float(p["kl_free"]),
                        str(p["kl_reduce"]))
        kl = kl.mean()
        rec = F.smooth_l1_loss(self.decoder(feat).float(), obs.float(), reduction="none").sum(-1)
        rec = (rec * alive).sum() / alive.sum().clamp(min=1)
        rew = F.smooth_l1_loss(self.reward_head(feat).squeeze(-1).float(),
                               batch["reward"][..., None].expand_as(alive).float(), reduction="none")
        rew = (rew * has_prev).sum() / has_prev.sum().clamp(min=1)
        cont = F.binary_cross_entropy_with_logits(self.cont_head(feat).squeeze(-1).float(),
                                                  batch["cont"][..., None].expand_as(alive).float())
        if self.continuous:
            avail = rec.new_zeros(())
            act_ce = (self.action_head(feat).float() - batch["prev_action"].float()).pow(2).sum(-1).flatten()
        else:
            avail = F.binary_cross_entropy_with_logits(self.avail_head(feat).float(), batch["avail"].float(),
                                                       reduction="none").sum(-1).mean()
            act_ce = F.cross_entropy(self.action_head(feat).flatten(0, -2).float(),
                                     batch["prev_action"].clamp(min=0).flatten(), reduction="none")
        act_ce = (act_ce * has_prev.flatten()).sum() / has_prev.sum().clamp(min=1)
        s = p["loss_scales"]
        total = (s["kl"] * kl + s["obs"] * rec + s["reward"] * rew + s["cont"] * cont + s["avail"] * avail
                 + s["action"] * act_ce)
        metrics = {"model_loss": total, "kl": kl, "obs_loss": rec, "reward_loss": rew, "cont_loss": cont,
                   "avail_loss": avail, "action_pred_loss": act_ce,
                   "post_entropy": -(post.exp() * post).sum(-1).sum(-1).mean()}
        return total, metrics, states
