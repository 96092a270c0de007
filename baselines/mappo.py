"""MAPPO (Yu et al. 2022, "The Surprising Effectiveness of PPO in Cooperative Multi-Agent Games").

One actor shared by all agents (a one-hot agent id appended to its input where params.agent_id, and on SMAC-like
backends the one-hot last action, as the reference's SMAC observations carry it), recurrent (MLP + GRU, trained
on chunks of params.chunk_length steps) or MLP as the reference picks per map; GAE; PPO clipping; clipped Huber
value loss on ValueNorm-normalised returns. Discrete actions use a categorical over the available actions;
continuous ones (MaMuJoCo) a Gaussian with a state-independent log-std, sampled actions clipped to the bounds.

Critic: the reference's SMAC setting by default (rMAPPO with use_state_agent): a recurrent critic on an
agent-specific global state (the state, the agent's own observation, its one-hot id; zeros but the id while the
agent is dead), one value per agent, the value loss masked to alive agents. `critic_input: state` gives one
V(s) per environment (MaMuJoCo's default). The shared machinery is in baselines/common/onpolicy.py; the
hyperparameters, with the reference's per-map choices, in configs/mappo.yaml; docs/onpolicy.md.
"""
from __future__ import annotations

from pathlib import Path

from baselines.common.networks import Actor
from baselines.common.onpolicy import OnPolicyAlgorithm


class MAPPO(OnPolicyAlgorithm):
    preset_file = Path(__file__).parent / "configs" / "mappo.yaml"

    def _build_actors(self) -> None:
        n_out = self.A
        self.actor = Actor(self.in_dim, n_out, **self._actor_kwargs()).to(self.device, self.dtype)
        self.actor_opt = self._adam(self.actor.parameters())

    def _actor_step(self, x, h):
        return self.actor(x, h)  # agents are one more batch dimension of the shared actor

    def _update_actors(self, batch: dict) -> dict:
        logs = []
        for _ in range(self.params["ppo_epochs"]):
            for idx in self._minibatches(batch["x"].shape[1]):
                out, log_std = self.actor.forward_seq(batch["x"][:, idx], batch["h0"][idx], batch["first"][:, idx])
                loss, log = self._actor_loss(out, log_std, batch, idx)
                log["actor_grad_norm"] = self._step(self.actor_opt, self.actor.parameters(), loss)
                logs.append(log)
        return {k: float(sum(l[k] for l in logs) / len(logs)) for k in logs[0]}

    def _actor_state(self) -> dict:
        return {"net": self.actor.state_dict(), "opt": self.actor_opt.state_dict()}

    def _load_actor_state(self, state: dict) -> None:
        self.actor.load_state_dict(state["net"])
        self.actor_opt.load_state_dict(state["opt"])
