"""MAMBA's behaviour learning: an actor on each agent's own model features, a critic that attends over
all agents' features, imagination in the world model, lambda-returns and PPO.

The actor, the lambda-return and the PPO loss are MARIE's (marie/models/actor_critic.py, marie/returns.py);
MAMBA's critic (the reference's layout, `MambaCritic`) and its imagination in the RSSM live here.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from baselines.mamba.rssm import AgentPositions, RSSMState, WorldModel
from marie.models.actor_critic import Actor, log_prob_entropy, sample_actions
from marie.returns import lambda_returns, ppo_clip_loss

__all__ = ["Actor", "MambaCritic", "imagine", "lambda_returns", "ppo_actor_loss", "sample_actions",
           "policy_logits", "bin_centres"]


class MambaCritic(nn.Module):
    """The reference's critic: embed (Linear + ReLU) -> + agent position -> one Transformer encoder layer
    across agents (`heads` heads, feed-forward width = hidden, no dropout, post-norm) -> ReLU ->
    Linear - ReLU - Linear(1). x [B, N, in_dim] -> values [B, N]."""

    def __init__(self, in_dim: int, hidden: int, heads: int, agent_positions: bool = True):
        super().__init__()
        self.embed = nn.Linear(in_dim, hidden)
        self.positions = AgentPositions(hidden) if agent_positions else None
        layer = nn.TransformerEncoderLayer(hidden, heads, dim_feedforward=hidden, dropout=0.0, batch_first=True)
        self.attention = nn.TransformerEncoder(layer, 1, enable_nested_tensor=False)
        self.head = nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.embed(x))
        if self.positions is not None:
            h = self.positions(h)
        return self.head(F.relu(self.attention(h))).squeeze(-1)


def policy_logits(actor: Actor, feat: torch.Tensor, avail: torch.Tensor) -> torch.Tensor:
    """Masked logits [..., A] of MARIE's actor (one discrete action dimension)."""
    return actor(feat, avail).squeeze(-2).float()


def bin_centres(tokens: torch.Tensor, bins: int) -> torch.Tensor:
    """Continuous actions: bin indices [..., m] -> their bin centres in [-1, 1] (the world model's input)."""
    return (tokens.float() + 0.5) * (2.0 / bins) - 1.0


@torch.no_grad()
def imagine(model: WorldModel, actor: Actor, start: RSSMState, horizon: int) -> dict:
    """Roll the prior forward `horizon` steps from `start` ([R, N, ...]) with the actor.

    Discrete: available actions in imagination come from the model's avail head (a Bernoulli sample per
    action, as MAMBA); an agent with none predicted available may take any action. Continuous: the actor's
    factorised categorical over bins per dimension, fed to the model as bin centres. Returns, time first:
    feat [H+1, R, N, F], action [H, R, N] (continuous: [H, R, N, m] bins), logp [H, R, N], avail
    [H, R, N, A] bool (continuous: None), reward/cont [H, R, N]."""
    state = start
    feats, actions, logps, avails, rewards, conts = [state.feat()], [], [], [], [], []
    for _ in range(horizon):
        feat = feats[-1]
        if model.continuous:
            logits = actor(feat).float()                                        # [R, N, m, bins]
            action = sample_actions(logits)
            logp, _ = log_prob_entropy(logits, action)
            state = model.img_step(state, bin_centres(action, logits.shape[-1]).to(feat.dtype))
            avail = None
        else:
            avail_p = torch.sigmoid(model.avail_head(feat).float())
            avail = torch.rand_like(avail_p) < avail_p
            avail = avail | ~avail.any(-1, keepdim=True)
            logits = policy_logits(actor, feat, avail)
            logp_all = F.log_softmax(logits, -1)
            action = sample_actions(logits)
            logp = logp_all.gather(-1, action[..., None]).squeeze(-1)
            state = model.img_step(state, F.one_hot(action, model.n_actions).to(feat.dtype))
        nfeat = state.feat()
        feats.append(nfeat)
        actions.append(action)
        logps.append(logp)
        avails.append(avail)
        rewards.append(model.reward_head(nfeat).squeeze(-1).float())
        conts.append(torch.sigmoid(model.cont_head(nfeat).squeeze(-1).float()))
    return {"feat": torch.stack(feats), "action": torch.stack(actions), "logp": torch.stack(logps),
            "avail": None if model.continuous else torch.stack(avails), "reward": torch.stack(rewards),
            "cont": torch.stack(conts)}


def ppo_actor_loss(actor: Actor, feat, avail, action, old_logp, adv, clip: float, ent_coef: float):
    """avail None: continuous actions, `action` [..., m] bins; else one discrete action [...]."""
    logits = actor(feat, avail).float()
    logp, entropy = log_prob_entropy(logits, action if avail is None else action[..., None])
    return ppo_clip_loss(logp, old_logp, adv, entropy, clip, ent_coef)
