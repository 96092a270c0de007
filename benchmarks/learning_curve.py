"""Learning benchmark: run one algorithm with a preset on one map over a few seeds, print its curve.

    python benchmarks/learning_curve.py --algo random --map 3m --seeds 0 1 2 --steps 20000 --preset small
    python benchmarks/learning_curve.py --algo qmix --map 3m --seeds 0 1 --steps 50000 --set run.eval_every=5000

Each seed is a normal `marie run` into --root (default results/benchmarks); an interrupted benchmark
resumes. Prints win rate (or return) per evaluation point for every seed, their mean, and the wall time.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from marie.runtime import Runner, prepare


def main(argv=None) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--algo", required=True)
    p.add_argument("--env", default="smax")
    p.add_argument("--map", default="3m")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--steps", type=int, default=20000)
    p.add_argument("--preset", default="small")
    p.add_argument("--root", default="results/benchmarks")
    p.add_argument("--set", dest="overrides", action="append", default=[])
    a = p.parse_args(argv)
    frames = []
    for seed in a.seeds:
        out = Path(a.root) / a.env / a.map / f"{a.algo}-{a.preset}" / f"seed{seed}"
        config, rundir = prepare(algo=a.algo, env=a.env, map_name=a.map, seed=seed, steps=a.steps, preset=a.preset,
                                 overrides=a.overrides, out=out)
        meta = Runner(config, rundir).train()
        df = pd.read_csv(rundir.eval_file)
        df["seed"] = seed
        frames.append(df)
        print(f"seed {seed}: {meta['status']}, wall {meta.get('wall_s', float('nan')):.0f} s", file=sys.stderr)
    df = pd.concat(frames)
    metric = "win_rate" if df["win_rate"].notna().any() else "return_mean"
    table = df.pivot_table(index="env_steps", columns="seed", values=metric)
    table["mean"] = table.mean(axis=1)
    wall = df.groupby("seed")["wall_s"].max()
    print(f"{a.algo} ({a.preset}) on {a.env} {a.map}: {metric} per evaluation point")
    print(table.round(3).to_string())
    print(f"wall time per seed (s): {', '.join(f'{s}: {w:.0f}' for s, w in wall.items())}")
    print(f"final {metric}: mean {table['mean'].iloc[-1]:.3f}, best mean over the curve {table['mean'].max():.3f}")


if __name__ == "__main__":
    main()
