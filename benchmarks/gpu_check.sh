#!/usr/bin/env bash
# One call on a GPU machine (at most ~8 minutes): the CUDA tests, then MARIE at the paper size on the GPU
# (world-model step, imagination of 600 starts, KV cache vs recomputation, a short training run split
# into phases), printed as one table with the estimated GPU-hours of a 100k-step paper run.
#
#   bash benchmarks/gpu_check.sh [OUT_DIR]        (needs: pip install -e ".[dev]" on a CUDA build of torch)
#   DEVICE=cpu PRESET=smoke STEPS=600 bash benchmarks/gpu_check.sh /tmp/g   # the script itself, checked on a CPU
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-${OUT:-/tmp/gpu_check}}
DEVICE=${DEVICE:-cuda}
PRESET=${PRESET:-paper}
STEPS=${STEPS:-3000}
mkdir -p "$OUT"
rm -f "$OUT/throughput.jsonl"
export JAX_PLATFORMS=cpu   # SMAX stays on the CPU; the models go to the GPU
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null | tee "$OUT/gpu.txt"
python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda,
           torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no CUDA device')" | tee -a "$OUT/gpu.txt"

echo "== CUDA tests"
timeout 240 python -m pytest -q tests/test_gpu.py 2>&1 | tail -5 | tee "$OUT/tests.txt"

echo "== $PRESET size on $DEVICE (world_model_throughput.py)"
for what in wm imagine kv; do
  timeout 180 python benchmarks/world_model_throughput.py --preset "$PRESET" --device "$DEVICE" --only "$what" \
    --chunk 0 --microbatch 0 --repeats 3 | tail -1 >> "$OUT/throughput.jsonl" || echo "{\"what\": \"$what\", \"failed\": true}" >> "$OUT/throughput.jsonl"
done
for what in wm imagine; do
  timeout 180 python benchmarks/world_model_throughput.py --preset "$PRESET" --device "$DEVICE" --only "$what" \
    --chunk 0 --microbatch 0 --repeats 3 --set run.autocast_bf16=true | tail -1 \
    | python -c "import json,sys; r=json.loads(sys.stdin.read()); r['what']+='_bf16'; print(json.dumps(r))" \
    >> "$OUT/throughput.jsonl" || true
done

for what in imagine; do   # fixed-shape decoding, captured as CUDA graphs (world_model.static_cache, imagination.compile)
  timeout 240 python benchmarks/world_model_throughput.py --preset "$PRESET" --device "$DEVICE" --only "$what" \
    --chunk 0 --microbatch 0 --repeats 3 --set params.world_model.static_cache=true \
    --set params.imagination.compile=reduce-overhead | tail -1 \
    | python -c "import json,sys; r=json.loads(sys.stdin.read()); r['what']+='_graphs'; print(json.dumps(r))" \
    >> "$OUT/throughput.jsonl" || true
done

echo "== a short training run on $DEVICE (SMAX 3m, $STEPS steps, training from the first round)"
rm -rf "$OUT/run"
timeout 300 marie run --algo marie --preset "$PRESET" --env smax --map 3m --seed 0 --steps "$STEPS" --device "$DEVICE" \
  --set params.training.world_model_from_round=1 --set params.training.policy_from_round=1 \
  --set params.imagination.chunk=0 --set params.training.wm_microbatch=0 \
  --set run.eval_every="$STEPS" --set run.eval_episodes=10 --out "$OUT/run" > "$OUT/run.txt" 2>&1 || echo "run: exit $?"

python - "$OUT" "$PRESET" "$STEPS" <<'PY'
import json, sys
from pathlib import Path
import pandas as pd
out, preset, steps = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
rows = [json.loads(l) for l in (out / "throughput.jsonl").read_text().splitlines() if l.strip()]
print(f"\n| measurement ({preset} preset, SMAX 3m shapes) | value |\n|---|---|")
for r in rows:
    if r.get("failed"):
        print(f"| {r['what']} | FAILED |")
    elif r["what"].startswith("wm"):
        print(f"| world-model step, {r['segments']} x {r['horizon']} x {r['agents']} ({r['what']}) | {r['step_s']:.3f} s, "
              f"peak {r['peak_mb']:.0f} MB |")
    elif r["what"].startswith("imagine"):
        print(f"| imagination {r['rollouts']} x {r['agents']} x H{r['horizon']} ({r['what']}) | {r['imagine_s']:.3f} s, "
              f"peak {r['peak_mb']:.0f} MB |")
    elif r["what"] == "kv":
        print(f"| KV cache vs recomputation | x{r['speedup']:.1f}, same samples: {r['same_samples']} |")
train = out / "run" / "train.csv"
if train.exists():
    t = pd.read_csv(train)
    phases = [c for c in t.columns if c.startswith("time_") and c.endswith("_s")]
    per_round = t[phases].mean()
    for c in phases:
        print(f"| training round: {c[5:-2]} | {per_round[c]:.2f} s |")
    meta = json.loads((out / "run" / "meta.json").read_text())
    rounds, wall = len(t), meta.get("wall_s", float("nan"))
    round_s = per_round.sum()
    other_s = max(wall - t[phases].sum().sum(), 0.0) / steps    # acting, environment, evaluation per env step
    # a 100k-step paper run: a round every 100 transitions from 1000 on (990 rounds), the rest per step
    est_h = (990 * round_s + 100_000 * other_s) / 3600
    print(f"| training round (all phases) | {round_s:.2f} s ({rounds} rounds measured) |")
    print(f"| acting + env + evaluation per env step | {other_s * 1e3:.2f} ms |")
    print(f"| estimated 100k-step {preset} run (3m; a round every 100 transitions) | {est_h:.2f} device-hours "
          f"(target for paper on a GPU: <= 2 H100-hours) |")
else:
    print("| training run | FAILED (see run.txt) |")
PY
