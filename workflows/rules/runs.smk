# One job per run: `marie run` into the run directory, then a marker that exists only for a completed run.
#
# The run directory itself is never a Snakemake output: outputs of failed or killed jobs are deleted, and
# the directory holds the checkpoint a killed run resumes from. The declared output is the marker
# {rundir}/workflow.done, written after `marie run` exits 0 and meta.json says completed; running the
# workflow again re-runs the job, and `marie run` resumes from checkpoint/ (or returns at once if the run
# completed and only the marker is missing).
#
# Logs: Snakemake empties a rule's `log:` before every attempt, so {root}/logs/... holds the last attempt
# only. Every attempt is also appended to {rundir}/run.log (with its start time, host and SLURM job id),
# which keeps a resumed run's whole history.

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
        "mkdir -p {params.rundir}; "
        "( echo \"[$(date -u +%FT%TZ)] $(hostname) slurm_job=${{SLURM_JOB_ID:-none}}: {params.command}\"; "
        "PYTHONUNBUFFERED=1 {params.command} && "
        "python -m analysis mark-done --rundir {params.rundir} --steps {params.steps} --out {output.marker} "
        ") 2>&1 | tee -a {params.rundir}/run.log > {log}"
