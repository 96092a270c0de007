"""rliable aggregates (Agarwal et al., 2021): mean, median and IQM with stratified-bootstrap confidence
intervals (the paper's Fig. 13), and the probability of improvement of one method over the others (Fig. 14).

Scores are final win rates in [0, 1]: one matrix [runs x tasks] per method, tasks being maps.
"""
from __future__ import annotations

import warnings

import numpy as np
import pandas as pd


def _quiet_bootstrap(fn, *args, seed: int = 0, **kwargs):
    """rliable's stratified bootstrap, reproducible: it draws its resamples from NumPy's global generator
    (`np.random.choice`, whatever `random_state` says), so that generator is seeded for the call and then
    restored, and a report's CIs are the same at every rebuild. arch (under rliable) also warns that
    RandomState is deprecated on every bootstrap; we pass one on purpose."""
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="random_state is deprecated", category=FutureWarning)
            return fn(*args, random_state=np.random.RandomState(seed), **kwargs)
    finally:
        np.random.set_state(state)

AGGREGATES = ("Mean", "Median", "IQM")


def score_matrices(scores: pd.DataFrame, column: str = "column", task: str = "map", value: str = "win_rate",
                   columns: list[str] | None = None) -> tuple[dict[str, np.ndarray], list[str], list[str]]:
    """{method: [runs x tasks]} over the tasks every method has runs on; each method keeps the seeds it
    has on every one of those tasks. Returns (matrices, tasks, notes about what was left out)."""
    notes = []
    if not len(scores):
        return {}, [], ["no complete runs"]
    columns = [c for c in (columns or list(dict.fromkeys(scores[column]))) if c in set(scores[column])]
    tasks_by = {c: set(scores.loc[scores[column] == c, task]) for c in columns}
    tasks = sorted(set.intersection(*tasks_by.values())) if tasks_by else []
    for c in columns:
        extra = tasks_by[c] - set(tasks)
        if extra:
            notes.append(f"{c}: left out task(s) {', '.join(sorted(extra))} (not every method has runs there)")
    out = {}
    for c in columns:
        sub = scores[(scores[column] == c) & scores[task].isin(tasks)]
        seeds_per_task = [set(sub.loc[sub[task] == t, "seed"]) for t in tasks]
        common = sorted(set.intersection(*seeds_per_task)) if seeds_per_task else []
        if not common:
            notes.append(f"{c}: no seed with runs on every task")
            continue
        dropped = set().union(*seeds_per_task) - set(common)
        if dropped:
            notes.append(f"{c}: seeds {sorted(dropped)} left out (not complete on every task)")
        pivot = sub[sub["seed"].isin(common)].pivot_table(index="seed", columns=task, values=value, aggfunc="first")
        out[c] = pivot.reindex(index=common, columns=tasks).to_numpy(dtype=float)
    return out, tasks, notes


def iqm(x: np.ndarray) -> float:
    """Interquartile mean over all runs and tasks (25% trimmed on each side)."""
    from rliable import metrics
    return float(metrics.aggregate_iqm(np.asarray(x, dtype=float)))


def aggregate_intervals(matrices: dict[str, np.ndarray], reps: int = 2000, confidence: float = 0.95,
                        seed: int = 0) -> pd.DataFrame:
    """Point estimate and stratified-bootstrap CI of Mean, Median and IQM per method."""
    from rliable import library as rly
    from rliable import metrics
    if not matrices:
        return pd.DataFrame(columns=["method", "aggregate", "estimate", "lower", "upper", "runs", "tasks"])
    func = lambda x: np.array([metrics.aggregate_mean(x), metrics.aggregate_median(x), metrics.aggregate_iqm(x)])
    point, interval = _quiet_bootstrap(rly.get_interval_estimates, matrices, func, reps=reps,
                                       confidence_interval_size=confidence, seed=seed)
    rows = []
    for m, est in point.items():
        for i, name in enumerate(AGGREGATES):
            rows.append({"method": m, "aggregate": name, "estimate": float(est[i]),
                         "lower": float(interval[m][0, i]), "upper": float(interval[m][1, i]),
                         "runs": matrices[m].shape[0], "tasks": matrices[m].shape[1]})
    return pd.DataFrame(rows)


def improvement(matrices: dict[str, np.ndarray], reference: str, reps: int = 2000, confidence: float = 0.95,
                seed: int = 0) -> pd.DataFrame:
    """P(reference > other) averaged over tasks, with stratified-bootstrap CIs, for every other method."""
    from rliable import library as rly
    from rliable import metrics
    cols = ["reference", "baseline", "probability", "lower", "upper"]
    if reference not in matrices:
        return pd.DataFrame(columns=cols)
    pairs = {f"{reference},{m}": (matrices[reference], x) for m, x in matrices.items() if m != reference}
    if not pairs:
        return pd.DataFrame(columns=cols)
    point, interval = _quiet_bootstrap(rly.get_interval_estimates, pairs, metrics.probability_of_improvement, reps=reps,
                                       confidence_interval_size=confidence, seed=seed)
    return pd.DataFrame([{"reference": reference, "baseline": k.split(",", 1)[1], "probability": float(point[k]),
                          "lower": float(np.ravel(interval[k])[0]), "upper": float(np.ravel(interval[k])[1])}
                         for k in pairs], columns=cols)


def bootstrap_mean_ci(values: np.ndarray, reps: int = 2000, confidence: float = 0.95, seed: int = 0):
    """Mean over axis 0 (seeds) and a percentile-bootstrap CI of it, per column (e.g. per curve point)."""
    values = np.asarray(values, dtype=float)
    mean = np.nanmean(values, axis=0)
    if values.shape[0] < 2:
        return mean, mean.copy(), mean.copy()
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, values.shape[0], size=(reps, values.shape[0]))
    boots = np.nanmean(values[idx], axis=1)
    alpha = (1 - confidence) / 2
    return mean, np.nanquantile(boots, alpha, axis=0), np.nanquantile(boots, 1 - alpha, axis=0)
