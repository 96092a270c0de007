"""SMAX backend: JaxMARL's HeuristicEnemySMAX, one jitted+vmapped function per reset and per step.

A step is one device call and one host transfer for all E environments. Compiled functions are cached
per scenario, so every environment (training, evaluation, tests) of one map shares one compilation.
"""
from __future__ import annotations

import contextlib
import functools
import os
import sys
import warnings

import numpy as np

from marie.envs.base import EnvInfo, MultiAgentVecEnv, TimeStep
from marie.envs.registry import MapSpec


@contextlib.contextmanager
def _silence_stdout():
    """Silence file descriptor 1 while jaxmarl imports: one of its imports resets sys.stdout and
    sys.stderr to the process's original streams, so restore both Python-level streams afterwards."""
    streams = sys.stdout, sys.stderr
    sys.stdout.flush()
    saved, devnull = os.dup(1), os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    try:
        yield
    finally:
        sys.__stdout__.flush()
        os.dup2(saved, 1)
        os.close(saved)
        os.close(devnull)
        sys.stdout, sys.stderr = streams


def _import_jax():
    os.environ.setdefault("JAX_PLATFORMS", "cpu")  # the policy lives in torch; JAX only simulates
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    import jax
    if not getattr(_import_jax, "configured", False):
        # Compiling one map takes seconds: keep compiled functions on disk for later processes.
        cache = os.environ.get("MARIE_JAX_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "marie", "jax"))
        if cache != "off":
            jax.config.update("jax_compilation_cache_dir", cache)
            jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
        with warnings.catch_warnings(), _silence_stdout():  # "Submoduled environments not found": harmless
            warnings.simplefilter("ignore")
            import jaxmarl  # noqa: F401
        _import_jax.configured = True
    return jax


@functools.lru_cache(maxsize=None)
def _compiled(scenario_key: tuple):
    """Build the env and its jitted vmapped reset/step for one scenario (cached per process)."""
    jax = _import_jax()
    import jax.numpy as jnp
    from jaxmarl.environments.smax import HeuristicEnemySMAX, map_name_to_scenario
    from jaxmarl.environments.smax.smax_env import Scenario

    kind, payload = scenario_key
    if kind == "units":  # unit types SMAX lacks: MARIE's subclass of SMAX's step (smax_units.py)
        from marie.envs.smax_units import make_units_env
        env = make_units_env(*payload)
    else:
        if kind == "builtin":
            scenario = map_name_to_scenario(payload)
        else:
            allies, enemies = payload
            scenario = Scenario(jnp.array(list(allies) + list(enemies), dtype=jnp.uint8), len(allies),
                                len(enemies), False, False)
        env = HeuristicEnemySMAX(scenario=scenario)
    agents = env.agents
    n_allies = env.num_allies

    n_units, n_feat = env.num_allies + env.num_enemies, len(env.own_features)
    pos_scale = jnp.array([env.map_width, env.map_height], jnp.float32)

    def world_state(st):
        """SMAX's world state with SMAC-like scaling: positions by the map size, cooldowns by the unit's
        weapon cooldown, types by the number of types (SMAX leaves these raw, up to 32)."""
        raw = env.get_world_state(st)
        units = raw[: n_units * n_feat].reshape(n_units, n_feat)
        cooldown = jnp.clip(units[:, 3] / env.unit_type_weapon_cooldowns[st.state.unit_types], 0.0, 1.0)
        units = units.at[:, 1:3].divide(pos_scale).at[:, 3].set(cooldown)
        teams = raw[n_units * n_feat: n_units * (n_feat + 1)]
        types = raw[n_units * (n_feat + 1):] / (len(env.unit_type_names) - 1)
        return jnp.concatenate([units.reshape(-1), teams, types])

    def observe(st):
        obs = env.get_obs(st)
        avail = env.get_avail_actions(st)
        return (jnp.stack([obs[a] for a in agents]), world_state(st),
                jnp.stack([avail[a] for a in agents]).astype(bool))

    def strong(st):  # drop JAX weak types so step() sees the same input types after reset and after step
        return jax.tree.map(lambda x: x + jnp.zeros((), x.dtype), st)

    def reset_one(key):
        key, k = jax.random.split(key)
        _, st = env.reset(k)
        st = strong(st)
        obs, state, avail = observe(st)
        return key, st, jnp.zeros((), jnp.float32), jnp.zeros((), jnp.int32), obs, state, avail

    def step_one(key, st, actions, ep_return, ep_length):
        key, k_step, k_reset = jax.random.split(key, 3)
        _, st_next, rewards, dones, _ = env.step_env(k_step, st, {a: actions[i] for i, a in enumerate(agents)})
        reward = rewards[agents[0]]  # the team reward, identical for every ally
        alive = st_next.state.unit_alive
        allies_dead = ~jnp.any(alive[:n_allies])
        enemies_dead = ~jnp.any(alive[n_allies:])
        terminated = allies_dead | enemies_dead
        done = dones["__all__"]
        truncated = done & ~terminated
        won = enemies_dead & ~allies_dead
        next_obs, next_state, next_avail = observe(st_next)
        ep_return = ep_return + reward
        ep_length = ep_length + 1
        _, st_reset = env.reset(k_reset)
        st_new = strong(jax.tree.map(lambda r, s: jnp.where(done, r, s), st_reset, st_next))
        obs, state, avail = observe(st_new)
        out = dict(obs=obs, state=state, avail=avail, first=done, reward=reward, terminated=terminated,
                   truncated=truncated, next_obs=next_obs, next_state=next_state, next_avail=next_avail,
                   alive=alive[:n_allies], won=won, episode_return=ep_return, episode_length=ep_length)
        zero = jnp.zeros_like(ep_return)
        return key, st_new, jnp.where(done, zero, ep_return), jnp.where(done, 0, ep_length), out

    reset = jax.jit(jax.vmap(reset_one))
    step = jax.jit(jax.vmap(step_one))
    state_dim = int(jax.eval_shape(reset_one, jax.random.PRNGKey(0))[5].shape[-1])
    return env, reset, step, state_dim


def scenario_key(spec: MapSpec) -> tuple:
    support = spec.support("smax")
    if "register" in support and support.get("units") == "extended":
        reg = support["register"]
        return ("units", (tuple(reg["allies"]), tuple(reg["enemies"]), int(support.get("max_steps", 100))))
    if "register" in support:
        return ("custom", (tuple(support["register"]["allies"]), tuple(support["register"]["enemies"])))
    return ("builtin", support["scenario"])


class SMAXVecEnv(MultiAgentVecEnv):
    def __init__(self, spec: MapSpec, num_envs: int):
        jax = _import_jax()
        import jaxmarl
        self._jax = jax
        self.num_envs = num_envs
        self._env, self._reset, self._step, self._state_dim = _compiled(scenario_key(spec))
        a0 = self._env.agents[0]
        n_allies = self._env.num_allies
        self.info = EnvInfo(
            n_agents=n_allies, obs_dim=int(self._env.observation_spaces[a0].shape[0]),
            state_dim=self._state_dim, n_actions=int(self._env.action_spaces[a0].n),
            # SMAX checks the limit before counting the step, so a timed-out episode lasts max_steps + 1 steps
            episode_limit=int(self._env.max_steps) + 1, backend="smax",
            backend_version=f"jaxmarl {jaxmarl.__version__}, jax {jax.__version__}", map_name=spec.name,
            extra={"n_enemies": int(self._env.num_enemies), "smac_episode_limit": spec.episode_limit})
        self._keys = self._st = self._ret = self._len = None

    def reset(self, seed: int) -> TimeStep:
        jax = self._jax
        keys = jax.random.split(jax.random.PRNGKey(seed), self.num_envs)
        self._keys, self._st, self._ret, self._len, obs, state, avail = self._reset(keys)
        obs, state, avail = jax.device_get((obs, state, avail))
        E, N = self.num_envs, self.info.n_agents
        zeros_e, false_e = np.zeros(E, np.float32), np.zeros(E, bool)
        return TimeStep(obs=obs, state=state, avail=avail, first=np.ones(E, bool), reward=zeros_e,
                        terminated=false_e, truncated=false_e, next_obs=obs, next_state=state, next_avail=avail,
                        alive=np.ones((E, N), bool), won=false_e, episode_return=zeros_e,
                        episode_length=np.zeros(E, np.int32))

    def step(self, actions: np.ndarray) -> TimeStep:
        actions = np.asarray(actions, dtype=np.int32)
        self._keys, self._st, self._ret, self._len, out = self._step(self._keys, self._st, actions, self._ret,
                                                                     self._len)
        return TimeStep(**self._jax.device_get(out))

    def get_state(self):
        return self._jax.device_get((self._keys, self._st, self._ret, self._len))

    def set_state(self, snapshot) -> None:
        self._keys, self._st, self._ret, self._len = self._jax.tree.map(self._jax.numpy.asarray, snapshot)
