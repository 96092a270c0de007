"""Run directories -> one tidy table, and the list of every problem by run name.

The input is a plan (the JSON the workflow writes to {results}/workflow/plan.json, see workflows/plan.py),
or, without a workflow, a folder of run directories found by their meta.json (`plan_from_scan`: each run is
identified by its own meta.json, never by its folder's name).

Tables:
- runs:     one row per planned run: key, rundir, log, env, map, method, variant, seed, algo, preset, budget,
            difficulty, status (completed | running | failed | missing), last_env_steps, complete (a
            completed run whose last evaluation reached its budget), message, experiments, wall_s, cpu_s,
            device, eval_episodes, eval_every, eval_mode (the evaluation protocol), has_episodes, meta
- tidy:     one row per evaluation point of every run that has an eval.csv: key, env, map, method,
            variant, seed, budget, env_steps, win_rate, return_mean, return_std, episodes, length_mean,
            wall_s, eval_mode, win_rate_greedy, return_mean_greedy, win_rate_sampled, return_mean_sampled
            (win_rate/return_mean are the protocol's mode; the other mode is NaN in run directories
            written before both modes were measured)
- problems: one row per problem: key, kind (missing | running | failed | short | unavailable |
            unregistered | rejected), detail, experiments

Per-episode outcomes (eval_episodes.csv: env_steps, mode, episode, won, return, length) are read on demand
by `read_episodes` (the marl-eval export uses them).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from marie.errors import UserError

NUMERIC_EVAL = ["env_steps", "win_rate", "return_mean", "return_std", "episodes", "length_mean", "wall_s",
                "win_rate_greedy", "return_mean_greedy", "win_rate_sampled", "return_mean_sampled"]
EVAL_COLUMNS = NUMERIC_EVAL[:7] + ["eval_mode"] + NUMERIC_EVAL[7:]
EPISODE_COLUMNS = ["env_steps", "mode", "episode", "won", "return", "length"]
RUN_FIELDS = ["key", "rundir", "log", "env", "map", "method", "variant", "seed", "algo", "preset", "budget",
              "difficulty"]
RUN_COLUMNS = RUN_FIELDS + ["status", "last_env_steps", "complete", "message", "experiments", "wall_s", "cpu_s",
                            "device", "eval_episodes", "eval_every", "eval_mode", "has_episodes", "meta"]
WORKFLOW_CONFIG = Path(__file__).resolve().parents[1] / "workflows" / "config.yaml"


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


def _read_csv(path: Path) -> pd.DataFrame | None:
    if not path.exists() or path.stat().st_size == 0:
        return None
    try:
        return pd.read_csv(path)
    except (pd.errors.EmptyDataError, pd.errors.ParserError):
        return None


def read_eval(path: Path, mode: str | None = None) -> pd.DataFrame | None:
    """eval.csv with every column of the contract. An old file (mean and std of one mode only) gets its
    eval_mode from `mode` (the run's config) and its win_rate copied into that mode's column."""
    df = _read_csv(Path(path))
    if df is None:
        return None
    for c in NUMERIC_EVAL:
        if c not in df.columns:
            df[c] = float("nan")
    df[NUMERIC_EVAL] = df[NUMERIC_EVAL].apply(pd.to_numeric, errors="coerce")
    if "eval_mode" not in df.columns:
        df["eval_mode"] = mode or ""
    df["eval_mode"] = df["eval_mode"].fillna(mode or "").astype(str)
    for m in ("greedy", "sampled"):
        at = df["eval_mode"] == m
        for v in ("win_rate", "return_mean"):
            fill = at & df[f"{v}_{m}"].isna()
            df.loc[fill, f"{v}_{m}"] = df.loc[fill, v]
    return df[EVAL_COLUMNS].sort_values("env_steps").reset_index(drop=True)


def read_episodes(path: Path) -> pd.DataFrame | None:
    """eval_episodes.csv (one row per evaluation episode and mode); None where the run has none."""
    df = _read_csv(Path(path))
    if df is None or not set(EPISODE_COLUMNS) <= set(df.columns):
        return None
    for c in ("env_steps", "episode", "won", "return", "length"):
        df[c] = pd.to_numeric(df[c], errors="coerce")
    df["mode"] = df["mode"].astype(str)
    return df[EPISODE_COLUMNS].sort_values(["env_steps", "mode", "episode"]).reset_index(drop=True)


def read_meta(path: Path) -> dict:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError):
        return {}


def read_config(path: Path) -> dict:
    try:
        with open(path) as f:
            return yaml.safe_load(f) or {}
    except (OSError, yaml.YAMLError):
        return {}


def eval_protocol(meta: dict, config: dict) -> dict:
    """{episodes, every, mode} of a run: meta.json's eval_protocol, else its config.yaml (older runs)."""
    p = dict(meta.get("eval_protocol") or {})
    run = config.get("run") or {}
    if "episodes" not in p and "eval_episodes" in run:
        p["episodes"] = run["eval_episodes"]
    if "every" not in p and "eval_every" in run:
        p["every"] = run["eval_every"]
    if "mode" not in p and isinstance(run.get("eval_sample"), bool):
        p["mode"] = "sampled" if run["eval_sample"] else "greedy"
    return {"episodes": p.get("episodes"), "every": p.get("every"), "mode": p.get("mode")}


def collect(plan: dict, base: str | Path = ".") -> Collection:
    """Read every planned run; validate; never drop a run silently (each problem names its run)."""
    base = Path(base)
    rows, frames, problems = [], [], []
    for r in plan["runs"]:
        rundir = base / r["rundir"]
        meta = read_meta(rundir / "meta.json")
        protocol = eval_protocol(meta, read_config(rundir / "config.yaml"))
        ev = read_eval(rundir / "eval.csv", protocol["mode"])
        if ev is not None and len(ev) and not protocol["mode"]:
            protocol["mode"] = str(ev["eval_mode"].iloc[-1]) or None
        status = meta.get("status", "missing") if rundir.exists() else "missing"
        if status != "missing" and not meta:
            status = "missing"
        last = int(ev["env_steps"].max()) if ev is not None and len(ev) else None
        complete = status == "completed" and last is not None and last >= int(r["steps"])
        row = {f: r.get(f) for f in RUN_FIELDS}
        row.update(budget=int(r["steps"]), status=status, last_env_steps=last, complete=complete,
                   message=meta.get("message", ""), experiments=dict(r.get("experiments") or {}),
                   wall_s=meta.get("wall_s"), cpu_s=meta.get("cpu_s"), device=meta.get("device"),
                   eval_episodes=protocol["episodes"], eval_every=protocol["every"], eval_mode=protocol["mode"],
                   has_episodes=(rundir / "eval_episodes.csv").exists(), meta=meta)
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
    runs = pd.DataFrame(rows, columns=RUN_COLUMNS)
    tidy_cols = ["key", "env", "map", "method", "variant", "seed", "budget"] + EVAL_COLUMNS
    tidy = pd.concat(frames, ignore_index=True)[tidy_cols] if frames else pd.DataFrame(columns=tidy_cols)
    probs = pd.DataFrame(problems, columns=["key", "kind", "detail", "experiments"])
    if len(probs):  # one row per (run, kind): a skipped run shared by experiments is listed once
        probs = (probs.groupby(["key", "kind", "detail"], sort=False)["experiments"]
                 .apply(lambda s: sorted({e for x in s for e in x})).reset_index())
    return Collection(plan, runs, tidy, probs)


def method_names() -> dict[str, str]:
    """`marie run --algo` name -> the workflow's method name (workflows/config.yaml `methods`)."""
    cfg = read_config(WORKFLOW_CONFIG)
    return {m["algo"]: name for name, m in (cfg.get("methods") or {}).items() if isinstance(m, dict) and "algo" in m}


def plan_from_scan(runs_root: str | Path) -> dict:
    """A plan made of the run directories found under runs_root (runs made without the workflow).

    A run is what its meta.json says: env, map, seed, preset and algo (named by the workflow's method name,
    e.g. mappo -> MAPPO), with meta.json's `variant` where it has one. Two directories that claim the same
    identity are an error naming both. A method found with several presets gets one variant per preset
    (`MAPPO-smoke`, `MAPPO-small`): the tables' method columns then hold none of them, the curves both.
    Each run joins the experiment named after its map's family (smac, smacv2, mamujoco)."""
    from marie.envs.registry import all_maps
    registry = all_maps()
    names = method_names()
    root = Path(runs_root)
    if not root.is_dir():
        raise UserError(f"analysis: {root} is not a folder of run directories")
    found = []
    for meta_file in sorted(root.rglob("meta.json")):
        meta = read_meta(meta_file)
        if not meta or not meta.get("map") or meta.get("algo") is None:
            continue
        method = names.get(meta["algo"], str(meta["algo"]))
        found.append({"rundir": meta_file.parent, "meta": meta, "method": method,
                      "variant": str(meta.get("variant") or method)})
    presets: dict[str, set] = {}
    for f in found:
        presets.setdefault(f["variant"], set()).add(f["meta"].get("preset"))
    runs, experiments, seen = [], {}, {}
    for f in found:
        meta, variant = f["meta"], f["variant"]
        if len(presets[variant]) > 1:
            variant = f"{variant}-{meta.get('preset')}"
        identity = (meta.get("env"), meta["map"], variant, meta.get("seed"), meta.get("preset"))
        if identity in seen:
            raise UserError(f"analysis: {seen[identity]} and {f['rundir']} are the same run (env {identity[0]}, "
                            f"map {identity[1]}, {variant}, seed {identity[3]}, preset {identity[4]}): "
                            f"keep one, or report them from separate folders")
        seen[identity] = f["rundir"]
        key = f"{meta.get('env')}/{meta['map']}/{variant}/seed{meta.get('seed')}"
        spec = registry.get(meta["map"])
        exp = spec.family if spec else "runs"
        e = experiments.setdefault(exp, {"env": meta.get("env"), "maps": [], "variants": {}})
        if meta["map"] not in e["maps"]:
            e["maps"].append(meta["map"])
        e["variants"].setdefault(variant, {"method": f["method"], "label": variant})
        logs = sorted(f["rundir"].glob("*.log"))
        runs.append({"key": key, "rundir": str(f["rundir"]), "log": str(logs[0]) if logs else None,
                     "env": meta.get("env"), "map": meta["map"], "method": f["method"], "variant": variant,
                     "seed": meta.get("seed"), "algo": meta.get("algo"), "preset": meta.get("preset"),
                     "steps": meta.get("steps") or meta.get("env_steps") or 0,
                     "difficulty": spec.difficulty if spec else "", "experiments": {exp: variant}})
    order = {m: i for i, m in enumerate(names.values())}  # the workflow's method order (its table columns)
    for e in experiments.values():
        e["variants"] = dict(sorted(e["variants"].items(), key=lambda kv: (order.get(kv[1]["method"], len(order)), kv[0])))
    methods = {f["method"]: {"algo": f["meta"]["algo"], "registered": True} for f in found}
    return {"name": f"scan of {root}", "root": str(root), "backend": ", ".join(sorted({str(r["env"]) for r in runs})),
            "seeds": sorted({r["seed"] for r in runs}, key=lambda x: (not isinstance(x, int), x if isinstance(x, int) else 0)), "runs": runs, "skipped": [],
            "experiments": experiments, "methods": methods, "targets": {}, "model_analysis": {}, "analysis": {}}


def problems_text(problems: pd.DataFrame) -> list[str]:
    return [f"{p.key}: {p.kind}: {p.detail}" for p in problems.itertuples()]
