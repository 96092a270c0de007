"""What the runs cost, from each run's meta.json: wall hours, CPU hours (process CPU seconds, cumulative over
resumes) and GPU hours (the wall hours of runs on a cuda device), per method and map, and for the grid.

Run directories written before meta.json had cpu_s count their wall time only; the table says how many.
"""
from __future__ import annotations

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
