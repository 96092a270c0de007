# Build the plan (the runs every target needs) from the config at parse time.
import importlib.util
import json
import re
import shlex
import sys
from pathlib import Path

from snakemake.exceptions import WorkflowError


def _load_plan_module():
    path = Path(workflow.basedir) / "workflows" / "plan.py"
    spec = importlib.util.spec_from_file_location("marie_workflow_plan", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


WP = _load_plan_module()
try:
    PLAN = WP.build_plan(config)
    TIERS = {name: WP.build_plan(config, tier=name) for name in WP.tier_names(config)}  # demo, cpu_smac, ...
except WP.PlanError as _exc:
    raise WorkflowError(f"workflow config error: {_exc}") from None

if str(config.get("announce", True)).lower() not in ("false", "0", "no", "off"):
    for _line in WP.summary(PLAN) + [line for _tier in TIERS.values() for line in WP.summary(_tier)]:
        print(_line, file=sys.stderr)

RUNS = {k: v for plan in (PLAN, *TIERS.values()) for k, v in plan.by_rundir().items()}
PLAN_FILES = {plan.name: f"{plan.root}/workflow/plan.json" for plan in (PLAN, *TIERS.values())}
# Every resource key some planned run has (plus gpu), with the value of a run that lacks it.
RESOURCE_DEFAULTS = {"gpu": 0}
for _run in RUNS.values():
    for _key, _value in _run.resources.items():
        RESOURCE_DEFAULTS.setdefault(_key, 0 if isinstance(_value, (int, float)) else "")


def planned_run(w):
    rundir = f"{w.root}/runs/{w.env}/{w.map}/{w.variant}/seed{w.seed}"
    if rundir not in RUNS:
        raise WorkflowError(f"{rundir} is not a run of the plan (workflows/config.yaml); "
                            f"`python workflows/plan.py` lists the planned runs")
    return RUNS[rundir]


def _resource(key):
    return lambda w: planned_run(w).resources.get(key, RESOURCE_DEFAULTS[key])
