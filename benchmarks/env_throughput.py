"""Environment throughput with a uniformly random policy over available actions.

    python benchmarks/env_throughput.py --env smax --map 3m --num-envs 64 --steps 200
    python benchmarks/env_throughput.py --env mamujoco --map HalfCheetah-2x3 --num-envs 1 --steps 2000
Prints env-steps/s (first-call compilation excluded and reported apart).
"""
import argparse
import time

import numpy as np

from marie.envs import make_env


def random_actions(rng, ts, info):
    if info.continuous:
        low, high = np.array(info.action_low), np.array(info.action_high)
        return rng.uniform(low, high, size=ts.avail.shape).astype(np.float32)
    return (rng.random(ts.avail.shape) * ts.avail).argmax(-1)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--env", default="smax")
    p.add_argument("--map", default="3m")
    p.add_argument("--num-envs", type=int, default=64)
    p.add_argument("--steps", type=int, default=200, help="vector steps to time")
    a = p.parse_args()
    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    env = make_env(a.env, a.map, a.num_envs)
    ts = env.reset(0)
    ts = env.step(random_actions(rng, ts, env.info))
    startup = time.perf_counter() - t0
    wins = episodes = 0
    t0 = time.perf_counter()
    for _ in range(a.steps):
        ts = env.step(random_actions(rng, ts, env.info))
        wins += int(ts.won[ts.done].sum())
        episodes += int(ts.done.sum())
    dt = time.perf_counter() - t0
    print(f"{a.env} {a.map} num_envs={a.num_envs}: {a.steps * a.num_envs / dt:,.0f} env-steps/s "
          f"({a.steps * a.num_envs} steps in {dt:.2f} s; start-up incl. compilation {startup:.1f} s; "
          f"random policy won {wins}/{episodes} episodes)")


if __name__ == "__main__":
    main()
