"""Win rates of two scripted ally policies on a SMAX map, against SMAX's heuristic enemy:
a uniformly random policy over available actions, and JaxMARL's heuristic (the enemy's own policy:
attack the closest unit in range, else walk towards a visible enemy) controlling the allies.

    python benchmarks/smax_map_baselines.py --map 2s_vs_1sc --episodes 100 --num-envs 64
Counts the first `episodes` episodes that end (all environments vmapped); a time-out is a loss.
"""
import argparse
import time

import numpy as np

from marie.envs import get_map
from marie.envs.smax import _compiled, _import_jax, scenario_key


def win_rate(map_name: str, policy: str, episodes: int, num_envs: int, seed: int = 0) -> dict:
    jax = _import_jax()
    import jax.numpy as jnp
    from jaxmarl.environments.smax.heuristic_enemy import get_heuristic_policy_initial_state

    env, reset, step, _ = _compiled(scenario_key(get_map("smax", map_name)))
    keys, st, ret, length, obs, _, avail = reset(jax.random.split(jax.random.PRNGKey(seed), num_envs))
    n = env.num_allies
    if policy == "heuristic":
        if not hasattr(env, "ally_heuristic"):
            from jaxmarl.environments.smax.heuristic_enemy import create_heuristic_policy
            act = jax.vmap(create_heuristic_policy(env._env, 0))
            act_one = lambda k, ps, o: act(jax.random.split(k, n), ps, o)  # noqa: E731
        else:
            act_one = env.ally_heuristic()
        act_all = jax.jit(jax.vmap(act_one))
        init = jax.tree.map(lambda x: jnp.broadcast_to(jnp.asarray(x), (num_envs, n) + jnp.shape(x)),
                            get_heuristic_policy_initial_state())
        ps = init
    rng, key = np.random.default_rng(seed), jax.random.PRNGKey(seed + 1)
    wins = done = steps = 0
    t0 = time.perf_counter()
    while done < episodes:
        if policy == "random":
            av = np.asarray(avail)
            actions = jnp.asarray(((rng.random(av.shape) + 1e-3) * av).argmax(-1).astype(np.int32))
        else:
            key, k = jax.random.split(key)
            actions, ps = act_all(jax.random.split(k, num_envs), ps, obs)
            actions = actions.astype(jnp.int32)
        keys, st, ret, length, out = step(keys, st, actions, ret, length)
        obs, avail, first = out["obs"], out["avail"], np.asarray(out["first"])
        if policy == "heuristic":  # a new episode starts the heuristic's memory afresh
            ps = jax.tree.map(lambda i, s: jnp.where(first.reshape((-1,) + (1,) * (s.ndim - 1)), i, s), init, ps)
        take = np.flatnonzero(first)[: episodes - done]
        wins += int(np.asarray(out["won"])[take].sum())
        done += len(take)
        steps += num_envs
    return dict(map=map_name, policy=policy, episodes=done, wins=wins, win_rate=wins / done,
                env_steps=steps, seconds=round(time.perf_counter() - t0, 1))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--map", required=True)
    p.add_argument("--policy", choices=["random", "heuristic", "both"], default="both")
    p.add_argument("--episodes", type=int, default=100)
    p.add_argument("--num-envs", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    for policy in (["random", "heuristic"] if a.policy == "both" else [a.policy]):
        print(win_rate(a.map, policy, a.episodes, a.num_envs, a.seed), flush=True)


if __name__ == "__main__":
    main()
