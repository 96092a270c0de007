#!/usr/bin/env bash
# The SLURM path end to end, on a machine that is a (one-node) SLURM cluster with accounting (sacct +
# slurmdbd), e.g. one built by a script such as slurm-single-node.sh. Run from anywhere:
#
#   bash benchmarks/slurm_check.sh            # about 15 minutes; at most 2 jobs at a time (--jobs 2)
#
# A small grid (Random and MAPPO on SMAX 3m, seeds 0 and 1, smoke presets, 100k steps) goes through the
# profile workflows/profiles/slurm. While it runs, one MAPPO job is killed by its time limit (lowered to
# 1 minute with scontrol once it runs) and one Random job is cancelled with scancel. Then it checks:
#   - every job was submitted with the plan's -t / --mem / --cpus-per-task and no GPU;
#   - the timed-out run was resubmitted (profile `retries`) and resumed from its checkpoint;
#   - a cancelled job is `CANCELLED by 0` in sacct, which the executor plugin never recognises, so
#     Snakemake waits for it forever: the way out (docs/workflow.md) is to interrupt and rerun, and the
#     rerun resumes the cancelled run from its checkpoint;
#   - {rundir}/run.log keeps every attempt, Snakemake's own log only the last;
#   - the report ends complete (every planned run complete).
# Exit status 0 when every check passes. WORK=/some/dir keeps the files there (default: a new /tmp folder).
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=${WORK:-$(mktemp -d /tmp/marie-slurm-check.XXXXXX)}
RESULTS=$WORK/results
CFG=$WORK/config.yaml
STEPS=100000   # MAPPO smoke runs ~1000 steps/s here: long enough to be killed at 1 minute mid-run
FAILED=0
START=$(date +%FT%T)   # sacct: the jobs of this check only
say() { echo "[$(date -u +%T)] $*"; }
check() {  # check DESCRIPTION COMMAND...: print PASS/FAIL
    if "${@:2}"; then echo "PASS  $1"; else echo "FAIL  $1"; FAILED=1; fi
}

command -v sbatch >/dev/null && sacct -n -X >/dev/null 2>&1 || {
    echo "slurm_check: needs a SLURM cluster with accounting (sbatch, sacct with slurmdbd)" >&2; exit 2; }
say "work folder $WORK; $(sinfo -h -o '%P %D nodes, %c CPUs, %m MB, time limit %l' | head -1)"

# A GPU request on a cluster without GPUs: what the slurm-gpu profile would meet (defect 2 of issue 13).
echo "sbatch --gpus=1 on this cluster: $(sbatch --gpus=1 -o /dev/null --wrap true 2>&1 | head -1)"

python - "$CFG" "$RESULTS" "$STEPS" <<'EOF'
# Snakemake merges --configfile into workflows/config.yaml (nested mappings merge), so the other
# experiments are emptied rather than left out. merged.yaml: the result, for the checks below.
import sys, yaml
cfg_path, results, steps = sys.argv[1], sys.argv[2], int(sys.argv[3])
base = yaml.safe_load(open("workflows/config.yaml"))
cfg = {"results": results, "seeds": [0, 1], "preset": "smoke", "announce": False,
       "eval": {"interval": 4000, "episodes": 4},
       "maps": {"3m": dict(base["maps"]["3m"], budget=steps)},
       "experiments": {**{name: {"maps": []} for name in base["experiments"]},
                       "smac": {"env": "smax", "maps": ["3m"], "methods": ["Random", "MAPPO"]}},
       "resources": {"default": {"threads": 1, "mem_mb": 1000, "runtime": 10}, "max_runtime": 60,
                     "methods": {"Random": {"runtime": 5}, "MAPPO": {"mem_mb": 2000, "runtime_per_100k": 20}}}}
def merge(a, b):
    return {**a, **{k: merge(a[k], v) if isinstance(v, dict) and isinstance(a.get(k), dict) else v for k, v in b.items()}}
yaml.safe_dump(cfg, open(cfg_path, "w"), sort_keys=False)
yaml.safe_dump(merge(base, cfg), open(cfg_path.replace("config.yaml", "merged.yaml"), "w"), sort_keys=False)
EOF
SMK=(snakemake --profile workflows/profiles/slurm --configfile "$CFG" --jobs 2
     --slurm-init-seconds-before-status-checks 5 all_smac)
say "phase 1: ${SMK[*]}"
# In the background, with SIGINT restored (bash ignores it in background jobs): Ctrl-C is the way out below.
python -c 'import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); os.execvp(sys.argv[1], sys.argv[1:])' \
    "${SMK[@]}" > "$WORK/phase1.log" 2>&1 &
SMK_PID=$!

rundir() { echo "$RESULTS/runs/smax/3m/$1/seed$2"; }
job_of() {  # job_of VARIANT SEED -> the id of its queued or running train job (the plugin's comment:
            # rule_train_wildcards_ + the wildcard values joined by _)
    squeue -h -o '%i|%k' | awk -F'|' -v tail="_3m_$1_$2" \
        'index($2, "rule_train_") == 1 && substr($2, length($2) - length(tail) + 1) == tail {print $1}' | head -1
}
job_state() { squeue -h -j "$1" -o %T 2>/dev/null || true; }

# Watch the queue: lower one running MAPPO job's time limit, cancel one Random job after its first
# checkpoint. Snakemake then waits for the cancelled job forever (its job slot stays taken; the other slot
# runs the rest), so phase 1 ends when none of our jobs has been queued or running for 150 s (longer than
# Snakemake's status-check interval ever gets while a job of this grid runs).
TAG="rule_train_wildcards_${RESULTS//\//_}_"
TIMED_OUT="" CANCELLED="" idle=0 deadline=$((SECONDS + 1500))
while kill -0 $SMK_PID 2>/dev/null && [ $idle -lt 150 ] && [ $SECONDS -lt $deadline ]; do
    for seed in 0 1; do
        id=$(job_of MAPPO $seed)
        if [ -z "$TIMED_OUT" ] && [ -n "$id" ] && [ "$(job_state "$id")" = RUNNING ]; then
            scontrol update JobId="$id" TimeLimit=1
            TIMED_OUT=$id; TIMED_SEED=$seed
            say "MAPPO seed $seed is job $id: time limit lowered to 1 minute"
        fi
        id=$(job_of Random $seed)
        if [ -z "$CANCELLED" ] && [ -n "$id" ] && [ -f "$(rundir Random $seed)/checkpoint/state.pt" ] \
                && [ ! -f "$(rundir Random $seed)/workflow.done" ]; then
            scancel "$id"
            CANCELLED=$id; CANCELLED_SEED=$seed
            say "Random seed $seed is job $id: cancelled with scancel after its first checkpoint"
        fi
    done
    if squeue -h -o %k | grep -q "^$TAG"; then idle=0; else idle=$((idle + 2)); fi
    sleep 2
done
if kill -0 $SMK_PID 2>/dev/null; then
    HUNG=yes
    say "no job queued for $idle s and snakemake still waits; sacct says job ${CANCELLED:-?} is" \
        "'$(sacct -n -X -P -j "${CANCELLED:-0}" -o State | head -1)'. Interrupting it (Ctrl-C)"
    kill -INT $SMK_PID
    wait $SMK_PID || true
else
    HUNG=no; wait $SMK_PID || true
fi
say "phase 1 ended: $(tail -1 "$WORK/phase1.log")"

say "phase 2: the same command again"
"${SMK[@]}" > "$WORK/phase2.log" 2>&1 || say "phase 2 exited with an error (see $WORK/phase2.log)"

echo
echo "== sacct: every job of this check (the run from Snakemake's 'submitted with SLURM jobid' lines)"
# job id -> run: sacct keeps no job comment unless AccountingStoreFlags=job_comment, so read Snakemake's logs
JOBS=$WORK/jobs.txt
sed -n 's|.*submitted with SLURM jobid \([0-9]*\) (log: .*/rule_train/.*_3m_\([A-Za-z]*\)_\([0-9]*\)/.*|\1 \2 \3|p' \
    "$WORK"/phase*.log > "$JOBS"
sacct -X -P -S "$START" -o JobID,State,Timelimit,ReqMem,ReqCPUS,ReqTRES%60,Elapsed | while IFS= read -r line; do
    run=$(awk -v id="${line%%|*}" '$1 == id {print "3m/" $2 "/seed" $3}' "$JOBS")
    [ "${line%%|*}" = JobID ] && run=run
    [ -n "$run" ] && echo "$line|$run"
done
echo
echo "== checks"
submitted_right() {  # every train job: -t, --mem (plus the plugin's fudge), cpus as planned; no GPU
    python - "$WORK/merged.yaml" "$START" "$JOBS" "${TIMED_OUT:-none}" <<'EOF'
import subprocess, sys, yaml
sys.path.insert(0, "workflows")
import plan
runs = {r.key: r for r in plan.build_plan(yaml.safe_load(open(sys.argv[1])), check=False).runs.values()}
jobs = {i: (v, int(s)) for i, v, s in (line.split() for line in open(sys.argv[3]))}
out = subprocess.run(["sacct", "-X", "-P", "-n", "-S", sys.argv[2], "-o", "JobID,Timelimit,ReqMem,ReqCPUS,ReqTRES"],
                     capture_output=True, text=True).stdout
ok, seen = True, 0
for line in out.splitlines():
    jobid, limit, mem, cpus, tres = line.split("|")
    if jobid not in jobs:
        continue
    run = next(r for r in runs.values() if (r.variant, r.seed) == jobs[jobid])
    seen += 1
    minutes = int(limit.split(":")[0]) * 60 + int(limit.split(":")[1]) if limit.count(":") == 2 else None
    want = 1 if jobid == sys.argv[4] else run.resources["runtime"]  # the job whose limit the check lowered
    mem_mb = float(mem.rstrip("M")) if mem.endswith("M") else float(mem.rstrip("G")) * 1024
    good = (minutes == want and mem_mb >= run.resources["mem_mb"] and int(cpus) == run.threads
            and "gpu" not in tres)
    print(f"      job {jobid} {run.key}: -t {limit} (planned {run.resources['runtime']} min"
          f"{', lowered to 1 by this check' if want == 1 else ''}), --mem {mem} (planned {run.resources['mem_mb']}), "
          f"cpus {cpus} (planned {run.threads}), tres {tres}: {'ok' if good else 'WRONG'}")
    ok &= good
sys.exit(0 if ok and seen >= 4 else 1)
EOF
}
check "jobs submitted with the plan's -t/--mem/--cpus-per-task, no GPU" submitted_right
t_state=$(sacct -n -X -P -j "${TIMED_OUT:-0}" -o State | head -1)
check "MAPPO seed ${TIMED_SEED:-?} (job ${TIMED_OUT:-none}) was killed by its time limit: $t_state" [ "$t_state" = TIMEOUT ]
T_DIR=$(rundir MAPPO "${TIMED_SEED:-0}")
resumed_after_timeout() {
    python -c "import json,sys; m=json.load(open('$T_DIR/meta.json')); print('      meta.json:', {k: m[k] for k in ('status','resume_count','env_steps')}); sys.exit(not (m['status']=='completed' and m['resume_count']>=1))" &&
    grep -E "resumed at step [1-9]" "$T_DIR/run.log" | head -1 | sed 's/^/      run.log: /' | grep -q resumed
}
check "the timed-out run was resubmitted and resumed from its checkpoint" resumed_after_timeout
c_state=$(sacct -n -X -P -j "${CANCELLED:-0}" -o State | head -1)
check "the cancelled job is '$c_state' in sacct" [ "${c_state#CANCELLED}" != "$c_state" ]
check "snakemake waited for the cancelled job until interrupted (the plugin's known limitation): $HUNG" [ "$HUNG" = yes ]
C_DIR=$(rundir Random "${CANCELLED_SEED:-0}")
check "the rerun resumed the cancelled run from its checkpoint" grep -qE "resumed at step [1-9]" "$C_DIR/run.log"
attempts() { grep -c "slurm_job=" "$1" || true; }
T_LOG=$RESULTS/logs/smax/3m/MAPPO/seed${TIMED_SEED:-0}.log
echo "      attempts in $T_DIR/run.log: $(attempts "$T_DIR/run.log"); in Snakemake's log $T_LOG: $(attempts "$T_LOG")"
every_attempt_kept() { [ "$(attempts "$T_DIR/run.log")" -ge 2 ] && [ "$(attempts "$T_LOG")" -eq 1 ]; }
check "run.log keeps every attempt (Snakemake's log only the last)" every_attempt_kept
REPORT=$RESULTS/report/index.md
echo "      report: $(grep -o '[0-9]* runs planned, [0-9]* complete' "$REPORT" 2>/dev/null || echo missing)"
check "the report ends complete (4 of 4 runs)" grep -q "4 runs planned, 4 complete" "$REPORT"
check "the report lists no missing run" grep -q "every planned run is complete" "$REPORT"
echo "      SLURM's own logs (kept for failed jobs only): $(find .snakemake/slurm_logs -name '*.log' -newer "$CFG" 2>/dev/null | wc -l) files under .snakemake/slurm_logs/"
[ $FAILED = 0 ] && say "all checks passed ($WORK)" || say "some checks FAILED ($WORK)"
exit $FAILED
