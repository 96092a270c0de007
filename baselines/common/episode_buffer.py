"""Episode replay for the pymarl-style value-decomposition learners (QMIX, QPLEX, MBVD).

`EpisodeBuilder` assembles whole episodes from the runtime's batched transitions (E environments that
reset themselves at different times); `EpisodeBuffer` keeps the last `capacity` finished episodes and
samples batches of them padded to the longest one, with a mask of the real steps.

An episode of length L holds
    obs [L+1, N, O]   state [L+1, S]   avail [L+1, N, A] bool   (index L: what the last transition reached)
    actions [L, N]    reward [L]       terminated [L] bool       (terminated only ever True at L-1)
so the TD target of step t uses index t+1 for every t < L, the final one included: a time-limit
truncation (terminated False) bootstraps from the observation the time limit cut at.
"""
from __future__ import annotations

import numpy as np

KEYS_STEP = ("obs", "state", "avail")          # L+1 entries
KEYS_TRANSITION = ("actions", "reward", "terminated")  # L entries


class EpisodeBuilder:
    """The episodes in progress of E parallel environments."""

    def __init__(self, num_envs: int, n_agents: int, obs_dim: int, state_dim: int, n_actions: int, max_len: int):
        self.num_envs = num_envs
        self.dims = (n_agents, obs_dim, state_dim, n_actions)
        self.t = np.zeros(num_envs, np.int64)
        self._alloc(max(1, max_len))

    def _alloc(self, max_len: int, old: dict | None = None) -> None:
        E, (N, O, S, A) = self.num_envs, self.dims
        self.max_len = max_len
        new = {
            "obs": np.zeros((E, max_len + 1, N, O), np.float32),
            "state": np.zeros((E, max_len + 1, S), np.float32),
            "avail": np.zeros((E, max_len + 1, N, A), bool),
            "actions": np.zeros((E, max_len, N), np.int64),
            "reward": np.zeros((E, max_len), np.float32),
            "terminated": np.zeros((E, max_len), bool),
        }
        if old is not None:
            for key, arr in old.items():
                new[key][:, : arr.shape[1]] = arr
        self.data = new

    def add(self, ts, actions: np.ndarray, ts_next) -> list[dict]:
        """Record the transition ts -> ts_next of every environment; return the episodes it finished."""
        first = np.asarray(ts.first, bool)
        self.t[first] = 0  # a new episode: drop any unfinished one (e.g. after a non-exact resume)
        if self.t.max() >= self.max_len:
            self._alloc(2 * self.max_len, self.data)
        e, t, d = np.arange(self.num_envs), self.t, self.data
        d["obs"][e, t] = ts.obs
        d["state"][e, t] = ts.state
        d["avail"][e, t] = ts.avail
        d["actions"][e, t] = actions
        d["reward"][e, t] = ts_next.reward
        d["terminated"][e, t] = ts_next.terminated
        self.t += 1
        finished = []
        for i in np.flatnonzero(np.asarray(ts_next.terminated) | np.asarray(ts_next.truncated)):
            L = int(self.t[i])
            d["obs"][i, L] = ts_next.next_obs[i]
            d["state"][i, L] = ts_next.next_state[i]
            d["avail"][i, L] = ts_next.next_avail[i]
            ep = {k: d[k][i, : L + 1].copy() for k in KEYS_STEP}
            ep.update({k: d[k][i, :L].copy() for k in KEYS_TRANSITION})
            finished.append(ep)
            self.t[i] = 0
        return finished

    def state_dict(self) -> dict:
        """Only the steps in progress (not the whole preallocated arrays)."""
        L = int(self.t.max()) if self.num_envs else 0
        return {"t": self.t.copy(), "max_len": self.max_len,
                "data": {k: v[:, : L + 1].copy() for k, v in self.data.items()}}

    def load_state_dict(self, state: dict) -> None:
        self._alloc(int(state["max_len"]), state["data"])
        self.t = np.asarray(state["t"], np.int64).copy()


class EpisodeBuffer:
    """The last `capacity` finished episodes (FIFO); uniform sampling without replacement, as pymarl."""

    def __init__(self, capacity: int):
        if capacity <= 0:
            raise ValueError(f"buffer capacity must be positive, got {capacity}")
        self.capacity = capacity
        self.episodes: list[dict] = []
        self.next = 0  # where the next episode goes once full
        self.total = 0  # episodes ever added

    def __len__(self) -> int:
        return len(self.episodes)

    def add(self, episode: dict) -> None:
        if len(self.episodes) < self.capacity:
            self.episodes.append(episode)
        else:
            self.episodes[self.next] = episode
        self.next = (self.next + 1) % self.capacity
        self.total += 1

    def can_sample(self, batch_size: int) -> bool:
        return len(self.episodes) >= batch_size

    def sample(self, batch_size: int, rng: np.random.Generator) -> dict:
        idx = rng.choice(len(self.episodes), size=batch_size, replace=False)
        return pad_episodes([self.episodes[i] for i in idx])

    def state_dict(self) -> dict:
        return {"capacity": self.capacity, "episodes": self.episodes, "next": self.next, "total": self.total}

    def load_state_dict(self, state: dict) -> None:
        self.capacity, self.episodes = int(state["capacity"]), list(state["episodes"])
        self.next, self.total = int(state["next"]), int(state["total"])


def pad_episodes(episodes: list[dict]) -> dict:
    """Stack episodes, zero-padded to the longest (T steps). Returns numpy arrays
    obs [B,T+1,N,O], state [B,T+1,S], avail [B,T+1,N,A] (padding: all actions available, so maxima stay
    finite), actions [B,T,N], reward [B,T], terminated [B,T], mask [B,T] float (1 on real steps),
    lengths [B]."""
    lengths = np.array([len(ep["reward"]) for ep in episodes], np.int64)
    B, T = len(episodes), int(lengths.max())
    out = {}
    for key in KEYS_STEP + KEYS_TRANSITION:
        ref = episodes[0][key]
        steps = T + 1 if key in KEYS_STEP else T
        fill = key == "avail"
        arr = np.full((B, steps) + ref.shape[1:], fill, ref.dtype) if fill else np.zeros((B, steps) + ref.shape[1:], ref.dtype)
        for b, ep in enumerate(episodes):
            arr[b, : len(ep[key])] = ep[key]
        out[key] = arr
    out["mask"] = (np.arange(T)[None, :] < lengths[:, None]).astype(np.float32)
    out["lengths"] = lengths
    return out
