"""Tables in the paper's format: mean (std) over seeds of the final evaluation, ours beside the paper's.

final_scores():   one row per complete run: its last evaluation (at the run's budget).
summarize():      mean, std and the number of seeds per table cell.
comparison():     the table as data (long: rows x column x source ours|reference|paper) and as text
                  (CSV/Markdown/LaTeX); `reference` is a committed reference reproduction's runs.
A cell is bold only where its mean is clear of every other column's by more than the seeds' spread.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from analysis.load import Collection


def final_scores(coll: Collection) -> pd.DataFrame:
    """The last evaluation of every complete run (incomplete runs are problems, not table entries)."""
    runs = coll.runs[coll.runs["complete"]]
    if not len(runs) or not len(coll.tidy):
        return pd.DataFrame(columns=["key", "env", "map", "method", "variant", "label", "seed", "budget", "difficulty",
                                     "env_steps", "win_rate", "return_mean", "wall_s"])
    last = coll.tidy[coll.tidy["key"].isin(runs["key"])].sort_values("env_steps").groupby("key").tail(1)
    keep = ["key", "difficulty"] + (["label"] if "label" in runs else [])
    out = last.merge(runs[keep], on="key")
    if "label" not in out:
        out["label"] = out["variant"]
    return out.sort_values(["map", "variant", "seed"]).reset_index(drop=True)


def summarize(scores: pd.DataFrame, by: list[str], value: str = "win_rate", scale: float = 1.0,
              ddof: int = 0) -> pd.DataFrame:
    """mean, std (ddof 0: the population std over seeds, as numpy computes it) and n per group."""
    if not len(scores):
        return pd.DataFrame(columns=by + ["mean", "std", "n"])
    g = scores.groupby(by, sort=False)[value]
    out = g.agg(mean="mean", n="count").reset_index()
    out["std"] = g.agg(lambda s: float(np.std(s.to_numpy(dtype=float), ddof=ddof)) if len(s) > ddof else np.nan).values
    out["mean"] *= scale
    out["std"] *= scale
    return out[by + ["mean", "std", "n"]]


@dataclass
class Table:
    """A comparison table: `long` holds the numbers, the rest renders them."""
    title: str
    rows: list[str]            # row key columns, e.g. ["map"] or ["map", "method"]
    columns: list[str]         # column labels in order
    long: pd.DataFrame         # rows..., column, source (ours|paper), mean, std, n
    fmt: str = "{mean:.1f} ({std:.1f})"
    expected_n: int | None = None
    row_info: pd.DataFrame | None = None   # extra columns per row (difficulty, steps)
    note: str = ""

    def cell(self, rec) -> str:
        if rec is None or pd.isna(rec["mean"]):
            return "–"
        std = 0.0 if pd.isna(rec["std"]) else rec["std"]
        text = self.fmt.format(mean=rec["mean"], std=std)
        if rec.get("source") == "ours" and self.expected_n and rec["n"] < self.expected_n:
            text += f" [n={int(rec['n'])}]"
        return text

    @property
    def sources(self) -> tuple:
        """ours, then a reference reproduction where there is one, then the paper."""
        present = set(self.long["source"]) if len(self.long) else set()
        return tuple(s for s in ("ours", "reference", "paper") if s == "ours" or s in present)

    def wide(self, sources=None) -> pd.DataFrame:
        """One row per table row; for each column label, one text column per source."""
        sources = sources or self.sources
        keys = self.long[self.rows].drop_duplicates() if len(self.long) else pd.DataFrame(columns=self.rows)
        if self.row_info is not None and len(self.row_info):  # the row order of row_info, then any others
            info = self.row_info[self.rows].drop_duplicates()
            extra = keys.merge(info, how="left", indicator=True)
            keys = pd.concat([info, extra.loc[extra["_merge"] == "left_only", self.rows]], ignore_index=True)
        index = {}
        for rec in self.long.to_dict("records"):
            index[(tuple(rec[r] for r in self.rows), rec["column"], rec["source"])] = rec
        out = []
        for k in keys.itertuples(index=False):
            k = tuple(k)
            row = dict(zip(self.rows, k))
            if self.row_info is not None:
                info = self.row_info
                match = info[np.logical_and.reduce([info[r] == v for r, v in zip(self.rows, k)])] if len(info) else info
                if len(match):
                    row.update({c: match.iloc[0][c] for c in info.columns if c not in self.rows})
            for col in self.columns:
                for src in sources:
                    row[f"{col} ({src})"] = self.cell(index.get((k, col, src)))
            out.append(row)
        wide = pd.DataFrame(out)
        empty = [f"{c} ({s})" for c in self.columns for s in sources if s != "ours" and f"{c} ({s})" in wide
                 and (wide[f"{c} ({s})"] == "–").all()]   # e.g. Random (paper): the paper has no such column
        return wide.drop(columns=empty)

    def best(self, wide_row: dict, source: str = "ours") -> set[str]:
        """The column to bold: the row's highest mean, only where it is outside the seeds' spread: its
        mean - std is above every other column's mean + std, with at least 2 seeds in each (else none)."""
        k = tuple(wide_row[r] for r in self.rows)
        recs = {c: rec for (kk, c, s), rec in self._index().items()
                if kk == k and s == source and not pd.isna(rec["mean"])}
        if len(recs) < 2:
            return set()
        top = max(recs, key=lambda c: recs[c]["mean"])
        std = lambda r: 0.0 if pd.isna(r["std"]) else float(r["std"])
        enough = not pd.isna(recs[top].get("n")) and recs[top]["n"] >= 2
        clear = all(recs[top]["mean"] - std(recs[top]) > r["mean"] + std(r) for c, r in recs.items() if c != top)
        return {top} if enough and clear else set()

    def _index(self):
        return {(tuple(rec[r] for r in self.rows), rec["column"], rec["source"]): rec
                for rec in self.long.to_dict("records")}

    # -- renderers -------------------------------------------------------------------------------
    def to_csv(self) -> str:
        return self.long.to_csv(index=False, float_format="%.4g")

    def to_markdown(self) -> str:
        wide = self.wide()
        if not len(wide):
            return "_no complete runs yet_\n"
        cols = list(wide.columns)
        lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
        for row in wide.to_dict("records"):
            best = self.best(row)
            cells = []
            for c in cols:
                text = str(row[c])
                if c.endswith(" (ours)") and c[: -len(" (ours)")] in best:
                    text = f"**{text}**"
                cells.append(text)
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines) + "\n"

    def to_latex(self) -> str:
        wide = self.wide()
        cols = list(wide.columns)
        esc = lambda s: str(s).replace("_", r"\_").replace("%", r"\%").replace("&", r"\&").replace("±", r"$\pm$")
        lines = [f"% {self.title}"] + [f"% {ln}" for ln in self.note.splitlines() if ln.strip()] + [r"\begin{tabular}{" + "l" * len(self.rows) + "r" * (len(cols) - len(self.rows)) + "}",
                 r"\toprule", " & ".join(esc(c) for c in cols) + r" \\", r"\midrule"]
        for row in wide.to_dict("records"):
            best = self.best(row)
            cells = []
            for c in cols:
                text = esc(row[c])
                if c.endswith(" (ours)") and c[: -len(" (ours)")] in best:
                    text = r"\textbf{" + text + "}"
                cells.append(text)
            lines.append(" & ".join(cells) + r" \\")
        lines += [r"\bottomrule", r"\end{tabular}"]
        return "\n".join(lines) + "\n"


def comparison(scores: pd.DataFrame, reference: pd.DataFrame | None, *, title: str, rows: list[str],
               columns: list[str], value: str = "win_rate", scale: float = 100.0, ddof: int = 0,
               fmt: str = "{mean:.1f} ({std:.1f})", expected_n: int | None = None,
               row_info: pd.DataFrame | None = None, note: str = "",
               reproduction: pd.DataFrame | None = None) -> Table:
    """scores: final scores with a `column` field (the table column of each run) and the row keys.
    reference: the paper's numbers with the same row keys, `column`, mean and std (already scaled).
    reproduction: final scores of a reference reproduction's runs (like `scores`): source `reference`."""
    ours = summarize(scores, rows + ["column"], value=value, scale=scale, ddof=ddof) if len(scores) else \
        pd.DataFrame(columns=rows + ["column", "mean", "std", "n"])
    ours["source"] = "ours"
    parts = [ours]
    if reproduction is not None and len(reproduction):
        parts.append(summarize(reproduction, rows + ["column"], value=value, scale=scale, ddof=ddof)
                     .assign(source="reference"))
    if reference is not None and len(reference):
        ref = reference[rows + ["column", "mean", "std"]].copy()
        ref["n"] = np.nan
        ref["source"] = "paper"
        parts.append(ref)
    long = pd.concat([p for p in parts if len(p)], ignore_index=True) if any(len(p) for p in parts) else ours
    long = long[long["column"].isin(columns)]
    order = {c: i for i, c in enumerate(columns)}
    long = long.assign(_o=long["column"].map(order)).sort_values(rows + ["_o", "source"]).drop(columns="_o")
    return Table(title=title, rows=rows, columns=columns, long=long.reset_index(drop=True), fmt=fmt,
                 expected_n=expected_n, row_info=row_info, note=note)
