"""The environment protocol: shapes, masks, win flags, auto-reset, snapshots, for every installed backend."""
import dataclasses

import numpy as np
import pytest

from marie.envs import (BACKENDS, all_maps, available_maps, discretize_actions, get_map, make_env,
                        undiscretize_actions)
from marie.errors import UserError

PAPER_SMAC_MAPS = ["1c3s5z", "2m_vs_1z", "2s_vs_1sc", "2s3z", "3m", "3s_vs_3z", "3s_vs_4z", "8m", "MMM",
                   "so_many_baneling", "3s_vs_5z", "2c_vs_64zg", "corridor"]


def random_actions(ts, rng):
    return ((rng.random(ts.avail.shape) + 1e-3) * ts.avail).argmax(-1)


def check_timestep(ts, info, E):
    N, O, S, A = info.n_agents, info.obs_dim, info.state_dim, info.n_actions
    assert ts.obs.shape == ts.next_obs.shape == (E, N, O) and ts.obs.dtype == np.float32
    assert ts.state.shape == ts.next_state.shape == (E, S)
    assert ts.avail.shape == ts.next_avail.shape == (E, N, A) and ts.avail.dtype == bool
    for name in ("first", "terminated", "truncated", "won"):
        assert getattr(ts, name).shape == (E,) and getattr(ts, name).dtype == bool, name
    assert ts.reward.shape == ts.episode_return.shape == ts.episode_length.shape == (E,)
    assert ts.alive.shape == (E, N)
    assert not (ts.terminated & ts.truncated).any()
    assert (ts.avail.any(-1)).all(), "every agent always has an available action"


# -- SMAX ----------------------------------------------------------------------------------------------
def test_smax_protocol_and_masks(smax_3m):
    env, info = smax_3m, smax_3m.info
    assert (info.n_agents, info.obs_dim, info.n_actions, info.backend) == (3, 75, 8, "smax")
    ts = env.reset(seed=0)
    check_timestep(ts, info, env.num_envs)
    assert ts.first.all() and not ts.done.any()
    rng = np.random.default_rng(0)
    episodes = 0
    for _ in range(60):
        prev = ts
        ts = env.step(random_actions(prev, rng))
        check_timestep(ts, info, env.num_envs)
        assert (ts.first == ts.done).all()
        # where no episode ended, the next observation is the one the agents act on
        same = ~ts.done
        np.testing.assert_array_equal(ts.obs[same], ts.next_obs[same])
        # dead agents can only stop (action 4)
        dead = ~ts.alive & ~ts.done[:, None]
        if dead.any():
            assert (ts.next_avail[dead][:, 4]).all() and not ts.next_avail[dead][:, :4].any()
        episodes += int(ts.done.sum())
        assert (ts.episode_length[ts.done] > 0).all()
        assert ts.state.min() >= 0.0 and ts.state.max() <= 1.0, "world state scaled like SMAC's"
    assert episodes > 0


def _edit_units(env, fn):
    keys, st, ret, length = env.get_state()
    inner = st.state
    inner = fn(inner)
    env.set_state((keys, dataclasses.replace(st, state=inner), ret, length))


def test_smax_win_when_all_enemies_die(smax_3m):
    env = smax_3m
    env.reset(seed=1)
    n = env.info.n_agents

    def kill_enemies(s):
        health = np.array(s.unit_health)
        health[:, n:] = 0.0
        return dataclasses.replace(s, unit_health=health)
    _edit_units(env, kill_enemies)
    ts = env.step(np.full((env.num_envs, n), 4))
    assert ts.terminated.all() and ts.won.all() and not ts.truncated.any()
    assert ts.first.all()  # auto-reset happened
    assert (ts.reward >= 1.0).all(), "the win bonus is part of the team reward"


def test_smax_loss_when_all_allies_die(smax_3m):
    env = smax_3m
    env.reset(seed=2)
    n = env.info.n_agents

    def kill_allies(s):
        health = np.array(s.unit_health)
        health[:, :n] = 0.0
        return dataclasses.replace(s, unit_health=health)
    _edit_units(env, kill_allies)
    ts = env.step(np.full((env.num_envs, n), 4))
    assert ts.terminated.all() and not ts.won.any()


def test_smax_time_limit_is_truncation(smax_3m):
    env = smax_3m
    env.reset(seed=3)
    limit = env.info.episode_limit  # the length of a timed-out episode

    def last_step(s):
        return dataclasses.replace(s, step=np.full_like(np.array(s.step), limit - 1))
    _edit_units(env, last_step)
    ts = env.step(np.full((env.num_envs, env.info.n_agents), 4))
    assert ts.truncated.all() and not ts.terminated.any() and not ts.won.any()
    assert (ts.episode_length == 1).all()  # counted from our reset, not SMAX's internal counter


def test_smax_episode_return_is_sum_of_rewards(smax_3m):
    env = smax_3m
    ts = env.reset(seed=4)
    rng = np.random.default_rng(4)
    running = np.zeros(env.num_envs)
    checked = 0
    for _ in range(150):
        ts = env.step(random_actions(ts, rng))
        running += ts.reward
        for e in np.flatnonzero(ts.done):
            assert ts.episode_return[e] == pytest.approx(running[e], abs=1e-4)
            running[e] = 0.0
            checked += 1
    assert checked > 0


def test_smax_snapshot_restores_exactly(smax_3m):
    env = smax_3m
    env.reset(seed=5)
    snap = env.get_state()
    acts = np.stack([np.full((env.num_envs, env.info.n_agents), a) for a in (0, 1, 4, 2, 3, 4, 4, 0)])
    first = [env.step(a) for a in acts]
    env.set_state(snap)
    second = [env.step(a) for a in acts]
    for a, b in zip(first, second):
        for x, y in zip(a, b):
            np.testing.assert_array_equal(x, y)


def test_smax_registered_scenario_shapes():
    env = make_env("smax", "2m_vs_1z", num_envs=1)
    ts = env.reset(seed=0)
    assert env.info.n_agents == 2 and env.info.n_actions == 5 + 1
    check_timestep(ts, env.info, 1)


# -- MaMuJoCo --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cheetah():
    return make_env("mamujoco", "HalfCheetah-2x3", num_envs=2)


def test_mamujoco_protocol(cheetah):
    info = cheetah.info
    assert info.continuous and not info.has_win and info.n_agents == 2 and info.n_actions == 3
    ts = cheetah.reset(seed=0)
    check_timestep(ts, info, 2)
    rng = np.random.default_rng(0)
    for _ in range(5):
        ts = cheetah.step(rng.uniform(-1, 1, size=(2, 2, 3)).astype(np.float32))
        check_timestep(ts, info, 2)
        assert np.isfinite(ts.reward).all() and not ts.won.any()


def test_mamujoco_snapshot_restores_exactly(cheetah):
    cheetah.reset(seed=1)
    rng = np.random.default_rng(1)
    acts = rng.uniform(-1, 1, size=(6, 2, 2, 3)).astype(np.float32)
    snap = cheetah.get_state()
    first = [cheetah.step(a) for a in acts]
    cheetah.set_state(snap)
    second = [cheetah.step(a) for a in acts]
    for a, b in zip(first, second):
        np.testing.assert_allclose(a.obs, b.obs)
        np.testing.assert_allclose(a.reward, b.reward)


def test_mamujoco_heterogeneous_observations_are_padded():
    env = make_env("mamujoco", "HalfCheetah-6x1", num_envs=1)
    ts = env.reset(seed=0)
    dims = env.info.extra["agent_obs_dims"]
    assert env.info.obs_dim == max(dims) and min(dims) < max(dims)
    short = int(np.argmin(dims))
    assert (ts.obs[0, short, dims[short]:] == 0).all()


def test_action_discretisation_round_trip():
    low, high = np.array([-1.0, -1.0, 0.0]), np.array([1.0, 1.0, 2.0])
    acts = np.array([[-1.0, 1.0, 0.0], [0.0, 0.3, 1.999], [-0.5, 0.99, 1.0]], np.float32)
    tokens = discretize_actions(acts, low, high, bins=256)
    assert tokens.min() >= 0 and tokens.max() <= 255
    assert tokens[0, 0] == 0 and tokens[0, 1] == 255
    back = undiscretize_actions(tokens, low, high, bins=256)
    width = (high - low) / 256
    assert (np.abs(back - acts) <= width / 2 + 1e-6).all()
    np.testing.assert_array_equal(discretize_actions(back, low, high, bins=256), tokens)


# -- registry ------------------------------------------------------------------------------------------
def test_registry_has_every_paper_map_on_every_backend():
    maps = all_maps()
    for name in PAPER_SMAC_MAPS + ["protoss_5_vs_5", "terran_5_vs_5", "zerg_5_vs_5", "HalfCheetah-2x3",
                                   "HalfCheetah-6x1", "Walker2d-2x3"]:
        assert name in maps
        for b in BACKENDS:
            sup = maps[name].support(b)
            assert sup["status"] in ("exact", "approximation", "unavailable")
            if sup["status"] != "exact":
                assert sup.get("note"), f"{name} on {b} must say what differs or why"
    assert all(maps[m].status("smac") == "exact" for m in PAPER_SMAC_MAPS)
    assert {m for m in PAPER_SMAC_MAPS if maps[m].status("smax") == "exact"} == {"3m", "8m", "2s3z", "3s_vs_5z"}
    assert {m for m in PAPER_SMAC_MAPS if maps[m].status("smax") == "approximation"} == \
        {"3s_vs_3z", "3s_vs_4z", "2m_vs_1z", "corridor", "1c3s5z", "MMM", "so_many_baneling", "2s_vs_1sc",
         "2c_vs_64zg"}  # the last five with MARIE's added unit types (smax_units.py)
    assert maps["3s_vs_5z"].difficulty == "Hard" and maps["3s_vs_5z"].budget == 200_000
    assert maps["corridor"].budget == 400_000 and maps["3m"].episode_limit == 60


def test_unavailable_map_names_alternatives():
    with pytest.raises(UserError) as err:
        get_map("smax", "HalfCheetah-2x3")
    msg = str(err.value)
    assert "unavailable" in msg and "mamujoco" in msg and "3m" in msg
    with pytest.raises(UserError, match="unknown map"):
        get_map("smax", "4m")
    with pytest.raises(UserError, match="unknown env"):
        get_map("starcraft", "3m")
    assert "3m" in available_maps("smax") and "MMM" in available_maps("smax")
    assert "HalfCheetah-2x3" not in available_maps("smax")


@pytest.mark.parametrize("backend", ["smac", "smacv2"])
def test_starcraft_backends_explain_what_to_install(backend, monkeypatch):
    from marie.envs.starcraft import require_starcraft
    try:
        require_starcraft(backend)
        pytest.skip(f"{backend} and StarCraft II are installed here")
    except UserError:
        pass
    map_name = "3m" if backend == "smac" else "protoss_5_vs_5"
    with pytest.raises(UserError, match="pip install -e .\\[smac\\]|StarCraft II"):
        make_env(backend, map_name, 1)
