"""SMAC and SMACv2 backends: oxwhirl's StarCraft2Env (and SMACv2's capability wrapper) over StarCraft II.

Optional: both packages install from oxwhirl's git repositories (`pip install -e .[smac]`) and need a
StarCraft II installation (SC2PATH). Each of the E environments is its own SC2 process, stepped in turn.
A crashed SC2 process is restarted (up to `run.sc2_restarts` times per run, counted in meta.json); the
episode it was playing ends as truncated. SC2 cannot be snapshotted: a resumed run starts fresh episodes.
"""
from __future__ import annotations

import importlib
import importlib.metadata
import json
import os
from pathlib import Path

import numpy as np

from marie.envs.base import EnvInfo, MultiAgentVecEnv, TimeStep
from marie.envs.registry import MapSpec
from marie.errors import UserError

INSTALL_HINT = ("install oxwhirl's packages with `pip install -e .[smac]` (PyPI's `smac` is an unrelated "
                "project) and StarCraft II, then set SC2PATH")


def _package_version(dist: str) -> str:
    """Version plus git commit where pip recorded one (installs from git)."""
    try:
        d = importlib.metadata.distribution(dist)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"
    commit = ""
    direct = d.read_text("direct_url.json")
    if direct:
        commit = json.loads(direct).get("vcs_info", {}).get("commit_id", "")
    return f"{d.version}" + (f"@{commit[:10]}" if commit else "")


def sc2_build() -> str:
    """The newest SC2 build folder under SC2PATH (e.g. Base75689), or 'unknown'."""
    root = Path(os.environ.get("SC2PATH", Path.home() / "StarCraftII")) / "Versions"
    builds = sorted(p.name for p in root.glob("Base*")) if root.is_dir() else []
    return builds[-1] if builds else "unknown"


def require_starcraft(backend: str):
    """Import the backend's package or fail with what to install."""
    module = "smac.env" if backend == "smac" else "smacv2.env"
    try:
        mod = importlib.import_module(module)
    except ImportError:
        raise UserError(f"the {backend} backend needs oxwhirl's {backend} package, which is not installed: "
                        f"{INSTALL_HINT}; or use --env smax") from None
    sc2 = Path(os.environ.get("SC2PATH", Path.home() / "StarCraftII"))
    if not sc2.is_dir():
        raise UserError(f"the {backend} backend needs StarCraft II, not found at {sc2}: install it and set SC2PATH; "
                        f"or use --env smax")
    return mod


class StarCraftVecEnv(MultiAgentVecEnv):
    snapshot_exact = False

    def __init__(self, spec: MapSpec, num_envs: int, backend: str, max_restarts: int = 5):
        self._mod = require_starcraft(backend)
        self.backend = backend
        self.spec = spec
        self.num_envs = num_envs
        self.max_restarts = max_restarts
        self.restarts = 0
        self._seed = 0
        self._envs = [self._new_env(i) for i in range(num_envs)]
        info = self._envs[0].get_env_info()
        self.info = EnvInfo(
            n_agents=int(info["n_agents"]), obs_dim=int(info["obs_shape"]), state_dim=int(info["state_shape"]),
            n_actions=int(info["n_actions"]), episode_limit=int(info["episode_limit"]), backend=backend,
            backend_version=f"{backend} {_package_version(backend)}, SC2 {sc2_build()}", map_name=spec.name,
            extra={"n_enemies": spec.enemies})
        self._ret = np.zeros(num_envs, np.float32)
        self._len = np.zeros(num_envs, np.int32)

    def _new_env(self, i: int):
        seed = int(self._seed) * 1000 + i
        if self.backend == "smac":
            return self._mod.StarCraft2Env(map_name=self.spec.name, seed=seed)
        cap = self.spec.support("smacv2")
        return self._mod.StarCraftCapabilityEnvWrapper(
            capability_config=cap["capability_config"], map_name=cap["map_name"], seed=seed,
            **cap.get("env_args", {}))

    def _observe(self, env):
        obs = np.asarray(env.get_obs(), np.float32)
        state = np.asarray(env.get_state(), np.float32)
        avail = np.asarray(env.get_avail_actions(), bool)
        return obs, state, avail

    def _restart(self, i: int, exc: Exception):
        self.restarts += 1
        if self.restarts > self.max_restarts:
            raise RuntimeError(f"StarCraft II crashed {self.restarts} times (last: {exc!r}); giving up") from exc
        try:
            self._envs[i].close()
        except Exception:
            pass
        self._envs[i] = self._new_env(i)
        self._envs[i].reset()

    def reset(self, seed: int) -> TimeStep:
        if seed != self._seed:  # SC2 takes its seed at launch
            self._seed = seed
            for env in self._envs:
                env.close()
            self._envs = [self._new_env(i) for i in range(self.num_envs)]
        parts = []
        for i, env in enumerate(self._envs):
            try:
                env.reset()
            except Exception as exc:  # SC2 died: restart it
                self._restart(i, exc)
            parts.append(self._observe(self._envs[i]))
        obs, state, avail = (np.stack(x) for x in zip(*parts))
        self._ret[:] = 0
        self._len[:] = 0
        E, N = self.num_envs, self.info.n_agents
        zeros, false = np.zeros(E, np.float32), np.zeros(E, bool)
        return TimeStep(obs=obs, state=state, avail=avail, first=np.ones(E, bool), reward=zeros, terminated=false,
                        truncated=false, next_obs=obs, next_state=state, next_avail=avail,
                        alive=np.ones((E, N), bool), won=false, episode_return=zeros,
                        episode_length=np.zeros(E, np.int32))

    def step(self, actions: np.ndarray) -> TimeStep:
        actions = np.asarray(actions)
        E = self.num_envs
        rows = []
        for i in range(E):
            env = self._envs[i]
            try:
                reward, terminated, info = env.step(actions[i].tolist())
                crashed = False
            except Exception as exc:
                self._restart(i, exc)
                reward, terminated, info, crashed = 0.0, False, {}, True
            env = self._envs[i]
            next_obs, next_state, next_avail = self._observe(env)
            truncated = crashed or bool(info.get("episode_limit", False))
            terminated = bool(terminated) and not truncated
            self._ret[i] += reward
            self._len[i] += 1
            ep_ret, ep_len = self._ret[i], self._len[i]
            if terminated or truncated:
                if not crashed:
                    env.reset()
                obs, state, avail = self._observe(env)
                self._ret[i], self._len[i] = 0.0, 0
            else:
                obs, state, avail = next_obs, next_state, next_avail
            alive = ~(next_avail[:, 0] & ~next_avail[:, 1:].any(-1))  # dead agents may only no-op
            rows.append((obs, state, avail, terminated or truncated, float(reward), terminated, truncated, next_obs,
                         next_state, next_avail, alive, bool(info.get("battle_won", False)), ep_ret, ep_len))
        cols = list(zip(*rows))
        names = ["obs", "state", "avail", "first", "reward", "terminated", "truncated", "next_obs", "next_state",
                 "next_avail", "alive", "won", "episode_return", "episode_length"]
        arr = {n: np.asarray(c) for n, c in zip(names, cols)}
        arr["reward"] = arr["reward"].astype(np.float32)
        return TimeStep(**arr)

    def get_state(self):
        return {"ret": self._ret.copy(), "len": self._len.copy(), "restarts": self.restarts}

    def set_state(self, snapshot) -> None:
        # SC2 itself cannot be restored; the runtime resets after a resume (snapshot_exact = False).
        self.restarts = snapshot.get("restarts", 0)

    @property
    def counters(self) -> dict:
        return {"sc2_restarts": self.restarts}

    def close(self) -> None:
        for env in self._envs:
            try:
                env.close()
            except Exception:
                pass
