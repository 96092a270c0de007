"""MAPPO end to end through the CLI (smoke preset on SMAX 3m), and resume equals uninterrupted."""
import json
from pathlib import Path

import pandas as pd
import pytest

from marie.cli import main
from marie.runtime import Runner

ARGS = ["run", "--algo", "mappo", "--env", "smax", "--map", "3m", "--seed", "3", "--preset", "smoke",
        "--set", "run.progress=never"]


def read(path, name):
    return pd.read_csv(Path(path) / name)


def test_smoke_run_through_the_cli(tmp_path):
    out = tmp_path / "run"
    assert main([*ARGS, "--steps", "400", "--out", str(out)]) == 0
    meta = json.loads((out / "meta.json").read_text())
    assert meta["status"] == "completed" and meta["env_steps"] == 400
    ev = read(out, "eval.csv")
    assert list(ev["env_steps"]) == [0, 200, 400] and ev["win_rate"].between(0, 1).all()
    train = read(out, "train.csv")  # 4 envs x 20 steps per rollout: an update every 80 env steps
    assert list(train["env_steps"]) == [80, 160, 240, 320, 400]
    for key in ("policy_loss", "value_loss", "entropy", "approx_kl", "actor_grad_norm", "critic_grad_norm"):
        assert train[key].notna().all(), key


class Interrupt(Exception):
    pass


def test_resume_mid_rollout_equals_uninterrupted(tmp_path, monkeypatch):
    """Killed right after the checkpoint at 200 env steps (half-way through a rollout: 200 = 2.5 x 80), resumed
    with the same command: eval.csv and train.csv equal those of an uninterrupted run (wall time aside)."""
    check_resume(tmp_path, monkeypatch, ARGS)


def check_resume(tmp_path, monkeypatch, args):
    steps = ["--steps", "600"]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert main([*args, *steps, "--out", str(straight)]) == 0

    original = Runner._checkpoint

    def checkpoint_then_die(self):
        original(self)
        if self.env_steps == 200:
            raise Interrupt()
    monkeypatch.setattr(Runner, "_checkpoint", checkpoint_then_die)
    with pytest.raises(Interrupt):
        main([*args, *steps, "--out", str(resumed)])
    monkeypatch.setattr(Runner, "_checkpoint", original)
    assert main([*args, *steps, "--out", str(resumed)]) == 0
    assert json.loads((resumed / "meta.json").read_text())["resume_count"] == 1
    for name in ("eval.csv", "train.csv"):
        a, b = read(straight, name), read(resumed, name)
        pd.testing.assert_frame_equal(a.drop(columns="wall_s"), b.drop(columns="wall_s"))


def test_smac_like_backends_default_to_the_reference_critic_and_actor_inputs():
    from baselines.mappo import MAPPO
    from marie.config import resolve_config
    p = resolve_config(algo="mappo", preset_file=MAPPO.preset_file, preset="paper", env="smax", map_name="2s3z",
                       seed=0, steps=100)["params"]
    assert p["critic_input"] == "agent_state" and p["critic_recurrent"] and p["last_action"] and p["value_active_masks"]
    m = resolve_config(algo="mappo", preset_file=MAPPO.preset_file, preset="paper", env="mamujoco",
                       map_name="HalfCheetah-2x3", seed=0, steps=100)["params"]
    assert m["critic_input"] == "state" and not m["critic_recurrent"]
