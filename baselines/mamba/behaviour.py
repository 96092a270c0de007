"""MAMBA's behaviour learning: an actor on each agent's own model features, a critic that attends over
all agents' features, imagination in the world model, lambda-returns and PPO.

The actor, the attention critic, the lambda-return and the PPO loss are MARIE's (marie/models/actor_critic.py,
marie/returns.py); only MAMBA's imagination in its RSSM lives here.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from baselines.mamba.rssm import RSSMState, WorldModel
from marie.models.actor_critic import Actor, Critic, log_prob_entropy, sample_actions
from marie.returns import lambda_returns, ppo_clip_loss

__all__ = ["Actor", "Critic", "imagine", "lambda_returns", "ppo_actor_loss", "sample_actions", "policy_logits"]


def policy_logits(actor: Actor, feat: torch.Tensor, avail: torch.Tensor) -> torch.Tensor:
    """Masked logits [..., A] of MARIE's actor (one discrete action dimension)."""
    return actor(feat, avail).squeeze(-2).float()


@torch.no_grad()
def imagine(model: WorldModel, actor: Actor, start: RSSMState, horizon: int) -> dict:
    """Roll the prior forward `horizon` steps from `start` ([R, N, ...]) with the actor.

    Available actions in imagination come from the model's avail head (a Bernoulli sample per action,
    as MAMBA); an agent with none predicted available may take any action. Returns, time first:
    feat [H+1, R, N, F], action/logp [H, R, N], avail [H, R, N, A] bool, reward/cont [H, R, N]."""
    state = start
    feats, actions, logps, avails, rewards, conts = [state.feat()], [], [], [], [], []
    for _ in range(horizon):
        feat = feats[-1]
        avail_p = torch.sigmoid(model.avail_head(feat).float())
        avail = torch.rand_like(avail_p) < avail_p
        avail = avail | ~avail.any(-1, keepdim=True)
        logits = policy_logits(actor, feat, avail)
        logp_all = F.log_softmax(logits, -1)
        action = sample_actions(logits)
        state = model.img_step(state, F.one_hot(action, model.n_actions).to(feat.dtype))
        nfeat = state.feat()
        feats.append(nfeat)
        actions.append(action)
        logps.append(logp_all.gather(-1, action[..., None]).squeeze(-1))
        avails.append(avail)
        rewards.append(model.reward_head(nfeat).squeeze(-1).float())
        conts.append(torch.sigmoid(model.cont_head(nfeat).squeeze(-1).float()))
    return {"feat": torch.stack(feats), "action": torch.stack(actions), "logp": torch.stack(logps),
            "avail": torch.stack(avails), "reward": torch.stack(rewards), "cont": torch.stack(conts)}


def ppo_actor_loss(actor: Actor, feat, avail, action, old_logp, adv, clip: float, ent_coef: float):
    logits = actor(feat, avail).float()
    logp, entropy = log_prob_entropy(logits, action[..., None])
    return ppo_clip_loss(logp, old_logp, adv, entropy, clip, ent_coef)
