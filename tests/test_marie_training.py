"""MARIE learning on fixed data (tokenizer, world model), the replay buffer's segment masks, the smoke
preset end to end through the CLI, resume equal to an uninterrupted run, and config errors."""

import copy

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from marie.config import resolve_config
from marie.envs.base import EnvInfo
from marie.errors import UserError
from marie.marie_agent import MARIEAgent
from marie.replay import ReplayBuffer
from marie.runtime import prepare
from conftest import fill_with_random_play
from resume_check import assert_resume_equals_uninterrupted


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def smoke_config(**params):
    cfg = resolve_config(algo="marie", preset_file=MARIEAgent.preset_file, preset="smoke", env="smax", map_name="3m",
                         seed=0, steps=100)
    for path, value in params.items():
        node = cfg["params"]
        keys = path.split(".")
        for k in keys[:-1]:
            node = node[k]
        node[keys[-1]] = value
    return cfg


@pytest.fixture(scope="module")
def smax_agent(smax_3m):
    """A smoke-sized agent whose buffer holds 600 random-policy transitions of SMAX 3m (fixed data)."""
    cfg = smoke_config(**{"training.buffer_size": 4000, "horizon": 4})
    torch.manual_seed(0)
    agent = MARIEAgent(smax_3m.info, cfg["params"], cfg["run"], torch.device("cpu"), 0)
    fill_with_random_play(agent, smax_3m, 150)
    return agent


def test_replay_segment_masks():
    buf = ReplayBuffer(20, 1, {"x": ((), np.int64), "first": ((), bool), "end": ((), bool)})
    ends = {2, 6}
    for t in range(10):
        buf.add(x=np.array([t]), first=np.array([t == 0 or t - 1 in ends]), end=np.array([t in ends]))
    torch.manual_seed(0)
    seg = buf.sample_segments(200, 3, history=2)
    for x, mask in zip(seg["x"], seg["mask"]):
        s = x[2]
        episode = 0 if s <= 2 else (1 if s <= 6 else 2)
        ep_of = lambda t: 0 if t <= 2 else (1 if t <= 6 else 2)  # noqa: E731
        for j, t in enumerate(range(s - 2, s + 3)):
            expect = 0 <= t < 10 and ep_of(t) == episode  # stored and in the start's episode
            assert mask[j] == expect, (s, j, t)


def test_tokenizer_reconstruction_error_falls(smax_agent):
    agent = smax_agent
    obs = torch.as_tensor(agent.replay.data["obs"][:150].reshape(-1, agent.O))
    with torch.no_grad():
        before = (agent.tokenizer.reconstruct(obs) - obs).pow(2).mean().item()
    agent.train_tokenizer(150)
    with torch.no_grad():
        after = (agent.tokenizer.reconstruct(obs) - obs).pow(2).mean().item()
    assert after < 0.7 * before


def test_world_model_loss_falls_on_fixed_smax_data(smax_agent):
    agent = smax_agent
    agent.train_tokenizer(50)
    torch.manual_seed(1)
    fixed = agent.world_model_batch(16)
    weights = agent.params["world_model"]["loss_weights"]
    agent.world_model.eval()
    with torch.no_grad():
        before = agent.world_model.loss(fixed, weights)[1]
    for _ in range(60):
        agent.world_model.train()
        loss, _ = agent.world_model.loss(fixed, weights)
        agent.wm_opt.zero_grad()
        loss.backward()
        agent.wm_opt.step()
    agent.world_model.eval()
    with torch.no_grad():
        after = agent.world_model.loss(fixed, weights)[1]
    assert after["wm_loss"] < 0.7 * before["wm_loss"]
    assert after["wm_obs_loss"] < before["wm_obs_loss"] and after["wm_avail_loss"] < before["wm_avail_loss"]


def test_imagination_round_trains_the_policy(smax_agent):
    metrics = smax_agent.train_behaviour(1)
    assert np.isfinite([metrics["actor_loss"], metrics["critic_loss"]]).all()
    assert 0.0 <= metrics["imag_discount"] <= 1.0


def test_smoke_run_end_to_end_and_resume_equals_uninterrupted(tmp_path, monkeypatch):
    # interrupted at 400 env steps: trained, buffer filled, episodes in progress
    straight, _ = assert_resume_equals_uninterrupted(tmp_path, monkeypatch, 400, algo="marie", env="smax",
                                                     map_name="3m", seed=3, steps=600, preset="smoke")
    ev = pd.read_csv(straight / "eval.csv")
    assert list(ev["env_steps"]) == [0, 200, 400, 600]
    train = pd.read_csv(straight / "train.csv")
    assert len(train) >= 4 and {"wm_loss", "tokenizer_loss", "actor_loss", "critic_loss"} <= set(train.columns)
    assert np.isfinite(train["wm_loss"]).all()

    # model analysis entry points on the finished run
    from marie.analysis_entry import main as analyze
    assert analyze(["compounding-error", "--run", str(straight), "--episodes", "4", "--segments", "20"]) == 0
    ce = pd.read_csv(straight / "analysis" / "compounding_error.csv")
    assert list(ce["horizon"]) == [0, 1, 2, 3] and (ce["n_segments"] == 20).all() and (ce["l1_mean"] > 0).all()
    assert analyze(["attention", "--run", str(straight)]) == 0
    att = np.load(straight / "analysis" / "attention.npz")
    T = len(att["token_kind"])
    assert att["transformer"].shape[-2:] == (T, T)
    assert np.allclose(att["transformer"].sum(-1), 1.0, atol=1e-4)
    assert np.allclose(np.triu(att["transformer"], 1), 0.0)             # causal
    assert att["perceiver_cross"].shape[-2] == 3                         # one query per agent


@pytest.mark.parametrize("override, words", [
    ("params.tokenizer.kind=lstm", "tokenizer.kind"),
    ("params.horizon=0", "horizon"),
    ("params.world_model.heads=3", "divisible"),
    ("params.world_model.aggregation=mean", "aggregation"),
    ("params.imagination.compile=default", "static_cache"),
    ("params.world_model.static_cache=1", "static_cache"),
])
def test_bad_config_values_are_one_line_errors(tmp_path, override, words):
    with pytest.raises(UserError, match=words):  # prepare (and so --dry-run) refuses it: nothing is built
        prepare(algo="marie", env="smax", map_name="3m", seed=0, steps=1000, preset="smoke",
                overrides=[override], out=tmp_path / "bad")
    config, _ = prepare(algo="marie", env="smax", map_name="3m", seed=0, steps=1000, preset="smoke",
                        out=tmp_path / "good")
    params = copy.deepcopy(config["params"])
    keys = override.split("=")[0].split(".")[1:]
    target = params
    for k in keys[:-1]:
        target = target[k]
    target[keys[-1]] = yaml.safe_load(override.split("=")[1])
    info = EnvInfo(3, 75, 36, 8, 100, "smax", "x", "3m")
    with pytest.raises(UserError, match=words):  # and the agent itself, before any model is built
        MARIEAgent(info, params, config["run"], torch.device("cpu"), 0)


def test_continuation_weights_are_the_probability_of_still_being_in_the_episode():
    from marie.marie_agent import continuation_weights
    disc = torch.tensor([[0.99, 0.99], [0.99, 0.0], [0.495, 0.99], [0.99, 0.99]])  # [H=4, 2 agents]
    w = continuation_weights(disc, 0.99)
    assert torch.allclose(w[:, 0], torch.tensor([1.0, 1.0, 1.0, 0.5]))
    assert torch.allclose(w[:, 1], torch.tensor([1.0, 1.0, 0.0, 0.0]))  # nothing counts after a predicted end


def test_staged_warm_up_trains_each_part_from_its_round(smax_agent):
    import copy
    agent = copy.deepcopy(smax_agent)
    tr = agent.params["training"]
    tr.update(learning_starts=0, train_every=1, world_model_from_round=2, policy_from_round=3)
    agent.since_train, agent.rounds = 0, 0
    seen = []
    for _ in range(3):
        agent.since_train = 1
        (metrics,) = list(agent.update(0))
        seen.append(("tokenizer_loss" in metrics, "wm_loss" in metrics, "actor_loss" in metrics))
        assert {"time_tokenizer_s", "time_world_model_s"} <= set(metrics)
    assert seen == [(True, False, False), (True, True, False), (True, True, True)]


def test_imagined_reconstructions_are_clamped_on_smac_like_backends(smax_agent):
    from marie.imagination import imagine
    agent = smax_agent
    with torch.no_grad():  # push the decoder out of range
        last = [m for m in agent.tokenizer.modules() if isinstance(m, torch.nn.Linear)][-1]
        saved = last.bias.clone()
        last.bias.add_(5.0)
        try:
            start = agent.imagination_start(8)
            free = imagine(agent.tokenizer, agent.world_model, agent.actor, start, 2, agent.obs_cfg, agent.n_choices)
            clamped = imagine(agent.tokenizer, agent.world_model, agent.actor, start, 2, agent.obs_cfg,
                              agent.n_choices, recon_clamp=1.0)
        finally:
            last.bias.copy_(saved)
    assert free["recon"].max() > 1.0 and clamped["recon"].abs().max() <= 1.0
