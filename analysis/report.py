"""The report page (Markdown and HTML): every table and figure produced, provenance, missing runs.

build_report() collects the runs of a plan, builds every item of the registry that has data (and says
why the others have none), and writes out/index.md, out/index.html, out/runs.csv, out/tidy.csv,
out/problems.csv and out/items/<item>/...
"""
from __future__ import annotations

import html
import os
import shutil
import subprocess
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

import paper_figures
from analysis.cost import cost_markdown, cost_table, phase_markdown, phase_split
from analysis.describe import caption
from analysis.items import Item, Settings, build, sample_efficiency
from analysis.load import Collection, collect, plan_from_scan
from analysis.tables import final_scores, summarize


def _git_commit(root: Path = Path(__file__).resolve().parents[1]) -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=root)
        # the code that built the report; the committed reproductions' data (which `collect` rewrites just before
        # it builds their report) are its inputs and outputs, not its code
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".",
                                ":(exclude)paper_figures/reproduced"], capture_output=True, text=True, timeout=5,
                               cwd=root).stdout.strip()
        return (out.stdout.strip() or "unknown") + (" (with uncommitted changes)" if dirty else "")
    except Exception:
        return "unknown"


def provenance(coll: Collection) -> list[tuple[str, str]]:
    metas = [m for m in coll.runs["meta"] if m]
    count = lambda values: ", ".join(f"{v} ({n} runs)" if len(c) > 1 else f"{v}"
                                     for c in [Counter(values)] for v, n in c.most_common())
    rows = [("plan", f"{coll.plan.get('name')} (config digest {coll.plan.get('config_digest', '-')})"),
            ("backend", ", ".join(sorted({str(e) for e in coll.runs["env"]})) or str(coll.plan.get("backend", ""))),
            ("report built", datetime.now(timezone.utc).isoformat(timespec="seconds") + f" at commit {_git_commit()}")]
    if metas:
        rows += [("suite commit of the runs", count([str(m.get("suite_commit", "?"))[:12] for m in metas])),
                 ("backend versions", count([str(m.get("backend_version", "?")) for m in metas])),
                 ("devices", count([f"{m.get('device', '?')} ({m.get('device_name', '')})" for m in metas])),
                 ("hosts", count([str(m.get("host", "?")) for m in metas])),
                 ("presets", count([f"{m.get('algo')}:{m.get('preset')}" for m in metas]))]
        versions = Counter()
        for m in metas:
            for k, v in (m.get("versions") or {}).items():
                versions[f"{k} {v}"] += 1
        rows.append(("package versions", ", ".join(sorted(versions))))
    return rows


class Page:
    """Blocks rendered to both Markdown and HTML."""

    def __init__(self, title: str, base: Path):
        self.title, self.base, self.blocks = title, base, []

    def h(self, level: int, text: str):
        self.blocks.append(("h", level, text))

    def p(self, text: str):
        self.blocks.append(("p", text))

    def caption(self, text: str):
        self.blocks.append(("caption", text))

    def ul(self, items: list[str]):
        if items:
            self.blocks.append(("ul", items))

    def table(self, md: str):
        if md.strip():
            self.blocks.append(("table", md))

    def img(self, path: str, alt: str):
        self.blocks.append(("img", os.path.relpath(path, self.base), alt))

    def links(self, paths: list[str]):
        if paths:
            self.blocks.append(("links", [os.path.relpath(p, self.base) for p in paths]))

    def markdown(self) -> str:
        out = [f"# {self.title}", ""]
        for b in self.blocks:
            if b[0] == "h":
                out += ["#" * b[1] + " " + b[2], ""]
            elif b[0] in ("p", "caption"):
                out += [b[1], ""]
            elif b[0] == "ul":
                out += [f"- {x}" for x in b[1]] + [""]
            elif b[0] == "table":
                out += [b[1].rstrip(), ""]
            elif b[0] == "img":
                out += [f"![{b[2]}]({b[1]})", ""]
            elif b[0] == "links":
                out += ["Files: " + ", ".join(f"[{Path(x).name}]({x})" for x in b[1]), ""]
        return "\n".join(out)

    def html(self) -> str:
        e = html.escape
        out = ["<!doctype html><html><head><meta charset='utf-8'>", f"<title>{e(self.title)}</title>",
               "<style>body{font-family:sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}"
               "table{border-collapse:collapse;font-size:12px;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 6px}"
               "th{background:#f2f2f2}img{max-width:100%;border:1px solid #eee}code{background:#f6f6f6}"
               ".note{color:#555}.caption{font-size:13px;margin:.3em 0;padding-left:.6em;border-left:3px solid #bbb}"
               ".caption b{color:#a00}</style></head><body>", f"<h1>{e(self.title)}</h1>"]
        for b in self.blocks:
            if b[0] == "h":
                out.append(f"<h{b[1]}>{e(b[2])}</h{b[1]}>")
            elif b[0] == "p":
                out.append(f"<p>{_inline(b[1])}</p>")
            elif b[0] == "caption":
                out.append(f"<p class='caption'>{_inline(b[1])}</p>")
            elif b[0] == "ul":
                out.append("<ul>" + "".join(f"<li>{_inline(x)}</li>" for x in b[1]) + "</ul>")
            elif b[0] == "table":
                out.append(_md_table_html(b[1]))
            elif b[0] == "img":
                out.append(f"<p><img src='{e(b[1])}' alt='{e(b[2])}'></p>")
            elif b[0] == "links":
                out.append("<p class='note'>Files: " + ", ".join(f"<a href='{e(x)}'>{e(Path(x).name)}</a>"
                                                                 for x in b[1]) + "</p>")
        out.append("</body></html>")
        return "\n".join(out)


def _inline(text: str) -> str:
    """Escape, then the Markdown marks we use: **bold**, `code` and [text](link)."""
    import re
    t = html.escape(text, quote=False)
    t = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", t)
    t = re.sub(r"\[([^\]]+)\]\(([^)\s]+)\)", lambda m: f"<a href='{html.escape(m[2])}'>{m[1]}</a>", t)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", t)


def _md_table_html(md: str) -> str:
    lines = [ln.strip() for ln in md.strip().splitlines() if ln.strip().startswith("|")]
    if len(lines) < 2:
        return f"<p>{html.escape(md)}</p>"
    cells = lambda ln: [c.strip() for c in ln.strip("|").split("|")]
    head = "".join(f"<th>{_inline(c)}</th>" for c in cells(lines[0]))
    body = "".join("<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in cells(ln)) + "</tr>" for ln in lines[2:])
    return f"<table><tr>{head}</tr>{body}</table>"


REPRODUCTION_DOC = "docs/reproduction.md"


def marie_statement(coll: Collection, plan_name: str | None) -> list[str]:
    """A plain sentence per map: is MARIE's final score above every other method's (mean over seeds), and
    is the gap larger than the seeds' spread? Said before any table, with the scale it holds at. The score
    is the win rate where the backend has one, else the return (MaMuJoCo)."""
    scores = final_scores(coll)
    scores = scores[scores["variant"] == scores["method"]]  # the methods' plain runs, not ablation variants
    if not len(scores) or "MARIE" not in set(scores["method"]):
        return []
    value, name, fmt = (("win_rate", "win rate", ".2f") if scores["win_rate"].notna().any() else
                        ("return_mean", "return", ".1f"))
    scores = scores.dropna(subset=[value])
    lines = []
    if plan_name == "demo":
        lines.append("**This is the demo: toy scale (a few thousand environment steps, 2 seeds, test-sized presets "
                     "for the baselines), not the paper's setting. Its numbers support no claim about MARIE.** "
                     f"The CPU reproduction (`cpu_smac` tier, {REPRODUCTION_DOC}; committed runs under "
                     "`paper_figures/reproduced/cpu_smac/`) is where the comparison is made.")
    table = summarize(scores, ["map", "method"], value=value)
    verdicts = []
    for map_name, g in table.groupby("map", sort=True):
        g = g.set_index("method")
        if "MARIE" not in g.index or len(g) < 2:
            continue
        m, others = g.loc["MARIE"], g.drop(index="MARIE")
        best = others["mean"].idxmax()
        if m["mean"] > others["mean"].max():
            clear = m["mean"] - m["std"] > others.loc[best, "mean"] + others.loc[best, "std"]
            verdicts.append(f"{map_name}: MARIE ahead ({m['mean']:{fmt}} vs {best} {others.loc[best, 'mean']:{fmt}}"
                            f"{'' if clear else ', within the seeds’ spread'})")
        else:
            verdicts.append(f"{map_name}: MARIE **not** ahead ({m['mean']:{fmt}}; best {best} "
                            f"{others.loc[best, 'mean']:{fmt}})")
    if verdicts:
        lines.append(f"At equal environment steps, final {name} (the protocol's mode, mean over seeds): "
                     + "; ".join(verdicts) + ".")
    earlier = _earlier_verdicts(coll, scores, value=value, fmt=fmt)
    if earlier:
        lines.append(f"Earlier in the budget (a sample-efficiency method may lead there and not at the end; {name}, "
                     "mean [95% bootstrap CI] over seeds, each seed interpolated at that step): " + "; ".join(earlier) + ".")
    return lines


def _earlier_verdicts(coll: Collection, scores, fractions=(0.25, 0.5), reps: int = 2000, value: str = "win_rate",
                      fmt: str = ".2f") -> list[str]:
    """Per map: at each fraction of the budget, MARIE against the best other method: ahead with their CIs
    apart, ahead within the CIs, ahead with one seed (no CI to compare), or not ahead."""
    tidy = coll.tidy[coll.tidy["key"].isin(set(scores["key"]))].dropna(subset=[value])
    if not len(tidy):
        return []
    table = sample_efficiency(tidy, value, list(fractions), threshold=None, reps=reps, confidence=0.95)
    out = []
    for map_name, g in table.groupby("map", sort=True):
        g = g.set_index("variant")
        if "MARIE" not in g.index or len(g) < 2:
            continue
        parts = []
        for f in fractions:
            mean, lo, hi = (f"at_{f:g}_{k}" for k in ("mean", "lo", "hi"))
            m, others = g.loc["MARIE"], g.drop(index="MARIE")
            best = others[mean].idxmax()
            b = others.loc[best]
            ci = lambda r: f"{r[mean]:{fmt}}" + (f" [{r[lo]:{fmt}}, {r[hi]:{fmt}}]" if r["seeds"] > 1 else " (1 seed)")
            if m[mean] <= b[mean]:
                word = "MARIE **not** ahead"
            elif min(m["seeds"], b["seeds"]) < 2:
                word = "MARIE ahead, one seed so no CI"
            else:
                word = "MARIE ahead, CIs apart" if m[lo] > b[hi] else "MARIE ahead, within the CIs"
            parts.append(f"at {f:.0%} {word} (MARIE {ci(m)} vs {best} {ci(b)})")
        out.append(f"{map_name} ({int(g.loc['MARIE', 'seeds'])} MARIE seed(s)): " + ", ".join(parts))
    return out


def _link(path, base: Path, text: str | None = None) -> str:
    return f"[{text or Path(path).name}]({os.path.relpath(path, base)})" if path else "–"


def _runs_table(coll: Collection, base: Path) -> str:
    """Every run: status, steps run, cost, protocol, and links to its run directory and log."""
    lines = ["| run | status | env steps run / budget | preset | evaluation | wall h | CPU h | device | directory | log |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    hours = lambda x: "–" if x is None or x != x else f"{float(x) / 3600:.3g}"
    for r in coll.runs.itertuples():
        if r.status == "missing":
            continue
        protocol = f"{r.eval_episodes or '?'} ep., {r.eval_mode or '?'}"
        logs = [p for p in (r.log, Path(r.rundir) / "run.log") if p and Path(p).exists()]  # workflow log, or the run's
        log = logs[0] if logs else None
        lines.append(f"| {r.key} | {r.status} | {r.last_env_steps if r.last_env_steps is not None else '–'} / {r.budget} "
                     f"| {r.preset} | {protocol} | {hours(r.wall_s)} | {hours(r.cpu_s)} | {r.device or '?'} "
                     f"| {_link(r.rundir, base, 'run directory')} | {_link(log, base, 'log') if log else '–'} |")
    return "\n".join(lines) + "\n" if len(lines) > 2 else ""


def build_report(plan: dict, out: str | Path, target: str = "report", settings: Settings | None = None,
                 items: list[str] | None = None, reference: str | Path | None = None) -> dict:
    """reference: a folder of reference run directories (e.g. paper_figures/reproduced/<tier>/), shown in
    Table 1 beside ours and the paper's; None: no reference."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    settings = settings or Settings.from_plan(plan)
    coll = collect(plan)
    ref_coll = collect(plan_from_scan(reference)) if reference else None
    registry = paper_figures.registry()
    if not items and (out / "items").is_dir():  # a full rebuild: no stale figures from an older plan
        shutil.rmtree(out / "items")
    built: list[Item] = []
    for name, spec in registry.items():
        if items and name not in items:
            continue
        built.append(build(name, spec, coll, out / "items", settings, reference=ref_coll))

    runs_csv = coll.runs.drop(columns=["meta"]).assign(experiments=lambda d: d["experiments"].map(
        lambda e: ";".join(f"{k}={v}" for k, v in e.items())))
    runs_csv.to_csv(out / "runs.csv", index=False)
    coll.tidy.to_csv(out / "tidy.csv", index=False)
    coll.problems.assign(experiments=coll.problems["experiments"].map(";".join)).to_csv(out / "problems.csv",
                                                                                          index=False)

    page = Page(f"MARIE reproduction report ({plan.get('name')})", out)
    n_complete = int(coll.runs["complete"].sum())
    # a tier's plan (demo, cpu_smac) or a scan: its items are made by the report's target, not the full-scale ones
    tier = plan.get("name") != "main"
    demo = plan.get("name") == "demo"
    for line in caption(coll.runs[coll.runs["complete"]], whose="This report"):
        page.caption(line)
    page.p(f"Target `{target}`{' (the all_smac pipeline at toy scale)' if demo else ''}. "
           f"{len(coll.runs)} runs planned, {n_complete} complete, "
           f"{len(coll.problems)} problems (missing, unfinished, short or skipped runs, listed at the end). "
           + (f"Numbers are from the `{plan.get('backend')}` backend: see `marie maps` for how each map differs "
              f"from StarCraft II." if set(coll.runs["env"]) != {"mamujoco"} else
              "Numbers are from MaMuJoCo (gymnasium-robotics `mamujoco_v1`), each task's return."))
    for line in marie_statement(coll, plan.get("name")):
        page.p(line)
    if ref_coll is not None:
        readme = Path(reference) / "README.md"
        page.p(f"Reference reproduction: `{reference}` ({int(ref_coll.runs['complete'].sum())} complete run(s)), "
               f"shown in Table 1 as the `(reference)` columns" + (f"; {_link(readme, out, 'its README')}."
                                                                   if readme.exists() else "."))
    methods = plan.get("methods") or {}
    unregistered = [f"{m} (algo `{d['algo']}`)" for m, d in methods.items() if not d.get("registered")]
    if unregistered:
        page.p("Methods without a registered algorithm (their runs are missing): " + ", ".join(unregistered) + ".")
    page.h(2, "Provenance")
    page.table("| field | value |\n|---|---|\n" + "\n".join(f"| {k} | {v} |" for k, v in provenance(coll)) + "\n")
    page.links([str(out / "runs.csv"), str(out / "tidy.csv"), str(out / "problems.csv")])

    page.h(2, "Tables and figures")
    not_in_plan = []
    for it in built:
        if it.status == "not-in-plan":
            not_in_plan.append(f"{it.name}: {it.title}")
            continue
        page.h(3, f"{it.name}: {it.title}")
        status = {"ok": "", "empty": "**No complete runs yet.** ", "unavailable": "**Not available.** "}.get(it.status, "")
        for line in it.caption:
            page.caption(line)
        page.p(f"{status}Target `{target if tier else it.target}`; {int(it.runs)} run(s) used.")
        page.table(it.markdown)
        for f in it.files:
            if f.endswith(".png"):
                page.img(f, it.name)
        page.links([f for f in it.files if not f.endswith(".png")])
        page.ul(it.notes)
    if not_in_plan:
        page.h(3, "Not part of this plan")
        page.ul(not_in_plan)

    costs = cost_table(coll.runs)
    costs.to_csv(out / "cost.csv", index=False)
    page.h(2, "Cost")
    page.p("Wall hours, CPU hours (process CPU time, cumulative over resumes) and GPU hours (wall hours of runs "
           "on a cuda device) from each run's meta.json, per method and map, and for the whole grid.")
    page.table(cost_markdown(costs))
    page.links([str(out / "cost.csv")])
    split = phase_split(coll.runs)
    if len(split):
        split.to_csv(out / "phase_split.csv", index=False)
        page.p("Where the training time of the runs that log it (MARIE's train.csv `time_*_s`) went: seconds per "
               "10k env steps in each phase, mean over complete runs; `rest` is the environment, acting, "
               "evaluation and checkpoints (the run's wall time minus its phases); – where a run did not log "
               "a phase.")
        page.table(phase_markdown(split))
        page.links([str(out / "phase_split.csv")])
    page.h(2, "Runs")
    page.table(_runs_table(coll, out))

    page.h(2, "Missing runs")
    if len(coll.problems):
        by_kind = coll.problems.groupby("kind", sort=False)
        page.p("; ".join(f"{k}: {len(g)}" for k, g in by_kind) + ". Every planned run that is not complete:")
        lines = ["| run | kind | experiments | detail |", "|---|---|---|---|"]
        for p in coll.problems.itertuples():
            lines.append(f"| {p.key} | {p.kind} | {', '.join(p.experiments)} | {p.detail.replace('|', '/')} |")
        page.table("\n".join(lines) + "\n")
    else:
        page.p("None: every planned run is complete.")

    (out / "index.md").write_text(page.markdown())
    (out / "index.html").write_text(page.html())
    return {"items": built, "collection": coll, "index": str(out / "index.html")}
