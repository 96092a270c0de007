"""One reward convention for every method: make_env scales the team reward (and the episode return) to
SMAC's scale on every SMAC-like backend; the resolved factor is in the run's config."""
import numpy as np
import pytest

from marie.envs import SMAC_REWARD_SCALE, RewardScale, resolve_reward_scale
from marie.errors import UserError
from marie.runtime import prepare
from test_qmix import INFO, fake_ts


class FakeEnv:
    num_envs, info = 2, INFO

    def __init__(self):
        self.rng = np.random.default_rng(0)

    def reset(self, seed):
        return fake_ts(self.rng, 2)

    def step(self, actions):
        ts = fake_ts(self.rng, 2, first=False)
        return ts._replace(reward=np.array([0.25, 0.5], np.float32), episode_return=np.array([1.5, 2.0], np.float32))

    def get_state(self):
        return "snapshot"

    def set_state(self, snapshot):
        self.restored = snapshot

    def close(self):
        pass

    counters = {"restarts": 0}


def test_the_wrapper_scales_reward_and_return_and_says_so():
    env = RewardScale(FakeEnv(), 10.0)
    ts = env.step(np.zeros((2, INFO.n_agents), np.int64))
    np.testing.assert_allclose(ts.reward, [2.5, 5.0])
    np.testing.assert_allclose(ts.episode_return, [15.0, 20.0])  # a won SMAX episode (return 2) reaches SMAC's 20
    assert env.info.extra["reward_scale"] == 10.0 and env.info.n_agents == INFO.n_agents
    env.set_state(env.get_state())
    assert env.env.restored == "snapshot" and env.counters == {"restarts": 0}


def test_smac_scale_per_backend_and_bad_values():
    assert resolve_reward_scale("smax", None) == 10.0
    assert resolve_reward_scale("smac", None) == resolve_reward_scale("smacv2", None) == 1.0
    assert resolve_reward_scale("mamujoco", None) == 1.0
    assert resolve_reward_scale("smax", 1) == 1.0  # a number overrides the convention
    assert set(SMAC_REWARD_SCALE) == {"smax", "smac", "smacv2", "mamujoco"}
    for bad in (0, -1.0, True, "ten"):
        with pytest.raises(UserError, match="reward_scale"):
            resolve_reward_scale("smax", bad)


@pytest.mark.parametrize("algo", ["qmix", "qplex", "mbvd", "mamba", "mappo", "happo", "marie"])
def test_every_method_records_the_same_factor(tmp_path, algo):
    config, _ = prepare(algo=algo, env="smax", map_name="3m", seed=0, steps=100, preset="smoke", out=tmp_path / algo)
    assert config["run"]["reward_scale"] == 10.0
    config, _ = prepare(algo=algo, env="smax", map_name="3m", seed=0, steps=100, preset="smoke",
                        overrides=["run.reward_scale=1.0"], out=tmp_path / f"{algo}_raw")
    assert config["run"]["reward_scale"] == 1.0


def test_smax_rewards_reach_the_learner_scaled(smax_3m):
    """The shared SMAX environment of the tests is built by make_env, so it carries the convention."""
    assert isinstance(smax_3m, RewardScale) and smax_3m.scale == 10.0
