"""Figures (matplotlib, Agg backend): learning curves with bootstrap intervals, rliable interval plots,
probability of improvement, compounding model error, attention maps. Every function writes the files it
is given (one per format) and returns their paths; none of them shows anything."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from analysis.stats import bootstrap_mean_ci  # noqa: E402

# One colour and one marker per method in every figure; labels that are no method (ablation variants) take
# the other colours in order. A label such as "QMIX (official SMACv2)" takes its method's colour.
METHOD_COLORS = {"MARIE": "#1f4e9c", "MAMBA": "#d62728", "MAPPO": "#2ca02c", "HAPPO": "#8c564b",
                 "QMIX": "#ff7f0e", "QPLEX": "#9467bd", "MBVD": "#e377c2", "Random": "#7f7f7f"}
METHOD_MARKERS = {"MARIE": "o", "MAMBA": "s", "MAPPO": "^", "HAPPO": "v", "QMIX": "D", "QPLEX": "P",
                  "MBVD": "X", "Random": "p"}
PALETTE = ["#17becf", "#bcbd22", "#000000", "#aec7e8", "#ffbb78", "#98df8a", "#ff9896", "#c5b0d5"]
MARKERS = ["o", "s", "^", "v", "D", "P", "X", "h"]
PAPER_FINAL_LABEL = "paper's final value (Table 1), in the method's colour"


def method_of(label: str) -> str | None:
    """The method a label names: itself, or its first word (`QMIX (official SMACv2)`, `MARIE-H8`)."""
    label = str(label)
    if label in METHOD_COLORS:
        return label
    head = label.replace("-", " ").split(" ")[0]
    return head if head in METHOD_COLORS else None


def _colors(labels: list[str], fixed: dict[str, str] | None = None) -> dict[str, str]:
    out, i = {}, 0
    for lab in labels:
        m = method_of(lab)
        if fixed and lab in fixed:
            out[lab] = fixed[lab]
        elif m is not None:
            out[lab] = METHOD_COLORS[m]
        else:
            out[lab] = PALETTE[i % len(PALETTE)]
            i += 1
    return out


def _markers(labels: list[str]) -> dict[str, str]:
    out, i = {}, 0
    for lab in labels:
        m = method_of(lab)
        if m is not None and lab == m:
            out[lab] = METHOD_MARKERS[m]
        else:
            out[lab] = MARKERS[i % len(MARKERS)]
            i += 1
    return out


def save(fig, stem: Path, formats=("png", "pdf")) -> list[str]:
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = []
    for fmt in formats:
        p = stem.with_suffix(f".{fmt}")
        fig.savefig(p, dpi=130, bbox_inches="tight")
        paths.append(str(p))
    plt.close(fig)
    return paths


def interpolate_runs(tidy: pd.DataFrame, x: str, y: str, grid: np.ndarray) -> np.ndarray:
    """One row per run (key): y interpolated at grid points within the run's observed x range (NaN beyond)."""
    rows = []
    for _, g in tidy.sort_values(x).groupby("key", sort=False):
        g = g.dropna(subset=[x, y])
        if not len(g):
            continue
        xs, ys = g[x].to_numpy(float), g[y].to_numpy(float)
        v = np.interp(grid, xs, ys)
        v[(grid < xs.min()) | (grid > xs.max())] = np.nan
        rows.append(v)
    return np.array(rows) if rows else np.empty((0, len(grid)))


def curve_frame(tidy: pd.DataFrame, group: str, x: str, y: str, points: int, reps: int, confidence: float,
                x_max: float | None = None) -> pd.DataFrame:
    """Mean curve and bootstrap CI over seeds per (map, group), on a common grid of `points` x values."""
    out = []
    for (map_name, lab), g in tidy.groupby(["map", group], sort=False):
        top = x_max if x_max is not None else g[x].max()
        if x == "wall_s":  # run time: up to where every run of the group got
            top = g.groupby("key")[x].max().min()
        grid = np.linspace(0, float(top), points)
        vals = interpolate_runs(g, x, y, grid)
        if not len(vals):
            continue
        mean, lo, hi = bootstrap_mean_ci(vals, reps=reps, confidence=confidence)
        n = np.sum(~np.isnan(vals), axis=0)
        out.append(pd.DataFrame({"map": map_name, group: lab, x: grid, "mean": mean, "lower": lo, "upper": hi,
                                 "n": n}))
    return pd.concat(out, ignore_index=True) if out else pd.DataFrame(columns=["map", group, x, "mean", "lower",
                                                                                 "upper", "n"])


def learning_curves(curves: pd.DataFrame, stem: Path, *, formats=("png", "pdf"), **kwargs) -> list[str]:
    """Fig. 3-6, 10, 11 (see curves_figure), written to stem.<format>."""
    fig = curves_figure(curves, **kwargs)
    return save(fig, stem, formats) if fig is not None else []


def curves_figure(curves: pd.DataFrame, *, group: str, x: str = "env_steps", ylabel: str = "win rate",
                  maps: list[str] | None = None, order: list[str] | None = None, title: str = "",
                  reference: pd.DataFrame | None = None, xlabel: str | None = None,
                  colors: dict[str, str] | None = None, ylim: tuple | None = None,
                  paper_final: pd.DataFrame | None = None):
    """One panel per map; one line (+ CI band) per group, with its own marker at staggered points so that
    identical curves stay apart; reference curves dashed; paper_final (map, group, mean, steps): the paper's
    final value as a hollow marker at its budget, or at the panel's right edge where our runs are shorter."""
    maps = [m for m in (maps or list(dict.fromkeys(curves["map"]))) if m in set(curves["map"])] if len(curves) else []
    if not maps:
        return None
    labels = order or list(dict.fromkeys(curves[group]))
    labels = labels + [lab for lab in dict.fromkeys(curves[group]) if lab not in labels]
    ref_labels = list(dict.fromkeys(reference[group])) if reference is not None and len(reference) else []
    cmap = _colors(labels + [r for r in ref_labels if r not in labels], colors)
    marks = _markers(labels)
    ncol = min(4, len(maps))
    nrow = int(np.ceil(len(maps) / ncol))
    fig, axes = plt.subplots(nrow, ncol, figsize=(4.0 * ncol, 3.1 * nrow), squeeze=False)
    for ax, m in zip(axes.flat, maps):
        sub = curves[curves["map"] == m]
        present = [lab for lab in labels if len(sub[sub[group] == lab])]
        for i, lab in enumerate(present):
            c = sub[sub[group] == lab]
            every = max(len(present), len(c) // 6)
            ax.plot(c[x], c["mean"], color=cmap[lab], label=lab, lw=1.6, marker=marks[lab], ms=4.5, mfc="none",
                    markevery=(int(i * every / max(1, len(present))), every), clip_on=False, zorder=3)
            ax.fill_between(c[x], c["lower"], c["upper"], color=cmap[lab], alpha=0.15, lw=0)
        if reference is not None and len(reference):
            rsub = reference[reference["map"] == m]
            for lab in ref_labels:
                c = rsub[rsub[group] == lab]
                if len(c):
                    ax.plot(c[x], c["mean"], color=cmap[lab], ls="--", lw=1.5, label=lab)
                    ax.fill_between(c[x], c["lower"], c["upper"], color=cmap[lab], alpha=0.08, lw=0)
        right = float(sub[x].max())
        if paper_final is not None and len(paper_final):
            psub = paper_final[(paper_final["map"] == m) & paper_final[group].isin(present)]
            beyond = psub["steps"].max() > right * 1.001 if len(psub) else False
            for r in psub.itertuples():
                at = min(float(r.steps), right)
                ax.plot([at], [r.mean], ls="none", marker="*", ms=11, mfc="none", mec=cmap[getattr(r, group)],
                        mew=1.4, clip_on=False, zorder=4, label="_paper")
            if beyond:
                ax.annotate(f"paper: {int(psub['steps'].max()):,} steps", (1, 1), xycoords="axes fraction",
                            ha="right", va="bottom", fontsize=6.5, color="#444")
        ax.set_xlim(0, right if right > 0 else 1)
        if ylim is not None:
            ax.set_ylim(*ylim)
        ax.set_title(m, fontsize=10, loc="left")
        ax.set_xlabel(xlabel or ("environment steps" if x == "env_steps" else "run time (s)"), fontsize=8)
        ax.set_ylabel(ylabel, fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(maps):]:
        ax.axis("off")
    handles, names = [], []
    for ax in axes.flat:
        for h, n in zip(*ax.get_legend_handles_labels()):
            if n not in names:
                handles.append(h)
                names.append(n)
    if any(ln.get_label() == "_paper" for ax in axes.flat for ln in ax.get_lines()):
        from matplotlib.lines import Line2D
        handles.append(Line2D([], [], ls="none", marker="*", ms=11, mfc="none", mec="#333", mew=1.4))
        names.append(PAPER_FINAL_LABEL)
    fig.legend(handles, names, loc="lower center", ncol=min(5, len(names)), fontsize=8, frameon=False,
               bbox_to_anchor=(0.5, -0.02 - 0.03 * (len(names) > 5)))
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout(rect=(0, 0.08 + 0.03 * (len(names) > 5), 1, 1))
    return fig


def metric_grid(curves: pd.DataFrame, stem: Path, *, metrics: list[str], labels: dict[str, str], maps: list[str],
                order: list[str] | None = None, group: str = "variant", log: list[str] = (),
                formats=("png", "pdf")) -> list[str]:
    """One row of panels per metric (log-scaled y for the metrics in `log`), one column per map; one line
    (+ CI band) per group. curves: map, group, metric, env_steps, mean, lower, upper."""
    if not len(curves) or not metrics or not maps:
        return []
    groups = order or list(dict.fromkeys(curves[group]))
    cmap = _colors(groups)
    fig, axes = plt.subplots(len(metrics), len(maps), figsize=(3.6 * len(maps), 2.3 * len(metrics)),
                             squeeze=False, sharex="col")
    for i, metric in enumerate(metrics):
        for j, m in enumerate(maps):
            ax = axes[i, j]
            for lab in groups:
                c = curves[(curves["map"] == m) & (curves["metric"] == metric) & (curves[group] == lab)]
                if len(c):
                    ax.plot(c["env_steps"], c["mean"], color=cmap[lab], lw=1.5, marker=".", ms=4, label=lab)
                    ax.fill_between(c["env_steps"], c["lower"], c["upper"], color=cmap[lab], alpha=0.18, lw=0)
            if i == 0:
                ax.set_title(m, fontsize=10, loc="left")
            if j == 0:
                ax.set_ylabel(labels.get(metric, metric), fontsize=8)
            if i == len(metrics) - 1:
                ax.set_xlabel("environment steps", fontsize=8)
            ax.set_xlim(left=0)
            if metric in log:
                ax.set_yscale("log")
            ax.tick_params(which="both", labelsize=7)
            ax.grid(alpha=0.3)
    if len(groups) > 1:
        handles, names = axes[0, 0].get_legend_handles_labels()
        fig.legend(handles, names, loc="lower center", ncol=len(names), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.03 if len(groups) > 1 else 0, 1, 1))
    return save(fig, stem, formats)


def interval_estimates(agg: pd.DataFrame, stem: Path, *, formats=("png", "pdf"), **kwargs) -> list[str]:
    fig = interval_figure(agg, **kwargs)
    return save(fig, stem, formats) if fig is not None else []


def interval_figure(agg: pd.DataFrame, *, xlabel: str = "win rate", xlim: tuple = (0, 1), title: str = ""):
    """Fig. 13: one panel per aggregate (Mean, Median, IQM), one CI bar per method with its point estimate
    as a marker (visible where the interval has no width or sits on the axis' edge)."""
    if not len(agg):
        return None
    aggs = list(dict.fromkeys(agg["aggregate"]))
    methods = list(dict.fromkeys(agg["method"]))
    cmap, marks = _colors(methods), _markers(methods)
    fig, axes = plt.subplots(1, len(aggs), figsize=(3.2 * len(aggs), 0.45 * len(methods) + 1.2), squeeze=False)
    for ax, a in zip(axes[0], aggs):
        sub = agg[agg["aggregate"] == a].set_index("method")
        for i, m in enumerate(methods):
            if m not in sub.index:
                continue
            r = sub.loc[m]
            ax.barh(i, max(r["upper"] - r["lower"], 0.0), left=r["lower"], height=0.6, color=cmap[m], alpha=0.45,
                    clip_on=False)
            ax.plot([r["lower"], r["upper"]], [i, i], color=cmap[m], lw=2, clip_on=False, zorder=3)
            ax.plot([r["estimate"]], [i], marker=marks[m], color=cmap[m], mec="k", mew=0.8, ms=7, ls="none",
                    clip_on=False, zorder=4)
        ax.set_xlim(*xlim)
        ax.set_ylim(len(methods) - 0.5, -0.5)
        ax.set_yticks(range(len(methods)))
        ax.set_yticklabels(methods if a == aggs[0] else [], fontsize=8)
        ax.set_title(a, fontsize=10)
        ax.set_xlabel(xlabel, fontsize=8)
        ax.grid(axis="x", alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def improvement_plot(poi: pd.DataFrame, stem: Path, *, formats=("png", "pdf"), **kwargs) -> list[str]:
    fig = improvement_figure(poi, **kwargs)
    return save(fig, stem, formats) if fig is not None else []


def improvement_figure(poi: pd.DataFrame, *, title: str = ""):
    """Fig. 14: P(reference > baseline) with its CI, one row per baseline, in the baseline's colour."""
    if not len(poi):
        return None
    baselines = list(poi["baseline"])
    cmap, marks = _colors(baselines), _markers(baselines)
    fig, ax = plt.subplots(figsize=(5, 0.5 * len(poi) + 1.2))
    for i, r in enumerate(poi.itertuples()):
        ax.barh(i, r.upper - r.lower, left=r.lower, height=0.6, color=cmap[r.baseline], alpha=0.45, clip_on=False)
        ax.plot([r.lower, r.upper], [i, i], color=cmap[r.baseline], lw=2, clip_on=False, zorder=3)
        ax.plot([r.probability], [i], marker=marks[r.baseline], color=cmap[r.baseline], mec="k", mew=0.8, ms=7,
                ls="none", clip_on=False, zorder=4)
    ax.set_yticks(range(len(poi)))
    ax.set_yticklabels([f"{r.reference} vs {r.baseline}" for r in poi.itertuples()], fontsize=8)
    ax.axvline(0.5, color="gray", ls="--", lw=1)
    ax.set_xlim(0, 1)
    ax.set_ylim(len(poi) - 0.5, -0.5)
    ax.set_xlabel("P(X > Y)", fontsize=9)
    if title:
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return fig


def compounding_error(errors: pd.DataFrame, stem: Path, *, group: str = "method", formats=("png", "pdf"),
                      reps: int = 2000, confidence: float = 0.95, title: str = "") -> list[str]:
    """Fig. 7: L1 error vs prediction horizon; errors has columns map, group, seed, horizon, l1_error."""
    if not len(errors):
        return []
    maps = list(dict.fromkeys(errors["map"]))
    fig, axes = plt.subplots(1, len(maps), figsize=(4.2 * len(maps), 3.2), squeeze=False)
    labels = list(dict.fromkeys(errors[group]))
    cmap = _colors(labels)
    for ax, m in zip(axes[0], maps):
        for lab in labels:
            sub = errors[(errors["map"] == m) & (errors[group] == lab)]
            if not len(sub):
                continue
            piv = sub.pivot_table(index="seed", columns="horizon", values="l1_error", aggfunc="mean")
            mean, lo, hi = bootstrap_mean_ci(piv.to_numpy(float), reps=reps, confidence=confidence)
            ax.plot(piv.columns, mean, color=cmap[lab], marker="o", ms=3, label=lab)
            ax.fill_between(piv.columns, lo, hi, color=cmap[lab], alpha=0.18, lw=0)
        ax.set_title(m, fontsize=10)
        ax.set_ylim(bottom=0)   # growth with the horizon read against the error's size, not a cropped axis
        ax.set_xlabel("prediction horizon", fontsize=8)
        ax.set_ylabel("L1 error per observation dimension", fontsize=8)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return save(fig, stem, formats)


def attention_maps(maps: dict[str, np.ndarray], stem: Path, *, formats=("png", "pdf"), title: str = "",
                   max_panels: int = 8) -> list[str]:
    """Fig. 8/9: one heatmap per 2-D attention matrix (name -> [queries x keys])."""
    items = [(k, np.asarray(v)) for k, v in maps.items() if np.asarray(v).ndim == 2][:max_panels]
    if not items:
        return []
    ncol = min(4, len(items))
    nrow = int(np.ceil(len(items) / ncol))
    fig, axes = plt.subplots(nrow, ncol, figsize=(3.4 * ncol, 3.0 * nrow), squeeze=False)
    for ax, (name, a) in zip(axes.flat, items):
        im = ax.imshow(a, cmap="viridis", aspect="auto", interpolation="nearest")
        ax.set_title(name, fontsize=8)
        ax.set_xlabel("key position", fontsize=7)
        ax.set_ylabel("query position", fontsize=7)
        ax.tick_params(labelsize=6)
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    for ax in list(axes.flat)[len(items):]:
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return save(fig, stem, formats)
