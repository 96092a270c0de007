"""The algorithm interface, and the registry of algorithms by name.

The runtime (marie/runtime.py) owns the loop, evaluation, logging and checkpoints; an algorithm only
acts, observes transitions and updates itself. One training step of the runtime is:

    actions, carry = algo.act(ts, carry, training=True)   # ts: TimeStep with obs/state/avail/first
    ts_next = env.step(actions)
    algo.observe(ts, actions, ts_next)                     # the transition ts -> ts_next
    for metrics in algo.update(env_steps):                 # the algorithm decides when and how much
        log(metrics)

`carry` is the algorithm's per-environment acting state (RNN hidden state, stacked frames, world-model
features...), created by `initial_carry(num_envs)`. Training and evaluation environments each get their
own. Where `ts.first` is True the environment just started an episode: reset that row of the carry.
The algorithm may remember what it needs from its last training `act` (log-probs, values) for `observe`.

Everything an algorithm needs to resume (models, optimisers, replay data, counters) goes in
`state_dict()`. The runtime saves and restores the global RNGs (Python, numpy, torch) itself, so an
algorithm that draws from those needs no RNG of its own.
"""
from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch

from marie.envs.base import EnvInfo, TimeStep
from marie.errors import UserError


class Algorithm(ABC):
    #: the YAML preset file of this algorithm (defaults + presets paper/small/smoke ...)
    preset_file: Path
    #: backends it can run on: "discrete" (smax, smac, smacv2), "continuous" (mamujoco) or both
    action_spaces: tuple[str, ...] = ("discrete",)

    def __init__(self, env_info: EnvInfo, params: dict, run: dict, device: torch.device, seed: int):
        self.env_info = env_info
        self.seed = seed
        self.params = params
        self.run = run
        self.device = device
        self.dtype = getattr(torch, run.get("dtype", "float32"))

    @classmethod
    def validate(cls, params: dict, run: dict, n_agents: int) -> None:
        """Check the configuration without building anything or compiling an environment (`marie run
        --dry-run` and the workflow's plan call it before any work): a one-line UserError on bad values.
        The constructor must apply the same checks (call this) so a real run can never get further."""

    def initial_carry(self, num_envs: int) -> Any:
        return None

    @abstractmethod
    def act(self, ts: TimeStep, carry: Any, training: bool, greedy: bool = True) -> tuple[np.ndarray, Any]:
        """Actions for every environment and agent: [E, N] int (discrete) or [E, N, A] float.

        training: explore as the algorithm trains. Otherwise evaluation: the most likely action where
        greedy is true, else sampled from the policy (value-based methods: epsilon-greedy at the current
        epsilon). The runtime evaluates every evaluation point in both modes."""

    def observe(self, ts: TimeStep, actions: np.ndarray, ts_next: TimeStep) -> None:
        """One transition of every training environment."""

    def update(self, env_steps: int) -> Iterable[dict]:
        """Train if it is time to; yield one dict of scalar metrics per update done."""
        return ()

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

    def autocast(self):
        """bf16 autocast where the config asks for it (`run.autocast_bf16`), on a GPU or on a CPU with native
        bf16 (AVX512-BF16 / AMX, where oneDNN runs bf16 matmuls several times faster than fp32); a no-op
        context otherwise. Under it the imagination's KV cache is bf16 too (half the bytes to read)."""
        enabled = bool(self.run.get("autocast_bf16")) and bf16_supported(self.device)
        return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=enabled)


def bf16_supported(device: torch.device) -> bool:
    if device.type == "cuda":
        return True
    return device.type == "cpu" and bool(torch.backends.mkldnn.is_available()) and \
        bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def masked_uniform_actions(avail: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Uniform over available actions, per environment and agent (avail: [..., A] bool)."""
    scores = rng.random(avail.shape) * avail
    return scores.argmax(-1)


# -- registry -------------------------------------------------------------------------------------
# name -> "module:Class"; modules are imported only when the algorithm is used.
ALGORITHMS: dict[str, str] = {
    "random": "marie.random_policy:RandomPolicy",
    "marie": "marie.marie_agent:MARIEAgent",
    "mamba": "baselines.mamba.agent:MAMBA",
    "mappo": "baselines.mappo:MAPPO",
    "happo": "baselines.happo:HAPPO",
    "qmix": "baselines.qmix:QMIX",
    "qplex": "baselines.qplex:QPLEX",
    "mbvd": "baselines.mbvd:MBVD",
}


def register(name: str, target: str) -> None:
    ALGORITHMS[name] = target


def algorithm_class(name: str) -> type[Algorithm]:
    if name not in ALGORITHMS:
        raise UserError(f"unknown algo '{name}'; valid algos: {', '.join(sorted(ALGORITHMS))}")
    module, cls = ALGORITHMS[name].split(":")
    return getattr(importlib.import_module(module), cls)
