# One job per run: `marie run` into the run directory, then a marker that exists only for a completed run.
#
# The run directory itself is never a Snakemake output: outputs of failed or killed jobs are deleted, and
# the directory holds the checkpoint a killed run resumes from. The declared output is the marker
# {rundir}/workflow.done, written after `marie run` exits 0 and meta.json says completed; running the
# workflow again re-runs the job, and `marie run` resumes from checkpoint/ (or returns at once if the run
# completed and only the marker is missing). Logs are appended to, so a resumed run keeps its history.

wildcard_constraints:
    env=r"[^/]+",
    map=r"[^/]+",
    variant=r"[^/]+",
    seed=r"\d+",


rule train:
    output:
        marker="{root}/runs/{env}/{map}/{variant}/seed{seed}/" + WP.MARKER,
    log:
        "{root}/logs/{env}/{map}/{variant}/seed{seed}.log",
    threads: lambda w: planned_run(w).threads
    resources:
        **{key: _resource(key) for key in RESOURCE_DEFAULTS},
    params:
        command=lambda w: planned_run(w).command(),
        rundir=lambda w: planned_run(w).rundir,
        steps=lambda w: planned_run(w).steps,
    shell:
        "echo \"[$(date -u +%FT%TZ)] {params.command}\" >> {log}; "
        "{params.command} >> {log} 2>&1 && "
        "python -m analysis mark-done --rundir {params.rundir} --steps {params.steps} --out {output.marker} >> {log} 2>&1"
