"""Command line of the analysis (the Snakefile calls these; they also work on their own):

    python -m analysis report   --plan results/workflow/plan.json --out results/report [--target T] [--reps N]
    python -m analysis report   --runs results/runs --out results/report      # any run dirs, no workflow
    python -m analysis report   --runs results/runs --out R --reference paper_figures/reproduced/small
    python -m analysis collect  --plan PLAN --out DIR       # tidy.csv, runs.csv, problems.csv, cost.csv; prints problems
    python -m analysis item     --plan PLAN --item table1 --out DIR            # one table/figure
    python -m analysis marl-eval --plan PLAN --experiment smac --out FILE.json
    python -m analysis mark-done --rundir DIR --steps N --out MARKER           # used by the workflow
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _plan(args) -> dict:
    from analysis.load import load_plan, plan_from_scan
    if getattr(args, "plan", None):
        return load_plan(args.plan)
    if getattr(args, "runs", None):
        return plan_from_scan(args.runs)
    raise SystemExit("analysis: error: give --plan PLAN.json or --runs DIR")


def _settings(args, plan):
    from analysis.items import Settings
    return Settings.from_plan(plan, reps=getattr(args, "reps", None))


def cmd_mark_done(args) -> int:
    """Write the workflow's marker only for a completed run that reached its budget."""
    from analysis.load import read_eval, read_meta
    rundir = Path(args.rundir)
    meta = read_meta(rundir / "meta.json")
    ev = read_eval(rundir / "eval.csv")
    last = int(ev["env_steps"].max()) if ev is not None and len(ev) else None
    if meta.get("status") != "completed" or last is None or last < args.steps:
        print(f"analysis: error: {rundir} is not a completed run of {args.steps} steps (status "
              f"{meta.get('status', 'missing')}, last evaluation at {last})", file=sys.stderr)
        return 1
    final = ev.iloc[-1]
    info = {"run": str(rundir), "env_steps": last, "win_rate": None if final.isna()["win_rate"] else float(final["win_rate"]),
            "return_mean": float(final["return_mean"]), "wall_s": meta.get("wall_s"), "end_time": meta.get("end_time")}
    out = Path(args.out)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(info, indent=1) + "\n")
    tmp.replace(out)
    return 0


def cmd_collect(args) -> int:
    from analysis.load import collect, problems_text
    plan = _plan(args)
    coll = collect(plan)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    coll.tidy.to_csv(out / "tidy.csv", index=False)
    coll.runs.drop(columns=["meta"]).to_csv(out / "runs.csv", index=False)
    coll.problems.to_csv(out / "problems.csv", index=False)
    from analysis.cost import cost_table
    cost_table(coll.runs).to_csv(out / "cost.csv", index=False)
    print(f"{len(coll.runs)} runs planned, {int(coll.runs['complete'].sum())} complete, {len(coll.problems)} problems")
    for line in problems_text(coll.problems):
        print(f"  {line}")
    return 0


def cmd_report(args) -> int:
    from analysis.report import build_report
    plan = _plan(args)
    res = build_report(plan, args.out, target=args.target, settings=_settings(args, plan),
                       items=args.items.split(",") if args.items else None, reference=args.reference)
    coll = res["collection"]
    print(f"report: {res['index']} ({int(coll.runs['complete'].sum())}/{len(coll.runs)} runs complete, "
          f"{len(coll.problems)} problems)")
    for it in res["items"]:
        if it.status != "not-in-plan":
            print(f"  {it.name:<10} {it.status:<12} {len(it.files)} files"
                  + (f"  ({it.notes[-1]})" if it.status == "unavailable" else ""))
    return 0


def cmd_item(args) -> int:
    import paper_figures
    from analysis.items import build
    from analysis.load import collect
    plan = _plan(args)
    reg = paper_figures.registry()
    if args.item not in reg:
        raise SystemExit(f"analysis: error: unknown item '{args.item}'; items: {', '.join(reg)}")
    it = build(args.item, reg[args.item], collect(plan), Path(args.out), _settings(args, plan))
    print(f"{it.name}: {it.status}; files: {', '.join(it.files) or '-'}")
    for n in it.caption + it.notes:
        print(f"  {n}")
    if it.markdown:
        print(it.markdown)
    return 0


def cmd_marl_eval(args) -> int:
    from analysis.export import marl_eval_json
    from analysis.load import collect
    plan = _plan(args)
    coll = collect(plan)
    exp = args.experiment or next(iter(plan["experiments"]))
    data, notes = marl_eval_json(coll.experiment(exp))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(data, indent=1))
    print(f"wrote {args.out}; " + "; ".join(notes))
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m analysis", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)

    def source(sp):
        sp.add_argument("--plan", help="the workflow's plan.json")
        sp.add_argument("--runs", help="a folder of run directories (instead of --plan)")

    r = sub.add_parser("report", help="the report page of everything that exists")
    source(r)
    r.add_argument("--out", required=True)
    r.add_argument("--target", default="report")
    r.add_argument("--items", help="comma-separated registry items (default: all)")
    r.add_argument("--reps", type=int, help="bootstrap repetitions (default: the plan's analysis.bootstrap_reps)")
    r.add_argument("--reference", help="a folder of reference run directories (e.g. a committed reproduction under "
                                       "paper_figures/reproduced/<tier>/): Table 1 shows them beside yours "
                                       "(default: none)")
    r.set_defaults(func=cmd_report)
    c = sub.add_parser("collect", help="tidy table and validation")
    source(c)
    c.add_argument("--out", required=True)
    c.set_defaults(func=cmd_collect)
    i = sub.add_parser("item", help="build one table or figure")
    source(i)
    i.add_argument("--item", required=True)
    i.add_argument("--out", required=True)
    i.add_argument("--reps", type=int)
    i.set_defaults(func=cmd_item)
    m = sub.add_parser("marl-eval", help="export to marl-eval JSON")
    source(m)
    m.add_argument("--experiment")
    m.add_argument("--out", required=True)
    m.set_defaults(func=cmd_marl_eval)
    d = sub.add_parser("mark-done", help="write the workflow marker of a completed run")
    d.add_argument("--rundir", required=True)
    d.add_argument("--steps", type=int, required=True)
    d.add_argument("--out", required=True)
    d.set_defaults(func=cmd_mark_done)
    args = p.parse_args(argv)
    from marie.errors import UserError
    try:
        return args.func(args)
    except UserError as exc:
        print(f"analysis: error: {str(exc).removeprefix('analysis: ')}", file=sys.stderr)
        return 2
