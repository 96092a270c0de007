"""The pymarl-style value-decomposition learner that QMIX, QPLEX and MBVD share.

One recurrent agent network (fc - GRU - fc), shared by all agents, maps an agent's observation, its last
action (one-hot) and its id (one-hot) to Q-values; a mixer (the part each algorithm chooses) combines
the chosen Q-values of all agents with the global state into Q_tot, trained by double Q-learning on
whole episodes sampled from an episode replay buffer:

    y_t = r_t + gamma * (1 - terminated_t) * Q_tot^-(s_{t+1}, argmax_a Q(tau_{t+1}, a))
    L   = sum_t mask_t (Q_tot(s_t, a_t) - y_t)^2 / sum_t mask_t

Time-limit truncations bootstrap (terminated is False there; the episode keeps the observation the
limit cut at). Target networks are copied every `target_update_interval` finished episodes.

Acting is epsilon-greedy over the available actions, epsilon annealed linearly over env steps.
Training schedule: `updates_per_episode` gradient steps per finished training episode once the buffer
holds max(`batch_size`, `burn_in_episodes`) episodes (QPLEX's reference waits for 100). The paper ran
pymarl's episode runner (1 environment, one update after each episode). With run.num_envs E > 1,
`update_cadence: episode` keeps that ratio of updates to collected episodes (one update per finished
episode, whatever E); `update_cadence: round` is pymarl's parallel runner (one update per E finished
episodes, E times fewer updates for the same data).

State scaling (`state_scaling: maxabs`): the mixer sees the state divided feature-wise by
max(1, the largest |value| seen so far in training). SMAC's state is already normalised to [-1, 1], so
this is the identity there (pymarl's behaviour); SMAX's world state holds raw positions (0..32) and
cooldowns, which make the hypernetworks' outputs and Q_tot explode without it. `none` turns it off.

Subclasses provide the mixer (`build_mixer`) and may feed it more inputs (`mixer_inputs`, MBVD).
"""
from __future__ import annotations

import copy
from abc import abstractmethod
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from marie.algorithm import Algorithm
from marie.errors import UserError
from baselines.common.episode_buffer import EpisodeBuffer, EpisodeBuilder

NEG_INF = -1e9  # fills unavailable actions before a max; finite so 0 * it stays 0


class RNNAgent(nn.Module):
    """fc(input -> H) - ReLU - GRU(H) - fc(H -> n_actions). Agents are folded into the batch dimension."""

    def __init__(self, input_dim: int, hidden_dim: int, n_actions: int):
        super().__init__()
        self.hidden_dim = hidden_dim
        self.fc1 = nn.Linear(input_dim, hidden_dim)
        self.rnn = nn.GRU(hidden_dim, hidden_dim, batch_first=True)
        self.fc2 = nn.Linear(hidden_dim, n_actions)

    def forward(self, inputs: torch.Tensor, h0: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """inputs [B, T, D], h0 [B, H] -> Q-values [B, T, A] and the hidden state after each step [B, T, H]."""
        x = F.relu(self.fc1(inputs))
        hidden, _ = self.rnn(x, None if h0 is None else h0.unsqueeze(0).contiguous())
        return self.fc2(hidden), hidden

    def q_values(self, hidden: torch.Tensor) -> torch.Tensor:
        """The Q-head alone, on hidden states of any shape [..., H]."""
        return self.fc2(hidden)


def hypernet(in_dim: int, out_dim: int, layers: int, embed: int) -> nn.Module:
    """A hypernetwork: 1 layer (linear) or 2 layers (linear - ReLU - linear with `embed` units)."""
    if layers == 1:
        return nn.Linear(in_dim, out_dim)
    if layers == 2:
        return nn.Sequential(nn.Linear(in_dim, embed), nn.ReLU(), nn.Linear(embed, out_dim))
    raise UserError(f"hypernet_layers must be 1 or 2, got {layers}")


def linear_epsilon(t: int, start: float, finish: float, anneal_time: int) -> float:
    """pymarl's linear schedule: start at t=0, finish from t=anneal_time on."""
    if anneal_time <= 0:
        return finish
    return max(finish, start - (start - finish) * t / anneal_time)


def masked_greedy(q: torch.Tensor, avail: torch.Tensor) -> torch.Tensor:
    """argmax over available actions (q [..., A], avail [..., A] bool); rows with none available: all allowed."""
    avail = avail | ~avail.any(-1, keepdim=True)
    return q.masked_fill(~avail, NEG_INF).argmax(-1)


class ValueDecompositionLearner(Algorithm):
    """Shared agent, replay, schedule and TD loss; the mixer comes from the subclass."""

    action_spaces = ("discrete",)

    # -- what subclasses provide ---------------------------------------------------------------------
    @abstractmethod
    def build_mixer(self) -> nn.Module:
        """The mixer: forward(agent_qs [B,T,N], states [B,T,S], *, obs, actions_onehot, max_qs, **extra) -> [B,T]."""

    def build_extra(self) -> nn.Module | None:
        """Further trained modules that have no target copy (MBVD's latent model)."""
        return None

    def mixer_inputs(self, batch: dict, hidden: torch.Tensor) -> tuple[dict, dict, torch.Tensor | None, dict]:
        """Extra keyword inputs of the online mixer (steps 0..T-1) and of the target mixer (steps 1..T),
        an auxiliary loss added to the TD loss, and metrics. hidden: the agents' GRU states [B, T+1, N, H]."""
        return {}, {}, None, {}

    def mixer_diagnostics(self, q_tot: torch.Tensor, mixer_args: dict, mask: torch.Tensor) -> dict:
        """Metrics about this update's mixer, computed without gradients (MBVD: the rollout's effect)."""
        return {}

    # -- construction --------------------------------------------------------------------------------
    def __init__(self, env_info, params, run, device, seed):
        super().__init__(env_info, params, run, device, seed)
        if env_info.continuous:
            raise UserError(f"{type(self).__name__} needs discrete actions")
        p = params
        self.n_agents, self.n_actions = env_info.n_agents, env_info.n_actions
        self.obs_dim, self.state_dim = env_info.obs_dim, env_info.state_dim
        self.input_dim = self.obs_dim + (self.n_actions if p["obs_last_action"] else 0) + \
            (self.n_agents if p["obs_agent_id"] else 0)
        self.agent = RNNAgent(self.input_dim, p["rnn_hidden_dim"], self.n_actions)
        self.mixer = self.build_mixer()
        self.extra = self.build_extra()
        for module in (self.agent, self.mixer, self.extra):
            if module is not None:
                module.to(device=device, dtype=self.dtype)
        self.target_agent = copy.deepcopy(self.agent).requires_grad_(False)
        self.target_mixer = copy.deepcopy(self.mixer).requires_grad_(False)
        self.params_list = list(self.agent.parameters()) + list(self.mixer.parameters()) + \
            (list(self.extra.parameters()) if self.extra is not None else [])
        if p["optimizer"] != "rmsprop":
            raise UserError(f"optimizer must be rmsprop (pymarl), got {p['optimizer']!r}")
        self.optimizer = torch.optim.RMSprop(self.params_list, lr=p["lr"], alpha=p["rmsprop_alpha"],
                                             eps=p["rmsprop_eps"])
        self.builder = EpisodeBuilder(run["num_envs"], self.n_agents, self.obs_dim, self.state_dim, self.n_actions,
                                      env_info.episode_limit + 1)
        self.buffer = EpisodeBuffer(p["buffer_size"])
        self.rng = np.random.default_rng(seed)
        self.t_env = 0              # training env steps observed (drives epsilon)
        self.episodes = 0           # finished training episodes
        self.train_steps = 0
        self.last_target_update = 0  # episode count at the last target copy
        self.update_credit = 0.0     # gradient steps owed
        if p["update_cadence"] not in ("episode", "round"):
            raise UserError(f"update_cadence must be episode or round, got {p['update_cadence']!r}")
        if p["state_scaling"] not in ("maxabs", "none"):
            raise UserError(f"state_scaling must be maxabs or none, got {p['state_scaling']!r}")
        self.state_maxabs = np.ones(self.state_dim, np.float32)  # running max(1, |state|) per feature

    # -- acting --------------------------------------------------------------------------------------
    def initial_carry(self, num_envs: int) -> Any:
        return {"h": torch.zeros(num_envs, self.n_agents, self.agent.hidden_dim, dtype=self.dtype),
                "last_action": np.full((num_envs, self.n_agents), -1, np.int64)}

    def epsilon(self) -> float:
        p = self.params
        return linear_epsilon(self.t_env, p["epsilon_start"], p["epsilon_finish"], p["epsilon_anneal_time"])

    def agent_inputs(self, obs: torch.Tensor, last_onehot: torch.Tensor) -> torch.Tensor:
        """obs [..., N, O], last action one-hot [..., N, A] -> inputs [..., N, D]."""
        parts = [obs]
        if self.params["obs_last_action"]:
            parts.append(last_onehot)
        if self.params["obs_agent_id"]:
            eye = torch.eye(self.n_agents, device=obs.device, dtype=obs.dtype)
            parts.append(eye.expand(*obs.shape[:-1], self.n_agents))
        return torch.cat(parts, -1)

    def act(self, ts, carry, training, greedy=True):
        E, N = ts.obs.shape[:2]
        first = np.asarray(ts.first, bool)
        h = carry["h"].to(self.device)
        last = carry["last_action"].copy()
        if first.any():
            h = h.clone()
            h[torch.tensor(first, device=self.device)] = 0
            last[first] = -1
        with torch.no_grad():
            obs = torch.tensor(ts.obs, device=self.device, dtype=self.dtype)
            last_t = torch.as_tensor(last, device=self.device)
            onehot = F.one_hot(last_t.clamp(min=0), self.n_actions).to(self.dtype) * (last_t >= 0).unsqueeze(-1)
            inputs = self.agent_inputs(obs, onehot).reshape(E * N, 1, -1)
            q, hidden = self.agent(inputs, h.reshape(E * N, -1))
            avail = torch.tensor(ts.avail, device=self.device, dtype=torch.bool)
            best = masked_greedy(q.reshape(E, N, -1), avail).cpu().numpy()
        actions = best
        if training or not greedy:  # sampled evaluation: epsilon-greedy at the current epsilon
            actions = self.epsilon_greedy(best, np.asarray(ts.avail, bool), self.epsilon())
        return actions, {"h": hidden.reshape(E, N, -1), "last_action": actions.astype(np.int64)}

    def epsilon_greedy(self, greedy: np.ndarray, avail: np.ndarray, epsilon: float) -> np.ndarray:
        """Per agent: with probability epsilon a uniform available action, else the greedy one."""
        avail = avail | ~avail.any(-1, keepdims=True)
        random_actions = (self.rng.random(avail.shape) * avail).argmax(-1)
        explore = self.rng.random(greedy.shape) < epsilon
        return np.where(explore, random_actions, greedy)

    # -- collecting ----------------------------------------------------------------------------------
    def observe(self, ts, actions, ts_next):
        self.t_env += len(actions)
        if self.params["state_scaling"] == "maxabs":
            seen = np.maximum(np.abs(ts.state).max(0), np.abs(ts_next.next_state).max(0))
            np.maximum(self.state_maxabs, seen, out=self.state_maxabs)
        for episode in self.builder.add(ts, actions, ts_next):
            self.buffer.add(episode)
            self.episodes += 1
            p = self.params
            if self.buffer.can_sample(max(p["batch_size"], p["burn_in_episodes"])):
                per_round = self.run["num_envs"] if p["update_cadence"] == "round" else 1
                self.update_credit += p["updates_per_episode"] / per_round

    def update(self, env_steps):
        while self.update_credit >= 1.0:
            self.update_credit -= 1.0
            yield self.train_step()

    # -- learning ------------------------------------------------------------------------------------
    def _tensors(self, batch: dict) -> dict:
        out = {}
        for key, value in batch.items():
            if value.dtype == np.bool_ or key in ("actions", "lengths"):
                out[key] = torch.as_tensor(value, device=self.device)
            else:
                out[key] = torch.as_tensor(value, device=self.device, dtype=self.dtype)
        return out

    def unroll(self, agent: RNNAgent, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """Q-values [B, T+1, N, A] and GRU states [B, T+1, N, H] of every agent over whole episodes."""
        obs, actions = batch["obs"], batch["actions"]
        B, T1, N, _ = obs.shape
        onehot = F.one_hot(actions, self.n_actions).to(obs.dtype)  # [B, T, N, A]
        last = torch.cat([torch.zeros_like(onehot[:, :1]), onehot], 1)  # action before each step
        inputs = self.agent_inputs(obs, last).permute(0, 2, 1, 3).reshape(B * N, T1, -1)
        q, hidden = agent(inputs)
        q = q.reshape(B, N, T1, -1).permute(0, 2, 1, 3)
        hidden = hidden.reshape(B, N, T1, -1).permute(0, 2, 1, 3)
        return q, hidden

    def train_step(self) -> dict:
        p = self.params
        batch = self._tensors(self.buffer.sample(p["batch_size"], self.rng))
        batch["state"] = batch["state"] / torch.as_tensor(self.state_maxabs, device=self.device, dtype=self.dtype)
        actions, avail, mask = batch["actions"], batch["avail"], batch["mask"]
        onehot = F.one_hot(actions, self.n_actions).to(self.dtype)
        with self.autocast():
            q, hidden = self.unroll(self.agent, batch)
            chosen = q[:, :-1].gather(-1, actions.unsqueeze(-1)).squeeze(-1)              # [B, T, N]
            q_avail = q.detach().masked_fill(~avail, NEG_INF)
            max_q = q_avail[:, :-1].max(-1).values                                          # V_i for QPLEX
            with torch.no_grad():
                target_q, _ = self.unroll(self.target_agent, batch)
                target_q = target_q[:, 1:]
                if p["double_q"]:
                    next_actions = q_avail[:, 1:].argmax(-1)
                else:
                    next_actions = target_q.masked_fill(~avail[:, 1:], NEG_INF).argmax(-1)
                target_chosen = target_q.gather(-1, next_actions.unsqueeze(-1)).squeeze(-1)
                target_max = target_q.masked_fill(~avail[:, 1:], NEG_INF).max(-1).values
            extra_online, extra_target, aux_loss, aux_metrics = self.mixer_inputs(batch, hidden)
            q_tot = self.mixer(chosen, batch["state"][:, :-1], obs=batch["obs"][:, :-1], actions_onehot=onehot,
                               max_qs=max_q, **extra_online)
            with torch.no_grad():
                target_tot = self.target_mixer(
                    target_chosen, batch["state"][:, 1:], obs=batch["obs"][:, 1:],
                    actions_onehot=F.one_hot(next_actions, self.n_actions).to(self.dtype), max_qs=target_max,
                    **extra_target)
                y = batch["reward"] + p["gamma"] * (1 - batch["terminated"].to(self.dtype)) * target_tot
        td = (q_tot.float() - y.float()) * mask
        n_real = mask.sum()
        loss_td = (td ** 2).sum() / n_real
        loss = loss_td if aux_loss is None else loss_td + aux_loss.float()
        penalty = getattr(self.mixer, "penalty", None)  # QPLEX's attention-logit regulariser
        if penalty is not None:
            loss = loss + penalty.float()
        with torch.no_grad():
            aux_metrics = {**aux_metrics, **self.mixer_diagnostics(q_tot.detach(), dict(
                agent_qs=chosen.detach(), states=batch["state"][:, :-1], obs=batch["obs"][:, :-1],
                actions_onehot=onehot, max_qs=max_q, **extra_online), mask)}
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = nn.utils.clip_grad_norm_(self.params_list, p["grad_clip"])
        self.optimizer.step()
        self.train_steps += 1
        if (self.episodes - self.last_target_update) / p["target_update_interval"] >= 1.0:
            self.update_targets()
            self.last_target_update = self.episodes
        names = ["loss", "loss_td", "grad_norm", "q_taken_mean", "target_mean", "td_abs_mean"]
        values = [loss, loss_td, grad_norm, (chosen.detach() * mask.unsqueeze(-1)).sum() / (n_real * self.n_agents),
                  (y * mask).sum() / n_real, td.detach().abs().sum() / n_real]
        if penalty is not None:
            names.append("loss_attend_reg")
            values.append(penalty.detach())
        names += list(aux_metrics)
        values += [v.detach().float() if torch.is_tensor(v) else torch.tensor(float(v)) for v in aux_metrics.values()]
        numbers = torch.stack([torch.as_tensor(v, dtype=torch.float32, device=self.device).detach().reshape(())
                               for v in values]).tolist()  # one host sync per update
        metrics = dict(zip(names, numbers))
        metrics.update(epsilon=self.epsilon(), episodes=self.episodes, buffer_episodes=len(self.buffer))
        return metrics

    def update_targets(self) -> None:
        self.target_agent.load_state_dict(self.agent.state_dict())
        self.target_mixer.load_state_dict(self.mixer.state_dict())

    # -- checkpoints ---------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {
            "agent": self.agent.state_dict(), "mixer": self.mixer.state_dict(),
            "extra": self.extra.state_dict() if self.extra is not None else None,
            "target_agent": self.target_agent.state_dict(), "target_mixer": self.target_mixer.state_dict(),
            "optimizer": self.optimizer.state_dict(), "buffer": self.buffer.state_dict(),
            "builder": self.builder.state_dict(), "rng": self.rng.bit_generator.state,
            "counters": {"t_env": self.t_env, "episodes": self.episodes, "train_steps": self.train_steps,
                         "last_target_update": self.last_target_update, "update_credit": self.update_credit},
            "state_maxabs": self.state_maxabs.copy(),
        }

    def load_state_dict(self, state: dict) -> None:
        self.agent.load_state_dict(state["agent"])
        self.mixer.load_state_dict(state["mixer"])
        if self.extra is not None:
            self.extra.load_state_dict(state["extra"])
        self.target_agent.load_state_dict(state["target_agent"])
        self.target_mixer.load_state_dict(state["target_mixer"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.buffer.load_state_dict(state["buffer"])
        self.builder.load_state_dict(state["builder"])
        self.rng.bit_generator.state = state["rng"]
        for key, value in state["counters"].items():
            setattr(self, key, value)
        self.state_maxabs = np.asarray(state["state_maxabs"], np.float32).copy()
