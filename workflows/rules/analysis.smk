# Model-analysis data (Fig. 7-9), the targets, and the report.
#
# Every target is a rule without output files, so Snakemake runs it each time it is asked for: it waits
# for its runs (their markers), writes the plan to {results}/workflow/plan.json and rebuilds the report
# of everything that exists ({results}/report/index.md and index.html). Targets are shell rules, not
# run: blocks, so their inputs are not re-evaluated when the job starts (a `run:` job re-parses the
# workflow, and an algorithm registered meanwhile would add runs the DAG never scheduled).

MODEL_FILES = {spec["file"]: name for name, spec in PLAN.model_analysis.items()}

CONFIG_JSON = json.dumps(config, sort_keys=True, default=str)


def report_command(plan, target):
    """Shell: write the plan as of now (algorithms registered since the workflow started count, and
    their runs show as missing) and rebuild the report of everything that exists."""
    plan_file = PLAN_FILES[plan.name]
    demo = " --demo" if plan.name == "demo" else ""
    return (f"python {shlex.quote(str(Path(workflow.basedir) / 'workflows' / 'plan.py'))}{demo} "
            f"--config-json {shlex.quote(CONFIG_JSON)} --write {shlex.quote(plan_file)} && "
            f"python -m analysis report --plan {shlex.quote(plan_file)} --out {shlex.quote(plan.root + '/report')} "
            f"--target {target}")


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
            command=lambda w, output: PLAN.model_analysis[MODEL_FILES[w.file]]["command"].format(
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
    params:
        command=lambda w: _unavailable_messages() + report_command(PLAN, "model_analysis"),
    shell:
        "{params.command}"


rule report:
    localrule: True
    params:
        command=lambda w: report_command(PLAN, "report"),
    shell:
        "{params.command}"


rule demo:
    localrule: True
    input:
        DEMO.markers(list(DEMO.experiments)),
    params:
        command=lambda w: report_command(DEMO, "demo"),
    shell:
        "{params.command}"
