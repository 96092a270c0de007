"""QMIX: mixer monotonicity, the epsilon schedule, action masks, the smoke run and resume through the CLI."""
import numpy as np
import pandas as pd
import pytest
import torch

from baselines.common.mixers import QMixer
from baselines.common.value_decomposition import linear_epsilon
from baselines.qmix import QMIX
from marie.cli import main
from marie.config import resolve_config
from marie.envs.base import EnvInfo, TimeStep
from resume_check import assert_resume_equals_uninterrupted

INFO = EnvInfo(n_agents=3, obs_dim=6, state_dim=7, n_actions=5, episode_limit=10, backend="fake",
               backend_version="0", map_name="fake")


def make_algo(cls=QMIX, info=INFO, num_envs=4, **params):
    cfg = resolve_config(algo="x", preset_file=cls.preset_file, preset="smoke", env="smax", map_name="3m", seed=0,
                         steps=100)
    cfg["run"]["num_envs"] = num_envs
    cfg["params"].update(params)
    torch.manual_seed(0)
    return cls(info, cfg["params"], cfg["run"], torch.device("cpu"), 0)


def fake_ts(rng, E, info=INFO, first=True):
    avail = rng.random((E, info.n_agents, info.n_actions)) < 0.4
    avail[..., 0] |= ~avail.any(-1)
    z = np.zeros(E, np.float32)
    f = np.zeros(E, bool)
    obs = rng.standard_normal((E, info.n_agents, info.obs_dim)).astype(np.float32)
    state = rng.standard_normal((E, info.state_dim)).astype(np.float32)
    return TimeStep(obs=obs, state=state, avail=avail, first=np.full(E, first), reward=z, terminated=f, truncated=f,
                    next_obs=obs, next_state=state, next_avail=avail, alive=np.ones((E, info.n_agents), bool), won=f,
                    episode_return=z, episode_length=np.zeros(E, np.int32))


def test_mixer_is_monotonic_in_every_agent_q():
    torch.manual_seed(0)
    for layers in (1, 2):
        mixer = QMixer(n_agents=4, state_dim=9, embed_dim=8, hypernet_layers=layers, hypernet_embed=16)
        qs = (3 * torch.randn(5, 7, 4)).requires_grad_(True)
        states = 5 * torch.randn(5, 7, 9)
        q_tot = mixer(qs, states)
        assert q_tot.shape == (5, 7)
        (grad,) = torch.autograd.grad(q_tot.sum(), qs)
        assert (grad >= 0).all() and (grad > 0).any()


def test_epsilon_schedule_is_linear_then_flat():
    assert linear_epsilon(0, 1.0, 0.05, 50000) == 1.0
    assert linear_epsilon(25000, 1.0, 0.05, 50000) == pytest.approx(0.525)
    assert linear_epsilon(50000, 1.0, 0.05, 50000) == pytest.approx(0.05)
    assert linear_epsilon(10**6, 1.0, 0.05, 50000) == 0.05
    algo = make_algo(epsilon_anneal_time=10000)
    algo.t_env = 5000
    assert algo.epsilon() == pytest.approx(0.525)


@pytest.mark.parametrize("training,t_env", [(False, 0), (True, 0), (True, 10**9)])
def test_unavailable_actions_are_never_chosen(training, t_env):
    algo = make_algo()
    algo.t_env = t_env  # t_env 0: epsilon 1 (all random); huge: epsilon_finish (mostly greedy)
    with torch.no_grad():  # make unavailable actions the most attractive ones
        algo.agent.fc2.bias.copy_(torch.arange(INFO.n_actions, dtype=torch.float32) * 100)
    rng = np.random.default_rng(0)
    carry = algo.initial_carry(64)
    for step in range(20):
        ts = fake_ts(rng, 64, first=step == 0)
        actions, carry = algo.act(ts, carry, training=training)
        assert actions.shape == (64, INFO.n_agents)
        assert ts.avail[np.arange(64)[:, None], np.arange(INFO.n_agents)[None], actions].all()
        if not training:  # greedy: the highest available action
            best = np.where(ts.avail, np.arange(INFO.n_actions), -1).argmax(-1)
            np.testing.assert_array_equal(actions, best)


def test_carry_resets_where_an_episode_starts():
    algo = make_algo()
    rng = np.random.default_rng(1)
    carry = algo.initial_carry(4)
    _, carry = algo.act(fake_ts(rng, 4), carry, training=True)
    _, carry = algo.act(fake_ts(rng, 4, first=False), carry, training=True)
    ts = fake_ts(rng, 4, first=False)._replace(first=np.array([True, False, False, False]))
    fresh = algo.initial_carry(4)
    _, fresh = algo.act(ts._replace(first=np.ones(4, bool)), fresh, training=False)
    _, after = algo.act(ts, carry, training=False)
    torch.testing.assert_close(after["h"][0], fresh["h"][0])
    assert not torch.allclose(after["h"][1], fresh["h"][1])


def test_state_scaling_is_running_max_abs_and_identity_on_normalised_states():
    algo = make_algo(num_envs=2)
    rng = np.random.default_rng(2)
    ts = fake_ts(rng, 2)
    state = np.clip(ts.state, -1, 1)
    state[0, 0], state[1, 1] = 20.0, -7.0
    nxt = ts._replace(first=np.zeros(2, bool), next_state=np.clip(ts.state, -1, 1))
    algo.observe(ts._replace(state=state), np.zeros((2, INFO.n_agents), np.int64), nxt)
    expected = np.ones(INFO.state_dim, np.float32)
    expected[:2] = [20, 7]
    np.testing.assert_array_equal(algo.state_maxabs, expected)


def test_smoke_run_through_the_cli(tmp_path):
    out = tmp_path / "run"
    assert main(["run", "--algo", "qmix", "--map", "3m", "--steps", "400", "--preset", "smoke", "--out", str(out)]) == 0
    ev, tr = pd.read_csv(out / "eval.csv"), pd.read_csv(out / "train.csv")
    assert ev["env_steps"].tolist() == [0, 200, 400]
    assert len(tr) > 5 and np.isfinite(tr["loss_td"]).all() and (tr["buffer_episodes"] >= 4).all()


def test_resume_equals_uninterrupted(tmp_path, monkeypatch):
    # interrupted at 400 env steps, with a partly filled buffer and episodes in progress
    assert_resume_equals_uninterrupted(tmp_path, monkeypatch, 400, algo="qmix", env="smax", map_name="3m", seed=3,
                                       steps=600, preset="smoke")
