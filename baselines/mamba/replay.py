"""A sequence replay buffer for recurrent world models: one circular stream of observation rows per
training environment, sampled as fixed-length segments (which may cross episode boundaries: `first`
marks where the model state resets).

Each row is one observation the agents saw and what led into it:
    obs [N, O], avail [N, A], alive [N]      the observation, its action masks, who is alive in it
    prev_action [N]                          the joint action that led into it (-1 at an episode start);
                                             continuous actions: [N, m] float in [-1, 1] (0 at a start)
    reward, cont                             the team reward of that transition; 0 if the row ends the
                                             episode by termination, else 1 (time limits keep 1)
    first                                    the row starts an episode
An episode that ends adds its final observation (TimeStep.next_obs) as a row of its own, so nothing
the transition reached is lost to the environment's auto-reset.

Why not marie/replay.py: that buffer stores transitions of all environments in lockstep (one global
time), while here an episode's final observation is a row of its own, so each environment's stream
advances at its own pace. Folding one into the other would need per-stream clocks there.
"""
from __future__ import annotations

import numpy as np
import torch

FIELDS = ("obs", "avail", "alive", "prev_action", "reward", "cont", "first")


class SequenceReplay:
    def __init__(self, capacity: int, num_envs: int, n_agents: int, obs_dim: int, n_actions: int,
                 continuous: bool = False):
        self.E = num_envs
        self.C = max(1, capacity // num_envs)
        E, C, N = self.E, self.C, n_agents
        self.data = {
            "obs": np.zeros((E, C, N, obs_dim), np.float32),
            "avail": np.zeros((E, C, N, n_actions), bool),
            "alive": np.zeros((E, C, N), bool),
            "prev_action": np.zeros((E, C, N, n_actions), np.float32) if continuous else np.zeros((E, C, N), np.int16),
            "reward": np.zeros((E, C), np.float32),
            "cont": np.zeros((E, C), np.float32),
            "first": np.zeros((E, C), bool),
        }
        self.ptr = np.zeros(E, np.int64)     # next write position per environment
        self.count = np.zeros(E, np.int64)   # rows stored per environment (<= C)

    def __len__(self) -> int:
        return int(self.count.sum())

    def add(self, envs: np.ndarray, **rows) -> None:
        """Append one row to each environment in `envs` (int indices); `rows` are indexed like `envs`."""
        if len(envs) == 0:
            return
        pos = self.ptr[envs]
        for key in FIELDS:
            self.data[key][envs, pos] = rows[key]
        self.ptr[envs] = (pos + 1) % self.C
        self.count[envs] = np.minimum(self.count[envs] + 1, self.C)

    def can_sample(self, length: int) -> bool:
        return bool((self.count >= length).any())

    def sample(self, batch: int, length: int, device, dtype) -> dict:
        """`batch` segments of `length` rows; environments chosen in proportion to their valid starts.
        Draws from numpy's global RNG (saved and restored by the runtime). Row 0 is marked `first`."""
        starts = np.maximum(self.count - length + 1, 0).astype(np.float64)
        env = np.random.choice(self.E, size=batch, p=starts / starts.sum())
        offset = (np.random.random(batch) * starts[env]).astype(np.int64)
        oldest = (self.ptr[env] - self.count[env]) % self.C
        idx = (oldest[:, None] + offset[:, None] + np.arange(length)[None]) % self.C   # [B, L]
        out = {}
        for key in FIELDS:
            arr = self.data[key][env[:, None], idx]
            t = torch.from_numpy(arr)
            if arr.dtype == np.float32:
                t = t.to(device=device, dtype=dtype)
            elif arr.dtype == np.int16:
                t = t.to(device=device, dtype=torch.long)
            else:
                t = t.to(device)
            out[key] = t
        out["first"][:, 0] = True
        return out

    def state_dict(self) -> dict:
        return {"ptr": self.ptr.copy(), "count": self.count.copy(),
                "data": {k: v[:, :int(self.count.max())].copy() if self.count.max() < self.C else v.copy()
                         for k, v in self.data.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.ptr, self.count = state["ptr"].copy(), state["count"].copy()
        for k, v in state["data"].items():
            self.data[k][:, :v.shape[1]] = v
