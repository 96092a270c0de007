"""MAMBA: RSSM shapes, KL balancing, straight-through sampling, imagination, action masks, the smoke run
through the CLI and resume equal to an uninterrupted run."""
import json

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from baselines.mamba.agent import MAMBA
from baselines.mamba.behaviour import imagine
from baselines.mamba.replay import SequenceReplay
from baselines.mamba.rssm import RSSMState, WorldModel, kl_balance, straight_through_sample
from marie.cli import main
from marie.config import resolve_config
from marie.envs.base import EnvInfo, TimeStep
from marie.errors import UserError
from resume_check import assert_resume_equals_uninterrupted

INFO = EnvInfo(n_agents=3, obs_dim=6, state_dim=7, n_actions=5, episode_limit=10, backend="fake",
               backend_version="0", map_name="fake")


def smoke_params(**over):
    cfg = resolve_config(algo="mamba", preset_file=MAMBA.preset_file, preset="smoke", env="smax", map_name="3m",
                         seed=0, steps=100)
    cfg["params"].update(over)
    return cfg


def make_algo(num_envs=4, **params):
    cfg = smoke_params(**params)
    cfg["run"]["num_envs"] = num_envs
    torch.manual_seed(0)
    return MAMBA(INFO, cfg["params"], cfg["run"], torch.device("cpu"), 0)


def fake_ts(rng, E, first=True, done=None, info=INFO):
    avail = rng.random((E, info.n_agents, info.n_actions)) < 0.4
    avail[..., 0] |= ~avail.any(-1)
    z = np.zeros(E, np.float32)
    done = np.zeros(E, bool) if done is None else done
    obs = rng.standard_normal((E, info.n_agents, info.obs_dim)).astype(np.float32)
    return TimeStep(obs=obs, state=np.zeros((E, info.state_dim), np.float32), avail=avail,
                    first=np.full(E, first), reward=z + 0.5, terminated=done, truncated=np.zeros(E, bool),
                    next_obs=obs, next_state=np.zeros((E, info.state_dim), np.float32), next_avail=avail,
                    alive=np.ones((E, info.n_agents), bool), won=np.zeros(E, bool), episode_return=z,
                    episode_length=z)


def test_rssm_shapes():
    p = smoke_params()["params"]
    m = WorldModel(INFO.obs_dim, INFO.n_actions, p)
    B, L, N = 2, 5, INFO.n_agents
    obs = torch.randn(B, L, N, INFO.obs_dim)
    prev = torch.randint(0, INFO.n_actions, (B, L, N))
    first = torch.zeros(B, L, dtype=torch.bool)
    first[:, 0] = True
    states, prior, post = m.observe(obs, prev, first)
    S, C, D = p["categoricals"], p["classes"], p["deter_size"]
    assert states.deter.shape == (B, L, N, D) and states.stoch.shape == (B, L, N, S * C)
    assert prior.shape == post.shape == (B, L, N, S, C)
    assert states.feat().shape == (B, L, N, m.feat_size) and m.feat_size == S * C + D
    batch = {"obs": obs, "prev_action": prev, "first": first, "avail": torch.rand(B, L, N, INFO.n_actions) < 0.5,
             "alive": torch.ones(B, L, N, dtype=torch.bool), "reward": torch.randn(B, L), "cont": torch.ones(B, L)}
    loss, metrics, _ = m.loss(batch, p)
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    assert m.comm.layers[0].self_attn.in_proj_weight.grad.abs().sum() > 0  # attention across agents trains


class ZeroDecoder(torch.nn.Module):
    def forward(self, feat):
        return torch.zeros(*feat.shape[:-1], INFO.obs_dim)


def test_dead_agents_masked_from_reconstruction():
    p = smoke_params()["params"]
    m = WorldModel(INFO.obs_dim, INFO.n_actions, p)
    m.decoder = ZeroDecoder()  # reconstruction = 0: the loss is smooth-L1 of the observation itself
    B, L, N = 2, 4, INFO.n_agents
    obs = torch.randn(B, L, N, INFO.obs_dim)
    batch = {"obs": obs, "prev_action": torch.zeros(B, L, N, dtype=torch.long),
             "first": torch.zeros(B, L, dtype=torch.bool), "avail": torch.ones(B, L, N, INFO.n_actions, dtype=torch.bool),
             "alive": torch.ones(B, L, N, dtype=torch.bool), "reward": torch.zeros(B, L), "cont": torch.ones(B, L)}
    batch["alive"][:, :, 2] = False
    _, m1, _ = m.loss(batch, p)
    batch["obs"] = obs.clone()
    batch["obs"][:, :, 2] += 100.0  # what a dead agent "observes" does not enter the reconstruction loss
    _, m2, _ = m.loss(batch, p)
    expected = F.smooth_l1_loss(torch.zeros_like(obs[:, :, :2]), obs[:, :, :2], reduction="none").sum(-1).mean()
    assert m1["obs_loss"].item() == pytest.approx(expected.item(), rel=1e-5)
    assert m2["obs_loss"].item() == pytest.approx(expected.item(), rel=1e-5)


def test_kl_balance_matches_hand_computation():
    post_logits = torch.tensor([[[1.0, 0.0, -1.0], [0.5, 0.5, 0.0]]], requires_grad=True)   # [1, S=2, C=3]
    prior_logits = torch.tensor([[[0.0, 0.0, 0.0], [2.0, -1.0, 0.0]]], requires_grad=True)
    lp, lq = F.log_softmax(post_logits, -1), F.log_softmax(prior_logits, -1)
    value = kl_balance(lp, lq, prior_weight=0.8, post_weight=0.2)
    # by hand: KL(p || q) = sum_c p_c (log p_c - log q_c), summed over the categoricals
    p = np.exp(post_logits.detach().numpy()) / np.exp(post_logits.detach().numpy()).sum(-1, keepdims=True)
    q = np.exp(prior_logits.detach().numpy()) / np.exp(prior_logits.detach().numpy()).sum(-1, keepdims=True)
    kl = float((p * (np.log(p) - np.log(q))).sum())
    assert value.item() == pytest.approx(kl, rel=1e-5)           # 0.8 KL + 0.2 KL in value
    mean = kl_balance(lp, lq, prior_weight=0.8, post_weight=0.2, reduce="mean")  # MAMBA: mean over categoricals
    assert mean.item() == pytest.approx(kl / 2, rel=1e-5)
    value.sum().backward()
    # gradients: 0.8 of the KL's gradient reaches the prior, 0.2 reaches the posterior
    pl, ql = post_logits.detach().requires_grad_(), prior_logits.detach().requires_grad_()
    plain = (F.softmax(pl, -1) * (F.log_softmax(pl, -1) - F.log_softmax(ql, -1))).sum()
    gp, gq = torch.autograd.grad(plain, (pl, ql))
    assert torch.allclose(prior_logits.grad, 0.8 * gq, atol=1e-6)
    assert torch.allclose(post_logits.grad, 0.2 * gp, atol=1e-6)


def test_straight_through_is_one_hot_with_gradients():
    torch.manual_seed(0)
    logits = torch.randn(64, 4, 5, requires_grad=True)
    sample = straight_through_sample(F.log_softmax(logits, -1))
    assert torch.allclose(sample, sample.round(), atol=1e-6)            # forward values are one-hot
    assert torch.allclose(sample.sum(-1), torch.ones(64, 4), atol=1e-6)
    (sample * torch.randn(5)).sum().backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0
    # the samples follow the distribution
    probs = torch.tensor([0.7, 0.2, 0.1])
    draws = straight_through_sample(probs.log().expand(20000, 3)).detach().mean(0)
    assert torch.allclose(draws, probs, atol=0.02)


def test_imagination_shapes_and_masks():
    algo = make_algo()
    H, R, N, A = 4, 6, INFO.n_agents, INFO.n_actions
    start = algo.model.initial_state((R,), N, "cpu", torch.float32)
    start = RSSMState(torch.randn_like(start.deter), start.stoch)
    traj = imagine(algo.model, algo.actor, start, H)
    assert traj["feat"].shape == (H + 1, R, N, algo.model.feat_size)
    for key in ("action", "logp", "reward", "cont"):
        assert traj[key].shape == (H, R, N), key
    assert traj["avail"].shape == (H, R, N, A)
    assert traj["avail"].gather(-1, traj["action"][..., None]).all()  # only predicted-available actions


def test_acting_respects_masks_and_resets_carry():
    algo = make_algo()
    rng = np.random.default_rng(0)
    E = 4
    carry = algo.initial_carry(E)
    for step in range(30):
        ts = fake_ts(rng, E, first=(step % 7 == 0))
        for training in (True, False):
            actions, new = algo.act(ts, carry, training=training)
            assert actions.shape == (E, INFO.n_agents)
            assert np.take_along_axis(ts.avail, actions[..., None], -1).all()
        carry = new
    assert carry["deter"].shape == (E, INFO.n_agents, algo.model.D)
    # where ts.first, the carry is reset: the result does not depend on the old carry
    ts = fake_ts(rng, E, first=True)
    junk = {k: (v + 3 if v.dtype != np.int64 else (v + 1) % INFO.n_actions) for k, v in carry.items()}
    torch.manual_seed(5)
    _, c1 = algo.act(ts, carry, training=False)
    torch.manual_seed(5)
    _, c2 = algo.act(ts, junk, training=False)
    np.testing.assert_allclose(c1["deter"], c2["deter"], atol=1e-6)


def test_replay_rows_and_segments():
    rng = np.random.default_rng(0)
    E = 2
    algo = make_algo(num_envs=E)
    ts = fake_ts(rng, E, first=True)
    for step in range(12):
        done = np.array([step % 5 == 4, False])
        actions = np.zeros((E, INFO.n_agents), np.int64) + step % INFO.n_actions
        nxt = fake_ts(rng, E, first=False, done=done)
        nxt = nxt._replace(first=done)  # the env auto-resets where done
        algo.observe(ts, actions, nxt)
        ts = nxt
    r = algo.replay
    assert r.count.tolist() == [12 + 2, 12]  # env 0 finished two episodes: two extra terminal rows
    d = {k: v[0, :14] for k, v in r.data.items()}
    assert d["first"].tolist()[:7] == [True, False, False, False, False, False, True]
    assert d["cont"][5] == 0.0 and d["prev_action"][5].tolist() == [4, 4, 4]  # terminal row
    assert (d["prev_action"][0] == -1).all() and (d["prev_action"][6] == -1).all()
    b = r.sample(5, 4, "cpu", torch.float32)
    assert b["obs"].shape == (5, 4, INFO.n_agents, INFO.obs_dim) and b["first"][:, 0].all()
    state = r.state_dict()
    r2 = SequenceReplay(algo.params["buffer_size"], E, INFO.n_agents, INFO.obs_dim, INFO.n_actions)
    r2.load_state_dict(state)
    for k in r.data:
        np.testing.assert_array_equal(r.data[k], r2.data[k])


def test_smoke_run_through_cli(tmp_path):
    out = tmp_path / "run"
    rc = main(["run", "--algo", "mamba", "--env", "smax", "--map", "3m", "--seed", "0", "--steps", "400",
               "--preset", "smoke", "--out", str(out), "--set", "run.progress=never"])
    assert rc in (0, None)
    ev = pd.read_csv(out / "eval.csv")
    assert ev["env_steps"].tolist() == [0, 200, 400]
    train = pd.read_csv(out / "train.csv")
    assert len(train) > 0 and np.isfinite(train["model_loss"]).all() and np.isfinite(train["actor_loss"]).all()

    # Fig. 7 for MAMBA: open loop from its posterior after filtering the real episode so far
    from marie.analysis_entry import attention
    from marie.analysis_entry import main as analyze
    assert analyze(["compounding-error", "--run", str(out), "--episodes", "3", "--segments", "16", "--horizon", "6"]) == 0
    ce = pd.read_csv(out / "analysis" / "compounding_error.csv")
    assert list(ce["horizon"]) == list(range(7)) and (ce["n_segments"] == 16).all()
    assert np.isfinite(ce["l1_mean"]).all() and (ce["l1_mean"] > 0).all()
    meta = json.loads((out / "analysis" / "compounding_error.json").read_text())
    assert meta["algo"] == "mamba" and "posterior" in meta["start"]
    with pytest.raises(UserError, match="attention maps are MARIE"):
        attention(str(out))


def test_open_loop_starts_from_the_filtered_posterior_and_follows_the_given_actions():
    """analysis_states is acting's filter over whole episodes; open_loop decodes the start itself at h = 0 and
    then moves with the prior under the actions it is given."""
    algo = make_algo()
    rng = np.random.default_rng(0)
    E, T, N, O = 2, 5, INFO.n_agents, INFO.obs_dim
    obs = rng.normal(size=(E, T + 1, N, O)).astype(np.float32)
    acts = rng.integers(0, INFO.n_actions, size=(E, T, N))
    torch.manual_seed(0)
    states = algo.analysis_states(obs, acts)
    assert states["deter"].shape == (E, T + 1, N, algo.model.D)
    torch.manual_seed(0)                           # the filter is causal: later steps change nothing before them
    changed = obs.copy()
    changed[:, 3:] += 5.0
    early = algo.analysis_states(changed, acts)
    assert torch.equal(early["deter"][:, :4], states["deter"][:, :4])
    start = {k: v[:, 2] for k, v in states.items()}
    out = algo.open_loop(start, acts[:, 2:5])
    assert out["recon"].shape == (E, 4, N, O) and out["reward"].shape == (E, 3)
    torch.testing.assert_close(out["recon"][:, 0], algo.model.decoder(RSSMState(start["deter"], start["stoch"]).feat()))


def test_resume_equals_uninterrupted(tmp_path, monkeypatch):
    # interrupted at 400 env steps: updates done, buffer partly filled, episodes in progress
    assert_resume_equals_uninterrupted(tmp_path, monkeypatch, 400, algo="mamba", env="smax", map_name="3m", seed=3,
                                       steps=600, preset="smoke")


def _fill(algo, rng, E, steps):
    ts = fake_ts(rng, E, first=True)
    for step in range(steps):
        done = np.full(E, step % 6 == 5)
        nxt = fake_ts(rng, E, first=False, done=done)._replace(first=done)
        algo.observe(ts, np.zeros((E, INFO.n_agents), np.int64), nxt)
        ts = nxt


def test_ppo_takes_one_actor_and_one_critic_step_per_minibatch():
    """The reference splits every PPO epoch into minibatches of 2000 imagined joint samples: here 16 start
    states x 5 steps = 80 samples in minibatches of 30 -> 3 per epoch, x 2 epochs = 6 actor and 6 critic
    steps per policy update, and the entropy bonus annealed once per actor step."""
    algo = make_algo(num_envs=2, ppo_minibatch_size=30, entropy_annealing=0.5)
    _fill(algo, np.random.default_rng(0), 2, 30)
    coef = algo.entropy_coef
    algo._train_behaviour()
    steps = lambda opt: int(next(iter(opt.state.values()))["step"])  # noqa: E731
    assert steps(algo.actor_opt) == steps(algo.critic_opt) == 6
    assert algo.entropy_coef == pytest.approx(coef * 0.5 ** 6)


def test_attention_tells_agents_apart_by_position():
    """SMAC observations carry no agent id: with the positional encoding, agents with identical inputs get
    different transition states and values; without it, they cannot."""
    from baselines.mamba.behaviour import MambaCritic
    for positions in (True, False):
        p = smoke_params(agent_positions=positions)["params"]
        torch.manual_seed(0)
        m = WorldModel(INFO.obs_dim, INFO.n_actions, p).eval()
        state = m.initial_state((2,), INFO.n_agents, "cpu", torch.float32)
        h, _ = m.transition(state, torch.zeros(2, INFO.n_agents, INFO.n_actions))
        critic = MambaCritic(m.feat_size, 16, 2, positions)
        v = critic(torch.ones(2, INFO.n_agents, m.feat_size))
        assert v.shape == (2, INFO.n_agents)
        differ = not torch.allclose(h[:, 0], h[:, 1]) and not torch.allclose(v[:, 0], v[:, 1])
        assert differ == positions


@pytest.mark.parametrize("ends, cont", [(True, 0.0), (False, 1.0)])
def test_continuation_target_at_a_time_limit(ends, cont):
    """The reference ends the continuation at a time-limit end too (SMAC reports done there)."""
    rng = np.random.default_rng(0)
    algo = make_algo(num_envs=1, truncation_ends_continuation=ends)
    ts = fake_ts(rng, 1, first=True)
    cut = fake_ts(rng, 1, first=False)._replace(truncated=np.ones(1, bool), first=np.ones(1, bool))
    algo.observe(ts, np.zeros((1, INFO.n_agents), np.int64), cut)
    assert algo.replay.data["cont"][0, 1] == cont


def test_presets_follow_the_reference_where_table_6_is_silent():
    p = resolve_config(algo="mamba", preset_file=MAMBA.preset_file, preset="paper", env="smax", map_name="3m",
                       seed=0, steps=100)["params"]
    assert p["ppo_minibatch_size"] == 2000 and p["comm_heads"] == p["critic_heads"] == 8 and p["agent_positions"]
    assert p["learning_starts"] == 500 and p["model_batch_size"] == 256  # Table 6's batch size in `paper`
    ref = resolve_config(algo="mamba", preset_file=MAMBA.preset_file, preset="reference", env="smax",
                         map_name="3m", seed=0, steps=100)["params"]
    assert ref["model_batch_size"] == 40 and "reward_scale" not in ref
