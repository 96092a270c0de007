"""Observation normalisation for continuous-control backends (MaMuJoCo), shared by MARIE and MAMBA.

MuJoCo observations are unbounded and their dimensions differ in scale by orders of magnitude (joint
angles ~0.1, velocities ~10), while SMAC's lie in [-1, 1]. Every observation an algorithm uses is mapped
to (o - mean) / std per agent and dimension (agents are heterogeneous: agent i's dimension j is its own
quantity), then clipped to [-clip, clip].

The rule: running statistics of the observations collected in training (Chan et al.'s parallel update),
updated until `freeze_after` observations per agent have been seen, then frozen for the rest of the run.
Algorithms set `freeze_after` to their `learning_starts`, so every model trains on one fixed input
space: a tokenizer or world model trained on drifting statistics would see its inputs move under it.
Raw observations are stored in the replay buffers; the normaliser is applied where observations enter
the models (acting, every training batch, imagination starts, analysis). The statistics are part of the
algorithm's checkpoint. Padded dimensions (zero in every observation) map to 0.

Not in the paper or the official MARIE / MAMBA code: a documented departure (docs/marie.md, docs/mamba.md).
"""
from __future__ import annotations

import numpy as np
import torch

from marie.errors import UserError


def check_obs_norm_params(p: dict, where: str) -> None:
    """p: the `obs_norm` block {enabled: bool, clip: positive number}."""
    if not isinstance(p, dict) or set(p) != {"enabled", "clip"}:
        raise UserError(f"{where} must be a mapping with keys enabled and clip, got {p!r}")
    if not isinstance(p["enabled"], bool):
        raise UserError(f"{where}.enabled must be true or false, got {p['enabled']!r}")
    clip = p["clip"]
    if isinstance(clip, bool) or not isinstance(clip, (int, float)) or clip <= 0:
        raise UserError(f"{where}.clip must be a positive number, got {clip!r}")


class ObservationNormalizer:
    """Per-agent, per-dimension running mean and variance of observations [..., N, O]."""

    def __init__(self, n_agents: int, obs_dim: int, freeze_after: int, clip: float = 10.0, enabled: bool = True,
                 eps: float = 1e-8):
        self.enabled, self.freeze_after, self.clip, self.eps = bool(enabled), int(freeze_after), float(clip), eps
        self.count = 0
        self.mean = np.zeros((n_agents, obs_dim), np.float64)
        self.m2 = np.zeros((n_agents, obs_dim), np.float64)  # sum of squared deviations from the mean
        self._cache: dict = {}

    @property
    def frozen(self) -> bool:
        return self.count >= self.freeze_after

    def update(self, obs: np.ndarray) -> None:
        """Add a batch of observations [B, N, O] (e.g. one per training environment) while not frozen."""
        if not self.enabled or self.frozen:
            return
        x = np.asarray(obs, np.float64).reshape(-1, *self.mean.shape)
        n, mean_b = len(x), x.mean(0)
        delta, total = mean_b - self.mean, self.count + n
        self.m2 += ((x - mean_b) ** 2).sum(0) + delta ** 2 * self.count * n / total
        self.mean += delta * n / total
        self.count = total
        self._cache.clear()

    @property
    def std(self) -> np.ndarray:
        """Where a dimension has (next to) no variance (padding, or no data yet) it is only centred."""
        var = self.m2 / max(self.count, 1)
        return np.where(var > self.eps, np.sqrt(np.maximum(var, self.eps)), 1.0)

    def _params(self, device, dtype) -> tuple[torch.Tensor, torch.Tensor]:
        key = (str(device), dtype)
        if key not in self._cache:
            self._cache[key] = (torch.as_tensor(self.mean, device=device, dtype=dtype),
                                torch.as_tensor(self.std, device=device, dtype=dtype))
        return self._cache[key]

    def __call__(self, obs):
        """Normalise a numpy array or a tensor [..., N, O] (identity where disabled or before any data)."""
        if not self.enabled or self.count == 0:
            return obs
        if torch.is_tensor(obs):
            mean, std = self._params(obs.device, obs.dtype)
            return ((obs - mean) / std).clamp(-self.clip, self.clip)
        out = (np.asarray(obs, np.float64) - self.mean) / self.std
        return np.clip(out, -self.clip, self.clip).astype(np.float32)

    def state_dict(self) -> dict:
        return {"count": self.count, "mean": self.mean.copy(), "m2": self.m2.copy()}

    def load_state_dict(self, state: dict) -> None:
        self.count = int(state["count"])
        self.mean, self.m2 = np.array(state["mean"], np.float64), np.array(state["m2"], np.float64)
        self._cache.clear()
