"""Export to the marl-eval JSON format (instadeepai/marl-eval; BenchMARL writes the same layout):

    {environment: {task: {algorithm: {run: {"step_<i>": {"step_count": int, metric: [value], ...},
                                             "absolute_metrics": {metric: [value], ...}}}}}}

environment = our backend (smax, smac, smacv2, mamujoco), task = map, algorithm = the method or variant
label, run = "seed_<seed>". Metrics: win_rate (discrete maps) and return, one value per evaluation
(the mean over its episodes). absolute_metrics holds the final evaluation (marl-eval's "absolute metric"
is meant to be a 10x longer evaluation of the best policy; we do not run one, and say so in notes).
Only complete runs are exported.
"""
from __future__ import annotations

import math

from analysis.load import Collection


def _num(x) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else float(x)


def marl_eval_json(coll: Collection) -> tuple[dict, list[str]]:
    data: dict = {}
    complete = coll.runs[coll.runs["complete"]]
    n_steps = set()
    for run in complete.itertuples():
        ev = coll.tidy[coll.tidy["key"] == run.key].sort_values("env_steps")
        label = getattr(run, "label", run.variant)
        node = data.setdefault(run.env, {}).setdefault(run.map, {}).setdefault(str(label), {})
        steps = {}
        for i, row in enumerate(ev.itertuples()):
            metrics = {"step_count": int(row.env_steps)}
            if _num(row.win_rate) is not None:
                metrics["win_rate"] = [_num(row.win_rate)]
            metrics["return"] = [_num(row.return_mean)]
            steps[f"step_{i}"] = metrics
        if not steps:
            continue
        last = steps[f"step_{len(steps) - 1}"]
        steps["absolute_metrics"] = {k: v for k, v in last.items() if k != "step_count"}
        node[f"seed_{run.seed}"] = steps
        n_steps.add(len(steps) - 1)
    notes = ["absolute_metrics = the final evaluation (no separate 10x-episode evaluation of the best policy)"]
    if len(n_steps) > 1:
        notes.append(f"runs have different numbers of evaluation points ({sorted(n_steps)}); marl-eval's "
                     f"aggregation needs equal counts: export per experiment with equal budgets")
    return data, notes
