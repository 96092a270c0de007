"""Imagination (Fig. 2, Algorithm 1 `train_agents`): roll the world model out for H steps from
observations sampled from the replay buffer, every rollout and every agent in one batch.

Per step: the actor samples a_t from the reconstructed (stacked) observations and the available-action
mask; the world model takes [x_t,K, a_t, e_t] into its KV cache (one call), predicts reward, discount and
the next mask at e_t, and decodes the K next-observation tokens one by one (K-1 further single-token
calls, each of cost one token); the tokenizer decodes them into ô_{t+1}. Nothing is recomputed.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from marie.models.actor_critic import log_prob_entropy, policy_input, sample_actions


def one_hot_last(last: torch.Tensor, n: int, dtype) -> torch.Tensor:
    """last actions [..., m] long, -1 = none -> one-hot [..., m*n] (zeros where none)."""
    oh = F.one_hot(last.clamp(min=0), n).to(dtype) * (last >= 0).unsqueeze(-1).to(dtype)
    return oh.flatten(-2)


def _ensure_one(avail: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """Where the predicted mask has no available action, allow the one the mask head rates highest."""
    none = ~avail.any(-1, keepdim=True)
    best = F.one_hot(logits.argmax(-1), avail.shape[-1]).bool()
    return avail | (none & best)


@torch.no_grad()
def imagine(tokenizer, world_model, actor, start: dict, horizon: int, obs_cfg: dict, n_choices: int,
            chunk: int = 0, greedy: bool = False, record_tokens: bool = False,
            forced_actions: torch.Tensor | None = None, recon_clamp: float | None = None) -> dict:
    """start: obs [B,N,O], stack [B,N,S-1,O] (previous reconstructed observations, zeros before the
    episode start), last [B,N,m] long (-1 = none), avail [B,N,A] bool or None.
    Returns time-major tensors: feats [H+1,B,N,F], actions [H,B,N,m], logp [H,B,N], avail [H,B,N,A] or
    None, reward [H,B,N], discount [H,B,N], recon [H+1,B,N,O] (and tokens [H+1,B,N,K] on request).
    forced_actions [H,B,N,m]: follow these actions instead of the actor's (open-loop model evaluation).
    recon_clamp: clamp every reconstruction to [-c, c] (the official code does so on SMAC-like backends, whose
    observations lie in [-1, 1]: a decoder's overshoot is not fed back to the policy and the critic)."""
    B = start["obs"].shape[0]
    chunk = chunk if chunk and chunk < B else B
    try:  # the chunks one after another, on one KV cache's memory (released at the end: no memory held between)
        parts = [_imagine_chunk(tokenizer, world_model, actor, {k: (v[i:i + chunk] if v is not None else None)
                                                                 for k, v in start.items()},
                                horizon, obs_cfg, n_choices, greedy, record_tokens,
                                None if forced_actions is None else forced_actions[:, i:i + chunk], recon_clamp)
                 for i in range(0, B, chunk)]
    finally:
        world_model.release_cache()
    if len(parts) == 1:
        return parts[0]
    return {k: (torch.cat([p[k] for p in parts], 1) if parts[0][k] is not None else None) for k in parts[0]}


def _imagine_chunk(tokenizer, wm, actor, start, horizon, obs_cfg, n_choices, greedy, record_tokens,
                   forced_actions, recon_clamp) -> dict:
    B = start["obs"].shape[0]

    def decode(tok):
        out = tokenizer.decode(tok)
        return out if recon_clamp is None else out.clamp(-recon_clamp, recon_clamp)

    tokens = tokenizer.encode(start["obs"])                                   # [B,N,K]
    recon = decode(tokens)
    stack = torch.cat([start["stack"], recon.unsqueeze(2)], 2)
    last, avail = start["last"], start["avail"]
    use_last = obs_cfg["last_action"]
    cache = wm.new_cache(B, reuse=True)
    wm.start(tokens, cache)
    feats, actions, logps, avails, rewards, discounts, recons, toks = [], [], [], [], [], [], [recon], [tokens]
    for t in range(horizon):
        feat = policy_input(stack, one_hot_last(last, n_choices, stack.dtype) if use_last else None,
                            obs_cfg["agent_id"])
        logits = actor(feat, avail)
        a = sample_actions(logits, greedy) if forced_actions is None else forced_actions[t]  # [B,N,m]
        logp, _ = log_prob_entropy(logits, a)
        out = wm.step(tokens, a, cache)
        nxt, lg = [], out["logits"]
        for k in range(wm.Ko):
            tok = sample_actions(lg)
            nxt.append(tok)
            if k < wm.Ko - 1:
                lg = wm.next_token(tok, cache)
        feats.append(feat), actions.append(a), logps.append(logp), avails.append(avail)
        rewards.append(out["reward"]), discounts.append(out["discount"])
        tokens = wm.stream_tokens_to_agents(torch.stack(nxt, -1), B)
        recon = decode(tokens)
        stack = torch.cat([stack[:, :, 1:], recon.unsqueeze(2)], 2)
        if avail is not None and out["avail_logits"] is not None:
            avail = _ensure_one(out["avail_logits"] > 0, out["avail_logits"])
        last = a
        recons.append(recon)
        if record_tokens:
            toks.append(tokens)
    feats.append(policy_input(stack, one_hot_last(last, n_choices, stack.dtype) if use_last else None,
                              obs_cfg["agent_id"]))
    result = {"feats": torch.stack(feats), "actions": torch.stack(actions), "logp": torch.stack(logps),
              "avail": torch.stack(avails) if avails[0] is not None else None, "reward": torch.stack(rewards),
              "discount": torch.stack(discounts), "recon": torch.stack(recons),
              "tokens": torch.stack(toks) if record_tokens else None}
    return result
