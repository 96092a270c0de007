"""The on-policy core shared by MAPPO and HAPPO: GAE, ValueNorm, chunking, masks, recurrent replay."""
import copy

import numpy as np
import pytest
import torch

from baselines.common.onpolicy import ValueNorm, clipped_value_loss, compute_gae, from_chunks, to_chunks
from marie.envs.base import EnvInfo, TimeStep


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """Tiny networks: one thread is faster than two on a shared 2-core machine (as the smoke presets set)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_gae_by_hand_with_a_truncation_and_a_termination():
    # one environment, 4 steps: step 1 is cut by the time limit (bootstrap from V(next_state) = 0.7, which is not
    # V of the next stored state), step 2 terminates (no bootstrap), step 3 is the rollout's end (bootstrap 0.4).
    reward = torch.tensor([1.0, 0.0, 2.0, 1.0])
    value = torch.tensor([0.5, 1.0, 0.2, 0.3])
    next_value = torch.tensor([1.0, 0.7, 0.3, 0.4])
    terminated = torch.tensor([False, False, True, False])
    truncated = torch.tensor([False, True, False, False])
    gamma, lam = 0.9, 0.8
    adv, ret = compute_gae(reward, value, next_value, terminated, terminated | truncated, gamma, lam)
    a3 = 1 + 0.9 * 0.4 - 0.3            # 1.06
    a2 = 2 - 0.2                         # 1.8: terminated, nothing bootstrapped
    a1 = 0 + 0.9 * 0.7 - 1.0             # -0.37: truncated, bootstrapped from V(next_state), trace cut
    a0 = 1 + 0.9 * 1.0 - 0.5 + 0.9 * 0.8 * a1
    expected = torch.tensor([a0, a1, a2, a3])
    torch.testing.assert_close(adv, expected)
    torch.testing.assert_close(ret, expected + value)
    # batched over environments: the same column twice gives the same answer twice
    adv2, _ = compute_gae(*(x[:, None].expand(-1, 2) for x in (reward, value, next_value, terminated,
                                                               terminated | truncated)), gamma, lam)
    torch.testing.assert_close(adv2, expected[:, None].expand(-1, 2))


def test_value_norm_round_trip_and_statistics():
    torch.manual_seed(0)
    norm = ValueNorm(beta=0.99999, epsilon=1e-5, var_min=1e-2)
    x = 5.0 + 3.0 * torch.randn(1000)
    norm.update(x)
    y = norm.normalize(x)
    torch.testing.assert_close(norm.denormalize(y), x, rtol=1e-5, atol=1e-5)
    assert abs(float(y.mean())) < 1e-4 and abs(float(y.std(unbiased=False)) - 1) < 1e-3  # debiased: exact stats
    norm.update(x + 10)  # a second batch moves the running mean halfway (equal weights at beta ~ 1)
    mean, _ = norm.stats()
    assert abs(float(mean) - (float(x.mean()) + 5)) < 1e-2
    state = norm.state_dict()
    other = ValueNorm(0.99999, 1e-5, 1e-2)
    other.load_state_dict(state)
    torch.testing.assert_close(other.normalize(x), norm.normalize(x))


def test_clipped_value_loss_takes_the_worse_of_clipped_and_unclipped():
    v_old, target = torch.tensor([0.0]), torch.tensor([1.0])
    # moved 0.5 toward the target, clip 0.2: the clipped value (0.2) is further away, so it sets the loss
    loss = clipped_value_loss(torch.tensor([0.5]), v_old, target, clip=0.2, delta=10.0)
    torch.testing.assert_close(loss, torch.tensor([0.5 * 0.8 ** 2]))
    # Huber beyond delta is linear
    loss = clipped_value_loss(torch.tensor([0.0]), v_old, torch.tensor([30.0]), clip=0.2, delta=10.0)
    torch.testing.assert_close(loss, torch.tensor([10.0 * (30.0 - 5.0)]))


def test_chunks_are_consecutive_pieces_and_round_trip():
    T, E, L = 6, 2, 3
    x = torch.arange(T * E).reshape(T, E)  # x[t, e] = 2t + e
    c = to_chunks(x, L)
    assert c.shape == (L, (T // L) * E)
    for b in range(c.shape[1]):  # each column is L consecutive steps of one environment
        col = c[:, b]
        assert torch.all(col[1:] - col[:-1] == E)
    torch.testing.assert_close(from_chunks(c, T, E), x)


# -- acting on hand-made time steps (no simulator needed) -------------------------------------------
N, O, S, A, E = 3, 7, 11, 6, 5


def discrete_info():
    return EnvInfo(n_agents=N, obs_dim=O, state_dim=S, n_actions=A, episode_limit=50, backend="fake",
                   backend_version="0", map_name="fake")


def continuous_info():
    return EnvInfo(n_agents=N, obs_dim=O, state_dim=S, n_actions=2, episode_limit=50, backend="fake",
                   backend_version="0", map_name="fake", continuous=True, has_win=False,
                   action_low=(-0.4, -0.4), action_high=(0.4, 0.4), extra={"agent_action_dims": [2, 1, 2]})


def make(algo_name, info, **overrides):
    from marie.algorithm import algorithm_class
    from marie.config import resolve_config
    cls = algorithm_class(algo_name)
    cfg = resolve_config(algo=algo_name, preset_file=cls.preset_file, preset="smoke", env="smax", map_name="fake",
                         seed=0, steps=100, overrides=[f"{k}={v}" for k, v in overrides.items()])
    cfg["run"]["num_envs"] = E
    return cls(info, cfg["params"], cfg["run"], torch.device("cpu"), 0)


def fill_rollout(algo, rng) -> None:
    """Act on random time steps until the algorithm's rollout storage is full."""
    carry = algo.initial_carry(E)
    ts = fake_ts(rng, algo.env_info, first=np.ones(E, bool))
    while not algo.buffer.full:
        actions, carry = algo.act(ts, carry, training=True)
        ts_next = fake_ts(rng, algo.env_info)
        ts_next = ts_next._replace(first=ts_next.terminated | ts_next.truncated)
        algo.observe(ts, actions, ts_next)
        ts = ts_next


def fake_ts(rng, info, first=None, done=None):
    n_act = info.n_actions
    avail = rng.random((E, N, n_act)) < 0.5
    avail[..., 0] |= ~avail.any(-1)  # at least one available action
    if info.continuous:
        avail[:] = True
    first = rng.random(E) < 0.2 if first is None else first
    terminated = rng.random(E) < 0.1 if done is None else done
    truncated = (rng.random(E) < 0.1) & ~terminated
    f = lambda *s: rng.standard_normal(s).astype(np.float32)  # noqa: E731
    return TimeStep(obs=f(E, N, O), state=f(E, S), avail=avail, first=first, reward=f(E), terminated=terminated,
                    truncated=truncated, next_obs=f(E, N, O), next_state=f(E, S), next_avail=avail,
                    alive=rng.random((E, N)) < 0.8, won=np.zeros(E, bool), episode_return=f(E),
                    episode_length=np.zeros(E, np.int32))


@pytest.mark.parametrize("algo_name", ["mappo", "happo"])
def test_unavailable_actions_are_never_chosen(algo_name):
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    algo = make(algo_name, discrete_info())
    carry = algo.initial_carry(E)
    for step in range(30):
        ts = fake_ts(rng, algo.env_info)
        training = step % 2 == 0
        actions, carry = algo.act(ts, carry, training=training)
        assert actions.shape == (E, N)
        assert ts.avail[np.arange(E)[:, None], np.arange(N)[None, :], actions].all()


@pytest.mark.parametrize("algo_name", ["mappo", "happo"])
def test_continuous_actions_stay_in_bounds(algo_name):
    torch.manual_seed(0)
    rng = np.random.default_rng(1)
    algo = make(algo_name, continuous_info())
    carry = algo.initial_carry(E)
    for training in (True, False):
        actions, carry = algo.act(fake_ts(rng, algo.env_info), carry, training=training)
        assert actions.shape == (E, N, 2) and actions.dtype == np.float32
        assert (actions >= -0.4).all() and (actions <= 0.4).all()
    assert torch.isfinite(algo._last["logp"]).all() if algo._last is not None else True


@pytest.mark.parametrize("algo_name,info", [("mappo", discrete_info), ("happo", discrete_info),
                                            ("mappo", continuous_info), ("happo", continuous_info)])
def test_replaying_the_rollout_in_chunks_reproduces_the_acting_log_probs(algo_name, info):
    """Stored hidden states at chunk starts + resets where episodes start: the update sees the very policy that
    acted (ratio 1 before the first gradient step), for the shared and the per-agent (vmapped) actors."""
    torch.manual_seed(0)
    rng = np.random.default_rng(2)
    algo = make(algo_name, info(), recurrent="true")
    fill_rollout(algo, rng)
    batch, _ = algo._prepare()
    from baselines.common.networks import log_prob_entropy
    everything = torch.arange(batch["x"].shape[1])
    for agent in range(N):
        if algo_name == "mappo":
            out, log_std = algo.actor.forward_seq(batch["x"], batch["h0"], batch["first"])
            out, log_std = out[:, :, agent], log_std[:, :, agent]
        else:
            out, log_std = algo._agent_forward(agent, batch, everything)
        dim_mask = None if algo.dim_mask is None else algo.dim_mask[agent]
        logp, _ = log_prob_entropy(out, log_std, batch["action"][:, :, agent], batch["avail"][:, :, agent], dim_mask,
                                   algo.continuous)
        torch.testing.assert_close(logp, batch["logp"][:, :, agent], rtol=1e-4, atol=1e-4)


def test_stacked_frames_hold_the_last_k_observations_and_restart_with_the_episode():
    algo = make("mappo", discrete_info(), stacked_frames=3, agent_id="false", last_action="false")
    rng = np.random.default_rng(3)
    carry = algo.initial_carry(E)
    seen = []
    for step in range(4):
        first = np.zeros(E, bool) if step else np.ones(E, bool)
        if step == 3:
            first[0] = True  # environment 0 starts a new episode
        ts = fake_ts(rng, algo.env_info, first=first)
        seen.append(torch.tensor(ts.obs))
        _, carry = algo.act(ts, carry, training=True)
    x = algo._last["x"].reshape(E, N, 3, O)
    torch.testing.assert_close(x[1:], torch.stack(seen[1:], 2)[1:])             # the last 3 observations, oldest first
    torch.testing.assert_close(x[0, :, :2], torch.zeros(N, 2, O))                 # a new episode: zeros before it
    torch.testing.assert_close(x[0, :, 2], seen[3][0])


def test_the_actor_sees_the_one_hot_last_action_zero_at_an_episode_start():
    algo = make("mappo", discrete_info(), agent_id="false")
    rng = np.random.default_rng(4)
    carry = algo.initial_carry(E)
    ts = fake_ts(rng, algo.env_info, first=np.ones(E, bool))
    actions, carry = algo.act(ts, carry, training=True)
    assert (algo._last["x"][..., O:] == 0).all()                 # first step: no previous action
    first = np.zeros(E, bool)
    first[0] = True
    algo.act(fake_ts(rng, algo.env_info, first=first), carry, training=True)
    last = algo._last["x"][..., O:]
    assert (last[0] == 0).all()                                   # env 0 restarted
    torch.testing.assert_close(last[1:].argmax(-1), torch.as_tensor(actions[1:]))
    assert (last[1:].sum(-1) == 1).all()


def test_the_agent_state_critic_gives_one_value_per_agent_and_masks_dead_agents():
    """The reference's SMAC critic: [state, own observation, id] per agent, zeroed (but for the id) while the agent
    is dead; GAE per agent; the value loss only over alive agents."""
    torch.manual_seed(0)
    algo = make("mappo", discrete_info())
    assert algo.agent_critic and algo.critic.gru is not None
    state, obs = torch.randn(2, S), torch.randn(2, N, O)
    alive = torch.tensor([[True, False, True], [True, True, True]])
    x = algo._critic_input(state, obs, alive)
    assert x.shape == (2, N, S + O + N)
    assert (x[0, 1, : S + O] == 0).all() and x[0, 1, S + O + 1] == 1          # dead: only its id remains
    torch.testing.assert_close(x[0, 0, :S], state[0])
    torch.testing.assert_close(x[0, 2, S:S + O], obs[0, 2])
    fill_rollout(algo, np.random.default_rng(5))
    batch, _ = algo._prepare()
    assert batch["v_old"].shape == batch["ret"].shape == batch["adv"].shape[:2] + (N,)
    assert torch.equal(batch["value_mask"], batch["active"]) and not batch["value_mask"].all()
    # a dead agent's value error does not enter the loss: corrupt its targets, the critic's loss is unchanged
    algo.params["critic_epochs"] = 1
    torch.manual_seed(1)
    before = {k: v.clone() for k, v in algo.critic.state_dict().items()}
    opt_state = copy.deepcopy(algo.critic_opt.state_dict())
    loss_a = algo._update_critic(batch)["value_loss"]
    algo.critic.load_state_dict(before)
    algo.critic_opt.load_state_dict(opt_state)
    corrupt = dict(batch, ret=torch.where(batch["value_mask"], batch["ret"], batch["ret"] + 100.0))
    torch.manual_seed(1)
    loss_b = algo._update_critic(corrupt)["value_loss"]
    assert loss_a == pytest.approx(loss_b, rel=1e-5)


def test_the_recurrent_critic_in_chunks_reproduces_the_rollout_pass():
    """Chunked critic training starts each chunk from the hidden state of the full-rollout pass: before any
    update, the chunked values equal the values GAE used."""
    torch.manual_seed(0)
    algo = make("mappo", discrete_info())
    fill_rollout(algo, np.random.default_rng(6))
    batch, _ = algo._prepare()
    v, _ = algo.critic.forward_seq(batch["cx"], batch["ch0"], batch["cfirst"])
    torch.testing.assert_close(v, batch["v_old"], rtol=1e-5, atol=1e-5)


def test_the_state_critic_is_one_value_per_environment():
    algo = make("mappo", discrete_info(), critic_input="state", critic_recurrent="false")
    fill_rollout(algo, np.random.default_rng(7))
    batch, _ = algo._prepare()
    assert algo.Nc == 1 and batch["v_old"].shape[-1] == 1 and batch["adv"].shape[-1] == N
    torch.testing.assert_close(batch["adv"][..., 0], batch["adv"][..., 1])   # the team advantage for everyone
