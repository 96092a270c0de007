"""QPLEX: Q_tot = V_tot + A_tot, IGM (the joint greedy action is every agent's greedy action), smoke run."""
import itertools

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from baselines.common.mixers import DuplexMixer
from baselines.qplex import QPLEX
from marie.cli import main
from test_qmix import INFO, make_algo

N, A, S, O = 3, 4, 6, 5


def mixer():
    torch.manual_seed(0)
    return DuplexMixer(N, A, S, O, embed_dim=8, heads=4, adv_kernels=4, hypernet_layers=1, hypernet_embed=16)


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


def test_learner_builds_the_duplex_mixer():
    algo = make_algo(QPLEX)
    assert isinstance(algo.mixer, DuplexMixer) and algo.mixer.heads == algo.params["attention_heads"]
    assert algo.params["hypernet_layers"] == 1 and isinstance(algo.mixer.query, torch.nn.Linear)
    assert algo.n_agents == INFO.n_agents


def test_smoke_run_through_the_cli(tmp_path):
    out = tmp_path / "run"
    assert main(["run", "--algo", "qplex", "--map", "3m", "--steps", "400", "--preset", "smoke", "--out", str(out)]) == 0
    ev, tr = pd.read_csv(out / "eval.csv"), pd.read_csv(out / "train.csv")
    assert ev["env_steps"].tolist() == [0, 200, 400]
    assert len(tr) > 3 and np.isfinite(tr["loss_td"]).all()
