"""HAPPO: the compounded factor M, sequential per-agent updates, and a smoke run through the CLI."""
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from baselines.happo import HAPPO, compound_factor
from marie.cli import main

sys.path.insert(0, str(Path(__file__).parent))
from test_mappo import check_resume  # noqa: E402
from test_onpolicy_common import N, discrete_info, fill_rollout, make  # noqa: E402


def test_compound_factor_on_a_toy_example():
    # agent a: pi_new/pi_old = 0.5/0.25 = 2 on sample 0, 0.1/0.2 = 0.5 on sample 1; then agent b: 0.3/0.6, 0.9/0.3
    m = torch.ones(2)
    m = compound_factor(m, torch.tensor([0.5, 0.1]).log(), torch.tensor([0.25, 0.2]).log())
    torch.testing.assert_close(m, torch.tensor([2.0, 0.5]))
    m = compound_factor(m, torch.tensor([0.3, 0.9]).log(), torch.tensor([0.6, 0.3]).log())
    torch.testing.assert_close(m, torch.tensor([1.0, 1.5]))


def test_each_agent_is_weighted_by_its_predecessors_new_over_old_policies():
    """After one update, the factor the k-th agent in the order trained with equals the product, over the agents
    before it, of pi_new/pi_old on the rollout's actions, pi_new being those agents' final (updated) actors; the
    first agent trains with M = 1; agents are updated one at a time (the others' weights do not move meanwhile)."""
    torch.set_num_threads(1)
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    algo = make("happo", discrete_info(), lr=0.05)  # a large step so that M differs visibly from 1
    fill_rollout(algo, rng)
    batch, _ = algo._prepare()  # actions, old log-probs and inputs as the update sees them (M depends on no value)
    before = [{k: v.clone() for k, v in a.state_dict().items()} for a in algo.actors]
    metrics = list(algo.update(env_steps=0))[0]
    order, factors = algo.last_order, algo.last_factors
    assert sorted(order) == list(range(N))
    torch.testing.assert_close(factors[0], torch.ones_like(factors[0]))
    everything = torch.arange(batch["x"].shape[1])
    expected = torch.ones_like(factors[0])
    from baselines.common.networks import log_prob_entropy
    for k, agent in enumerate(order):
        torch.testing.assert_close(factors[k], expected, rtol=1e-4, atol=1e-5)
        with torch.no_grad():
            out, log_std = algo._agent_forward(agent, batch, everything)
            logp, _ = log_prob_entropy(out, log_std, batch["action"][:, :, agent], batch["avail"][:, :, agent], None,
                                       False)
        expected = expected * (logp - batch["logp"][:, :, agent]).exp()
        changed = any(not torch.equal(v, before[agent][k2]) for k2, v in algo.actors[agent].state_dict().items())
        assert changed, f"agent {agent} was not updated"
    assert (factors[-1] - 1).abs().max() > 1e-3  # the example is not trivial
    assert abs(metrics["factor_mean"] - float(expected.mean())) < 1e-4


def test_smoke_run_through_the_cli(tmp_path):
    out = tmp_path / "run"
    args = ["run", "--algo", "happo", "--env", "smax", "--map", "3m", "--seed", "1", "--steps", "400",
            "--preset", "smoke", "--out", str(out), "--set", "run.progress=never"]
    assert main(args) == 0
    meta = json.loads((out / "meta.json").read_text())
    assert meta["status"] == "completed" and meta["env_steps"] == 400
    train = pd.read_csv(out / "train.csv")
    assert len(train) == 5 and train["value_loss"].notna().all() and train["factor_mean"].notna().all()
    assert pd.read_csv(out / "eval.csv")["win_rate"].between(0, 1).all()


def test_resume_mid_rollout_equals_uninterrupted(tmp_path, monkeypatch):
    """As for MAPPO: per-agent actors and optimisers, storage and ValueNorm all come back from the checkpoint."""
    check_resume(tmp_path, monkeypatch, ["run", "--algo", "happo", "--env", "smax", "--map", "3m", "--seed", "2",
                                         "--preset", "smoke", "--set", "run.progress=never"])


def test_smac_like_backends_use_harls_tuned_smac_configuration():
    from marie.config import resolve_config
    cfg = lambda env, m: resolve_config(algo="happo", preset_file=HAPPO.preset_file, preset="paper", env=env,  # noqa
                                        map_name=m, seed=0, steps=100)
    for env in ("smax", "smac", "smacv2"):
        c = cfg(env, "3m")
        p = c["params"]
        assert (c["run"]["num_envs"], p["rollout_length"], p["hidden"], p["layers"]) == (20, 160, 64, 3)
        assert p["recurrent"] and p["critic_recurrent"] and p["clip"] == 0.2 and p["critic_input"] == "state"
    assert cfg("smac", "5m_vs_6m")["params"]["clip"] == 0.05
    assert not cfg("smac", "corridor")["params"]["recurrent"]
    m = cfg("mamujoco", "HalfCheetah-2x3")["params"]
    assert not m["recurrent"] and m["hidden"] == 128 and m["rollout_length"] == 200 and m["clip"] == 0.1
