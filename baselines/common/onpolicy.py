"""The on-policy core shared by MAPPO and HAPPO: rollout storage, GAE, ValueNorm, the PPO losses, recurrent
chunking, and an `OnPolicyAlgorithm` base class that acts, observes and trains the critic.

A subclass only builds its actor(s) (`_build_actors`), says how to run them for acting (`_actor_step`) and how to
update them from a prepared batch (`_update_actors`). Everything else lives here.

Data layout: a rollout is `rollout_length` (T) steps of E environments and N agents, stored as [T, E, ...].
For recurrent actors it is cut into chunks of `chunk_length` (L) steps: [L, B = (T/L)*E, ...], each chunk
starting from the GRU hidden state recorded while acting (zeroed inside a chunk where an episode starts).
Mini-batches are drawn over chunks.

Critic (`critic_input`): `agent_state` is the reference's SMAC setting (rMAPPO): one value per agent from an
agent-specific global state [state, the agent's observation, its one-hot id], state and observation zeroed
while the agent is dead (death masking), the value loss masked to alive agents (`value_active_masks`);
`state` is V(s), one value per environment (HAPPO's EP state). `critic_recurrent` adds a GRU; the critic's
values are recomputed over the whole rollout at update time from the critic's hidden state at the rollout's
start (the critic has not changed since acting), so acting stores none.
"""
from __future__ import annotations

from abc import abstractmethod
from typing import Iterable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from marie.algorithm import Algorithm
from marie.envs.base import TimeStep
from marie.errors import UserError

from baselines.common.networks import Critic, log_prob_entropy, masked_logits


# -- returns ---------------------------------------------------------------------------------------
def compute_gae(reward, value, next_value, terminated, done, gamma: float, lam: float):
    """Generalised advantage estimation over [T, ...] arrays.

    value[t] = V(s_t); next_value[t] = V of the state the transition t really reached (before any auto-reset).
    terminated[t]: the episode ended for real (no bootstrap). done[t] = terminated | truncated: the trace is cut,
    so a time-limit truncation bootstraps from next_value[t] and nothing after it leaks in. The last step of the
    rollout bootstraps from next_value[T-1] as well. Returns (advantages, returns = advantages + value).
    """
    not_term = 1.0 - terminated.to(value.dtype)
    not_done = 1.0 - done.to(value.dtype)
    delta = reward + gamma * not_term * next_value - value
    adv = torch.zeros_like(value)
    running = torch.zeros_like(value[0])
    for t in reversed(range(value.shape[0])):
        running = delta[t] + gamma * lam * not_done[t] * running
        adv[t] = running
    return adv, adv + value


class ValueNorm(nn.Module):
    """Running mean/std of the value targets (debiased exponential averages, as in the MAPPO reference):
    the critic predicts normalised values, targets are normalised, predictions are denormalised for GAE."""

    def __init__(self, beta: float, epsilon: float, var_min: float):
        super().__init__()
        self.beta, self.epsilon, self.var_min = beta, epsilon, var_min
        self.register_buffer("mean", torch.zeros((), dtype=torch.float64))
        self.register_buffer("mean_sq", torch.zeros((), dtype=torch.float64))
        self.register_buffer("debias", torch.zeros((), dtype=torch.float64))

    def stats(self) -> tuple[torch.Tensor, torch.Tensor]:
        debias = self.debias.clamp(min=self.epsilon)
        mean, mean_sq = self.mean / debias, self.mean_sq / debias
        return mean, (mean_sq - mean ** 2).clamp(min=self.var_min)

    @torch.no_grad()
    def update(self, x: torch.Tensor) -> None:
        x = x.detach().to(torch.float64)
        self.mean.mul_(self.beta).add_((1 - self.beta) * x.mean())
        self.mean_sq.mul_(self.beta).add_((1 - self.beta) * (x ** 2).mean())
        self.debias.mul_(self.beta).add_(1 - self.beta)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        mean, var = self.stats()
        return ((x.to(torch.float64) - mean) / var.sqrt()).to(x.dtype)

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        mean, var = self.stats()
        return (x.to(torch.float64) * var.sqrt() + mean).to(x.dtype)


def huber(x: torch.Tensor, delta: float) -> torch.Tensor:
    return F.huber_loss(x, torch.zeros_like(x), reduction="none", delta=delta)


def clipped_value_loss(v, v_old, target, clip: float, delta: float) -> torch.Tensor:
    """max(huber(target - v), huber(target - v_clipped)) with v_clipped within `clip` of the rollout's value."""
    v_clipped = v_old + (v - v_old).clamp(-clip, clip)
    return torch.max(huber(target - v, delta), huber(target - v_clipped, delta))


def ppo_surrogate(logp, logp_old, adv, clip: float, factor=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Clipped surrogate objective per sample (to maximise) and the ratio; `factor` (HAPPO's compounded M) scales
    it outside the min."""
    ratio = (logp - logp_old).exp()
    surr = torch.min(ratio * adv, ratio.clamp(1 - clip, 1 + clip) * adv)
    return (surr if factor is None else factor * surr), ratio


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    mask = mask.to(x.dtype)
    return (x * mask).sum() / mask.sum().clamp(min=1.0)


def to_chunks(x: torch.Tensor, chunk: int) -> torch.Tensor:
    """[T, E, ...] -> [L, (T/L)*E, ...]: consecutive L-step pieces of every environment's trajectory."""
    T, E = x.shape[:2]
    return x.reshape(T // chunk, chunk, E, *x.shape[2:]).transpose(0, 1).reshape(chunk, (T // chunk) * E, *x.shape[2:])


def from_chunks(x: torch.Tensor, T: int, E: int) -> torch.Tensor:
    L = x.shape[0]
    return x.reshape(L, T // L, E, *x.shape[2:]).transpose(0, 1).reshape(T, E, *x.shape[2:])


# -- storage ---------------------------------------------------------------------------------------
class RolloutBuffer:
    """Fixed-size on-policy storage [T, E, ...]; `add` one step of every environment, `full` after T steps."""

    def __init__(self, T: int, E: int, specs: dict[str, tuple[tuple, torch.dtype]]):
        self.T, self.E = T, E
        self.data = {k: torch.zeros((T, E, *shape), dtype=dt) for k, (shape, dt) in specs.items()}
        self.t = 0

    @property
    def full(self) -> bool:
        return self.t >= self.T

    def add(self, **step) -> None:
        for k, v in step.items():
            self.data[k][self.t] = torch.as_tensor(np.array(v) if isinstance(v, np.ndarray) else v, dtype=self.data[k].dtype)
        self.t += 1

    def clear(self) -> None:
        self.t = 0

    def state_dict(self) -> dict:
        return {"t": self.t, "data": {k: v[: self.t].clone() for k, v in self.data.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.t = state["t"]
        for k, v in state["data"].items():
            self.data[k][: self.t] = v


# -- the algorithm skeleton ----------------------------------------------------------------------------
class OnPolicyAlgorithm(Algorithm):
    """Acting, storage, GAE and the critic; subclasses supply the actor(s)."""

    action_spaces = ("discrete", "continuous")

    @classmethod
    def validate(cls, params, run, n_agents):
        recurrent = params["recurrent"] or params["critic_recurrent"]
        T, L = int(params["rollout_length"]), int(params["chunk_length"]) if recurrent else 1
        if T % L:
            raise UserError(f"params.rollout_length ({T}) must be a multiple of params.chunk_length ({L})")
        if params["critic_input"] not in ("state", "agent_state"):
            raise UserError(f"params.critic_input must be state or agent_state, got {params['critic_input']!r}")

    def __init__(self, env_info, params, run, device, seed):
        super().__init__(env_info, params, run, device, seed)
        p, info = self.params, env_info
        self.validate(p, run, info.n_agents)
        self.N, self.A, self.continuous = info.n_agents, info.n_actions, info.continuous
        self.T, self.E = int(p["rollout_length"]), int(run["num_envs"])
        self.L = int(p["chunk_length"]) if p["recurrent"] or p["critic_recurrent"] else 1
        self.H = int(p["hidden"])
        self.stack = int(p["stacked_frames"])
        self.last_action = bool(p["last_action"]) and not self.continuous  # SMAC: the last action is observed
        self.in_dim = info.obs_dim * self.stack + (self.A if self.last_action else 0) + (self.N if p["agent_id"] else 0)
        self.agent_critic = p["critic_input"] == "agent_state"
        self.Nc = self.N if self.agent_critic else 1  # values per environment
        if self.continuous:  # agents with fewer action dimensions than the widest are padded: mask those out
            dims = info.extra.get("agent_action_dims") or [self.A] * self.N
            self.dim_mask = (torch.arange(self.A)[None, :] < torch.tensor(dims)[:, None]).to(self.device, self.dtype)
            self.low = torch.tensor(info.action_low, dtype=self.dtype)
            self.high = torch.tensor(info.action_high, dtype=self.dtype)
        else:
            self.dim_mask = None
        self.agent_ids = torch.eye(self.N, dtype=self.dtype)
        self._build_actors()
        critic_in = info.state_dim + (info.obs_dim + self.N if self.agent_critic else 0)
        self.critic = Critic(critic_in, hidden=self.H, layers=p["layers"], feature_norm=p["feature_norm"],
                             head_gain=p["value_gain"], recurrent=p["critic_recurrent"]).to(self.device, self.dtype)
        self.critic_h = torch.zeros(self.E, self.Nc, self.H, dtype=self.dtype)  # entering the next rollout
        self.critic_opt = torch.optim.Adam(self.critic.parameters(), lr=p["critic_lr"], eps=p["adam_eps"],
                                           weight_decay=p["weight_decay"])
        self.value_norm = ValueNorm(p["value_norm_beta"], p["value_norm_epsilon"], p["value_norm_var_min"])
        act_shape = ((self.N, self.A), self.dtype) if self.continuous else ((self.N,), torch.long)
        self.buffer = RolloutBuffer(self.T, self.E, {
            "x": ((self.N, self.in_dim), self.dtype), "h": ((self.N, self.H), self.dtype), "action": act_shape,
            "logp": ((self.N,), self.dtype), "avail": ((self.N, self.A), torch.bool), "active": ((self.N,), torch.bool),
            "first": ((), torch.bool), "state": ((info.state_dim,), self.dtype),
            "next_state": ((info.state_dim,), self.dtype), "obs": ((self.N, info.obs_dim), self.dtype),
            "next_obs": ((self.N, info.obs_dim), self.dtype), "next_alive": ((self.N,), torch.bool),
            "reward": ((), self.dtype),
            "terminated": ((), torch.bool), "done": ((), torch.bool)})
        self.updates = 0
        self._last = None

    # -- subclass hooks ------------------------------------------------------------------------------
    @abstractmethod
    def _build_actors(self) -> None:
        """Create the actor network(s) and their optimiser(s)."""

    @abstractmethod
    def _actor_step(self, x: torch.Tensor, h: torch.Tensor):
        """One acting step of every agent: x [E, N, in], h [E, N, H] -> (out, log_std, h')."""

    @abstractmethod
    def _update_actors(self, batch: dict) -> dict:
        """PPO epochs on the actor(s) from a chunked batch (see `_prepare`); return metrics."""

    @abstractmethod
    def _actor_state(self) -> dict: ...

    @abstractmethod
    def _load_actor_state(self, state: dict) -> None: ...

    def _actor_kwargs(self) -> dict:
        p = self.params
        return dict(hidden=self.H, layers=p["layers"], recurrent=p["recurrent"], feature_norm=p["feature_norm"],
                    head_gain=p["policy_gain"], continuous=self.continuous, log_std_init=p["log_std_init"])

    def _adam(self, params) -> torch.optim.Adam:
        p = self.params
        return torch.optim.Adam(params, lr=p["lr"], eps=p["adam_eps"], weight_decay=p["weight_decay"])

    # -- acting --------------------------------------------------------------------------------------
    def initial_carry(self, num_envs: int) -> dict:
        return {"h": torch.zeros(num_envs, self.N, self.H, dtype=self.dtype),
                "frames": torch.zeros(num_envs, self.N, self.stack, self.env_info.obs_dim, dtype=self.dtype),
                "last_action": torch.full((num_envs, self.N), -1, dtype=torch.long)}

    def act(self, ts: TimeStep, carry: dict, training: bool, greedy: bool = True):
        keep = torch.as_tensor(~ts.first, dtype=self.dtype)  # zero the carry where an episode starts
        h = carry["h"] * keep[:, None, None]
        obs = torch.tensor(ts.obs, dtype=self.dtype)
        frames = torch.cat([carry["frames"][:, :, 1:] * keep[:, None, None, None], obs[:, :, None]], 2)
        x = frames.flatten(2)
        if self.last_action:  # one-hot of the previous action, zeros at an episode's first step
            last = carry["last_action"].masked_fill(keep[:, None] == 0, -1)
            x = torch.cat([x, F.one_hot(last.clamp(min=0), self.A).to(x.dtype) * (last >= 0).unsqueeze(-1)], -1)
        if self.params["agent_id"]:
            x = torch.cat([x, self.agent_ids.expand(x.shape[0], -1, -1)], -1)
        avail = torch.tensor(ts.avail, device=self.device)
        with torch.no_grad():
            out, log_std, h_next = self._actor_step(x.to(self.device), h.to(self.device))
            sample = training or not greedy
            if self.continuous:
                action = out + log_std.exp() * torch.randn_like(out) if sample else out
            elif sample:
                action = torch.distributions.Categorical(logits=masked_logits(out, avail), validate_args=False).sample()
            else:
                action = masked_logits(out, avail).argmax(-1)
            if training:
                logp, _ = log_prob_entropy(out, log_std, action, avail, self.dim_mask, self.continuous)
                self._last = {"x": x, "h": h, "action": action.cpu(), "logp": logp.cpu()}
        action, h_next = action.cpu(), h_next.cpu()
        if self.continuous:
            env_action = torch.max(torch.min(action, self.high), self.low).numpy().astype(np.float32)
        else:
            env_action = action.numpy()
        last_action = carry["last_action"] if self.continuous else action.long()
        return env_action, {"h": h_next, "frames": frames, "last_action": last_action}

    def observe(self, ts: TimeStep, actions, ts_next: TimeStep) -> None:
        last, self._last = self._last, None
        self.buffer.add(**last, avail=ts.avail, active=ts.alive | ts.first[:, None], first=ts.first,
                        state=ts.state, next_state=ts_next.next_state, obs=ts.obs, next_obs=ts_next.next_obs,
                        next_alive=ts_next.alive, reward=ts_next.reward,
                        terminated=ts_next.terminated, done=ts_next.done)

    # -- training ------------------------------------------------------------------------------------
    def update(self, env_steps: int) -> Iterable[dict]:
        if not self.buffer.full:
            return
        metrics = self._train()
        self.buffer.clear()
        self.updates += 1
        yield metrics

    def _critic_input(self, state: torch.Tensor, obs: torch.Tensor, alive: torch.Tensor) -> torch.Tensor:
        """state [..., S], obs [..., N, O], alive [..., N] -> the critic's input [..., Nc, D]."""
        if not self.agent_critic:
            return state.unsqueeze(-2)
        lead = obs.shape[:-1]
        keep = alive.unsqueeze(-1).to(obs.dtype) if self.params["death_masking"] else torch.ones_like(obs[..., :1])
        ids = self.agent_ids.to(obs.device).expand(*lead, self.N)
        return torch.cat([state.unsqueeze(-2).expand(*lead, state.shape[-1]) * keep, obs * keep, ids], -1)

    def _denorm(self, v: torch.Tensor) -> torch.Tensor:
        return self.value_norm.denormalize(v) if self.params["value_norm"] else v

    def _prepare(self) -> dict:
        """Critic pass over the rollout, GAE per value head, value-target normalisation, advantage normalisation,
        chunking."""
        p, d = self.params, {k: v.to(self.device) for k, v in self.buffer.data.items()}
        with torch.no_grad():
            cx = self._critic_input(d["state"], d["obs"], d["active"])                  # [T, E, Nc, D]
            next_cx = self._critic_input(d["next_state"], d["next_obs"], d["next_alive"])
            cfirst = d["first"][..., None].expand(-1, -1, self.Nc)
            h0 = self.critic_h.to(self.device)
            v_old, h_after = self.critic.forward_seq(cx, h0, cfirst)                     # [T, E, Nc], [.., H]
            next_v, _ = self.critic(next_cx, h_after)  # V of the state each transition reached, its own history
            value, next_value = self._denorm(v_old), self._denorm(next_v)
            per_head = lambda x: x[..., None].expand(-1, -1, self.Nc)  # noqa: E731  team quantities per value
            adv, ret = compute_gae(per_head(d["reward"]), value, next_value, per_head(d["terminated"]),
                                   per_head(d["done"]), p["gamma"], p["gae_lambda"])
            if p["value_norm"]:
                self.value_norm.update(ret)
            adv = adv.expand(-1, -1, self.N)  # V(s): the team advantage for every agent; else each agent's own
            if p["advantage_norm"]:
                mean = masked_mean(adv, d["active"])
                std = masked_mean((adv - mean) ** 2, d["active"]).sqrt()
                adv = (adv - mean) / (std + 1e-5)
            h_before = torch.cat([h0[None], h_after[:-1]])                                # entering each step
            self.critic_h = h_after[-1].cpu()
        value_mask = d["active"] if self.agent_critic and p["value_active_masks"] else torch.ones_like(cfirst)
        d["first"] = d["first"][..., None].expand(-1, -1, self.N)  # per agent, like every other actor input
        batch = {k: to_chunks(d[k], self.L) for k in ("x", "action", "logp", "avail", "active", "first")}
        batch["adv"] = to_chunks(adv, self.L)
        batch["h0"] = d["h"][:: self.L].reshape(-1, self.N, self.H)  # hidden state at each chunk's start
        batch.update(cx=to_chunks(cx, self.L), cfirst=to_chunks(cfirst, self.L), v_old=to_chunks(v_old, self.L),
                     ret=to_chunks(ret, self.L), value_mask=to_chunks(value_mask, self.L),
                     ch0=h_before[:: self.L].reshape(-1, self.Nc, self.H))
        stats = {"adv_raw_mean": float((ret - value).mean()), "return_mean": float(ret.mean()),
                 "value_mean": float(value.mean())}
        return batch, stats

    def _minibatches(self, n: int) -> list[torch.Tensor]:
        return torch.randperm(n).to(self.device).chunk(int(self.params["num_mini_batch"]))

    def _actor_loss(self, out, log_std, batch, idx, factor=None, agent=None):
        """PPO actor loss on the chunks `idx` (of all agents, or of one agent)."""
        sel = (lambda k: batch[k][:, idx]) if agent is None else (lambda k: batch[k][:, idx, agent])
        dim_mask = self.dim_mask if agent is None or self.dim_mask is None else self.dim_mask[agent]
        logp, entropy = log_prob_entropy(out, log_std, sel("action"), sel("avail"), dim_mask, self.continuous)
        surr, ratio = ppo_surrogate(logp, sel("logp"), sel("adv"), self.params["clip"], factor)
        active = sel("active") if self.params["policy_active_masks"] else torch.ones_like(sel("active"))
        policy_loss = -masked_mean(surr, active)
        entropy = masked_mean(entropy, active)
        loss = policy_loss - self.params["entropy_coef"] * entropy
        with torch.no_grad():
            kl = masked_mean((ratio - 1) - (logp - sel("logp")), active)  # the k3 estimator of KL(old || new)
            clipped = masked_mean(((ratio - 1).abs() > self.params["clip"]).to(ratio.dtype), active)
        # detached tensors: averaged and read once per update, not synced per minibatch
        return loss, {"policy_loss": policy_loss.detach(), "entropy": entropy.detach(), "approx_kl": kl,
                      "clip_frac": clipped}

    def _step(self, opt: torch.optim.Optimizer, params, loss: torch.Tensor) -> torch.Tensor:
        opt.zero_grad(set_to_none=True)
        loss.backward()
        norm = nn.utils.clip_grad_norm_(params, self.params["grad_clip"])
        opt.step()
        return norm.detach()

    def _update_critic(self, batch: dict) -> dict:
        p = self.params
        target = self.value_norm.normalize(batch["ret"]) if p["value_norm"] else batch["ret"]
        clip = p["value_clip"] if p["value_clip"] is not None else p["clip"]
        epochs = p["critic_epochs"] if p["critic_epochs"] is not None else p["ppo_epochs"]
        logs = []
        for _ in range(epochs):
            for idx in self._minibatches(batch["cx"].shape[1]):
                v, _ = self.critic.forward_seq(batch["cx"][:, idx], batch["ch0"][idx], batch["cfirst"][:, idx])
                loss = masked_mean(clipped_value_loss(v, batch["v_old"][:, idx], target[:, idx], clip, p["huber_delta"]),
                                   batch["value_mask"][:, idx])
                norm = self._step(self.critic_opt, self.critic.parameters(), p["value_coef"] * loss)
                logs.append(torch.stack([loss.detach(), norm]))
        value_loss, grad_norm = torch.stack(logs).mean(0).tolist()  # one host sync per update
        return {"value_loss": value_loss, "critic_grad_norm": grad_norm}

    def _train(self) -> dict:
        batch, stats = self._prepare()
        metrics = self._update_actors(batch)
        metrics.update(self._update_critic(batch))
        return {**metrics, **stats}

    # -- checkpoints ---------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"actor": self._actor_state(), "critic": self.critic.state_dict(),
                "critic_opt": self.critic_opt.state_dict(), "value_norm": self.value_norm.state_dict(),
                "buffer": self.buffer.state_dict(), "updates": self.updates, "critic_h": self.critic_h.clone()}

    def load_state_dict(self, state: dict) -> None:
        self._load_actor_state(state["actor"])
        self.critic.load_state_dict(state["critic"])
        self.critic_opt.load_state_dict(state["critic_opt"])
        self.value_norm.load_state_dict(state["value_norm"])
        self.buffer.load_state_dict(state["buffer"])
        self.updates = state["updates"]
        self.critic_h = state["critic_h"].clone()
