"""Run directories -> one tidy table, and the list of every problem by run name.

The input is a plan (the JSON the workflow writes to {results}/workflow/plan.json, see workflows/plan.py),
or, without a workflow, a folder of run directories found by their meta.json (`plan_from_scan`).

Tables:
- runs:     one row per planned run: key, rundir, env, map, method, variant, seed, algo, preset, budget,
            difficulty, status (completed | running | failed | missing), last_env_steps, complete (a
            completed run whose last evaluation reached its budget), message
- tidy:     one row per evaluation point of every run that has an eval.csv: key, env, map, method,
            variant, seed, budget, env_steps, win_rate, return_mean, return_std, episodes, length_mean, wall_s
- problems: one row per problem: key, kind (missing | running | failed | short | unavailable |
            unregistered | rejected), detail, experiments
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

EVAL_COLUMNS = ["env_steps", "win_rate", "return_mean", "return_std", "episodes", "length_mean", "wall_s"]
RUN_FIELDS = ["key", "rundir", "env", "map", "method", "variant", "seed", "algo", "preset", "budget", "difficulty"]


@dataclass
class Collection:
    plan: dict
    runs: pd.DataFrame
    tidy: pd.DataFrame
    problems: pd.DataFrame

    def experiment(self, name: str) -> "Collection":
        """The runs of one experiment, with their label in it (column `label`)."""
        keep = [k for k, exps in zip(self.runs["key"], self.runs["experiments"]) if name in exps]
        runs = self.runs[self.runs["key"].isin(keep)].copy()
        runs["label"] = [exps[name] for exps in runs["experiments"]]
        tidy = self.tidy[self.tidy["key"].isin(keep)].merge(runs[["key", "label"]], on="key")
        mask = np.array([name in e for e in self.problems["experiments"]], dtype=bool)
        problems = self.problems.loc[mask]
        return Collection(self.plan, runs.reset_index(drop=True), tidy.reset_index(drop=True),
                          problems.reset_index(drop=True))


def load_plan(path: str | Path) -> dict:
    with open(path) as f:
        return json.load(f)


def read_eval(path: Path) -> pd.DataFrame | None:
    if not path.exists() or path.stat().st_size == 0:
        return None
    try:
        df = pd.read_csv(path)
    except (pd.errors.EmptyDataError, pd.errors.ParserError):
        return None
    for c in EVAL_COLUMNS:
        if c not in df.columns:
            df[c] = float("nan")
    return df[EVAL_COLUMNS].apply(pd.to_numeric, errors="coerce").sort_values("env_steps")


def read_meta(path: Path) -> dict:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError):
        return {}


def collect(plan: dict, base: str | Path = ".") -> Collection:
    """Read every planned run; validate; never drop a run silently (each problem names its run)."""
    base = Path(base)
    rows, frames, problems = [], [], []
    for r in plan["runs"]:
        rundir = base / r["rundir"]
        meta = read_meta(rundir / "meta.json")
        ev = read_eval(rundir / "eval.csv")
        status = meta.get("status", "missing") if rundir.exists() else "missing"
        if status != "missing" and not meta:
            status = "missing"
        last = int(ev["env_steps"].max()) if ev is not None and len(ev) else None
        complete = status == "completed" and last is not None and last >= int(r["steps"])
        row = {f: r.get(f) for f in RUN_FIELDS}
        row.update(budget=int(r["steps"]), status=status, last_env_steps=last, complete=complete,
                   message=meta.get("message", ""), experiments=dict(r.get("experiments") or {}),
                   wall_s=meta.get("wall_s"), meta=meta)
        rows.append(row)
        exps = list(row["experiments"])
        if status == "missing":
            problems.append({"key": r["key"], "kind": "missing", "experiments": exps,
                             "detail": f"no run directory with meta.json at {r['rundir']}"})
        elif status == "failed":
            problems.append({"key": r["key"], "kind": "failed", "experiments": exps,
                             "detail": f"failed at {meta.get('env_steps')} env steps: {meta.get('message', '')}"})
        elif status != "completed":
            problems.append({"key": r["key"], "kind": "running", "experiments": exps,
                             "detail": f"unfinished (status {status}) at {meta.get('env_steps')} of {r['steps']} env steps"})
        elif not complete:
            problems.append({"key": r["key"], "kind": "short", "experiments": exps,
                             "detail": f"last evaluation at {last} env steps, short of the budget {r['steps']}"})
        if ev is not None and len(ev):
            ev = ev.copy()
            for f in ("key", "env", "map", "method", "variant", "seed"):
                ev[f] = r[f]
            ev["budget"] = int(r["steps"])
            frames.append(ev)
    for s in plan.get("skipped", []):
        problems.append({"key": s["key"], "kind": s["kind"], "experiments": [s["experiment"]], "detail": s["reason"]})
    runs = pd.DataFrame(rows, columns=RUN_FIELDS + ["status", "last_env_steps", "complete", "message", "experiments",
                                                    "wall_s", "meta"])
    tidy_cols = ["key", "env", "map", "method", "variant", "seed", "budget"] + EVAL_COLUMNS
    tidy = pd.concat(frames, ignore_index=True)[tidy_cols] if frames else pd.DataFrame(columns=tidy_cols)
    probs = pd.DataFrame(problems, columns=["key", "kind", "detail", "experiments"])
    if len(probs):  # one row per (run, kind): a skipped run shared by experiments is listed once
        probs = (probs.groupby(["key", "kind", "detail"], sort=False)["experiments"]
                 .apply(lambda s: sorted({e for x in s for e in x})).reset_index())
    return Collection(plan, runs, tidy, probs)


def plan_from_scan(runs_root: str | Path) -> dict:
    """A plan made of the run directories found under runs_root (runs made without the workflow): each run
    joins the experiment named after its map's family (smac, smacv2, mamujoco), labelled by its variant."""
    from marie.envs.registry import all_maps
    families = {name: spec.family for name, spec in all_maps().items()}
    root = Path(runs_root)
    runs, experiments = [], {}
    for meta_file in sorted(root.rglob("meta.json")):
        meta = read_meta(meta_file)
        if not meta:
            continue
        rundir = meta_file.parent
        variant = rundir.parent.name if rundir.name.startswith("seed") else str(meta.get("algo", "?"))
        key = f"{meta.get('env')}/{meta.get('map')}/{variant}/seed{meta.get('seed')}"
        exp = families.get(meta.get("map"), "runs")
        e = experiments.setdefault(exp, {"env": meta.get("env"), "maps": [], "variants": {}})
        if meta.get("map") not in e["maps"]:
            e["maps"].append(meta.get("map"))
        e["variants"].setdefault(variant, {"method": variant, "label": variant})
        runs.append({"key": key, "rundir": str(rundir), "env": meta.get("env"), "map": meta.get("map"),
                     "method": variant, "variant": variant, "seed": meta.get("seed"), "algo": meta.get("algo"),
                     "preset": meta.get("preset"), "steps": meta.get("steps"), "difficulty": "",
                     "experiments": {exp: variant}})
    return {"name": f"scan of {root}", "root": str(root), "backend": ", ".join(sorted({r["env"] for r in runs})),
            "seeds": sorted({r["seed"] for r in runs}), "runs": runs, "skipped": [], "experiments": experiments,
            "methods": {}, "targets": {}, "model_analysis": {}, "analysis": {}}


def problems_text(problems: pd.DataFrame) -> list[str]:
    return [f"{p.key}: {p.kind}: {p.detail}" for p in problems.itertuples()]
