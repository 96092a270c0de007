"""The environment protocol every backend implements (see docs/design.md, "Environment layer").

All arrays are numpy, batched over E parallel environments and N agents:
    obs [E, N, obs_dim] float32     state [E, state_dim] float32     avail [E, N, n_actions] bool
Environments reset themselves when an episode ends. A `TimeStep` therefore carries both the
observation the policy acts on next (`obs`, the first of a new episode where one just ended) and the
observation the transition really reached (`next_obs`, the final one where an episode ended), which
world models and TD targets need.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field, replace
from typing import Any, NamedTuple

import numpy as np


@dataclass(frozen=True)
class EnvInfo:
    n_agents: int
    obs_dim: int
    state_dim: int
    n_actions: int            # discrete: actions per agent; continuous: action dimensions per agent
    episode_limit: int        # the backend's step limit per episode
    backend: str
    backend_version: str
    map_name: str
    continuous: bool = False
    has_win: bool = True      # False where the task has no win (MaMuJoCo): return is the metric
    action_low: tuple = ()    # continuous only, per action dimension
    action_high: tuple = ()
    extra: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return asdict(self)


class TimeStep(NamedTuple):
    obs: np.ndarray          # [E, N, O]  what the agents observe now (after any auto-reset)
    state: np.ndarray        # [E, S]
    avail: np.ndarray        # [E, N, A] bool
    first: np.ndarray        # [E] bool: `obs` starts a new episode
    reward: np.ndarray       # [E] team reward of the transition just taken (0 after reset())
    terminated: np.ndarray   # [E] bool: the episode ended for real (win or loss)
    truncated: np.ndarray    # [E] bool: the episode was cut by the time limit
    next_obs: np.ndarray     # [E, N, O] the observation the transition reached, before any reset
    next_state: np.ndarray   # [E, S]
    next_avail: np.ndarray   # [E, N, A]
    alive: np.ndarray        # [E, N] bool: agent alive in `next_obs`
    won: np.ndarray          # [E] bool, meaningful where an episode ended
    episode_return: np.ndarray  # [E] undiscounted return of the episode that just ended
    episode_length: np.ndarray  # [E] its length in steps

    @property
    def done(self) -> np.ndarray:
        return self.terminated | self.truncated


class MultiAgentVecEnv(ABC):
    """E parallel copies of one multi-agent task. Subclasses set `self.info` and `self.num_envs`."""

    info: EnvInfo
    num_envs: int

    @abstractmethod
    def reset(self, seed: int) -> TimeStep:
        """Reset every environment; the seed fixes every later random draw of these environments."""

    @abstractmethod
    def step(self, actions: np.ndarray) -> TimeStep:
        """actions: [E, N] int (discrete) or [E, N, n_actions] float (continuous)."""

    @abstractmethod
    def get_state(self) -> Any:
        """A picklable snapshot from which `set_state` continues exactly (for checkpoints)."""

    @abstractmethod
    def set_state(self, snapshot: Any) -> None:
        ...

    def close(self) -> None:
        pass

    @property
    def counters(self) -> dict:
        """Backend events worth recording in meta.json (e.g. SC2 restarts)."""
        return {}


class RewardScale(MultiAgentVecEnv):
    """Every team reward, and so every episode return, times `scale`: one reward convention for every
    method, applied where make_env builds the environment (docs/rewards.md; make_env leaves a factor of 1
    unwrapped). `info.extra["reward_scale"]` says which factor the algorithm sees."""

    def __init__(self, env: MultiAgentVecEnv, scale: float):
        self.env, self.scale = env, float(scale)
        self.num_envs = env.num_envs
        self.info = replace(env.info, extra={**env.info.extra, "reward_scale": self.scale})

    def _scaled(self, ts: TimeStep) -> TimeStep:
        return ts._replace(reward=(ts.reward * self.scale).astype(np.float32),
                           episode_return=(np.asarray(ts.episode_return) * self.scale).astype(np.float32))

    def reset(self, seed: int) -> TimeStep:
        return self._scaled(self.env.reset(seed))

    def step(self, actions: np.ndarray) -> TimeStep:
        return self._scaled(self.env.step(actions))

    def get_state(self) -> Any:
        return self.env.get_state()

    def set_state(self, snapshot: Any) -> None:
        self.env.set_state(snapshot)

    def close(self) -> None:
        self.env.close()

    @property
    def counters(self) -> dict:
        return self.env.counters


def discretize_actions(actions: np.ndarray, low: np.ndarray, high: np.ndarray, bins: int = 256) -> np.ndarray:
    """Continuous actions -> bin indices in [0, bins), `bins` uniform bins per dimension (the paper's 256)."""
    low, high = np.asarray(low, np.float32), np.asarray(high, np.float32)
    scaled = (np.clip(actions, low, high) - low) / (high - low)
    return np.minimum((scaled * bins).astype(np.int64), bins - 1)


def undiscretize_actions(tokens: np.ndarray, low: np.ndarray, high: np.ndarray, bins: int = 256) -> np.ndarray:
    """Bin indices -> the centres of their bins (the inverse of `discretize_actions` up to bin width)."""
    low, high = np.asarray(low, np.float32), np.asarray(high, np.float32)
    return (low + (np.asarray(tokens, np.float32) + 0.5) / bins * (high - low)).astype(np.float32)
