"""MaMuJoCo backend: gymnasium-robotics `mamujoco_v1` (a PettingZoo ParallelEnv per environment).

Continuous actions in [low, high] per agent; the shared team reward; no win (return is the metric).
Agents whose observation is shorter than the longest one are zero-padded to a common obs_dim.
"""
from __future__ import annotations

import contextlib
import io
import os
import pickle
import warnings

import numpy as np

from marie.envs.base import EnvInfo, MultiAgentVecEnv, TimeStep
from marie.envs.registry import MapSpec


def _make_parallel_env(scenario: str, partition: str):
    os.environ.setdefault("MUJOCO_GL", "egl")
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        from gymnasium_robotics import mamujoco_v1
        return mamujoco_v1.parallel_env(scenario, partition)


class MaMuJoCoVecEnv(MultiAgentVecEnv):
    def __init__(self, spec: MapSpec, num_envs: int):
        import gymnasium_robotics
        import mujoco
        scenario, partition = spec.support("mamujoco")["scenario"]
        self.num_envs = num_envs
        self._envs = [_make_parallel_env(scenario, partition) for _ in range(num_envs)]
        e0 = self._envs[0]
        self._agents = list(e0.possible_agents)
        obs_dims = [e0.observation_space(a).shape[0] for a in self._agents]
        act_spaces = [e0.action_space(a) for a in self._agents]
        self._act_dims = [s.shape[0] for s in act_spaces]
        n_act = max(self._act_dims)
        low = np.full(n_act, -1.0, np.float32)
        high = np.full(n_act, 1.0, np.float32)
        for s in act_spaces:  # bounds per dimension (every mamujoco task uses one bound for all joints)
            low[: s.shape[0]] = s.low
            high[: s.shape[0]] = s.high
        self._obs_dim = max(obs_dims)
        limit = e0.single_agent_env._max_episode_steps
        e0.reset(seed=0)
        self.info = EnvInfo(
            n_agents=len(self._agents), obs_dim=self._obs_dim, state_dim=int(e0.state().shape[0]),
            n_actions=n_act, episode_limit=int(limit), backend="mamujoco",
            backend_version=f"gymnasium-robotics {gymnasium_robotics.__version__}, mujoco {mujoco.__version__}",
            map_name=spec.name, continuous=True, has_win=False, action_low=tuple(map(float, low)),
            action_high=tuple(map(float, high)), extra={"agent_obs_dims": obs_dims, "agent_action_dims": self._act_dims})
        self._ret = np.zeros(num_envs, np.float32)
        self._len = np.zeros(num_envs, np.int32)
        
    # -- helpers ----------------------------------------------------------------------------------
    def _stack_obs(self, obs: dict) -> np.ndarray:
        out = np.zeros((len(self._agents), self._obs_dim), np.float32)
        for i, a in enumerate(self._agents):
            o = obs[a]
            out[i, : o.shape[0]] = o
        return out

    def _observe(self, env, obs):
        return self._stack_obs(obs), np.asarray(env.state(), np.float32)

    def _avail(self):
        return np.ones((self.info.n_agents, self.info.n_actions), bool)

    # -- protocol ---------------------------------------------------------------------------------
    def reset(self, seed: int) -> TimeStep:
        E, N = self.num_envs, self.info.n_agents
        obs, states = [], []
        for i, env in enumerate(self._envs):
            o, _ = env.reset(seed=int(seed) * 1000 + i)
            o, s = self._observe(env, o)
            obs.append(o)
            states.append(s)
        self._ret[:] = 0
        self._len[:] = 0
        obs, states = np.stack(obs), np.stack(states)
        avail = np.broadcast_to(self._avail(), (E,) + self._avail().shape).copy()
        zeros, false = np.zeros(E, np.float32), np.zeros(E, bool)
        return TimeStep(obs=obs, state=states, avail=avail, first=np.ones(E, bool), reward=zeros, terminated=false,
                        truncated=false, next_obs=obs, next_state=states, next_avail=avail, alive=np.ones((E, N), bool),
                        won=false, episode_return=zeros, episode_length=np.zeros(E, np.int32))

    def step(self, actions: np.ndarray) -> TimeStep:
        actions = np.asarray(actions, np.float32)
        E, N = self.num_envs, self.info.n_agents
        out = {k: [] for k in ("obs", "state", "next_obs", "next_state", "reward", "terminated", "truncated")}
        ep_ret, ep_len = np.zeros(E, np.float32), np.zeros(E, np.int32)
        for i, env in enumerate(self._envs):
            act = {a: actions[i, j, : self._act_dims[j]] for j, a in enumerate(self._agents)}
            o, r, te, tr, _ = env.step(act)
            reward = float(r[self._agents[0]])
            terminated, truncated = bool(any(te.values())), bool(any(tr.values()))
            truncated = truncated and not terminated
            next_o, next_s = self._observe(env, o)
            self._ret[i] += reward
            self._len[i] += 1
            ep_ret[i], ep_len[i] = self._ret[i], self._len[i]
            if terminated or truncated:
                o, _ = env.reset()
                o, s = self._observe(env, o)
                self._ret[i], self._len[i] = 0.0, 0
            else:
                o, s = next_o, next_s
            for k, v in (("obs", o), ("state", s), ("next_obs", next_o), ("next_state", next_s), ("reward", reward),
                         ("terminated", terminated), ("truncated", truncated)):
                out[k].append(v)
        arr = {k: np.asarray(v) for k, v in out.items()}
        done = arr["terminated"] | arr["truncated"]
        avail = np.broadcast_to(self._avail(), (E, N, self.info.n_actions)).copy()
        return TimeStep(obs=arr["obs"].astype(np.float32), state=arr["state"].astype(np.float32), avail=avail,
                        first=done, reward=arr["reward"].astype(np.float32), terminated=arr["terminated"],
                        truncated=arr["truncated"], next_obs=arr["next_obs"].astype(np.float32),
                        next_state=arr["next_state"].astype(np.float32), next_avail=avail,
                        alive=np.ones((E, N), bool), won=np.zeros(E, bool), episode_return=ep_ret, episode_length=ep_len)

    def get_state(self):
        snaps = []
        for env in self._envs:
            sa = env.single_agent_env
            u = sa.unwrapped
            snaps.append({"data": pickle.dumps(u.data), "rng": u.np_random.bit_generator.state,
                          "elapsed": sa._elapsed_steps, "agents": list(env.agents)})
        return {"envs": snaps, "ret": self._ret.copy(), "len": self._len.copy()}

    def set_state(self, snapshot) -> None:
        import mujoco
        for env, snap in zip(self._envs, snapshot["envs"]):
            env.reset(seed=0)  # a fresh environment refuses step() before a reset; everything is overwritten below
            sa = env.single_agent_env
            u = sa.unwrapped
            mujoco.mj_copyData(u.data, u.model, pickle.loads(snap["data"]))
            u.np_random.bit_generator.state = snap["rng"]
            sa._elapsed_steps = snap["elapsed"]
            env.agents = list(snap["agents"])
        self._ret[:] = snapshot["ret"]
        self._len[:] = snapshot["len"]

    def close(self) -> None:
        for env in self._envs:
            env.close()
