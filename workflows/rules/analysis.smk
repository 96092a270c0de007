# Model-analysis data (Fig. 7-9), the targets, and the report.
#
# Every target is a rule without output files, so Snakemake runs it each time it is asked for: it waits
# for its runs (their markers), writes the plan to {results}/workflow/plan.json and rebuilds the report
# of everything that exists ({results}/report/index.md and index.html). Targets are shell rules, not
# run: blocks, so their inputs are not re-evaluated when the job starts (a `run:` job re-parses the
# workflow, and an algorithm registered meanwhile would add runs the DAG never scheduled).
# The plan's JSON ({results}/workflow/plan.json) is rewritten whenever the plan changes.

# file -> its analysis' spec, over the main plan and the tiers (a tier may run an analysis on its own runs)
MODEL_FILES = {spec["file"]: spec for plan in (PLAN, *TIERS.values()) for spec in plan.model_analysis.values()}

rule plan_json:
    """The plan as JSON for the analysis; rewritten whenever the plan changes (its digest is a param)."""
    localrule: True
    output:
        "{root}/workflow/plan.json",
    params:
        digest=lambda w: _plan_of(w.root).config_digest + "-" + _digest(_plan_of(w.root)),
    run:
        WP.write_json(_plan_of(wildcards.root), output[0])


def _plan_of(root):
    for plan in (PLAN, *TIERS.values()):
        if plan.root == root:
            return plan
    raise WorkflowError(f"no plan writes to {root}")


def _digest(plan):
    import hashlib
    return hashlib.sha256(json.dumps(plan.to_json(), sort_keys=True, default=str).encode()).hexdigest()[:16]


def report_command(plan, target):
    """Shell: rebuild the report of everything that exists from the plan's JSON."""
    return (f"python -m analysis report --plan {shlex.quote(PLAN_FILES[plan.name])} "
            f"--out {shlex.quote(plan.root + '/report')} --target {target}")


if MODEL_FILES:
    rule model_analysis_data:
        input:
            marker="{root}/runs/{env}/{map}/{variant}/seed{seed}/" + WP.MARKER,
        output:
            "{root}/runs/{env}/{map}/{variant}/seed{seed}/analysis/{file}",
        log:
            "{root}/logs/{env}/{map}/{variant}/seed{seed}.{file}.log",
        wildcard_constraints:
            file="|".join(re.escape(f) for f in MODEL_FILES),
        params:
            command=lambda w, output: MODEL_FILES[w.file]["command"].format(
                rundir=planned_run(w).rundir, out=output[0]),
        shell:
            "{params.command} > {log} 2>&1"


for _target, _experiments in PLAN.targets.items():
    if _target == "model_analysis" or "model_analysis" in _experiments:
        continue
    rule:
        name: _target
        localrule: True
        input:
            PLAN.markers(_experiments),
            PLAN_FILES["main"],
        params:
            command=lambda w, c=report_command(PLAN, _target): c,  # a function: strings would be formatted
        shell:
            "{params.command}"


def _unavailable_messages():
    lines = []
    for name, spec in PLAN.model_analysis.items():
        if not spec["available"]:
            text = (f"model_analysis: {name} is NOT AVAILABLE yet: {spec['module']} (MARIE's analysis entry point) "
                    f"does not exist, so no {spec['file']} was written; the report lists its figures as not available")
            lines.append(f"echo {shlex.quote(text)} >&2; ")
    return "".join(lines)


rule model_analysis:
    localrule: True
    input:
        [out for spec in PLAN.model_analysis.values() if spec["available"] for out in spec["outputs"]],
        PLAN_FILES["main"],
    params:
        command=lambda w: _unavailable_messages() + report_command(PLAN, "model_analysis"),
    shell:
        "{params.command}"


rule report:
    localrule: True
    input:
        PLAN_FILES["main"],
    params:
        command=lambda w: report_command(PLAN, "report"),
    shell:
        "{params.command}"


# One target per tier (demo, cpu_smac, ...): its runs under {results}/{tier}/, then its report there.
for _tier, _plan in TIERS.items():
    rule:
        name: _tier
        localrule: True
        input:
            _plan.markers(list(_plan.experiments)),
            [out for spec in _plan.model_analysis.values() if spec["available"] for out in spec["outputs"]],
            PLAN_FILES[_tier],
        params:
            command=lambda w, c=report_command(_plan, _tier): c,
        shell:
            "{params.command}"
