"""What the runs cost, from each run's meta.json: wall hours, CPU hours (process CPU seconds, cumulative over
resumes) and GPU hours (the wall hours of runs on a cuda device), per method and map, and for the grid.

Run directories written before meta.json had cpu_s count their wall time only; the table says how many.
Where a run's train.csv logs the seconds of each training phase (MARIE: time_*_s), `phase_split` says where
its wall time went, per 10k env steps.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

COLUMNS = ["variant", "map", "runs", "device", "wall_h", "cpu_h", "gpu_h", "without_cpu_s"]


def run_costs(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per run that started (has a meta.json): key, variant, map, device, wall_h, cpu_h, gpu_h."""
    started = runs[runs["status"] != "missing"]
    wall = pd.to_numeric(started["wall_s"], errors="coerce") / 3600
    cpu = pd.to_numeric(started["cpu_s"], errors="coerce") / 3600
    gpu = wall.where(started["device"].fillna("").astype(str).str.startswith("cuda"), 0.0)
    return pd.DataFrame({"key": started["key"], "variant": started["variant"], "map": started["map"],
                         "device": started["device"].fillna("?"), "wall_h": wall, "cpu_h": cpu, "gpu_h": gpu})


def cost_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Per (variant, map): runs, devices, summed hours; a last row `total` for the whole grid."""
    rc = run_costs(runs)
    if not len(rc):
        return pd.DataFrame(columns=COLUMNS)

    def agg(g: pd.DataFrame) -> dict:
        return {"runs": len(g), "device": ", ".join(sorted(set(g["device"]))),
                "wall_h": g["wall_h"].sum(min_count=1), "cpu_h": g["cpu_h"].sum(min_count=1),
                "gpu_h": g["gpu_h"].sum(min_count=1), "without_cpu_s": int(g["cpu_h"].isna().sum())}

    rows = [dict(variant=v, map=m, **agg(g)) for (v, m), g in rc.groupby(["variant", "map"], sort=False)]
    rows.append(dict(variant="total", map="all", **agg(rc)))
    return pd.DataFrame(rows, columns=COLUMNS)


def cost_markdown(table: pd.DataFrame) -> str:
    if not len(table):
        return ""
    fmt = lambda x: "–" if pd.isna(x) else f"{x:.3g}"
    lines = ["| method | map | runs | device | wall h | CPU h | GPU h |", "|---|---|---|---|---|---|---|"]
    for r in table.itertuples():
        cpu = fmt(r.cpu_h) + (f" ({r.without_cpu_s} run(s) without cpu_s)" if r.without_cpu_s else "")
        name = f"**{r.variant}**" if r.variant == "total" else r.variant
        lines.append(f"| {name} | {r.map} | {r.runs} | {r.device} | {fmt(r.wall_h)} | {cpu} | {fmt(r.gpu_h)} |")
    return "\n".join(lines) + "\n"


PHASES = {"time_tokenizer_s": "tokenizer", "time_world_model_s": "world model", "time_imagination_s": "imagination",
          "time_ppo_s": "PPO"}


def phase_split(runs: pd.DataFrame, per_steps: int = 10_000) -> pd.DataFrame:
    """Per (variant, map) of the complete runs whose train.csv has per-phase seconds: the mean over runs of
    each phase's seconds per `per_steps` env steps, and `rest` (environment, acting, evaluation, checkpoints:
    the run's wall time minus its phases). A phase a run did not log is NaN there, and so is its rest."""
    rows = []
    for r in runs[runs["complete"]].itertuples():
        train = Path(r.rundir) / "train.csv"
        if not train.exists() or not r.wall_s or not r.last_env_steps:
            continue
        t = pd.read_csv(train)
        if not any(c in t.columns for c in PHASES):
            continue
        scale = per_steps / float(r.last_env_steps)
        row = {"variant": r.variant, "map": r.map}
        for col, name in PHASES.items():
            row[name] = float(t[col].sum()) * scale if col in t.columns else np.nan
        row["total"] = float(r.wall_s) * scale
        row["rest"] = row["total"] - sum(row[n] for n in PHASES.values())
        rows.append(row)
    cols = ["variant", "map", "runs", *PHASES.values(), "rest", "total"]
    if not rows:
        return pd.DataFrame(columns=cols)
    df = pd.DataFrame(rows)
    out = df.groupby(["variant", "map"], sort=False).agg(  # a mean over the runs that logged the phase
        runs=("total", "size"), **{n: (n, "mean") for n in [*PHASES.values(), "rest", "total"]}).reset_index()
    return out[cols]


def phase_markdown(split: pd.DataFrame, per_steps: int = 10_000) -> str:
    """Seconds per `per_steps` env steps of each phase, with its share of the run's wall time."""
    if not len(split):
        return ""
    names = [*PHASES.values(), "rest"]
    lines = ["| method | map | runs | " + " | ".join(names) + f" | wall s per {per_steps // 1000}k steps |",
             "|---|---|---|" + "---|" * (len(names) + 1)]
    for _, r in split.iterrows():
        cells = ["–" if pd.isna(r[n]) else f"{r[n]:,.0f} ({r[n] / r['total']:.0%})" for n in names]
        lines.append(f"| {r['variant']} | {r['map']} | {r['runs']} | " + " | ".join(cells) + f" | {r['total']:,.0f} |")
    return "\n".join(lines) + "\n"
