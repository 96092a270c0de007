"""QPLEX: Q_tot = V_tot + A_tot, IGM (the joint greedy action is every agent's greedy action), the reference's
gradient paths (the advantage term detached), sub-network shapes, the attention penalty, burn-in, smoke run."""
import itertools

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from baselines.common.mixers import DuplexMixer
from baselines.qplex import QPLEX
from marie.cli import main
from test_qmix import INFO, fake_ts, make_algo

N, A, S, O = 3, 4, 6, 5


def mixer(**kw):
    torch.manual_seed(0)
    return DuplexMixer(N, A, S, O, embed_dim=8, heads=4, adv_kernels=4, hypernet_layers=1, hypernet_embed=16, **kw)


def all_joint_actions(B):
    """Every joint action as the time axis: qs per agent [B, N, A] -> inputs over T = A^N joint actions."""
    torch.manual_seed(1)
    per_agent = 3 * torch.randn(B, N, A)
    joint = torch.tensor(list(itertools.product(range(A), repeat=N)))           # [T, N]
    T = len(joint)
    chosen = per_agent.unsqueeze(1).expand(B, T, N, A).gather(-1, joint.expand(B, T, N).unsqueeze(-1)).squeeze(-1)
    states = torch.randn(B, 1, S).expand(B, T, S)
    obs = torch.randn(B, 1, N, O).expand(B, T, N, O)
    onehot = F.one_hot(joint, A).float().expand(B, T, N, A)
    max_qs = per_agent.max(-1).values.unsqueeze(1).expand(B, T, N)
    return per_agent, joint, dict(agent_qs=chosen, states=states, obs=obs, actions_onehot=onehot, max_qs=max_qs)


def test_q_tot_is_v_plus_a_and_v_is_the_transformed_greedy_values():
    m = mixer()
    _, joint, inputs = all_joint_actions(5)
    q_tot = m(**inputs)
    v_tot, a_tot = m.decompose(**inputs)
    torch.testing.assert_close(q_tot, v_tot + a_tot)
    w, b = m.weights(inputs["states"], inputs["obs"])
    assert (w > 0).all()
    torch.testing.assert_close(v_tot, (w * inputs["max_qs"]).sum(-1) + b)
    assert (a_tot <= 1e-6).all()  # advantages are never positive


def test_igm_joint_greedy_action_is_each_agents_greedy_action():
    m = mixer()
    per_agent, joint, inputs = all_joint_actions(8)
    q_tot = m(**inputs)                                      # [B, A^N]
    best_joint = joint[q_tot.argmax(-1)]                      # [B, N]
    torch.testing.assert_close(best_joint, per_agent.argmax(-1))
    greedy_index = q_tot.argmax(-1)
    v_tot, a_tot = m.decompose(**inputs)
    torch.testing.assert_close(a_tot.gather(1, greedy_index[:, None]).squeeze(1), torch.zeros(8), atol=1e-6, rtol=0)


def test_utilities_get_no_gradient_through_the_advantage_term():
    """dQ_tot/dQ_i = w_i (through sum_i Q_i' only); lambda still learns from the detached advantages.
    Without the stop-gradient (the old behaviour) dQ_tot/dQ_i = lambda_i w_i: same values, other gradients."""
    _, _, inputs = all_joint_actions(4)
    grads = {}
    for stop in (True, False):
        m = mixer(stop_advantage_gradient=stop)
        qs = inputs["agent_qs"].clone().requires_grad_(True)
        q_tot = m(**{**inputs, "agent_qs": qs})
        q_tot.sum().backward()
        w, _ = m.weights(inputs["states"], inputs["obs"])
        lam = m.lambdas(inputs["states"], inputs["actions_onehot"])
        grads[stop] = (qs.grad, q_tot.detach(), w.detach(), lam.detach())
        assert m.lam_action.weight.grad.abs().sum() > 0  # lambda learns either way
    g_stop, q_stop, w, lam = grads[True]
    g_full, q_full, _, _ = grads[False]
    torch.testing.assert_close(q_stop, q_full)               # forward values agree
    torch.testing.assert_close(g_stop, w)                    # utilities: the transformation weight only
    torch.testing.assert_close(g_full, lam * w)
    assert not torch.allclose(g_stop, g_full)


def test_reference_sub_networks_and_unweighted_heads():
    m = mixer()
    # query: state -> hypernet_embed (per head) -> ReLU -> D without a final bias; V(s): state -> D -> 1
    assert m.query_hidden.in_features == S and m.query_hidden.out_features == 4 * 16
    assert m.query.weight.shape == (4, 16, 8) and not any("bias" in n for n, _ in m.query.named_parameters())
    assert m.key.bias is None
    assert [type(x) for x in m.bias] == [torch.nn.Linear, torch.nn.ReLU, torch.nn.Linear] and m.bias[0].out_features == 8
    assert isinstance(m.lam_key, torch.nn.Linear)           # hypernet_layers 1: the lambda networks only
    # weighted_head off: w_i is a sum of per-head softmaxes, so sum_i w_i = heads
    _, _, inputs = all_joint_actions(2)
    w, _ = m.weights(inputs["states"], inputs["obs"])
    torch.testing.assert_close(w.sum(-1), torch.full(w.shape[:-1], 4.0))
    assert mixer(weighted_head=True).head_weight is not None


def test_attention_penalty_is_coef_times_sum_over_heads_of_mean_squared_logits():
    m = mixer()
    _, _, inputs = all_joint_actions(2)
    m(**inputs)
    logits = m.attention(inputs["states"], inputs["obs"])   # [B,T,H,N]
    expected = 0.001 * sum((logits[:, :, h] ** 2).mean() for h in range(4))
    torch.testing.assert_close(m.penalty, expected)
    assert m.penalty.requires_grad


def test_learner_builds_the_duplex_mixer_and_adds_the_penalty():
    algo = make_algo(QPLEX)
    assert isinstance(algo.mixer, DuplexMixer) and algo.mixer.heads == algo.params["attention_heads"]
    assert algo.params["hypernet_layers"] == 1 and algo.params["stop_advantage_gradient"]
    assert algo.n_agents == INFO.n_agents


@pytest.mark.parametrize("cadence, burn_in, expected", [("episode", 0, 13), ("round", 0, 3), ("episode", 12, 5)])
def test_burn_in_and_update_cadence(cadence, burn_in, expected):
    """4 environments, batch 4: 16 one-step episodes. episode: one update per finished episode from the 4th
    (the buffer holds a batch): 13; round: one per 4 such episodes (pymarl's parallel runner): 3;
    a burn-in of 12 episodes: from the 12th: 5."""
    algo = make_algo(QPLEX, batch_size=4, buffer_size=32, update_cadence=cadence, burn_in_episodes=burn_in)
    rng = np.random.default_rng(0)
    ts = fake_ts(rng, 4)
    done = np.ones(4, bool)
    owed = 0
    for _ in range(4):
        actions = np.zeros((4, INFO.n_agents), np.int64)
        ts_next = ts._replace(first=done, terminated=done, reward=np.ones(4, np.float32))
        algo.observe(ts, actions, ts_next)
        ts = ts_next
    while algo.update_credit >= 1.0:
        algo.update_credit -= 1.0
        owed += 1
    assert owed == expected


def test_smoke_run_through_the_cli(tmp_path):
    out = tmp_path / "run"
    assert main(["run", "--algo", "qplex", "--map", "3m", "--steps", "400", "--preset", "smoke", "--out", str(out)]) == 0
    ev, tr = pd.read_csv(out / "eval.csv"), pd.read_csv(out / "train.csv")
    assert ev["env_steps"].tolist() == [0, 200, 400]
    assert len(tr) > 3 and np.isfinite(tr["loss_td"]).all()
