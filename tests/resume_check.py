"""One check every algorithm's tests share: a run interrupted right after a checkpoint and started again
with the same command ends with the same eval.csv and train.csv as an uninterrupted run (wall_s aside)."""
import json
from pathlib import Path

import pandas as pd
import pytest

from marie.cli import main
from marie.runtime import Runner, prepare


class Interrupt(Exception):
    pass


def interrupt_after_checkpoint(monkeypatch, at_env_steps: int) -> None:
    """Make Runner raise Interrupt right after writing the checkpoint at `at_env_steps`."""
    original = Runner._checkpoint

    def checkpoint_then_die(self):
        original(self)
        if self.env_steps == at_env_steps:
            raise Interrupt()
    monkeypatch.setattr(Runner, "_checkpoint", checkpoint_then_die)


def assert_resume_equals_uninterrupted(tmp_path: Path, monkeypatch, interrupt_at: int, files=("eval.csv", "train.csv"),
                                       **args) -> tuple[Path, Path]:
    """args: keyword arguments of marie.runtime.prepare (algo, env, map_name, seed, steps, preset, overrides)."""
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    argv = ["run", "--algo", args["algo"], "--env", args["env"], "--map", args["map_name"], "--seed", str(args["seed"]),
            "--steps", str(args["steps"]), "--preset", args["preset"], "--out", str(straight)]
    for item in args.get("overrides") or []:
        argv += ["--set", item]
    assert main(argv) == 0  # the uninterrupted run goes through the CLI, end to end
    with monkeypatch.context() as m:
        interrupt_after_checkpoint(m, interrupt_at)
        with pytest.raises(Interrupt):
            Runner(*prepare(**args, out=resumed)).train()
    assert json.loads((resumed / "meta.json").read_text())["status"] == "failed"
    meta = Runner(*prepare(**args, out=resumed)).train()
    assert meta["status"] == "completed" and meta["resume_count"] == 1
    for name in files:
        a, b = pd.read_csv(straight / name), pd.read_csv(resumed / name)
        assert len(b) > 0
        timings = [c for c in a.columns if c == "wall_s" or (c.startswith("time_") and c.endswith("_s"))]
        pd.testing.assert_frame_equal(a.drop(columns=timings), b.drop(columns=timings))
    return straight, resumed
