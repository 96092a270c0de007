"""Export to the marl-eval JSON format (instadeepai/marl-eval; BenchMARL writes the same layout):

    {environment: {task: {algorithm: {run: {"step_<i>": {"step_count": int, metric: [value, ...]},
                                             "absolute_metrics": {metric: [value, ...]}}}}}}

- environment = the backend the runs ran on (smax, smac, smacv2, mamujoco), not the experiment: SMAX
  numbers are not StarCraft II numbers. A file is written per experiment (`smac.json` holds the smac
  experiment's runs, under the key `smax` when they ran on SMAX): pass `environment_name="smax"` to
  marl-eval's `create_matrices_for_rliable`.
- task = the map; algorithm = the variant (MARIE, QMIX, MARIE-H8, QMIX-eps10k: unique per run directory
  name, so two variants with the same label in an experiment never overwrite each other); run = seed_<s>.
- step_<i> = the i-th evaluation after training started: the untrained evaluation at env step 0 is left out,
  so that marl-eval, which infers the evaluation interval as the mean step_count difference from 0, gets
  the true interval. (marl-eval then draws step_i at i x interval.)
- metrics: `return` (every evaluation episode's return) and `win_rate` (every episode's outcome, 1 won /
  0 lost, where the env has wins), from eval_episodes.csv in the protocol's action mode. A run directory
  without eval_episodes.csv (written before it existed) contributes one value per evaluation, its mean;
  the notes say which.
- absolute_metrics = the final evaluation (marl-eval's "absolute metric" is meant to be a 10x longer
  evaluation of the best policy; we do not run one, and say so in notes).
Only complete runs are exported.
"""
from __future__ import annotations

import math
from pathlib import Path

from analysis.load import Collection, read_episodes


def _num(x) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else float(x)


def _points(run, ev, episodes) -> list[dict]:
    """One metrics dict per evaluation at env step > 0."""
    out = []
    for row in ev[ev["env_steps"] > 0].itertuples():
        metrics = {"step_count": int(row.env_steps)}
        ep = None
        if episodes is not None:
            ep = episodes[(episodes["env_steps"] == row.env_steps) & (episodes["mode"] == (row.eval_mode or run.eval_mode))]
        if ep is not None and len(ep):
            won = ep["won"].dropna()
            if len(won):
                metrics["win_rate"] = [float(w) for w in won]
            metrics["return"] = [float(r) for r in ep["return"]]
        else:
            if _num(row.win_rate) is not None:
                metrics["win_rate"] = [_num(row.win_rate)]
            metrics["return"] = [_num(row.return_mean)]
        out.append(metrics)
    return out


def marl_eval_json(coll: Collection) -> tuple[dict, list[str]]:
    data: dict = {}
    complete = coll.runs[coll.runs["complete"]]
    n_steps, summarized = set(), []
    for run in complete.itertuples():
        ev = coll.tidy[coll.tidy["key"] == run.key].sort_values("env_steps")
        episodes = read_episodes(Path(run.rundir) / "eval_episodes.csv")
        if episodes is None:
            summarized.append(run.key)
        points = _points(run, ev, episodes)
        if not points:
            continue
        steps = {f"step_{i}": m for i, m in enumerate(points)}
        steps["absolute_metrics"] = {k: v for k, v in points[-1].items() if k != "step_count"}
        node = data.setdefault(str(run.env), {}).setdefault(str(run.map), {}).setdefault(str(run.variant), {})
        node[f"seed_{run.seed}"] = steps
        n_steps.add(len(points))
    notes = ["absolute_metrics = the final evaluation (no separate 10x-episode evaluation of the best policy)",
             "step_i = the (i+1)-th evaluation after env step 0 (the untrained evaluation is not exported)"]
    if data:
        notes.append("marl-eval: environment_name=" + " or ".join(f"'{e}'" for e in data))
    if summarized:
        notes.append(f"{len(summarized)} run(s) have no eval_episodes.csv (older run directories): one value per "
                     f"evaluation (its mean) instead of per-episode values: {', '.join(summarized[:5])}"
                     + (" ..." if len(summarized) > 5 else ""))
    seed_sets = {(e, t, a): tuple(sorted(runs)) for e, tasks in data.items() for t, algos in tasks.items()
                 for a, runs in algos.items()}
    if len(set(seed_sets.values())) > 1:
        notes.append("marl-eval needs the same seeds for every algorithm and task; here: " + "; ".join(
            f"{t}/{a}: {len(v)} seed(s)" for (e, t, a), v in seed_sets.items()))
    for env, tasks in data.items():
        algos = {a for t in tasks.values() for a in t}
        gaps = [f"{t} lacks {', '.join(sorted(algos - set(a)))}" for t, a in tasks.items() if algos - set(a)]
        if gaps:
            notes.append(f"marl-eval needs every algorithm on every task of '{env}': " + "; ".join(gaps))
    if len(n_steps) > 1:
        notes.append(f"runs have different numbers of evaluation points ({sorted(n_steps)}); marl-eval's "
                     f"aggregation needs equal counts: export per experiment with equal budgets")
    return data, notes
