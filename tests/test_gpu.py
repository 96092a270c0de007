"""CUDA paths (skipped without a GPU; benchmarks/gpu_check.sh runs them on one): MARIE trains, acts and
imagines on the GPU without a host synchronisation in the decode loop, the KV-cached imagination there equals
recomputation, bf16 autocast keeps the losses finite, and a GPU world-model step agrees with the CPU one at
float32 rounding."""
import copy

import numpy as np
import pytest
import torch

from marie.config import resolve_config
from marie.marie_agent import MARIEAgent
from conftest import fill_with_random_play

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _agent(env, device, **run):
    cfg = resolve_config(algo="marie", preset_file=MARIEAgent.preset_file, preset="smoke", env="smax",
                         map_name="3m", seed=0, steps=100, overrides=[f"run.{k}={v}" for k, v in run.items()])
    cfg["params"]["training"]["buffer_size"] = 4000
    torch.manual_seed(0)
    agent = MARIEAgent(env.info, cfg["params"], cfg["run"], torch.device(device), 0)
    return agent, fill_with_random_play(agent, env, 150)


@pytest.mark.parametrize("bf16", [False, True])
def test_marie_trains_acts_and_imagines_on_cuda(smax_3m, bf16):
    agent, ts = _agent(smax_3m, "cuda", autocast_bf16=str(bf16).lower())
    tr = agent.params["training"]
    tr.update(learning_starts=0, train_every=1)
    agent.since_train = 1
    (metrics,) = list(agent.update(0))
    assert all(np.isfinite(v) for k, v in metrics.items() if "loss" in k), metrics
    assert next(agent.world_model.parameters()).is_cuda
    actions, _ = agent.act(ts, agent.initial_carry(ts.first.shape[0]), training=False)
    assert actions.shape == ts.avail.shape[:2] and ts.avail[np.arange(4)[:, None], np.arange(3), actions].all()


def test_world_model_step_on_cuda_matches_cpu(smax_3m):
    gpu, _ = _agent(smax_3m, "cuda")
    cpu = copy.deepcopy(gpu)
    cpu.device = torch.device("cpu")
    for name in ("tokenizer", "world_model"):
        getattr(cpu, name).to("cpu")
    torch.manual_seed(1)
    batch = cpu.world_model_batch(4)
    weights = cpu.params["world_model"]["loss_weights"]
    cpu.world_model.eval(), gpu.world_model.eval()
    loss_cpu, _ = cpu.world_model.loss(batch, weights)
    loss_gpu, _ = gpu.world_model.loss({k: v.cuda() for k, v in batch.items()}, weights)
    assert loss_gpu.item() == pytest.approx(loss_cpu.item(), rel=1e-4)


def test_imagination_decode_loop_never_waits_for_the_gpu(smax_3m):
    """No host synchronisation inside imagination (the decode loop stays queued on the GPU, as CUDA graphs
    need): CUDA's sync debug mode turns any synchronising call into an error."""
    from marie.imagination import imagine
    agent, _ = _agent(smax_3m, "cuda")
    agent.tokenizer.eval(), agent.world_model.eval(), agent.actor.eval()
    start = agent.imagination_start(8)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        traj = imagine(agent.tokenizer, agent.world_model, agent.actor, start, agent.H, agent.obs_cfg,
                       agent.n_choices, recon_clamp=agent._recon_clamp())
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert traj["actions"].is_cuda and torch.isfinite(traj["reward"]).all()


def test_static_cache_imagination_captured_as_cuda_graphs_matches_eager(smax_3m):
    """world_model.static_cache + imagination.compile=reduce-overhead: the decoding calls run as CUDA graphs
    (one per call, every position) and imagine what the eager static path imagines for the same seed."""
    import torch._dynamo as dynamo
    from marie.imagination import imagine
    agent, _ = _agent(smax_3m, "cuda")
    agent.params["world_model"]["static_cache"] = True
    agent.world_model.static_cache = True
    for m in (agent.tokenizer, agent.world_model, agent.actor):
        m.eval()
    start = agent.imagination_start(8)

    def run():
        torch.manual_seed(1)
        return imagine(agent.tokenizer, agent.world_model, agent.actor, start, agent.H, agent.obs_cfg,
                       agent.n_choices, recon_clamp=agent._recon_clamp())
    eager = run()
    dynamo.reset()
    agent.world_model.compile_decoding("reduce-overhead")
    for _ in range(3):                         # warm-up and recording, then replays
        graphed = run()
    torch.testing.assert_close(graphed["reward"], eager["reward"], rtol=0, atol=1e-4)
    assert (graphed["actions"] == eager["actions"]).float().mean() > 0.99   # float rounding may flip a sample
    dynamo.reset()
