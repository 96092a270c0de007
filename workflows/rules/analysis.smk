# Model-analysis data (Fig. 7-9), the targets, and the report.
#
# Every target is a rule without output files, so Snakemake runs it each time it is asked for: it waits
# for its runs (their markers), writes the plan to {results}/workflow/plan.json and rebuilds the report
# of everything that exists ({results}/report/index.md and index.html).

MODEL_FILES = {spec["file"]: name for name, spec in PLAN.model_analysis.items()}

def write_plan(plan, path):
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(plan.to_json(), indent=1, sort_keys=True, default=str)
    tmp = Path(str(path) + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def build_report(plan, target):
    write_plan(plan, PLAN_FILES[plan.name])
    shell(f"python -m analysis report --plan {PLAN_FILES[plan.name]} --out {plan.root}/report --target {target}")


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
            target=_target,
        run:
            build_report(PLAN, params.target)


rule model_analysis:
    localrule: True
    input:
        [out for spec in PLAN.model_analysis.values() if spec["available"] for out in spec["outputs"]],
    run:
        for name, spec in PLAN.model_analysis.items():
            if not spec["available"]:
                print(f"model_analysis: {name} is NOT AVAILABLE yet: the module {spec['module']} (MARIE's analysis "
                      f"entry point) does not exist, so no {spec['file']} was written; Fig. 7-9 are listed as "
                      f"not available in the report", file=sys.stderr)
        build_report(PLAN, "model_analysis")


rule report:
    localrule: True
    run:
        build_report(PLAN, "report")


rule demo:
    localrule: True
    input:
        DEMO.markers(list(DEMO.experiments)),
    run:
        build_report(DEMO, "demo")
