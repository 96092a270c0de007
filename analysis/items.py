"""Build one registry item (paper_figures/figures.yaml) from the collected runs: a table, a figure, an export.

Each builder writes its files under out/<item>/ and returns an Item: what was made, from how many runs,
and notes (what is missing, what differs from the paper). An item without data says why.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

import paper_figures
from analysis import plots, stats
from analysis.describe import caption
from analysis.load import Collection
from analysis.tables import comparison, final_scores


@dataclass
class Item:
    name: str
    title: str
    kind: str
    target: str
    status: str = "empty"                    # ok | partial | empty | unavailable | not-in-plan
    files: list[str] = field(default_factory=list)
    markdown: str = ""                       # tables rendered in Markdown (for the report)
    caption: list[str] = field(default_factory=list)   # what is shown: setting, protocol, budget, backend
    html: str = ""
    notes: list[str] = field(default_factory=list)
    runs: int = 0


@dataclass
class Settings:
    reps: int = 2000
    confidence: float = 0.95
    points: int = 50
    formats: tuple = ("png", "pdf")
    reference_method: str = "MARIE"
    ddof: int = 0

    @classmethod
    def from_plan(cls, plan: dict, **overrides) -> "Settings":
        a = plan.get("analysis") or {}
        s = cls(reps=int(a.get("bootstrap_reps", 2000)), confidence=float(a.get("confidence", 0.95)),
                points=int(a.get("curve_points", 50)), formats=tuple(a.get("figure_formats", ("png", "pdf"))),
                reference_method=str(a.get("improvement_reference", "MARIE")), ddof=int(a.get("std_ddof", 0)))
        for k, v in overrides.items():
            if v is not None:
                setattr(s, k, v)
        return s


def _experiment_names(spec: dict) -> list[str]:
    names = list(spec.get("experiments") or ([spec["experiment"]] if spec.get("experiment") else []))
    for col in spec.get("columns") if isinstance(spec.get("columns"), list) else []:
        if col["experiment"] not in names:
            names.append(col["experiment"])
    return names


def build(name: str, spec: dict, coll: Collection, out: Path, settings: Settings,
          reference: Collection | None = None) -> Item:
    """reference: a reference reproduction's runs (`report --reference DIR`): Table 1 shows them beside ours."""
    item = Item(name=name, title=spec.get("title", name), kind=spec["kind"], target=spec.get("target", ""))
    if spec.get("note"):
        item.notes.append(spec["note"])
    if spec["kind"] in ("compounding_error", "attention", "action_ranking"):
        return _model_analysis(item, spec, coll, out / name, settings)
    exps = _experiment_names(spec)
    missing = [e for e in exps if e not in coll.plan.get("experiments", {})]
    if missing and (spec["kind"] != "marl_eval" or len(missing) == len(exps)):  # the export takes what exists
        item.status = "not-in-plan"
        item.notes.append(f"experiment(s) {', '.join(missing)} are not part of this plan")
        return item
    if spec["kind"] == "table":
        _table(item, spec, coll, out / name, settings, reference)
    else:
        builder = {"curves": _curves, "aggregates": _aggregates, "improvement": _improvement,
                   "marl_eval": _marl_eval, "sample_efficiency": _sample_efficiency,
                   "training_curves": _training_curves, "intervention": _intervention}[spec["kind"]]
        builder(item, spec, coll, out / name, settings)
    for e in exps:
        if e in coll.plan.get("experiments", {}):
            kinds = coll.experiment(e).problems["kind"].value_counts()
            if len(kinds):
                item.notes.append(f"{e}: runs not complete (each listed under Missing runs): "
                                  + ", ".join(f"{n} {k}" for k, n in kinds.items()))
    return item


# -- tables ---------------------------------------------------------------------------------------------
def _used(coll: Collection, keys) -> pd.DataFrame:
    """The rows of coll.runs behind an item (for its caption)."""
    return coll.runs[coll.runs["key"].isin(set(keys))]


def _approximations(coll: Collection, env: str, maps: list[str]) -> dict[str, str]:
    """map -> note, for the maps that are approximations on this backend (marie/envs/maps.yaml)."""
    from marie.envs.registry import all_maps
    reg = all_maps()
    return {m: reg[m].support(env).get("note", "") for m in maps
            if m in reg and reg[m].status(env) == "approximation"}


def _table(item: Item, spec: dict, coll: Collection, out: Path, s: Settings,
           reference: Collection | None = None) -> None:
    rows = list(spec.get("rows", ["map"]))
    value, scale = spec.get("value", "win_rate"), float(spec.get("scale", 100))
    cols = spec["columns"]
    parts, refs, labels, repro = [], [], [], None
    if isinstance(cols, list):                                   # explicit columns (Table 11)
        for c in cols:
            if c["experiment"] not in coll.plan["experiments"]:
                continue
            sc = final_scores(coll.experiment(c["experiment"]))
            sc = sc[sc["variant"] == c["variant"]].assign(column=c["label"])
            parts.append(sc)
            if c.get("param") and len(sc):
                values = sorted({str(_config_value(coll, k, c["param"])) for k in sc["key"]})
                item.notes.append(f"{c['label']} (ours): {c['param']} = {', '.join(values)} in these runs")
            labels.append(c["label"])
            if c.get("reference"):
                ref = paper_figures.reference(c["reference"]["file"])
                for k, v in (c["reference"].get("where") or {}).items():
                    ref = ref[ref[k] == v]
                refs.append(ref.assign(column=c["label"]))
        exp_maps = [m for c in cols if c["experiment"] in coll.plan["experiments"]
                    for m in coll.plan["experiments"][c["experiment"]]["maps"]]
    else:
        exp = spec["experiment"]
        sub = coll.experiment(exp)
        sc = final_scores(sub)
        variants = coll.plan["experiments"][exp]["variants"]
        if cols == "methods":                                     # one column per method (Table 1)
            sc = sc[sc["variant"] == sc["method"]].assign(column=lambda d: d["method"])
            labels = [v for v, d in variants.items() if v == d["method"]]
            if reference is not None and exp in reference.plan["experiments"]:
                rsc = final_scores(reference.experiment(exp))
                repro = rsc[rsc["variant"] == rsc["method"]].assign(column=lambda d: d["method"])
        else:                                                     # one column per variant label (Table 12)
            sc = sc.assign(column=sc["label"].astype(str))
            labels = list(dict.fromkeys(str(d["label"]) for d in variants.values()))
        parts.append(sc)
        if spec.get("reference"):
            ref = paper_figures.reference(spec["reference"]["file"])
            refs.append(ref.assign(column=ref[spec["reference"]["column"]].astype(str)))
        exp_maps = coll.plan["experiments"][exp]["maps"]
    scores = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()
    paper = pd.concat(refs, ignore_index=True) if refs else None
    if paper is not None:  # the paper's numbers only for the maps of this plan
        paper = paper[paper["map"].isin(exp_maps)]
    if repro is not None:
        repro = repro[repro["map"].isin(exp_maps) & repro["column"].isin(labels)]
    envs = sorted({coll.plan["experiments"][c["experiment"]]["env"] for c in cols
                   if c["experiment"] in coll.plan["experiments"]} if isinstance(cols, list)
                  else {coll.plan["experiments"][spec["experiment"]]["env"]})
    approx = {m: n for env in envs for m, n in _approximations(coll, env, exp_maps).items()}
    row_info = _row_info(coll, rows, exp_maps, scores, paper)
    if rows == ["map"] and len(row_info):
        row_info[f"on {'/'.join(envs)}"] = ["approximation †" if m in approx else "exact" for m in row_info["map"]]
    item.caption = caption(_used(coll, scores["key"]) if len(scores) else coll.runs.iloc[0:0])
    if repro is not None:
        item.caption += caption(_used(reference, repro["key"]), whose="Reference reproduction "
                                f"(`{reference.plan.get('root')}`, columns `(reference)`)")
    if paper is not None and len(paper):
        item.caption.append("Paper (columns `(paper)`): StarCraft II SMAC, each map's budget of the paper, 4 seeds.")
    if approx:
        item.caption.append("† approximation on this backend (`marie maps`): " + "; ".join(
            f"{m}: {n}" for m, n in approx.items()))
    item.caption.append("Bold: the highest mean of ours only where its mean ± std (over ≥ 2 seeds) is clear of "
                        "every other column's mean ± std; none otherwise.")
    table = comparison(scores, paper, title=item.title, rows=rows, columns=labels, value=value, scale=scale,
                       ddof=s.ddof, fmt=spec.get("format", "{mean:.1f} ({std:.1f})"),
                       expected_n=len(coll.plan.get("seeds", [])) or None, row_info=row_info,
                       note="\n".join(item.caption), reproduction=repro)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{item.name}.csv").write_text(table.to_csv())
    md = table.to_markdown()
    (out / f"{item.name}.md").write_text(f"{item.title}\n\n" + "".join(f"{c}\n\n" for c in item.caption) + md)
    (out / f"{item.name}.tex").write_text(table.to_latex())
    scores.to_csv(out / f"{item.name}_runs.csv", index=False)
    item.files += [str(out / f"{item.name}.{e}") for e in ("csv", "md", "tex")] + [str(out / f"{item.name}_runs.csv")]
    item.markdown = md
    item.runs = len(scores)
    item.status = "ok" if len(scores) else "empty"
    item.notes.append("cells: ours = mean (std) over seeds of each complete run's final evaluation "
                      f"(std with ddof={s.ddof}); [n=k] marks cells with fewer seeds than planned; – = no data")


def _config_value(coll: Collection, key: str, dotted: str):
    """A value of a run's resolved config.yaml (e.g. params.epsilon_anneal_time); None if absent."""
    import yaml
    rundir = coll.runs.loc[coll.runs["key"] == key, "rundir"].iloc[0]
    try:
        with open(Path(rundir) / "config.yaml") as f:
            node = yaml.safe_load(f)
        for part in dotted.split("."):
            node = node[part]
        return node
    except (OSError, KeyError, TypeError):
        return None


def _row_info(coll: Collection, rows: list[str], maps: list[str], scores: pd.DataFrame,
              reference: pd.DataFrame | None) -> pd.DataFrame:
    maps = list(dict.fromkeys(maps))
    budget, difficulty = {}, {}
    for r in list(coll.plan.get("skipped", [])) + list(coll.plan["runs"]):  # planned runs win
        budget[r["map"]] = r.get("steps", budget.get(r["map"]))
        difficulty[r["map"]] = r.get("difficulty", difficulty.get(r["map"], ""))
    if rows == ["map"]:
        from marie.envs.registry import all_maps
        reg = all_maps()
        return pd.DataFrame({"map": maps, "difficulty": [difficulty.get(m, "") for m in maps],
                             "budget (ours)": [budget.get(m) if budget.get(m) is not None else "" for m in maps],
                             "budget (paper)": [reg[m].budget if m in reg else "" for m in maps]})
    keys = pd.concat([d[rows] for d in (scores, reference) if d is not None and len(d)], ignore_index=True) \
        if (len(scores) or (reference is not None and len(reference))) else pd.DataFrame(columns=rows)
    keys = keys.drop_duplicates()
    return keys.sort_values(rows, key=lambda c: c.map({m: i for i, m in enumerate(maps)}) if c.name == "map" else c)


# -- curves ---------------------------------------------------------------------------------------------
def _curves(item: Item, spec: dict, coll: Collection, out: Path, s: Settings) -> None:
    exp = spec["experiment"]
    sub = coll.experiment(exp)
    value, x = spec.get("value", "win_rate"), spec.get("x", "env_steps")
    tidy = sub.tidy.dropna(subset=[value])
    maps = [m for m in (spec.get("maps") or coll.plan["experiments"][exp]["maps"])
            if m in coll.plan["experiments"][exp]["maps"]]
    tidy = tidy[tidy["map"].isin(maps)]
    curves = plots.curve_frame(tidy, "label", x, value, s.points, s.reps, s.confidence)
    ref = None
    if spec.get("reference") and len(curves):
        ref = _official_curves(spec["reference"], curves, value, s)
    paper_final = None
    if spec.get("paper_final") and len(curves):  # the paper's final Table 1 value, where it has no curve
        pf = paper_figures.reference(spec["paper_final"]["file"])
        paper_final = pf.rename(columns={"method": "label"}).assign(mean=lambda d: d["mean"] / 100.0)
    out.mkdir(parents=True, exist_ok=True)
    labels = list(dict.fromkeys(d["label"] for d in coll.plan["experiments"][exp]["variants"].values()))
    files = plots.learning_curves(curves, out / item.name, group="label", x=x, maps=maps, order=labels,
                                  ylabel=spec.get("ylabel", "win rate"), reference=ref, formats=s.formats,
                                  ylim=(0, 1) if value == "win_rate" else None, paper_final=paper_final)
    item.caption = caption(_used(sub, tidy["key"]))
    if paper_final is not None:
        item.caption.append("Stars: the paper's final Table 1 value of each method, at the paper's budget (at the "
                            "panel's right edge where our runs are shorter; the panel then names the paper's budget).")
    curves.to_csv(out / f"{item.name}_curves.csv", index=False)
    files.append(str(out / f"{item.name}_curves.csv"))
    if ref is not None and len(ref):
        ref.to_csv(out / f"{item.name}_reference_curves.csv", index=False)
        files.append(str(out / f"{item.name}_reference_curves.csv"))
    item.files += files
    item.runs = tidy["key"].nunique()
    item.status = "ok" if len(curves) else "empty"
    if len(curves):
        item.notes.append(f"mean over seeds with a {int(s.confidence * 100)}% percentile-bootstrap CI "
                          f"({s.reps} resamples); curves interpolated onto {s.points} points")


def sample_efficiency(tidy: pd.DataFrame, value: str, fractions: list[float], threshold: float | None, reps: int,
                      confidence: float, gain: bool = False) -> pd.DataFrame:
    """Per map and variant: `value` at each fraction of the run's budget (each seed's evaluations linearly
    interpolated there; mean and percentile-bootstrap CI over seeds), and the first evaluation step at which
    the mean over seeds reaches `threshold` (NaN: never within the budget; only steps every seed evaluated;
    no such column when `threshold` is None). gain: also each seed's `value` at the budget minus its first
    evaluation's (mean and CI over seeds) and whether the method improved on its initial value: "improves"
    where the CI lies above 0, "worse" where it lies below, "not clearly" where it holds 0."""
    rows = []
    for (m, variant), g in tidy.groupby(["map", "variant"], sort=False):
        budget = float(g["budget"].max())
        per_seed = {seed: d.sort_values("env_steps") for seed, d in g.groupby("seed")}
        row = {"map": m, "variant": variant, "seeds": len(per_seed), "budget": int(budget)}
        for f in fractions:
            at = np.array([np.interp(f * budget, d["env_steps"], d[value]) for d in per_seed.values()])[:, None]
            mean, lo, hi = stats.bootstrap_mean_ci(at, reps, confidence)
            row.update({f"at_{f:g}_mean": mean[0], f"at_{f:g}_lo": lo[0], f"at_{f:g}_hi": hi[0]})
        if gain:
            diff = np.array([np.interp(budget, d["env_steps"], d[value]) - d[value].iloc[0]
                             for d in per_seed.values()])[:, None]
            mean, lo, hi = stats.bootstrap_mean_ci(diff, reps, confidence)
            row.update({"gain_mean": mean[0], "gain_lo": lo[0], "gain_hi": hi[0], "first_step": int(min(
                d["env_steps"].iloc[0] for d in per_seed.values())), "improves": "improves" if lo[0] > 0
                else "worse" if hi[0] < 0 else "not clearly"})
        if threshold is not None:
            common = g.groupby("env_steps")[value].agg(["mean", "count"])
            reached = common[(common["count"] == len(per_seed)) & (common["mean"] >= threshold)]
            row["steps_to_threshold"] = float(reached.index.min()) if len(reached) else np.nan
        rows.append(row)
    return pd.DataFrame(rows)


def _sample_efficiency(item: Item, spec: dict, coll: Collection, out: Path, s: Settings) -> None:
    exp = spec["experiment"]
    sub = coll.experiment(exp)
    value = spec.get("value", "win_rate")
    threshold = float(spec["threshold"]) if spec.get("threshold") is not None else None
    fractions = [float(f) for f in spec.get("fractions", [0.25, 0.5, 1.0])]
    tidy = sub.tidy.dropna(subset=[value])
    if not len(tidy):
        item.notes.append("no evaluations yet")
        return
    gain = bool(spec.get("gain"))
    table = sample_efficiency(tidy, value, fractions, threshold, s.reps, s.confidence, gain)
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / f"{item.name}.csv", index=False)
    shown = pd.DataFrame({"map": table["map"], "method": table["variant"], "seeds": table["seeds"]})
    for f in fractions:
        shown[f"{f:.0%} of budget"] = [f"{r[f'at_{f:g}_mean']:.2f}" + (
            f" [{r[f'at_{f:g}_lo']:.2f}, {r[f'at_{f:g}_hi']:.2f}]" if r["seeds"] > 1 else " (1 seed: no CI)")
            for _, r in table.iterrows()]
    if threshold is not None:
        shown[f"steps to {threshold:g}"] = [f"{int(v):,}" if np.isfinite(v) else f"> {b:,}"
                                            for v, b in zip(table["steps_to_threshold"], table["budget"])]
    if gain:
        shown["gain over the first evaluation"] = [
            f"{r['gain_mean']:+.2f}" + (f" [{r['gain_lo']:+.2f}, {r['gain_hi']:+.2f}]" if r["seeds"] > 1 else " (1 seed)")
            for _, r in table.iterrows()]
        shown["improves on it"] = [r["improves"] if r["seeds"] > 1 else "– (1 seed)" for _, r in table.iterrows()]
    item.markdown = _md(shown)
    (out / f"{item.name}.md").write_text(item.markdown + "\n")
    item.files += [str(out / f"{item.name}.csv"), str(out / f"{item.name}.md")]
    item.caption = caption(_used(sub, tidy["key"]))
    item.notes.append(f"{value} at each fraction of the budget: each seed's evaluations interpolated linearly "
                      f"there; mean and {int(s.confidence * 100)}% percentile-bootstrap CI over seeds "
                      f"({s.reps} resamples)" + (f". Steps to {threshold:g}: the first evaluation at which the mean "
                      f"over seeds reaches it (the threshold is fixed in paper_figures/figures.yaml)"
                      if threshold is not None else "") + (
                      f". Gain: each seed's {value} at the budget minus its first evaluation's (at step 0), mean and "
                      f"CI over seeds; it improves where that CI lies above 0 (fixed in paper_figures/figures.yaml)"
                      if gain else ""))
    item.runs = tidy["key"].nunique()
    item.status = "ok"


def training_series(runs: pd.DataFrame, tidy: pd.DataFrame, metrics: dict[str, str], eval_metrics: dict[str, str],
                    bins: int) -> pd.DataFrame:
    """One value per run, metric and env-step bin (key, map, variant, seed, metric, env_steps, value): a
    train.csv metric is the mean of the updates logged in the bin (they are per update, so noisy); an
    evaluation metric is the run's evaluations interpolated at the bin's centre. Bins split each run's
    budget into `bins` equal parts; the runs of one map share them, so seeds can be averaged bin by bin."""
    rows = []
    for r in runs.itertuples():
        edges = np.linspace(0, float(r.budget), bins + 1)
        centres = (edges[:-1] + edges[1:]) / 2
        ident = {"key": r.key, "map": r.map, "variant": r.variant, "seed": r.seed}
        train = Path(r.rundir) / "train.csv"
        if metrics and train.exists():
            t = pd.read_csv(train)
            t = t[(t["env_steps"] > 0) & (t["env_steps"] <= r.budget)]
            idx = np.clip(np.searchsorted(edges, t["env_steps"].to_numpy(float), side="left") - 1, 0, bins - 1)
            for m in metrics:
                if m in t.columns:
                    means = t[m].groupby(idx).mean()
                    rows += [dict(ident, metric=m, env_steps=centres[b], value=float(v)) for b, v in means.items()
                             if np.isfinite(v)]
        ev = tidy[tidy["key"] == r.key].sort_values("env_steps")
        for m in eval_metrics:
            e = ev.dropna(subset=[m]) if m in ev.columns else ev.iloc[:0]
            if len(e):
                inside = centres <= e["env_steps"].max()
                vals = np.interp(centres[inside], e["env_steps"], e[m])
                rows += [dict(ident, metric=m, env_steps=x, value=float(v)) for x, v in zip(centres[inside], vals)]
    return pd.DataFrame(rows, columns=["key", "map", "variant", "seed", "metric", "env_steps", "value"])


def _training_curves(item: Item, spec: dict, coll: Collection, out: Path, s: Settings) -> None:
    """What a method's training logs say along the way (e.g. MARIE's policy entropy, world-model losses and
    imagined return), per map, beside its evaluation: the evidence for what limits it. Every variant of the
    `methods` in the experiment (e.g. MARIE with another entropy coefficient) is a line of its own."""
    exp = spec["experiment"]
    sub = coll.experiment(exp)
    methods = list(spec.get("methods") or [s.reference_method])
    metrics, eval_metrics = dict(spec.get("metrics") or {}), dict(spec.get("eval_metrics") or {})
    runs = sub.runs[sub.runs["method"].isin(methods) & sub.runs["complete"]]
    label_of = dict(zip(runs["variant"], runs["label"]))
    order = [d["label"] for d in coll.plan["experiments"][exp]["variants"].values() if d["method"] in methods]
    series = training_series(runs, sub.tidy, metrics, eval_metrics, int(spec.get("bins", 20)))
    if not len(series):
        item.notes.append(f"no complete {', '.join(methods)} runs with these metrics yet")
        return
    rows = []
    for (m, variant, metric, x), g in series.groupby(["map", "variant", "metric", "env_steps"], sort=False):
        mean, lo, hi = stats.bootstrap_mean_ci(g["value"].to_numpy()[:, None], s.reps, s.confidence)
        rows.append({"map": m, "variant": variant, "metric": metric, "env_steps": x, "mean": mean[0],
                     "lower": lo[0], "upper": hi[0], "n": len(g)})
    curves = pd.DataFrame(rows).assign(label=lambda d: d["variant"].map(label_of))
    out.mkdir(parents=True, exist_ok=True)
    maps = [m for m in coll.plan["experiments"][exp]["maps"] if m in set(curves["map"])]
    labels = {**eval_metrics, **metrics}
    files = plots.metric_grid(curves, out / item.name, metrics=[m for m in labels if m in set(curves["metric"])],
                              labels=labels, maps=maps, order=order, group="label", log=list(spec.get("log") or []),
                              formats=s.formats)
    curves.to_csv(out / f"{item.name}.csv", index=False)
    series.to_csv(out / f"{item.name}_per_run.csv", index=False)
    item.files += files + [str(out / f"{item.name}.csv"), str(out / f"{item.name}_per_run.csv")]
    item.caption = caption(_used(sub, runs["key"]))
    item.notes.append(f"each run's budget in {int(spec.get('bins', 20))} equal bins of env steps: a training metric is "
                      f"the mean of the updates logged in the bin, an evaluation metric the run's evaluations "
                      f"interpolated at the bin's centre; mean and {int(s.confidence * 100)}% percentile-bootstrap "
                      f"CI over seeds ({s.reps} resamples)")
    for key, g in series.groupby("key", sort=False):
        lacking = [m for m in labels if m not in set(g["metric"])]
        if lacking:
            item.notes.append(f"{key}: no {', '.join(lacking)} in its logs (its curves there are the other seeds')")
    item.runs = runs["key"].nunique()
    item.status = "ok"


def _compare(a: dict, b: dict, higher: str) -> str:
    """a against b, each {mean, lo, hi}: `higher` with the CIs apart, within them, or not."""
    if a["mean"] <= b["mean"]:
        return f"not {higher}"
    return f"{higher}, CIs apart" if a["lo"] > b["hi"] else f"{higher}, within the CIs"


def intervention_readout(runs: pd.DataFrame, tidy: pd.DataFrame, control: str, value: str, fractions: list[float],
                         threshold: float, metric: str, last: float, reps: int, confidence: float) -> pd.DataFrame:
    """Per map and variant (the control among them): the sample-efficiency columns of `value`, the train.csv
    `metric` over the last `last` fraction of the budget (each run's mean of the updates logged there; mean and
    CI over seeds), and each intervention against the control: `value` at the budget and `metric` there."""
    table = sample_efficiency(tidy, value, fractions, threshold, reps, confidence)
    late = {}
    for r in runs.itertuples():
        train = Path(r.rundir) / "train.csv"
        t = pd.read_csv(train) if train.exists() else pd.DataFrame()
        if metric in t.columns:
            t = t[(t["env_steps"] > (1 - last) * r.budget) & (t["env_steps"] <= r.budget)]
            if t[metric].notna().any():
                late.setdefault((r.map, r.variant), []).append(float(t[metric].mean()))
    for col in ("mean", "lo", "hi", "seeds"):
        table[f"{metric}_last_{col}"] = np.nan
    for i, row in table.iterrows():
        vals = late.get((row["map"], row["variant"]), [])
        if vals:
            mean, lo, hi = stats.bootstrap_mean_ci(np.array(vals)[:, None], reps, confidence)
            table.loc[i, [f"{metric}_last_{c}" for c in ("mean", "lo", "hi", "seeds")]] = [mean[0], lo[0], hi[0],
                                                                                           len(vals)]
    table[f"{value}_vs_control"], table[f"{metric}_vs_control"] = "", ""
    for m, g in table.groupby("map", sort=False):
        if control not in set(g["variant"]):
            continue
        c = g[g["variant"] == control].iloc[0]
        for i, row in g[g["variant"] != control].iterrows():
            pick = lambda r, pre: {"mean": r[f"{pre}_mean"], "lo": r[f"{pre}_lo"], "hi": r[f"{pre}_hi"]}
            table.loc[i, f"{value}_vs_control"] = _compare(pick(row, "at_1"), pick(c, "at_1"), "above")
            if np.isfinite(row[f"{metric}_last_mean"]) and np.isfinite(c[f"{metric}_last_mean"]):
                table.loc[i, f"{metric}_vs_control"] = _compare(pick(row, f"{metric}_last"),
                                                                pick(c, f"{metric}_last"), "higher")
    return table


def _intervention(item: Item, spec: dict, coll: Collection, out: Path, s: Settings) -> None:
    """A pre-registered read-out of interventions (variants of one method) against a control: the control's
    runs come from another plan (e.g. the committed cpu_smac reproduction), same maps, budget and protocol."""
    from analysis.load import collect as collect_runs
    exp, ctl = spec["experiment"], spec["control"]
    sub = coll.experiment(exp)
    runs = sub.runs[sub.runs["complete"]]
    plan_file = paper_figures.HERE.parent / ctl["plan"]
    if not plan_file.exists():
        item.notes.append(f"the control's plan {ctl['plan']} does not exist: no read-out")
        return
    control = collect_runs(json.loads(plan_file.read_text()), base=paper_figures.HERE.parent).experiment(ctl["experiment"])
    maps = set(coll.plan["experiments"][exp]["maps"])
    c_runs = control.runs[control.runs["complete"] & (control.runs["variant"] == ctl["variant"])
                          & control.runs["map"].isin(maps)].assign(variant=ctl["label"])
    c_tidy = control.tidy[control.tidy["key"].isin(set(c_runs["key"]))].assign(variant=ctl["label"])
    tidy = pd.concat([c_tidy, sub.tidy[sub.tidy["key"].isin(set(runs["key"]))]], ignore_index=True)
    value, metric = spec.get("value", "win_rate"), spec["metric"]
    tidy = tidy.dropna(subset=[value])
    if not len(c_runs) or not len(runs):
        item.notes.append(f"no complete runs yet of {'the control' if not len(c_runs) else 'the interventions'}")
        return
    fractions, last = [float(f) for f in spec.get("fractions", [0.25, 0.5, 1.0])], float(spec.get("last", 0.1))
    table = intervention_readout(pd.concat([c_runs, runs], ignore_index=True), tidy, ctl["label"], value,
                                 fractions, float(spec["threshold"]), metric, last, s.reps, s.confidence)
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / f"{item.name}.csv", index=False)
    ci = lambda r, pre: f"{r[f'{pre}_mean']:.2f}" + (f" [{r[f'{pre}_lo']:.2f}, {r[f'{pre}_hi']:.2f}]"
                                                      if r["seeds"] > 1 else " (1 seed)")
    shown = pd.DataFrame({"map": table["map"], "variant": table["variant"], "seeds": table["seeds"]})
    for f in fractions:
        shown[f"{value} at {f:.0%}"] = [ci(r, f"at_{f:g}") for _, r in table.iterrows()]
    shown[f"steps to {float(spec['threshold']):g}"] = [f"{int(v):,}" if np.isfinite(v) else f"> {b:,}" for v, b in
                                                     zip(table["steps_to_threshold"], table["budget"])]
    shown[f"{metric}, last {last:.0%}"] = [  # seeds that logged the metric (a run may lack it: its train.csv says)
        ("–" if not np.isfinite(r[f"{metric}_last_mean"]) else ci({**r, "seeds": r[f"{metric}_last_seeds"]},
                                                                   f"{metric}_last")
         + (f" ({int(r[f'{metric}_last_seeds'])} seeds)" if r[f"{metric}_last_seeds"] != r["seeds"] else ""))
        for _, r in table.iterrows()]
    shown[f"{value} at 100% vs control"] = table[f"{value}_vs_control"]
    shown[f"{metric} vs control"] = table[f"{metric}_vs_control"]
    item.markdown = _md(shown)
    (out / f"{item.name}.md").write_text(item.markdown + "\n")
    item.files += [str(out / f"{item.name}.csv"), str(out / f"{item.name}.md")]
    item.caption = caption(pd.concat([_used(sub, runs["key"]), c_runs], ignore_index=True))
    item.notes.append(f"control: {ctl['label']} ({len(c_runs)} runs from {ctl['plan']}); {value} interpolated at each "
                      f"fraction of the budget, {metric} the mean of each run's updates over the last {last:.0%}; "
                      f"mean and {int(s.confidence * 100)}% percentile-bootstrap CI over seeds ({s.reps} resamples)")
    item.runs = len(runs) + len(c_runs)
    item.status = "ok"


def _official_curves(ref_spec: dict, curves: pd.DataFrame, value: str, s: Settings) -> pd.DataFrame:
    """The official SMACv2 curves (irregular step grids) on our grid, per scenario and algo."""
    df = paper_figures.reference(ref_spec["file"])
    col = {"win_rate": "mean_test_win_rate", "return_mean": "mean_test_return"}[value]
    out = []
    for m in curves["map"].unique():
        top = curves.loc[curves["map"] == m, "env_steps"].max()
        grid = np.linspace(0, top, s.points)
        for algo, label in ref_spec.get("algos", {}).items():
            sub = df[(df["scenario"] == m) & (df["algo"] == algo)].rename(columns={"step": "env_steps", col: "y"})
            if not len(sub):
                continue
            sub = sub.assign(key=sub["run"].astype(str))
            vals = plots.interpolate_runs(sub, "env_steps", "y", grid)
            if not len(vals):
                continue
            mean, lo, hi = stats.bootstrap_mean_ci(vals, reps=s.reps, confidence=s.confidence)
            out.append(pd.DataFrame({"map": m, "label": label, "env_steps": grid, "mean": mean, "lower": lo,
                                     "upper": hi, "n": np.sum(~np.isnan(vals), axis=0)}))
    return pd.concat(out, ignore_index=True) if out else pd.DataFrame()


# -- rliable ----------------------------------------------------------------------------------------------
def _method_scores(coll: Collection, exp: str) -> tuple[pd.DataFrame, list[str]]:
    sc = final_scores(coll.experiment(exp))
    sc = sc[sc["variant"] == sc["method"]].assign(column=lambda d: d["method"])
    order = [v for v, d in coll.plan["experiments"][exp]["variants"].items() if v == d["method"]]
    return sc, order


def _aggregates(item: Item, spec: dict, coll: Collection, out: Path, s: Settings) -> None:
    sc, order = _method_scores(coll, spec["experiment"])
    mats, tasks, notes = stats.score_matrices(sc, columns=order, value=spec.get("value", "win_rate"))
    item.notes += notes
    item.caption = caption(_used(coll, sc["key"]))
    agg = stats.aggregate_intervals(mats, reps=s.reps, confidence=s.confidence)
    out.mkdir(parents=True, exist_ok=True)
    agg.to_csv(out / f"{item.name}.csv", index=False)
    item.files += plots.interval_estimates(agg, out / item.name, formats=s.formats) + [str(out / f"{item.name}.csv")]
    item.markdown = _md(agg.round(3)) if len(agg) else ""
    item.runs = int(sum(m.size for m in mats.values()))
    item.status = "ok" if len(agg) else "empty"
    if len(agg):
        item.notes.append(f"tasks: {', '.join(tasks)}; {s.reps} stratified-bootstrap resamples, "
                          f"{int(s.confidence * 100)}% CIs")


def _improvement(item: Item, spec: dict, coll: Collection, out: Path, s: Settings) -> None:
    sc, order = _method_scores(coll, spec["experiment"])
    mats, tasks, notes = stats.score_matrices(sc, columns=order, value=spec.get("value", "win_rate"))
    item.notes += notes
    item.caption = caption(_used(coll, sc["key"]))
    ref = spec.get("reference_method", s.reference_method)
    poi = stats.improvement(mats, ref, reps=s.reps, confidence=s.confidence)
    if ref not in mats:
        item.notes.append(f"no complete {ref} runs on the common tasks: no probability of improvement yet")
    out.mkdir(parents=True, exist_ok=True)
    poi.to_csv(out / f"{item.name}.csv", index=False)
    item.files += plots.improvement_plot(poi, out / item.name, formats=s.formats) + [str(out / f"{item.name}.csv")]
    item.markdown = _md(poi.round(3)) if len(poi) else ""
    item.runs = int(sum(m.size for m in mats.values()))
    item.status = "ok" if len(poi) else "empty"


# -- model analysis ----------------------------------------------------------------------------------------
def _model_analysis(item: Item, spec: dict, coll: Collection, out: Path, s: Settings) -> Item:
    ma = (coll.plan.get("model_analysis") or {}).get(spec["model_analysis"])
    if ma is None:
        item.status = "not-in-plan"
        item.notes.append(f"model_analysis.{spec['model_analysis']} is not configured in this plan")
        return item
    rundirs = {r["key"]: r for r in coll.plan["runs"]}
    found = {k: Path(rundirs[k]["rundir"]) / "analysis" / ma["file"] for k in ma["runs"]
             if (Path(rundirs[k]["rundir"]) / "analysis" / ma["file"]).exists()}
    if not found:
        item.status = "unavailable"
        why = (f"MARIE's analysis entry point ({ma['module']}) does not exist yet" if not ma["available"] else
               f"no run has written analysis/{ma['file']} yet (run `snakemake "
               f"{'model_analysis' if coll.plan.get('name', 'main') == 'main' else coll.plan['name']}`)")
        item.notes.append(f"NOT AVAILABLE: {why}; this figure needs {ma['file']} in the analysis/ folder of: "
                          f"{', '.join(ma['runs']) or 'the MARIE/MAMBA runs (none planned)'}")
        return item
    out.mkdir(parents=True, exist_ok=True)
    if spec["kind"] == "compounding_error":
        frames = []
        for k, path in found.items():
            d = pd.read_csv(path)
            r = rundirs[k]
            if "l1_error" not in d.columns and "l1_mean" in d.columns:  # MARIE's analysis entry point
                d = d.rename(columns={"l1_mean": "l1_error"})
            if "l1_error" not in d.columns or "horizon" not in d.columns:
                item.notes.append(f"{k}: {path.name} lacks columns horizon,l1_error; skipped")
                continue
            if "dim" in d.columns:  # per-dimension errors: average them
                d = d.groupby("horizon", as_index=False)["l1_error"].mean()
            frames.append(d[["horizon", "l1_error"]].assign(map=r["map"], method=r["method"], seed=r["seed"]))
        errors = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
        item.caption = caption(_used(coll, list(found)))
        said = {}   # what the analysis entry point says it measured, one run of each method
        for k, p in found.items():
            if p.with_suffix(".json").exists():
                said.setdefault(rundirs[k]["method"], json.loads(p.with_suffix(".json").read_text()))
        for method, m in said.items():
            item.notes.append(f"{method}, each run: {m.get('policy', '?')}; {m.get('episodes', '?')} episodes, "
                              f"{m.get('segments', '?')} segments imagined open loop from "
                              f"{m.get('start', 'the real observation at their first step')} "
                              f"(actions: {m.get('actions', '?')}; " + (f"observation tokens {m['tokens']}" if "tokens" in m else
                                                           m.get("states", "?")) + f"), horizons 0-{m.get('horizon', '?')}; "
                              f"mean and {int(s.confidence * 100)}% bootstrap CI over seeds")
        errors.to_csv(out / f"{item.name}.csv", index=False)
        item.files += plots.compounding_error(errors, out / item.name, formats=s.formats, reps=s.reps,
                                              confidence=s.confidence) + [str(out / f"{item.name}.csv")]
        item.runs = len(frames)
    elif spec["kind"] == "action_ranking":
        _action_ranking(item, coll, found, rundirs, out, s)
    else:
        arrays = {}
        for k, path in found.items():
            if rundirs[k]["map"] != spec.get("map", rundirs[k]["map"]):
                continue
            with np.load(path) as z:
                for name in z.files:
                    if name.startswith(spec.get("prefix", "")) and np.issubdtype(z[name].dtype, np.floating):
                        for label, panel in attention_panels(name, z[name]):
                            arrays[f"seed{rundirs[k]['seed']} {label}"] = panel
            break  # one run is enough for the maps, as in the paper
        item.files += plots.attention_maps(arrays, out / item.name, formats=s.formats)
        item.runs = 1 if arrays else 0
        if not arrays:
            item.notes.append(f"no arrays starting with '{spec.get('prefix', '')}' for {spec.get('map')}")
    item.status = "ok" if item.files else "empty"
    return item


ACTION_RANKING = {"corr_within_state_mean": "correlation within a state (what a policy gradient can use)",
                  "corr_all": "correlation over all pairs", "true_sum_mean": "real H-step reward sum",
                  "imagined_sum_mean": "imagined H-step reward sum"}


def action_ranking_table(per_run: pd.DataFrame, reps: int, confidence: float) -> pd.DataFrame:
    """Per map and method: each action-ranking figure (ACTION_RANKING) as mean and CI over the seeds' runs."""
    rows = []
    for (m, method), g in per_run.groupby(["map", "method"], sort=False):
        row = {"map": m, "method": method, "seeds": len(g),
               "horizon": int(g["horizon"].iloc[0]) if "horizon" in g else np.nan}   # the method's own H
        for col in ACTION_RANKING:
            vals = g[col].dropna().to_numpy(float)
            mean, lo, hi = (stats.bootstrap_mean_ci(vals[:, None], reps, confidence) if len(vals)
                            else ([np.nan], [np.nan], [np.nan]))
            row.update({f"{col}_mean": mean[0], f"{col}_lo": lo[0], f"{col}_hi": hi[0]})
        rows.append(row)
    return pd.DataFrame(rows)


def _action_ranking(item: Item, coll: Collection, found: dict, rundirs: dict, out: Path, s: Settings) -> None:
    """Can each run's imagination tell better actions from worse ones (marie.analysis_entry action-ranking)?"""
    per_run = pd.DataFrame([{"key": k, "map": rundirs[k]["map"], "method": rundirs[k]["method"],
                             "seed": rundirs[k]["seed"], **json.loads(p.read_text())} for k, p in found.items()])
    table = action_ranking_table(per_run, s.reps, s.confidence)
    per_run.to_csv(out / f"{item.name}_per_run.csv", index=False)
    table.to_csv(out / f"{item.name}.csv", index=False)
    shown = pd.DataFrame({"map": table["map"], "method": table["method"], "seeds": table["seeds"],
                          "H": table["horizon"]})
    for col, label in ACTION_RANKING.items():
        shown[label] = [f"{r[f'{col}_mean']:.2f}" + (f" [{r[f'{col}_lo']:.2f}, {r[f'{col}_hi']:.2f}]"
                                                     if r["seeds"] > 1 else " (1 seed)") for _, r in table.iterrows()]
    item.markdown = _md(shown)
    (out / f"{item.name}.md").write_text(item.markdown + "\n")
    item.files += [str(out / f"{item.name}.csv"), str(out / f"{item.name}_per_run.csv"), str(out / f"{item.name}.md")]
    item.caption = caption(_used(coll, list(found)))
    first = per_run.iloc[0]
    item.notes.append(f"each run's final policy plays one episode; at {int(first['states'])} of its states, "
                      f"{int(first['sequences'])} open-loop action sequences of H steps (each method's imagination horizon; the "
                      f"played actions plus N(0, {first['noise']:g}) noise) give a real reward sum (the environment "
                      f"restored to the state) and an imagined one from what the model knows at the state "
                      f"({'; '.join(f'{a}: {t}' for a, t in per_run.drop_duplicates('method').set_index('method')['start'].items()) if 'start' in per_run else 'its first observation'}); "
                      f"correlations between them, mean and "
                      f"{int(s.confidence * 100)}% percentile-bootstrap CI over seeds ({s.reps} resamples)")
    item.runs = len(per_run)


def attention_panels(name: str, a: np.ndarray) -> list[tuple[str, np.ndarray]]:
    """2-D [queries x keys] panels from MARIE's attention arrays (docs/marie.md): `transformer`
    [streams, layers, heads, T, T] gives one head-averaged map per layer of agent 0's stream;
    anything else (e.g. `perceiver_cross` [steps, heads, agents, keys]) is averaged over its leading axes."""
    a = np.asarray(a, dtype=np.float32)
    if a.ndim == 2:
        return [(name, a)]
    if name == "transformer" and a.ndim == 5:
        return [(f"{name} layer {layer} (agent 0)", a[0, layer].mean(0)) for layer in range(a.shape[1])]
    return [(name, a.reshape(-1, *a.shape[-2:]).mean(0))]


# -- export ---------------------------------------------------------------------------------------------
def _marl_eval(item: Item, spec: dict, coll: Collection, out: Path, s: Settings) -> None:
    from analysis.export import marl_eval_json
    out.mkdir(parents=True, exist_ok=True)
    for exp in spec.get("experiments", []):
        if exp not in coll.plan["experiments"]:
            continue
        sub = coll.experiment(exp)
        data, notes = marl_eval_json(sub)
        if not data:
            continue
        path = out / f"{exp}.json"
        path.write_text(json.dumps(data, indent=1))
        item.files.append(str(path))
        item.notes += [f"{exp}: {n}" for n in notes]
        item.runs += sub.runs["complete"].sum()
    item.status = "ok" if item.files else "empty"


def _md(df: pd.DataFrame) -> str:
    cols = list(df.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines) + "\n"
