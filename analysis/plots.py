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

PALETTE = ["#1f4e9c", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#17becf",
           "#bcbd22"]


def _colors(labels: list[str], fixed: dict[str, str] | None = None) -> dict[str, str]:
    out, i = {}, 0
    for lab in labels:
        if fixed and lab in fixed:
            out[lab] = fixed[lab]
        else:
            out[lab] = PALETTE[i % len(PALETTE)]
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


def learning_curves(curves: pd.DataFrame, stem: Path, *, group: str, x: str = "env_steps", ylabel: str = "win rate",
                    maps: list[str] | None = None, order: list[str] | None = None, title: str = "",
                    reference: pd.DataFrame | None = None, formats=("png", "pdf"), xlabel: str | None = None,
                    colors: dict[str, str] | None = None) -> list[str]:
    """One panel per map; one line (+ CI band) per group; reference curves (dashed) where given."""
    maps = [m for m in (maps or list(dict.fromkeys(curves["map"]))) if m in set(curves["map"])] if len(curves) else []
    if not maps:
        return []
    labels = order or list(dict.fromkeys(curves[group]))
    ref_labels = list(dict.fromkeys(reference[group])) if reference is not None and len(reference) else []
    cmap = _colors(labels + [r for r in ref_labels if r not in labels], colors)
    ncol = min(4, len(maps))
    nrow = int(np.ceil(len(maps) / ncol))
    fig, axes = plt.subplots(nrow, ncol, figsize=(4.0 * ncol, 3.1 * nrow), squeeze=False)
    for ax, m in zip(axes.flat, maps):
        sub = curves[curves["map"] == m]
        for lab in labels:
            c = sub[sub[group] == lab]
            if not len(c):
                continue
            ax.plot(c[x], c["mean"], color=cmap[lab], label=lab, lw=1.8)
            ax.fill_between(c[x], c["lower"], c["upper"], color=cmap[lab], alpha=0.18, lw=0)
        if reference is not None and len(reference):
            rsub = reference[reference["map"] == m]
            for lab in ref_labels:
                c = rsub[rsub[group] == lab]
                if len(c):
                    ax.plot(c[x], c["mean"], color=cmap[lab], ls="--", lw=1.5, label=lab)
                    ax.fill_between(c[x], c["lower"], c["upper"], color=cmap[lab], alpha=0.08, lw=0)
        ax.set_title(m, fontsize=10)
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
    fig.legend(handles, names, loc="lower center", ncol=min(6, len(names)), fontsize=8, frameon=False,
               bbox_to_anchor=(0.5, -0.02 - 0.03 * (len(names) > 6)))
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    return save(fig, stem, formats)


def interval_estimates(agg: pd.DataFrame, stem: Path, *, xlabel: str = "win rate", formats=("png", "pdf"),
                       title: str = "") -> list[str]:
    """Fig. 13: one panel per aggregate (Mean, Median, IQM), one CI bar per method."""
    if not len(agg):
        return []
    aggs = list(dict.fromkeys(agg["aggregate"]))
    methods = list(dict.fromkeys(agg["method"]))
    cmap = _colors(methods)
    fig, axes = plt.subplots(1, len(aggs), figsize=(3.2 * len(aggs), 0.45 * len(methods) + 1.2), squeeze=False)
    for ax, a in zip(axes[0], aggs):
        sub = agg[agg["aggregate"] == a].set_index("method")
        for i, m in enumerate(methods):
            if m not in sub.index:
                continue
            r = sub.loc[m]
            ax.barh(i, r["upper"] - r["lower"], left=r["lower"], height=0.6, color=cmap[m], alpha=0.75)
            ax.vlines(r["estimate"], i - 0.3, i + 0.3, color="k", lw=1.5)
        ax.set_yticks(range(len(methods)))
        ax.set_yticklabels(methods if a == aggs[0] else [], fontsize=8)
        ax.set_title(a, fontsize=10)
        ax.set_xlabel(xlabel, fontsize=8)
        ax.grid(axis="x", alpha=0.3)
        ax.invert_yaxis()
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return save(fig, stem, formats)


def improvement_plot(poi: pd.DataFrame, stem: Path, *, formats=("png", "pdf"), title: str = "") -> list[str]:
    """Fig. 14: P(reference > baseline) with its CI, one row per baseline."""
    if not len(poi):
        return []
    fig, ax = plt.subplots(figsize=(5, 0.5 * len(poi) + 1.2))
    for i, r in enumerate(poi.itertuples()):
        ax.barh(i, r.upper - r.lower, left=r.lower, height=0.6, color=PALETTE[i % len(PALETTE)], alpha=0.75)
        ax.vlines(r.probability, i - 0.3, i + 0.3, color="k", lw=1.5)
    ax.set_yticks(range(len(poi)))
    ax.set_yticklabels([f"{r.reference} vs {r.baseline}" for r in poi.itertuples()], fontsize=8)
    ax.axvline(0.5, color="gray", ls="--", lw=1)
    ax.set_xlim(0, 1)
    ax.set_xlabel("P(X > Y)", fontsize=9)
    ax.invert_yaxis()
    if title:
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return save(fig, stem, formats)


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
