"""Win rates of scripted ally policies on a SMAX map, against SMAX's heuristic enemy:
`random` (uniform over available actions), `heuristic` (JaxMARL's heuristic, the enemy's own policy: attack
the closest unit in range, else walk towards a visible enemy), and, on 2s_vs_1sc only, `switch`: a
privileged script (it reads the state) that passes the spine crawler's attention between the two
stalkers, the known way to win that map: the targeted stalker steps out of range once its shields are
gone and the other has shields or more health left; otherwise both shoot from just inside their range.

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
    if policy == "switch":
        if map_name != "2s_vs_1sc":
            raise SystemExit("--policy switch is a script for 2s_vs_1sc only")
        act_all = jax.jit(jax.vmap(switch_attention))
    rng, key = np.random.default_rng(seed), jax.random.PRNGKey(seed + 1)
    wins = done = steps = 0
    t0 = time.perf_counter()
    while done < episodes:
        if policy == "random":
            av = np.asarray(avail)
            actions = jnp.asarray(((rng.random(av.shape) + 1e-3) * av).argmax(-1).astype(np.int32))
        elif policy == "switch":
            actions = act_all(st)
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


def switch_attention(st):
    """2s_vs_1sc: the two stalkers' actions from the state (see the module's docstring)."""
    import jax.numpy as jnp
    s = st.state
    offset = s.unit_positions[:2] - s.unit_positions[2]       # stalkers relative to the spine
    dist = jnp.linalg.norm(offset, axis=-1)
    health, shields, alive = s.unit_health[:2], s.unit_shields[:2], s.unit_alive[:2]
    spine_action = s.prev_attack_actions[2]                    # enemy attack k targets ally 1 - k
    targeted = (spine_action >= 5) & (jnp.arange(2) == 1 - (spine_action - 5))
    other_fresher = alive[::-1] & ((shields[::-1] > 5) | (health[::-1] > health + 20))
    retreat = targeted & (shields <= 5) & other_fresher
    moves = jnp.array([[0, 1], [1, 0], [0, -1], [-1, 0]], jnp.float32)  # SMAX's four move actions
    towards, away = jnp.argmax(-offset @ moves.T, axis=-1), jnp.argmax(offset @ moves.T, axis=-1)
    fight = jnp.where(dist < 5.8, 5, towards)                  # 5: attack the spine
    return jnp.where(retreat, jnp.where(dist < 8.0, away, 4), fight).astype(jnp.int32)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--map", required=True)
    p.add_argument("--policy", choices=["random", "heuristic", "switch", "both"], default="both")
    p.add_argument("--episodes", type=int, default=100)
    p.add_argument("--num-envs", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    for policy in (["random", "heuristic"] if a.policy == "both" else [a.policy]):
        print(win_rate(a.map, policy, a.episodes, a.num_envs, a.seed), flush=True)


if __name__ == "__main__":
    main()
