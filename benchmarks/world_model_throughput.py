"""MARIE world-model and imagination throughput, peak memory, and the KV-cache speed-up.

    python benchmarks/world_model_throughput.py --preset paper --threads 2            # CPU, SMAX 3m shapes
    python benchmarks/world_model_throughput.py --preset small --threads 2
    python benchmarks/world_model_throughput.py --preset paper --device cuda --dtype float32
    python benchmarks/world_model_throughput.py --preset paper --only kv --kv-rollouts 10
    python benchmarks/world_model_throughput.py --preset cpu --map 2s3z --threads 1 --repeats 3 --only round

Shapes default to SMAX 3m (3 agents, obs 75, 8 actions); the replay buffer holds random data (the cost
of a step depends on shapes only). Each measurement runs in its own subprocess so that its peak memory
is its own: on CPU the process's peak resident set (ru_maxrss, everything included: Python, torch,
models, buffer) and the growth over the resident set just before the measured call; on CUDA
torch.cuda.max_memory_allocated.

  wm       one world-model training step: sample wm_batch segments of H transitions, tokenize, forward,
           Eq. (6) loss, backward, AdamW step (wm_microbatch segments per forward/backward)
  imagine  one imagination: `rollouts` starts x n agents x horizon H, tokenizer decoding and policy
           sampling included (no PPO)
  kv       imagination with the KV cache against recomputing the whole context for every generated
           token, on --kv-rollouts starts (recomputation is too slow for the full batch on a CPU)
Wall times come with the process CPU time of the same calls (`*_cpu_s`): on a shared machine the CPU
time is the steadier figure (time spent descheduled is not in it; memory contention still is).

  round    training rounds of MARIE on a real SMAX map (--map; its own shapes, not --agents/--obs-dim/--actions):
           the environment phase (train_every transitions: acting, SMAX, replay) and the tokenizer, world-model,
           imagination and PPO phases of `update`, each in process CPU seconds, every phase on from the first
           round (no staged warm-up), medians over --repeats rounds after one warm-up round. Beside each
           phase its floor: the FLOPs PyTorch's FLOP counter counts in it (matmuls and attention) at the best
           GEMM rate measured beside it, plus for imagination the KV-cache bytes at the measured read rate.
  floor    what this machine can do at best for both: the Transformer's matmul FLOPs at the measured
           GEMM rate (same shapes), plus, for imagination, the KV-cache bytes that full-context decoding
           must read at the measured memory bandwidth. Attention, heads, Perceiver, tokenizer, dropout
           and sampling are left out, so real times must be above these.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
import types

import numpy as np
import torch


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def build_agent(a):
    from marie.config import resolve_config
    from marie.envs.base import EnvInfo
    from marie.marie_agent import MARIEAgent
    cfg = resolve_config(algo="marie", preset_file=MARIEAgent.preset_file, preset=a.preset, env="smax",
                         map_name=a.map, seed=0, steps=100, overrides=a.overrides)
    cfg["run"]["num_envs"] = 8
    cfg["run"]["dtype"] = a.dtype
    p = cfg["params"]
    if a.chunk is not None:
        p["imagination"]["chunk"] = a.chunk
    if a.microbatch is not None:
        p["training"]["wm_microbatch"] = a.microbatch
    p["training"]["buffer_size"] = 4000
    info = EnvInfo(n_agents=a.agents, obs_dim=a.obs_dim, state_dim=10, n_actions=a.actions, episode_limit=100,
                   backend="bench", backend_version="0", map_name=a.map)
    torch.manual_seed(0)
    agent = MARIEAgent(info, p, cfg["run"], torch.device(a.device), 0)
    rng = np.random.default_rng(0)
    E, N = 8, a.agents
    for t in range(500):  # random transitions, episodes of 50 steps
        avail = rng.random((E, N, a.actions)) < 0.7
        avail[..., 0] = True
        step = {"obs": rng.uniform(-1, 1, (E, N, a.obs_dim)).astype(np.float32),
                "next_obs": rng.uniform(-1, 1, (E, N, a.obs_dim)).astype(np.float32),
                "action": rng.integers(0, a.actions, (E, N, 1)), "reward": rng.random(E).astype(np.float32) * 0.1,
                "terminated": np.full(E, t % 50 == 49), "end": np.full(E, t % 50 == 49),
                "first": np.full(E, t % 50 == 0), "alive": np.ones((E, N), bool), "avail": avail,
                "next_avail": avail}
        agent.replay.add(**step)
    return agent, p


class _FlopCount:
    """FLOPs of the aten ops PyTorch's FLOP counter knows (matmuls, convolutions, attention) run inside it.
    (torch.utils.flop_counter.FlopCounterMode's module tracker trips over no_grad forward passes.)"""

    def __enter__(self):
        from torch.utils._python_dispatch import TorchDispatchMode
        from torch.utils.flop_counter import flop_registry
        counter = self

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                out = func(*args, **(kwargs or {}))
                formula = flop_registry.get(func._overloadpacket)
                if formula is not None:
                    counter.flops += formula(*args, **(kwargs or {}), out_val=out)
                return out
        self.flops, self.mode = 0, Mode()
        self.mode.__enter__()
        return self

    def __exit__(self, *exc):
        self.mode.__exit__(*exc)


def round_phases(a) -> dict:
    """--only round: see the module docstring."""
    from marie.config import resolve_config
    from marie.envs import make_env
    from marie.marie_agent import MARIEAgent
    cfg = resolve_config(algo="marie", preset_file=MARIEAgent.preset_file, preset=a.preset, env="smax", map_name=a.map,
                         seed=0, steps=100, overrides=a.overrides + ["params.training.world_model_from_round=1",
                                                                     "params.training.policy_from_round=1"])
    run, p = cfg["run"], cfg["params"]
    run["dtype"] = a.dtype
    env = make_env("smax", a.map, num_envs=run["num_envs"])
    torch.manual_seed(0)
    agent = MARIEAgent(env.info, p, run, torch.device(a.device), 0)
    state = {"ts": env.reset(seed=0), "carry": agent.initial_carry(run["num_envs"])}

    def collect(transitions):
        for _ in range(-(-transitions // run["num_envs"])):
            actions, state["carry"] = agent.act(state["ts"], state["carry"], training=True)
            nxt = env.step(actions)
            agent.observe(state["ts"], actions, nxt)
            state["ts"] = nxt

    tr, ic = p["training"], p["imagination"]
    collect(tr["learning_starts"])

    # one training round as `update` runs it (one policy update, as the `cpu` preset), phase by phase
    phases = {"environment": lambda: collect(tr["train_every"]),
              "tokenizer": lambda: agent.train_tokenizer(tr["tokenizer_steps"]),
              "world_model": lambda: agent.train_world_model(tr["wm_steps"])}
    rounds = []
    for r in range(a.repeats + 1):
        row, traj = {}, None
        for name, phase in phases.items():
            _sync(a.device)
            c = time.process_time()
            phase()
            _sync(a.device)
            row[name] = time.process_time() - c
        for _ in range(ic["policy_updates"]):
            c = time.process_time()
            traj = agent.imagine_rollouts()
            _sync(a.device)
            row["imagination"] = row.get("imagination", 0.0) + time.process_time() - c
            c = time.process_time()
            agent.ppo(traj)
            _sync(a.device)
            row["ppo"] = row.get("ppo", 0.0) + time.process_time() - c
        if r:   # the first round warms up (and builds the decoding kernel)
            rounds.append(row)
    med = {k: float(np.median([row[k] for row in rounds])) for k in rounds[0]}

    flops = {}
    for name, phase in [("tokenizer", phases["tokenizer"]), ("world_model", phases["world_model"])]:
        with _FlopCount() as counter:
            phase()
        flops[name] = counter.flops
    with _FlopCount() as counter:
        traj = agent.imagine_rollouts()
    flops["imagination"] = counter.flops * ic["policy_updates"]
    with _FlopCount() as counter:
        agent.ppo(traj)
    flops["ppo"] = counter.flops * ic["policy_updates"]
    rates = floor(agent, p, a)
    best = max(rates["gemm_gflops_train"], rates["gemm_gflops_imagine"]) * 1e9
    floors = {name: f / best for name, f in flops.items()}
    floors["imagination"] += ic["policy_updates"] * rates["imagine_kv_read_gb"] * 1e9 / (rates["read_gb_s"] * 1e9)
    return {"map": a.map, "agents": env.info.n_agents, "obs_dim": env.info.obs_dim, "rounds": len(rounds),
            "phase_cpu_s": med, "round_cpu_s": sum(med.values()),
            "phase_floor_s": floors, "round_floor_s": sum(floors.values()), "phase_gflop": {k: v / 1e9 for k, v in flops.items()},
            "gemm_gflops": best / 1e9, "read_gb_s": rates["read_gb_s"],
            "phase_rounds_cpu_s": [{k: round(v, 3) for k, v in row.items()} for row in rounds]}


def _sync(device):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def measure(a) -> dict:
    try:   # as a run does (marie.runtime.Runner._build); absent from checkouts before it (A/B against them)
        from marie.runtime import keep_freed_memory
        keep_freed_memory()
    except ImportError:
        pass
    torch.set_num_threads(a.threads)
    if a.only == "round":   # a real map: its own shapes and agent
        out = {"what": "round", "preset": a.preset, "device": a.device, "dtype": a.dtype, "threads": a.threads}
        before = _rss_mb()
        out.update(round_phases(a))
        out.update(peak_mb=_peak_mb(), growth_mb=_peak_mb() - before, memory="process peak RSS (ru_maxrss)")
        return out
    agent, p = build_agent(a)
    dev = a.device
    H, N = p["horizon"], a.agents
    out = {"what": a.only, "preset": a.preset, "device": dev, "dtype": a.dtype, "threads": a.threads,
           "horizon": H, "agents": N}
    if dev.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    if a.only == "wm":
        agent.train_world_model(1)  # warm-up
        before = _rss_mb()
        times, cpu = [], []
        for _ in range(a.repeats):
            _sync(dev)
            t, c = time.perf_counter(), time.process_time()
            agent.train_world_model(1)
            _sync(dev)
            times.append(time.perf_counter() - t), cpu.append(time.process_time() - c)
        B = p["training"]["wm_batch"]
        out.update(step_s=float(np.median(times)), steps_s_all=[round(x, 3) for x in times],
                   step_cpu_s=float(np.median(cpu)), segments=B,
                   sequences_per_s=B / float(np.median(times)), agent_sequences_per_s=B * N / float(np.median(times)),
                   tokens_per_sequence=agent.world_model.max_tokens, microbatch=p["training"]["wm_microbatch"])
    elif a.only == "floor":
        before = _rss_mb()
        out.update(floor(agent, p, a))
    elif a.only in ("imagine", "kv"):
        from marie.imagination import imagine
        R = p["imagination"]["rollouts"] if a.only == "imagine" else a.kv_rollouts
        if a.rollouts is not None and a.only == "imagine":
            R = a.rollouts
        agent.tokenizer.eval(), agent.world_model.eval(), agent.actor.eval()
        start = agent.imagination_start(R)
        chunk = p["imagination"]["chunk"]

        def run(recompute=False, start=start):
            wm = agent.world_model
            if recompute:
                wm = _recomputing(wm)
            torch.manual_seed(1)
            _sync(dev)
            t, c = time.perf_counter(), time.process_time()
            with agent.autocast():
                traj = imagine(agent.tokenizer, wm, agent.actor, start, H, agent.obs_cfg, agent.n_choices,
                               chunk=chunk)
            _sync(dev)
            cpu_times.append(time.process_time() - c)
            return time.perf_counter() - t, traj
        cpu_times = []
        if a.only == "imagine":
            if p["imagination"].get("compile"):   # compiled decoding: its graphs (and CUDA graphs) at this size
                run(), run()
            else:
                run(start={k: (v[:min(R, 10)] if v is not None else None) for k, v in start.items()})  # warm-up
            before = _rss_mb()
            cpu_times.clear()
            times = [run()[0] for _ in range(a.repeats)]
            out.update(imagine_s=float(np.median(times)), imagine_s_all=[round(x, 3) for x in times],
                       imagine_cpu_s=float(np.median(cpu_times)), rollouts=R,
                       chunk=chunk, agent_steps_per_s=R * N * H / float(np.median(times)))
        else:
            before = _rss_mb()
            t_cache, traj_c = run()
            t_full, traj_f = run(recompute=True)
            same = torch.equal(traj_c["actions"], traj_f["actions"])
            out.update(rollouts=R, kv_s=t_cache, recompute_s=t_full, speedup=t_full / t_cache,
                       same_samples=bool(same),
                       max_reward_diff=float((traj_c["reward"] - traj_f["reward"]).abs().max()))
    if dev.startswith("cuda"):
        out["peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
        out["memory"] = "torch.cuda.max_memory_allocated"
    else:
        out["peak_mb"] = _peak_mb()
        out["growth_mb"] = _peak_mb() - before
        out["memory"] = "process peak RSS (ru_maxrss); growth = peak - RSS before the measured calls"
    return out


def _rate(f, flops_or_bytes, clock=time.perf_counter, rounds=8, repeats=3):
    """Best rate over several rounds: a lower bound on time should use the machine at its best."""
    f()
    best = 0.0
    for _ in range(rounds):
        t = clock()
        for _ in range(repeats):
            f()
        best = max(best, flops_or_bytes * repeats / max(clock() - t, 1e-9))
    return best


def floor(agent, p, a) -> dict:
    """Lower bounds from measured GEMM and memory rates (see the module docstring)."""
    from marie.algorithm import bf16_supported
    wm, dev, dt = agent.world_model, torch.device(a.device), agent.dtype
    if agent.run.get("autocast_bf16") and bf16_supported(dev):  # the floor of the dtype the matmuls run in
        dt = torch.bfloat16
    D, L = wm.transformer.dim, wm.transformer.n_layers
    T = wm.max_tokens                                        # tokens per stream (sequence or imagination)
    macs_per_token = L * 12 * D * D                          # qkv 3D^2 + proj D^2 + MLP 8D^2 per layer
    kv_bytes_per_position = L * 2 * D * torch.finfo(dt).bits // 8   # keys and values of every layer

    # one thread on a CPU: rates per CPU second, like the `*_cpu_s` figures they are set beside (steadier on a
    # shared machine than wall-clock rates); otherwise wall-clock rates
    clock = time.process_time if a.threads == 1 and a.device == "cpu" else time.perf_counter

    def gemm_rate(rows):                                     # the two Transformer GEMM shapes, forward
        x, w1 = torch.randn(rows, D, device=dev, dtype=dt), torch.randn(4 * D, D, device=dev, dtype=dt)
        h, w2 = torch.randn(rows, 4 * D, device=dev, dtype=dt), torch.randn(D, 4 * D, device=dev, dtype=dt)
        return _rate(lambda: (x @ w1.t(), h @ w2.t(), _sync(a.device)), 2 * 2 * rows * D * 4 * D, clock)

    tr, ic = p["training"], p["imagination"]
    micro = tr["wm_microbatch"] or tr["wm_batch"]
    wm_rows = micro * wm.S * T
    wm_flops = 3 * 2 * macs_per_token * tr["wm_batch"] * wm.S * T   # forward + backward (2x)
    streams = ic["rollouts"] * wm.S
    chunk_streams = (ic["chunk"] or ic["rollouts"]) * wm.S
    im_flops = 2 * macs_per_token * streams * T
    # every decoding call reads the whole cache so far: the start call, then per step one call of the step's
    # remaining tokens [x_K, a, e] and K-1 single-token calls
    ctx, positions_read = wm.Ko - 1, wm.Ko - 1
    for _ in range(wm.horizon):
        for new_tokens in [wm.tps - (wm.Ko - 1)] + [1] * (wm.Ko - 1):
            ctx += new_tokens
            positions_read += ctx
    kv_bytes = streams * kv_bytes_per_position * positions_read
    big = torch.ones(256 * 2**20 // 4, device=dev, dtype=torch.float32)
    bandwidth = _rate(lambda: (big.sum(), _sync(a.device)), big.numel() * 4, clock)
    g_wm, g_im = gemm_rate(wm_rows), gemm_rate(min(chunk_streams, 4096))
    return {"floor_dtype": str(dt).replace("torch.", ""), "gemm_gflops_train": g_wm / 1e9,
            "gemm_gflops_imagine": g_im / 1e9, "read_gb_s": bandwidth / 1e9,
            "wm_tflop": wm_flops / 1e12, "wm_floor_s": wm_flops / g_wm,
            "imagine_tflop": im_flops / 1e12, "imagine_kv_read_gb": kv_bytes / 1e9,
            "imagine_floor_s": im_flops / g_im + kv_bytes / bandwidth,
            "kv_cache_gb_per_chunk": chunk_streams * kv_bytes_per_position * T / 1e9}


def _recomputing(wm):
    """A view of the world model whose `_feed` re-runs the Transformer over the whole context every call."""
    import copy

    class Context:
        def __init__(self):
            self.parts, self.size = [], 0

    clone = copy.copy(wm)

    def feed(self, x, cache):
        cache.parts.append(x + self.pos_emb.weight[cache.size: cache.size + x.shape[1]])
        cache.size += x.shape[1]
        return self.transformer(torch.cat(cache.parts, 1))[:, -x.shape[1]:]
    clone._feed = types.MethodType(feed, clone)
    clone.new_cache = lambda B, reuse=False: Context()
    return clone


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="paper")
    ap.add_argument("--map", default="3m")
    ap.add_argument("--agents", type=int, default=3)
    ap.add_argument("--obs-dim", type=int, default=75)
    ap.add_argument("--actions", type=int, default=8)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--only", choices=["wm", "imagine", "kv", "floor", "round"], default=None)
    ap.add_argument("--chunk", type=int, default=None, help="override params.imagination.chunk")
    ap.add_argument("--microbatch", type=int, default=None, help="override params.training.wm_microbatch")
    ap.add_argument("--rollouts", type=int, default=None, help="override the imagination batch")
    ap.add_argument("--kv-rollouts", type=int, default=10)
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--json", default=None, help="append results as JSON lines here")
    a = ap.parse_args(argv)
    if a.only:
        print(json.dumps(measure(a)), flush=True)
        return
    rows = []
    for what in ("floor", "wm", "imagine", "kv"):
        cmd = [sys.executable, __file__, "--only", what] + [x for x in (argv or sys.argv[1:])]
        res = subprocess.run(cmd, capture_output=True, text=True)
        if res.returncode != 0:
            print(res.stderr[-3000:], file=sys.stderr)
            continue
        row = json.loads(res.stdout.strip().splitlines()[-1])
        rows.append(row)
        print(json.dumps(row), flush=True)
    load = os.getloadavg()
    print(f"# {a.preset} on {a.device} ({platform.processor() or platform.machine()}), {a.threads} threads, "
          f"load average {load[0]:.1f}")
    for r in rows:
        if r["what"] == "wm":
            print(f"world-model step: {r['step_s']:.2f} s, CPU {r['step_cpu_s']:.2f} s "
                  f"({r['sequences_per_s']:.1f} segments/s, "
                  f"{r['agent_sequences_per_s']:.1f} agent sequences/s of {r['tokens_per_sequence']} tokens), "
                  f"peak {r['peak_mb']:.0f} MB")
        elif r["what"] == "imagine":
            print(f"imagination: {r['imagine_s']:.2f} s, CPU {r['imagine_cpu_s']:.2f} s, for "
                  f"{r['rollouts']} x {r['agents']} x H={r['horizon']} "
                  f"({r['agent_steps_per_s']:.0f} imagined agent-steps/s), peak {r['peak_mb']:.0f} MB")
        elif r["what"] == "floor":
            print(f"floor ({r['floor_dtype']}): GEMM {r['gemm_gflops_train']:.0f} / {r['gemm_gflops_imagine']:.0f} "
                  f"GFLOP/s (training / "
                  f"imagination shapes), memory read {r['read_gb_s']:.1f} GB/s -> world-model step >= "
                  f"{r['wm_floor_s']:.1f} s ({r['wm_tflop']:.2f} TFLOP), imagination >= {r['imagine_floor_s']:.0f} s "
                  f"({r['imagine_tflop']:.2f} TFLOP + {r['imagine_kv_read_gb']:.0f} GB of KV reads; "
                  f"KV cache {r['kv_cache_gb_per_chunk']:.2f} GB per chunk)")
        else:
            print(f"KV cache vs recomputation ({r['rollouts']} rollouts, H={r['horizon']}): {r['kv_s']:.2f} s vs "
                  f"{r['recompute_s']:.2f} s, speed-up x{r['speedup']:.1f} (same samples: {r['same_samples']})")
    if a.json:
        with open(a.json, "a") as f:
            for r in rows:
                f.write(json.dumps({**r, "load_avg": load[0]}) + "\n")


if __name__ == "__main__":
    main()
