"""The committed reproduction of a tier (paper_figures/reproduced/<tier>/): what is done, what is missing,
and collecting finished runs into it.

A tier's grid (e.g. cpu_smac: 84 runs) takes more CPU time than one sitting, so it is run in parts:

    python workflows/reproduction.py status  --tier cpu_smac    # done / finished-not-collected / running / missing
    snakemake --cores 2 cpu_smac                                # runs (or resumes) what is missing; Ctrl-C is safe
    python workflows/reproduction.py collect --tier cpu_smac    # copy the small files of completed runs, rebuild
                                                                # the committed report; then commit them
    python workflows/reproduction.py restore --tier cpu_smac    # on a fresh clone: put the committed runs back
                                                                # under results/ (marked done), so that the
                                                                # workflow runs only what is missing

Only small files are committed (config.yaml, meta.json, eval.csv, eval_episodes.csv, train.csv, and the
CSV/JSON a tier's model analysis writes into analysis/), never checkpoints. A run counts as done when its meta.json says completed at the tier's budget.
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import plan as WP  # noqa: E402  (workflows/plan.py, importable without Snakemake)

ROOT = Path(__file__).resolve().parents[1]
SMALL_FILES = ("config.yaml", "meta.json", "eval.csv", "eval_episodes.csv", "train.csv")


def reproduced_dir(tier: str) -> Path:
    return ROOT / "paper_figures" / "reproduced" / tier


def _state(rundir: Path, steps: int) -> tuple[str, int]:
    meta_file = rundir / "meta.json"
    if not meta_file.exists():
        return "missing", 0
    meta = json.loads(meta_file.read_text())
    done = meta.get("status") == "completed" and int(meta.get("env_steps", 0)) >= steps
    return ("completed" if done else meta.get("status", "unknown")), int(meta.get("env_steps", 0))


def status(plan: WP.Plan, results_base: Path, into: Path) -> dict[str, list[str]]:
    """Each planned run: committed | finished (in results, not collected yet) | running/failed | missing."""
    groups: dict[str, list[str]] = {"committed": [], "finished, not collected": [], "started": [], "missing": []}
    committed = into / "runs"
    for run in plan.runs.values():
        if _state(committed / run.key, run.steps)[0] == "completed":
            groups["committed"].append(run.key)
            continue
        state, steps = _state(results_base / run.rundir, run.steps)
        if state == "completed":
            groups["finished, not collected"].append(run.key)
        elif state == "missing":
            groups["missing"].append(run.key)
        else:
            groups["started"].append(f"{run.key} ({state} at {steps}/{run.steps} steps)")
    return groups


def remaining_cpu_hours(plan: WP.Plan, into: Path, keys: list[str]) -> tuple[float, dict[str, float]]:
    """CPU-hours the runs `keys` still need, priced from this reproduction's committed runs
    (`plan.estimate_cpu_hours`: the same method and preset on the same map, else on its other maps, else the
    plan's estimate)."""
    hours, per_method, _ = WP.estimate_cpu_hours([plan.runs[k] for k in keys], WP.measured_rates([into]))
    return hours, per_method


def collect(plan: WP.Plan, results_base: Path, out: Path) -> list[str]:
    """Copy the small files of every completed run into the committed reproduction; returns the keys copied."""
    copied = []
    for run in plan.runs.values():
        src = results_base / run.rundir
        if _state(src, run.steps)[0] != "completed":
            continue
        dst = out / "runs" / run.key
        dst.mkdir(parents=True, exist_ok=True)
        for name in SMALL_FILES:
            if (src / name).exists():
                shutil.copy2(src / name, dst / name)
        for spec in plan.model_analysis.values():   # what an analysis wrote (small CSV/JSON; never .npz)
            for f in (src / "analysis").glob(f"{Path(spec['file']).stem}.*") if run.key in spec["runs"] else []:
                if f.suffix in (".csv", ".json"):
                    (dst / "analysis").mkdir(exist_ok=True)
                    shutil.copy2(f, dst / "analysis" / f.name)
        copied.append(run.key)
    WP.write_json(_relocated(plan, out), out / "plan.json")
    write_readme(plan, out)
    return copied


def restore(plan: WP.Plan, results_base: Path, into: Path) -> list[str]:
    """Put every committed run back into the results folder with its workflow marker, where the results hold no
    completed run of its own: a fresh clone then re-runs only what is missing, and the tier's report sees every
    run. Checkpoints are never committed, so a restored run cannot be extended or analysed anew."""
    from analysis.cli import main as analysis_main
    restored = []
    for run in plan.runs.values():
        src, dst = into / "runs" / run.key, results_base / run.rundir
        if _state(src, run.steps)[0] != "completed" or _state(dst, run.steps)[0] == "completed":
            continue
        dst.mkdir(parents=True, exist_ok=True)
        for f in src.rglob("*"):
            if f.is_file():
                (dst / f.relative_to(src)).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(f, dst / f.relative_to(src))
        if analysis_main(["mark-done", "--rundir", str(dst), "--steps", str(run.steps),
                          "--out", str(dst / WP.MARKER)]) != 0:
            raise SystemExit(f"restore: the committed run {run.key} does not pass the workflow's completion check")
        restored.append(run.key)
    return restored


def write_readme(plan: WP.Plan, out: Path) -> None:
    """out/README.md, rebuilt from the committed runs' meta.json at every collect: how far the tier is, how to
    reproduce it, what it cost per method, and every run's exact command, suite commit, machine and wall time.
    Notes written by hand belong in out/NOTES.md, which this keeps and links."""
    rows, cost = [], {}
    for run in sorted(plan.runs.values(), key=lambda r: r.key):
        if _state(out / "runs" / run.key, run.steps)[0] != "completed":
            continue
        meta = json.loads((out / "runs" / run.key / "meta.json").read_text())
        wall, cpu = float(meta.get("wall_s") or 0.0), float(meta.get("cpu_s") or 0.0)
        c = cost.setdefault(run.variant, {"runs": 0, "wall": [], "cpu": 0.0})
        c["runs"] += 1
        c["wall"].append(wall)
        c["cpu"] += cpu
        when = f"{str(meta.get('start_time', ''))[:16].replace('T', ' ')} to {str(meta.get('end_time', ''))[11:16]}"
        rows.append(f"| {run.key} | `{run.command()}` | {str(meta.get('suite_commit', ''))[:7]} | "
                    f"{meta.get('host', '')} ({meta.get('device', '')}, {meta.get('device_name', '')}) | "
                    f"{wall:,.0f} / {cpu:,.0f} | {when} | {meta.get('resume_count', 0)} |")
    n, total = len(rows), len(plan.runs)
    lines = [f"# The committed reproduction of the `{plan.name}` tier: {n} of {total} runs",
             "",
             f"Written by `python workflows/reproduction.py collect --tier {plan.name}` from each run's meta.json "
             "(notes by hand: [NOTES.md](NOTES.md)). What the tier is and why: docs/reproduction.md. "
             "The report of these runs: [report/index.md](report/index.md).",
             "",
             f"To reproduce or continue: `snakemake --cores 2 {plan.name}`, then "
             f"`python workflows/reproduction.py collect --tier {plan.name}` and commit this folder; "
             f"`python workflows/reproduction.py status --tier {plan.name}` lists what is missing.",
             "",
             "## Cost of the committed runs",
             "",
             "| method | runs | wall s per run (min / median / max) | wall hours | CPU hours |",
             "|---|---|---|---|---|"]
    for variant, c in sorted(cost.items(), key=lambda kv: -kv[1]["cpu"]):
        w = sorted(c["wall"])
        lines.append(f"| {variant} | {c['runs']} | {w[0]:,.0f} / {statistics.median(w):,.0f} / {w[-1]:,.0f} | "
                     f"{sum(w) / 3600:.2f} | {c['cpu'] / 3600:.2f} |")
    if cost:
        lines.append(f"| all | {n} | | {sum(sum(c['wall']) for c in cost.values()) / 3600:.2f} | "
                     f"{sum(c['cpu'] for c in cost.values()) / 3600:.2f} |")
    lines += ["", "## Runs", "",
              "Each run's command is the plan's, as the workflow ran it; `resumes`: times it was stopped and resumed "
              "from its checkpoint (its wall and CPU time are summed over the parts, each part's up to its last checkpoint).",
              "",
              "| run | command | suite commit | host (device) | wall s / CPU s | when (UTC) | resumes |",
              "|---|---|---|---|---|---|---|", *rows, ""]
    tmp = out / "README.md.tmp"          # written whole, then renamed: a killed collect leaves the old README
    tmp.write_text("\n".join(lines))
    tmp.replace(out / "README.md")


def _relocated(plan: WP.Plan, out: Path) -> WP.Plan:
    """The same plan with its run directories under the committed folder (relative to the repository)."""
    import copy
    moved = copy.deepcopy(plan)
    moved.root = str(out.resolve().relative_to(ROOT)) if out.resolve().is_relative_to(ROOT) else str(out)
    for run in moved.runs.values():
        run.root = moved.root
    return moved


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="workflows/reproduction.py", description=__doc__.split("\n\n")[0])
    p.add_argument("command", choices=["status", "collect", "restore"])
    p.add_argument("--tier", default="cpu_smac")
    p.add_argument("--config", default=str(ROOT / "workflows" / "config.yaml"))
    p.add_argument("--results-base", default=str(ROOT), help="where the workflow's results/ folder lies")
    p.add_argument("--into", help="the committed reproduction (default paper_figures/reproduced/<tier>)")
    p.add_argument("--no-report", action="store_true", help="collect: do not rebuild the committed report")
    a = p.parse_args(argv)
    try:
        plan = WP.build_plan(WP.load_config(a.config), tier=a.tier, check=False)
    except WP.PlanError as exc:
        print(f"workflow config error: {exc}", file=sys.stderr)
        return 2
    base = Path(a.results_base)
    into = Path(a.into) if a.into else reproduced_dir(plan.name)
    if a.command == "restore":
        restored = restore(plan, base, into)
        print(f"restored {len(restored)} committed runs under {base / plan.root}/runs (marked done)")
    if a.command == "collect":
        copied = collect(plan, base, into)
        print(f"collected {len(copied)} completed runs into {into}/runs")
        if copied and not a.no_report:
            out = into
            subprocess.run([sys.executable, "-m", "analysis", "report", "--plan", str(out / "plan.json"),
                            "--out", str(out / "report"), "--target", plan.name], cwd=ROOT, check=True)
    groups = status(plan, base, into)
    total = len(plan.runs)
    print(f"{plan.name}: {len(groups['committed'])}/{total} runs committed under {into}/runs")
    for name in ("finished, not collected", "started", "missing"):
        if groups[name]:
            print(f"  {name} ({len(groups[name])}):")
            for key in groups[name]:
                print(f"    {key}")
    for name, spec in plan.model_analysis.items():
        lacking = [k for k in spec["runs"] if not (into / "runs" / k / "analysis" / spec["file"]).exists()]
        if lacking:
            print(f"  model analysis {name} not committed yet for {len(lacking)} of {len(spec['runs'])} runs "
                  f"(the tier's target runs it after each run): {', '.join(lacking)}")
    if len(groups["committed"]) < total:
        finished = set(groups["committed"]) | set(groups["finished, not collected"])
        pending = [k for k in plan.runs if k not in finished]
        hours, per_method = remaining_cpu_hours(plan, into, pending)
        print(f"  still to run: about {hours:.1f} CPU-hours (median CPU time per step of each method's committed "
              f"runs on that map, else on its other maps, else the plan's estimate): "
              + ", ".join(f"{m} {h:.1f}" for m, h in sorted(per_method.items(), key=lambda x: -x[1])))
        print(f"to continue: python workflows/reproduction.py restore --tier {plan.name}; "
              f"snakemake --cores 2 {plan.name}   (then: python workflows/reproduction.py collect "
              f"--tier {plan.name}, and commit paper_figures/reproduced/{plan.name})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
