"""Continuous control (MaMuJoCo): the observation normaliser, MARIE and MAMBA end to end on HalfCheetah-2x3."""
import json
import sys

import numpy as np
import pytest
import torch

from marie.errors import UserError
from marie.obs_norm import ObservationNormalizer, check_obs_norm_params
from marie.rundir import RunDir
from marie.runtime import prepare
from resume_check import assert_resume_equals_uninterrupted

# Short runs: the normaliser freezes at learning_starts = 100 transitions (smoke presets, mamujoco block);
# a checkpoint at 200 steps is the interruption point of the resume check.
SMOKE = ["run.eval_every=400", "run.eval_episodes=1", "run.checkpoint_every=200"]


def test_normaliser_statistics_freeze_clip_and_padding():
    rng = np.random.default_rng(0)
    data = rng.normal([0.0, 5.0, 0.0], [1.0, 20.0, 0.0], size=(12, 4, 2, 3))  # [batches, E, N, O]; dim 2 padded
    norm = ObservationNormalizer(2, 3, freeze_after=24, clip=3.0)
    for batch in data:
        norm.update(batch)
    seen = data[:6].reshape(-1, 2, 3)  # 6 batches of 4 = 24 observations, then frozen
    assert norm.frozen and norm.count == 24
    np.testing.assert_allclose(norm.mean, seen.mean(0), atol=1e-12)
    np.testing.assert_allclose(norm.std[:, :2], seen.std(0)[:, :2], rtol=1e-10)
    out = norm(data[-1])
    assert out.dtype == np.float32 and np.abs(out).max() <= 3.0 and np.all(out[..., 2] == 0)
    t = norm(torch.as_tensor(data[-1], dtype=torch.float32))
    np.testing.assert_allclose(t.numpy(), out, atol=1e-5)
    restored = ObservationNormalizer(2, 3, freeze_after=24, clip=3.0)
    restored.load_state_dict(norm.state_dict())
    np.testing.assert_array_equal(restored(data[0]), norm(data[0]))
    off = ObservationNormalizer(2, 3, freeze_after=24, enabled=False)
    batch = data[0]
    off.update(batch)
    assert off.count == 0 and off(batch) is batch
    assert ObservationNormalizer(2, 3, freeze_after=0)(batch) is batch   # no data: the identity
    with pytest.raises(UserError, match="clip"):
        check_obs_norm_params({"enabled": True, "clip": 0}, "params.obs_norm")


def test_obs_norm_is_on_for_mamujoco_only(tmp_path):
    for name in ("marie", "mamba"):
        cfg, _ = prepare(algo=name, env="mamujoco", map_name="HalfCheetah-2x3", seed=0, steps=100, preset="small",
                         out=tmp_path / "unused")
        assert cfg["params"]["obs_norm"] == {"enabled": True, "clip": 10.0}
        g = cfg["params"]["actor_critic"]["gaussian"] if name == "marie" else cfg["params"]["actor_gaussian"]
        assert g == {"init_std": 0.37, "max_std": 0.5}
        cfg, _ = prepare(algo=name, env="smax", map_name="3m", seed=0, steps=100, preset="small",
                         out=tmp_path / "unused")
        assert "obs_norm" not in cfg["params"]   # SMAX configurations are unchanged (existing runs resume)
    with pytest.raises(UserError, match="obs_norm.enabled"):
        prepare(algo="mamba", env="mamujoco", map_name="HalfCheetah-2x3", seed=0, steps=100, preset="small",
                overrides=["params.obs_norm.enabled=1"], out=tmp_path / "unused")


def _frozen_at_learning_starts(run_dir, first_obs: np.ndarray) -> None:
    """The checkpointed statistics are those of the first 100 collected observations, not of all 400."""
    state = RunDir(run_dir).load_checkpoint()["algo"]["obs_norm"]
    assert state["count"] == 100
    np.testing.assert_allclose(state["mean"], first_obs.reshape(-1, *first_obs.shape[-2:]).mean(0), rtol=1e-5,
                               atol=1e-6)


@pytest.mark.parametrize("algo", ["marie", "mamba"])
def test_continuous_run_resumes_exactly_with_frozen_statistics(tmp_path, monkeypatch, algo):
    straight, resumed = assert_resume_equals_uninterrupted(
        tmp_path, monkeypatch, 200, algo=algo, env="mamujoco", map_name="HalfCheetah-2x3", seed=0, steps=400,
        preset="smoke", overrides=SMOKE)
    ck = RunDir(straight).load_checkpoint()["algo"]
    data = ck["replay"]["data"]
    # 4 environments x 25 steps = the first 100 observations (MARIE: time-major rings; MAMBA: per-env streams)
    first = data["obs"][:25] if algo == "marie" else data["obs"][:, :25]
    _frozen_at_learning_starts(straight, first)
    _frozen_at_learning_starts(resumed, first)
    train = (straight / "train.csv").read_text().splitlines()
    assert len(train) > 2   # updates happened after learning_starts


def test_mamba_continuous_actions_in_bounds_and_binned(tmp_path):
    from baselines.mamba.agent import MAMBA
    from marie.envs import make_env
    cfg, _ = prepare(algo="mamba", env="mamujoco", map_name="HalfCheetah-2x3", seed=0, steps=100, preset="smoke",
                     out=tmp_path / "unused")
    env = make_env("mamujoco", "HalfCheetah-2x3", 2)
    agent = MAMBA(env.info, cfg["params"], cfg["run"], torch.device("cpu"), 0)
    ts = env.reset(seed=0)
    actions, carry = agent.act(ts, agent.initial_carry(2), training=True)
    env.close()
    assert actions.shape == (2, env.info.n_agents, env.info.n_actions)
    assert np.all(np.abs(actions) <= 1.0)
    bins = (actions + 1.0) / 2.0 * 256 - 0.5           # bin centres: integer bin indices
    np.testing.assert_allclose(bins, np.round(bins), atol=1e-3)
    np.testing.assert_allclose(carry["action"], actions, atol=1e-6)  # [-1, 1] is HalfCheetah's action range


@pytest.mark.parametrize("algo", ["marie", "mamba"])
def test_compounding_error_on_mamujoco_uses_normalised_observations(tmp_path, algo):
    from marie.analysis_entry import compounding_error
    from marie.runtime import Runner
    Runner(*prepare(algo=algo, env="mamujoco", map_name="HalfCheetah-2x3", seed=0, steps=200, preset="smoke",
                    overrides=["run.eval_every=200", "run.eval_episodes=1"], out=tmp_path / "run")).train()
    out = compounding_error(str(tmp_path / "run"), episodes=1, segments=8, horizon=2)
    meta = json.loads((out.parent / "compounding_error.json").read_text())
    assert meta["observations"] == "normalised (params.obs_norm)"
    rows = out.read_text().splitlines()
    l1 = [float(r.split(",")[1]) for r in rows[1:]]
    assert len(l1) == 3 and all(np.isfinite(l1)) and max(l1) < 10.0   # in normalised units, clipped to 10
    assert meta["algo"] == algo
    from marie.analysis_entry import action_ranking
    same = json.loads(action_ranking(str(tmp_path / "run"), states=3, sequences=2, noise=0.0).read_text())
    assert same["states"] == 3 and same["true_spread_within_state"] == 0.0   # a restored state replays exactly
    assert same["corr_within_state_mean"] is None and same["states_with_spread"] == 0
    noisy = json.loads(action_ranking(str(tmp_path / "run"), states=3, sequences=3, noise=0.3).read_text())
    assert noisy["true_spread_within_state"] > 0 and -1 <= noisy["corr_all"] <= 1


def test_binned_gaussian_actor_is_unimodal_over_ordered_bins():
    from marie.models.actor_critic import Actor, check_gaussian_params, log_prob_entropy, sample_actions
    torch.manual_seed(0)
    actor = Actor(4, 16, 2, 3, 256, {"init_std": 0.37, "max_std": 0.5})
    with torch.no_grad():
        actor.net[-1].bias.copy_(torch.tensor([-0.5, 0.0, 0.9]))
    logits = actor(torch.zeros(1000, 4))                           # [B, 3, 256]
    centres = (torch.arange(256) + 0.5) / 128 - 1
    peak = centres[logits.argmax(-1)]
    assert torch.allclose(peak, torch.tensor([-0.5, 0.0, 0.9]).expand_as(peak), atol=1 / 128 + 1e-6)
    a = centres[sample_actions(logits)]
    assert torch.allclose(a.mean(0)[:2], torch.tensor([-0.5, 0.0]), atol=0.06)   # [2]: truncated at the bound 1
    assert torch.allclose(a[:, 1].std(), torch.tensor(0.37), atol=0.03)   # sigma in action units
    _, ent = log_prob_entropy(logits, sample_actions(logits))
    uniform = 3 * np.log(256)
    assert ent[0] < uniform - 0.5                                   # not the uniform policy of free logits
    ent.mean().backward()                                          # entropy grows with sigma
    assert actor.std_param.grad is not None and torch.all(actor.std_param.grad > 0)
    with pytest.raises(UserError, match="init_std"):
        check_gaussian_params({"init_std": 0.6, "max_std": 0.5}, "params.actor_critic.gaussian")


def _workflow_plan():
    import importlib.util
    from pathlib import Path
    root = Path(__file__).resolve().parent.parent
    spec = importlib.util.spec_from_file_location("marie_workflow_plan_mamujoco", root / "workflows" / "plan.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod          # dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod, mod.load_config(root / "workflows" / "config.yaml")


def test_fig10_plans_every_method_and_the_cpu_tier_one_protocol():
    WP, cfg = _workflow_plan()
    plan = WP.build_plan(cfg)                 # validated against the registered algorithms
    fig10 = {(r.map, r.method) for r in plan.runs.values() if r.env == "mamujoco"}
    maps = cfg["experiments"]["mamujoco"]["maps"]
    assert fig10 == {(m, k) for m in maps for k in ("MARIE", "MAMBA", "MAPPO", "HAPPO")}
    assert not [s for s in plan.skipped if s["map"] in maps]
    tier = WP.build_plan(cfg, tier="cpu_mamujoco")
    assert len(tier.runs) == 2 * 4 * 3 and not tier.skipped
    assert {(r.steps, tuple(r.overrides[-4:-1])) for r in tier.runs.values()} == {
        (100000, ("run.eval_every=10000", "run.eval_episodes=10", "run.eval_sample=false"))}
    # the evidence of what limits MARIE and MAMBA (issue 15, item 2) is part of the tier: both analyses on each run
    models = sorted(r.key for r in tier.runs.values() if r.method in ("MARIE", "MAMBA"))
    assert len(models) == 12
    assert {n: ma["runs"] for n, ma in tier.model_analysis.items()} == {"action_ranking": models,
                                                                       "compounding_error": models}
    assert WP.build_plan(cfg).model_analysis["action_ranking"]["runs"] == []   # not part of the paper's figures
