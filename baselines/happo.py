"""HAPPO (Kuba et al. 2021, "Trust Region Policy Optimisation in Multi-Agent Reinforcement Learning").

Heterogeneous agents: every agent has its own actor and optimiser (no parameter sharing). Each update draws a
random order of the agents and updates them one after another; agent i_m maximises the clipped surrogate of
its own ratio, weighted by the compounded factor

    M = prod over the agents updated before it of  pi_new(a_j | o_j) / pi_old(a_j | o_j)

(`compound_factor`), so each agent improves the joint objective given its predecessors' new policies. Discrete
actions use a masked categorical per agent, continuous ones a Gaussian with a state-independent log-std.
Acting runs all actors in one batched call (torch.func.vmap over stacked parameters); only the sequential
update loops over agents, as the method requires. The critic, GAE, ValueNorm and storage are shared with
MAPPO (baselines/common/onpolicy.py); hyperparameters in configs/happo.yaml.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from baselines.common.networks import Actor, StackedActors, log_prob_entropy
from baselines.common.onpolicy import OnPolicyAlgorithm


def compound_factor(factor: torch.Tensor, logp_new: torch.Tensor, logp_old: torch.Tensor) -> torch.Tensor:
    """M <- M * pi_new/pi_old of the agent just updated (log-probs of its actions, summed over action dims)."""
    return factor * (logp_new - logp_old).exp()


class HAPPO(OnPolicyAlgorithm):
    preset_file = Path(__file__).parent / "configs" / "happo.yaml"

    def _build_actors(self) -> None:
        self.actors = nn.ModuleList(Actor(self.in_dim, self.A, **self._actor_kwargs()) for _ in range(self.N))
        self.actors.to(self.device, self.dtype)
        self.actor_opts = [self._adam(a.parameters()) for a in self.actors]
        self.stacked = StackedActors(self.actors)
        self.last_order, self.last_factors = None, None  # diagnostics of the last update (tests read them)

    def _actor_step(self, x, h):
        return self.stacked(x, h, agent_dim=1)

    def _agent_forward(self, agent: int, batch: dict, idx):
        return self.actors[agent].forward_seq(batch["x"][:, idx, agent], batch["h0"][idx, agent],
                                              batch["first"][:, idx, agent])

    def _update_actors(self, batch: dict) -> dict:
        B = batch["x"].shape[1]
        everything = torch.arange(B, device=self.device)
        factor = torch.ones(batch["adv"].shape[:2], dtype=self.dtype, device=self.device)  # [L, B]
        order = torch.randperm(self.N).tolist()
        logs, factors = [], []
        for agent in order:
            factors.append(factor)
            params = list(self.actors[agent].parameters())
            for _ in range(self.params["ppo_epochs"]):
                for idx in self._minibatches(B):
                    out, log_std = self._agent_forward(agent, batch, idx)
                    loss, log = self._actor_loss(out, log_std, batch, idx, factor=factor[:, idx], agent=agent)
                    log["actor_grad_norm"] = self._step(self.actor_opts[agent], params, loss)
                    logs.append(log)
            with torch.no_grad():
                out, log_std = self._agent_forward(agent, batch, everything)
                dim_mask = None if self.dim_mask is None else self.dim_mask[agent]
                logp_new, _ = log_prob_entropy(out, log_std, batch["action"][:, :, agent], batch["avail"][:, :, agent],
                                               dim_mask, self.continuous)
                factor = compound_factor(factor, logp_new, batch["logp"][:, :, agent])
        self.stacked.refresh()
        self.last_order, self.last_factors = order, factors
        metrics = {k: float(sum(l[k] for l in logs) / len(logs)) for k in logs[0]}
        metrics["factor_mean"] = float(factor.mean())  # M after the last agent: the joint ratio
        return metrics

    def _actor_state(self) -> dict:
        return {"nets": self.actors.state_dict(), "opts": [o.state_dict() for o in self.actor_opts]}

    def _load_actor_state(self, state: dict) -> None:
        self.actors.load_state_dict(state["nets"])
        for opt, s in zip(self.actor_opts, state["opts"]):
            opt.load_state_dict(s)
        self.stacked.refresh()
