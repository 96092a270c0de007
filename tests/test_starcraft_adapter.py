"""The SMAC/SMACv2 adapter's own logic (outcomes, truncation, SC2 crash restarts), against a stand-in for
oxwhirl's StarCraft2Env: real SC2 is not installable here. With SC2 present, test_real_smac runs too."""
import sys
import types

import numpy as np
import pytest

from marie.envs import make_env
from marie.errors import UserError


class FakeStarCraft2Env:
    """Follows the StarCraft2Env API: 2 agents, episode limit 4; battle won at step 3 when told to."""
    launched = 0
    crash_next_step = False

    def __init__(self, map_name, seed=None, **kwargs):
        FakeStarCraft2Env.launched += 1
        self.map_name, self.seed, self.t = map_name, seed, 0
        self.win_at = 3 if (seed or 0) % 2 == 0 else None

    def get_env_info(self):
        return {"n_agents": 2, "obs_shape": 4, "state_shape": 6, "n_actions": 5, "episode_limit": 4}

    def reset(self):
        self.t = 0
        return self.get_obs(), self.get_state()

    def step(self, actions):
        if FakeStarCraft2Env.crash_next_step:
            FakeStarCraft2Env.crash_next_step = False
            raise ConnectionError("SC2 died")
        assert len(actions) == 2
        self.t += 1
        if self.win_at is not None and self.t == self.win_at:
            return 1.5, True, {"battle_won": True}
        if self.t >= 4:
            return 0.5, True, {"battle_won": False, "episode_limit": True}
        return 0.5, False, {"battle_won": False}

    def get_obs(self):
        return [np.full(4, self.t, np.float32) for _ in range(2)]

    def get_state(self):
        return np.full(6, self.t, np.float32)

    def get_avail_actions(self):
        return [[0, 1, 1, 1, 1], [0, 1, 1, 1, 1]]

    def close(self):
        pass


@pytest.fixture
def fake_smac(monkeypatch, tmp_path):
    (tmp_path / "Versions" / "Base75689").mkdir(parents=True)
    monkeypatch.setenv("SC2PATH", str(tmp_path))
    pkg, env_mod = types.ModuleType("smac"), types.ModuleType("smac.env")
    env_mod.StarCraft2Env = FakeStarCraft2Env
    pkg.env = env_mod
    monkeypatch.setitem(sys.modules, "smac", pkg)
    monkeypatch.setitem(sys.modules, "smac.env", env_mod)
    FakeStarCraft2Env.launched = 0
    return FakeStarCraft2Env


def test_adapter_outcomes_and_truncation(fake_smac):
    env = make_env("smac", "3m", num_envs=2)
    assert env.info.backend == "smac" and "Base75689" in env.info.backend_version
    ts = env.reset(seed=0)  # env 0 seeds 0 (wins at step 3), env 1 seeds 1 (times out at step 4)
    assert ts.obs.shape == (2, 2, 4) and ts.avail.dtype == bool and ts.first.all()
    for _ in range(2):
        ts = env.step(np.ones((2, 2), int))
        assert not ts.done.any()
    ts = env.step(np.ones((2, 2), int))
    assert ts.terminated[0] and ts.won[0] and not ts.truncated[0]
    assert ts.episode_return[0] == pytest.approx(2.5) and ts.episode_length[0] == 3
    assert ts.next_obs[0, 0, 0] == 3 and ts.obs[0, 0, 0] == 0  # final observation kept, then reset
    ts = env.step(np.ones((2, 2), int))
    assert ts.truncated[1] and not ts.terminated[1] and not ts.won[1] and ts.episode_length[1] == 4


def test_adapter_restarts_crashed_sc2(fake_smac):
    env = make_env("smac", "3m", num_envs=1)
    env.reset(seed=0)
    launched = fake_smac.launched
    fake_smac.crash_next_step = True
    ts = env.step(np.ones((1, 2), int))
    assert ts.truncated[0] and ts.first[0]
    assert env.counters == {"sc2_restarts": 1} and fake_smac.launched == launched + 1
    env.step(np.ones((1, 2), int))  # plays on


def test_adapter_gives_up_after_too_many_crashes(fake_smac):
    env = make_env("smac", "3m", num_envs=1, sc2_restarts=1)
    env.reset(seed=0)
    fake_smac.crash_next_step = True
    env.step(np.ones((1, 2), int))
    fake_smac.crash_next_step = True
    with pytest.raises(RuntimeError, match="crashed 2 times"):
        env.step(np.ones((1, 2), int))


def test_missing_sc2_is_a_clear_error(fake_smac, monkeypatch, tmp_path):
    monkeypatch.setenv("SC2PATH", str(tmp_path / "nowhere"))
    with pytest.raises(UserError, match="StarCraft II"):
        make_env("smac", "3m", 1)


def test_real_smac():
    from marie.envs.starcraft import require_starcraft
    try:
        require_starcraft("smac")
    except UserError:
        pytest.skip("oxwhirl smac + StarCraft II not installed")
    env = make_env("smac", "3m", 1)
    ts = env.reset(seed=0)
    ts = env.step(((np.random.default_rng(0).random(ts.avail.shape) + 1e-3) * ts.avail).argmax(-1))
    assert ts.obs.shape[1] == 3
    env.close()
