"""A replay buffer of transitions from E parallel environments, with sequence-segment sampling.

Storage is one ring per environment stream: every field is an array [C, E, ...] (C = capacity // E),
indexed by the global time step t (slot t % C). The fields are free-form (declared at construction), so
any algorithm can store what it needs; two are required: `first` (the transition's observation starts
an episode) and `end` (the transition ends its episode, terminated or truncated).

`sample_segments(B, L, history)` draws B (environment, start time) pairs uniformly over the stored
transitions and returns every field over times [s - history, s + L) with two masks:
    mask[:, history + j]  transition s+j is stored and belongs to the start's episode (no `end` in s..s+j-1);
    mask[:, j < history]  the transition s-history+j is stored and belongs to the start's episode.
Segments may therefore run past an episode end or past the newest transition; masked entries hold
arbitrary stored values and must be ignored by the caller.
"""
from __future__ import annotations

import numpy as np
import torch


class ReplayBuffer:
    def __init__(self, capacity: int, num_envs: int, fields: dict[str, tuple[tuple, np.dtype]]):
        if capacity < num_envs:
            raise ValueError(f"replay capacity {capacity} is smaller than the number of environments {num_envs}")
        for req in ("first", "end"):
            if req not in fields:
                raise ValueError(f"replay fields must include '{req}'")
        self.C, self.E = capacity // num_envs, num_envs
        self.fields = {k: (tuple(shape), np.dtype(dtype)) for k, (shape, dtype) in fields.items()}
        # np.zeros maps pages lazily: an unfilled buffer costs no memory
        self.data = {k: np.zeros((self.C, self.E, *shape), dtype) for k, (shape, dtype) in self.fields.items()}
        self.t = 0  # transitions added per environment stream (global time)

    def __len__(self) -> int:
        return min(self.t, self.C) * self.E

    @property
    def oldest(self) -> int:
        return max(0, self.t - self.C)

    def add(self, **step) -> None:
        """One transition of every environment: each field an array [E, ...]."""
        slot = self.t % self.C
        for k, arr in self.data.items():
            arr[slot] = step[k]
        self.t += 1

    def _gather(self, key: str, env: np.ndarray, times: np.ndarray) -> np.ndarray:
        return self.data[key][times % self.C, env[:, None]]

    def sample_segments(self, batch: int, length: int, history: int = 0, generator: torch.Generator | None = None,
                        keys: list[str] | None = None) -> dict[str, np.ndarray]:
        if self.t == 0:
            raise RuntimeError("sampling from an empty replay buffer")
        n = min(self.t, self.C)
        env = torch.randint(self.E, (batch,), generator=generator).numpy()
        start = self.oldest + torch.randint(n, (batch,), generator=generator).numpy()
        times = start[:, None] + np.arange(-history, length)[None]          # [B, history+L]
        stored = (times >= self.oldest) & (times < self.t)
        safe = np.clip(times, self.oldest, self.t - 1)
        end = self._gather("end", env, safe) & stored
        first = self._gather("first", env, safe) & stored
        fwd = end[:, history:]
        # forward: no episode end strictly before position j (relative to the start)
        ended_before = np.concatenate([np.zeros((batch, 1), bool), np.cumsum(fwd[:, :-1], 1) > 0], 1)
        mask_fwd = stored[:, history:] & ~ended_before
        # backward: position j < history belongs to the start's episode if no `first` in (j, start]
        if history:
            firsts = first[:, 1: history + 1][:, ::-1]                          # times s, s-1, ..., s-history+1
            began_after = np.cumsum(firsts, 1)[:, ::-1] > 0                     # for j = 0..history-1
            mask_back = stored[:, :history] & ~began_after
            mask = np.concatenate([mask_back, mask_fwd], 1)
        else:
            mask = mask_fwd
        out = {k: self._gather(k, env, safe) for k in (keys or self.data)}
        out["mask"] = mask
        return out

    def state_dict(self) -> dict:
        n = min(self.t, self.C)
        # only the filled slots, in slot order
        return {"t": self.t, "C": self.C, "E": self.E, "data": {k: v[:n].copy() for k, v in self.data.items()}}

    def load_state_dict(self, state: dict) -> None:
        if state["C"] != self.C or state["E"] != self.E:
            raise ValueError("replay buffer shape differs from the checkpoint's")
        self.t = state["t"]
        for k, v in state["data"].items():
            self.data[k][: len(v)] = v
