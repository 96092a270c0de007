"""The shared runtime and CLI: run-directory contract, bad input, resume equals uninterrupted, NaN guard."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from marie import algorithm
from marie.algorithm import Algorithm
from marie.cli import main
from marie.config import CONFIG_DIR
from marie.rundir import EVAL_COLUMNS
from marie.runtime import Runner, prepare
from resume_check import assert_resume_equals_uninterrupted

SMOKE = ["--preset", "smoke"]


def run_cli(*args):
    return main(["run", *args])


def read_eval(path):
    return pd.read_csv(Path(path) / "eval.csv")


def test_random_run_writes_the_run_directory(tmp_path):
    out = tmp_path / "r"
    assert run_cli("--algo", "random", "--env", "smax", "--map", "3m", "--seed", "0", "--steps", "600",
                   *SMOKE, "--out", str(out)) == 0
    assert {p.name for p in out.iterdir()} >= {"config.yaml", "meta.json", "eval.csv", "checkpoint"}
    df = read_eval(out)
    assert list(df.columns)[: len(EVAL_COLUMNS)] == EVAL_COLUMNS
    assert df["env_steps"].tolist() == [0, 200, 400, 600]
    assert df["win_rate"].between(0, 1).all() and (df["episodes"] == 4).all()
    meta = json.loads((out / "meta.json").read_text())
    assert meta["status"] == "completed" and meta["env_steps"] == 600 and meta["resume_count"] == 0
    for key in ("versions", "suite_commit", "backend_version", "device", "start_time", "end_time", "preset"):
        assert meta[key], key
    assert "jaxmarl" in meta["backend_version"]
    # running it again is a no-op, not a second run
    assert run_cli("--algo", "random", "--env", "smax", "--map", "3m", "--seed", "0", "--steps", "600",
                   *SMOKE, "--out", str(out)) == 0
    assert json.loads((out / "meta.json").read_text())["resume_count"] == 0


class GreedyIsFirstAction(Algorithm):
    """Evaluation tells the modes apart: greedy plays the first available action, sampled a random one."""
    preset_file = CONFIG_DIR / "random.yaml"

    def act(self, ts, carry, training, greedy=True):
        if greedy and not training:
            return ts.avail.argmax(-1), carry
        return algorithm.masked_uniform_actions(ts.avail, np.random.default_rng(len(ts.first))), carry


@pytest.mark.parametrize("sample", [False, True])
def test_every_evaluation_records_both_modes_and_every_episode(tmp_path, monkeypatch, sample):
    """eval_every beyond the budget still evaluates at 0 and at the end; eval.csv's protocol columns are the
    per-episode means of its mode in eval_episodes.csv, and the other mode has its own columns."""
    monkeypatch.setitem(algorithm.ALGORITHMS, "greedyfirst", f"{__name__}:GreedyIsFirstAction")
    out = tmp_path / "e"
    config, rundir = prepare(algo="greedyfirst", env="smax", map_name="3m", seed=0, steps=300, preset="smoke",
                             overrides=["run.eval_every=1000", f"run.eval_sample={str(sample).lower()}"], out=out)
    Runner(config, rundir).train()
    df, episodes = read_eval(out), pd.read_csv(out / "eval_episodes.csv")
    assert df["env_steps"].tolist() == [0, 300]
    protocol, other = ("sampled", "greedy") if sample else ("greedy", "sampled")
    assert (df["eval_mode"] == protocol).all()
    assert len(episodes) == 2 * 2 * 4 and set(episodes["mode"]) == {"greedy", "sampled"}
    means = episodes.groupby(["env_steps", "mode"])[["won", "return"]].mean()
    for _, row in df.iterrows():
        for mode in ("greedy", "sampled"):
            won, ret = means.loc[(row["env_steps"], mode)]
            assert row[f"win_rate_{mode}"] == pytest.approx(won) and row[f"return_mean_{mode}"] == pytest.approx(ret)
        assert row["return_mean"] == row[f"return_mean_{protocol}"] and row["win_rate"] == row[f"win_rate_{protocol}"]
    by_mode = {m: g[["return", "length"]].to_numpy() for m, g in episodes.groupby("mode")}
    assert not np.array_equal(by_mode["greedy"], by_mode["sampled"])  # the two modes really played differently
    meta = json.loads((out / "meta.json").read_text())
    assert meta["eval_protocol"]["mode"] == protocol and meta["cpu_s"] > 0 and meta["wall_s"] > 0


def test_mamujoco_random_run_reports_return(tmp_path):
    out = tmp_path / "m"
    assert run_cli("--algo", "random", "--env", "mamujoco", "--map", "HalfCheetah-2x3", "--steps", "400",
                   *SMOKE, "--set", "run.eval_episodes=1", "--out", str(out)) == 0
    df = read_eval(out)
    assert df["win_rate"].isna().all() and np.isfinite(df["return_mean"]).all()
    assert json.loads((out / "meta.json").read_text())["status"] == "completed"


BAD_INPUTS = [
    (["--algo", "nope", "--map", "3m", "--steps", "100"], "unknown algo 'nope'; valid algos"),
    (["--algo", "random", "--env", "sc3", "--map", "3m", "--steps", "100"], "unknown env 'sc3'"),
    (["--algo", "random", "--map", "4m", "--steps", "100"], "unknown map '4m'"),
    (["--algo", "random", "--map", "HalfCheetah-2x3", "--steps", "100"], "unavailable on smax"),
    (["--algo", "random", "--map", "3m", "--steps", "0"], "--steps must be a positive integer"),
    (["--algo", "random", "--map", "3m", "--steps", "-5"], "--steps must be a positive integer"),
    (["--algo", "random", "--map", "3m", "--steps", "100", "--seed", "-1"], "--seed must be a non-negative"),
    (["--algo", "random", "--map", "3m", "--steps", "1000", "--set", "run.no_such_key=1"], "unknown --set key"),
    (["--algo", "random", "--map", "3m", "--steps", "1000", "--set", "run.eval_every=fast"], "expected a value of type int"),
    (["--algo", "random", "--map", "3m", "--steps", "1000", "--preset", "huge"], "unknown preset 'huge'"),
    (["--algo", "random", "--env", "smac", "--map", "3m", "--steps", "1000"], "smac"),
]


@pytest.mark.parametrize("args,message", BAD_INPUTS)
def test_bad_input_is_one_clear_line(args, message, tmp_path, capsys):
    if "smac" in args:
        from marie.envs.starcraft import require_starcraft
        from marie.errors import UserError
        try:
            require_starcraft("smac")
            pytest.skip("smac is installed here")
        except UserError:
            pass
    out = tmp_path / "run"
    code = run_cli(*args, "--out", str(out))
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and message in err, err
    assert not out.exists(), "nothing may be written on bad input"


def test_non_integer_steps_is_a_clear_error(capsys):
    with pytest.raises(SystemExit) as exc:
        run_cli("--algo", "random", "--map", "3m", "--steps", "1e5x")
    assert exc.value.code == 2
    assert "expected an integer" in capsys.readouterr().err


def test_out_of_another_configuration_is_refused(tmp_path, capsys):
    out = tmp_path / "r"
    assert run_cli("--algo", "random", "--map", "3m", "--steps", "200", *SMOKE, "--out", str(out)) == 0
    before = (out / "eval.csv").read_text()
    assert run_cli("--algo", "random", "--map", "3m", "--steps", "200", "--seed", "3", *SMOKE, "--out", str(out)) == 2
    assert "different configuration" in capsys.readouterr().err
    assert (out / "eval.csv").read_text() == before


def test_a_run_written_before_a_behaviour_preserving_key_existed_is_the_same_configuration(tmp_path):
    """config.ADDED_KEYS: a run directory whose config.yaml lacks a key added later (at the value that
    reproduces it) still resumes; any other difference is still refused."""
    import yaml
    from marie.config import ADDED_KEYS
    from marie.errors import UserError
    args = dict(algo="marie", env="smax", map_name="3m", seed=0, steps=400, preset="smoke", out=tmp_path / "r")
    config, rundir = prepare(**args)
    rundir.write_config(config)
    old = yaml.safe_load(rundir.config_file.read_text())
    for dotted in ADDED_KEYS["marie"]:                 # as a run of the code before these keys wrote it
        *path, last = dotted.split(".")
        node = old
        for k in path:
            node = node[k]
        del node[last]
    rundir.config_file.write_text(yaml.safe_dump(old, sort_keys=False))
    with pytest.raises(UserError, match="cpu_decode_kernel=false") as refusal:   # a default that changed: named
        prepare(**args)
    assert "--set params.world_model.cpu_decode_kernel=false" in str(refusal.value)
    config, _ = prepare(**args, overrides=["params.world_model.cpu_decode_kernel=false"])
    assert prepare(**args, overrides=["params.world_model.cpu_decode_kernel=false"])[0] == config
    with pytest.raises(UserError, match="different configuration"):
        prepare(**{**args, "seed": 1}, overrides=["params.world_model.cpu_decode_kernel=false"])


def test_a_checkpoint_written_before_a_behaviour_preserving_key_existed_resumes(tmp_path):
    """The checkpoint holds its configuration too: one written before ADDED_KEYS existed resumes (here, a MARIE
    run extended from 300 to 400 steps), as its config.yaml does."""
    import torch
    import yaml
    from marie.config import ADDED_KEYS
    out = tmp_path / "r"
    args = ["--algo", "marie", "--map", "3m", *SMOKE, "--out", str(out), "--set", "run.eval_every=300",
            "--set", "params.world_model.cpu_decode_kernel=false"]
    assert run_cli(*args, "--steps", "300") == 0

    def strip(config):                                   # as the code before these keys wrote it
        for dotted in ADDED_KEYS["marie"]:
            *path, last = dotted.split(".")
            node = config
            for k in path:
                node = node[k]
            del node[last]
        return config
    (out / "config.yaml").write_text(yaml.safe_dump(strip(yaml.safe_load((out / "config.yaml").read_text())),
                                                    sort_keys=False))
    state = torch.load(out / "checkpoint" / "state.pt", weights_only=False)
    state["config"] = strip(state["config"])
    torch.save(state, out / "checkpoint" / "state.pt")
    assert run_cli(*args, "--steps", "400") == 0
    assert json.loads((out / "meta.json").read_text())["env_steps"] >= 400


def test_corrupt_checkpoint_is_refused_by_name(tmp_path, capsys):
    out = tmp_path / "r"
    config, rundir = prepare(algo="random", env="smax", map_name="3m", seed=0, steps=400, preset="smoke", out=out)
    rundir.write_config(config)
    rundir.checkpoint_dir.mkdir(parents=True)
    rundir.checkpoint_file.write_bytes(b"PK\x03\x04 truncated")
    assert run_cli("--algo", "random", "--map", "3m", "--steps", "400", *SMOKE, "--out", str(out)) == 2
    err = capsys.readouterr().err
    assert "state.pt" in err and "corrupt" in err


def test_resume_equals_uninterrupted_in_process(tmp_path, monkeypatch):
    assert_resume_equals_uninterrupted(tmp_path, monkeypatch, 800, files=("eval.csv",), algo="random", env="smax",
                                       map_name="3m", seed=7, steps=1200, preset="smoke")


def test_sigkill_mid_run_then_resume_equals_uninterrupted(tmp_path):
    """A real SIGKILL of the CLI process, then the same command again."""
    cmd = [sys.executable, "-m", "marie.cli", "run", "--algo", "random", "--map", "3m", "--seed", "1",
           "--steps", "1400", *SMOKE, "--set", "run.eval_every=200"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    killed = tmp_path / "killed"
    proc = subprocess.Popen(cmd + ["--out", str(killed)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline:
        if (killed / "checkpoint" / "state.pt").exists() and len((killed / "eval.csv").read_text().splitlines()) >= 3:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert json.loads((killed / "meta.json").read_text())["status"] == "running"  # killed, not finished
    subprocess.run(cmd + ["--out", str(killed)], env=env, check=True, capture_output=True)
    Runner(*prepare(algo="random", env="smax", map_name="3m", seed=1, steps=1400, preset="smoke",
                    overrides=["run.eval_every=200"], out=tmp_path / "straight")).train()
    a, b = read_eval(tmp_path / "straight"), read_eval(killed)
    assert len(a) == 8
    pd.testing.assert_frame_equal(a.drop(columns="wall_s"), b.drop(columns="wall_s"))
    assert json.loads((killed / "meta.json").read_text())["resume_count"] >= 1


class ExplodingAlgorithm(Algorithm):
    """Acts randomly; its third update reports a NaN loss."""
    preset_file = CONFIG_DIR / "random.yaml"

    def __init__(self, env_info, params, run, device, seed):
        super().__init__(env_info, params, run, device, seed)
        self.n = 0

    def act(self, ts, carry, training, greedy=True):
        return ts.avail.argmax(-1), carry

    def update(self, env_steps):
        if env_steps % 100 == 0:
            self.n += 1
            yield {"policy_loss": float("nan") if self.n == 3 else 1.0}

    def state_dict(self):
        return {"n": self.n}

    def load_state_dict(self, state):
        self.n = state["n"]


class LateMetricAlgorithm(ExplodingAlgorithm):
    """From its fourth update on it also reports `policy_loss` (as MARIE after its warm-up); never NaN."""

    def update(self, env_steps):
        if env_steps % 100 == 0:
            self.n += 1
            yield {"tokenizer_loss": 1.0 / self.n, **({"policy_loss": float(self.n)} if self.n >= 4 else {})}


def test_metrics_first_reported_late_are_kept_and_resume_is_exact(tmp_path, monkeypatch):
    monkeypatch.setitem(algorithm.ALGORITHMS, "late", f"{__name__}:LateMetricAlgorithm")
    straight, _ = assert_resume_equals_uninterrupted(tmp_path, monkeypatch, 400, files=("train.csv",), algo="late",
                                                     env="smax", map_name="3m", seed=0, steps=1200, preset="smoke")
    train = pd.read_csv(straight / "train.csv")
    assert train["policy_loss"].isna().tolist() == [True] * 3 + [False] * (len(train) - 3)
    assert train["policy_loss"].dropna().tolist() == [float(n) for n in range(4, len(train) + 1)]


def test_non_finite_loss_stops_the_run_naming_update_and_loss(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(algorithm.ALGORITHMS, "exploding", f"{__name__}:ExplodingAlgorithm")
    out = tmp_path / "x"
    config, rundir = prepare(algo="exploding", env="smax", map_name="3m", seed=0, steps=800, preset="smoke", out=out)
    with pytest.raises(Exception, match="update 3: policy_loss is nan"):
        Runner(config, rundir).train()
    meta = json.loads((out / "meta.json").read_text())
    assert meta["status"] == "failed" and "policy_loss is nan" in meta["message"]
    assert (out / "checkpoint" / "state.pt").exists()  # the last good checkpoint is kept
    train = pd.read_csv(out / "train.csv")
    assert train["policy_loss"].notna().all()


def test_set_overrides_are_typed_and_recorded(tmp_path):
    config, _ = prepare(algo="random", env="smax", map_name="3m", seed=0, steps=1000, preset="smoke",
                        overrides=["run.eval_every=250", "eval_sample=true"], out=tmp_path / "c")
    assert config["run"]["eval_every"] == 250 and config["run"]["eval_sample"] is True
    assert config["preset"] == "smoke" and config["steps"] == 1000


def test_bad_algorithm_parameter_writes_nothing(tmp_path, capsys):
    out = tmp_path / "bad"
    code = run_cli("--algo", "marie", "--map", "3m", "--steps", "400", *SMOKE, "--set", "params.tokenizer.kind=pixels",
                   "--out", str(out))
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "tokenizer.kind" in err
    assert not out.exists()


_ALLOCATIONS = """
import resource, sys, torch
if sys.argv[1] == "keep":
    from marie.runtime import keep_freed_memory
    keep_freed_memory()
def tensors():                       # the sizes of a paper-size world-model step's activations (2.8-12 MB)
    a, b = torch.ones(2_600_000), torch.ones(700_000)
    c = a * 2
    del a
    return c.sum() + b.sum() + torch.ones(3_000_000).sum()
tensors()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(50):
    tensors()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(sys.platform != "linux", reason="glibc's malloc")
def test_freed_tensor_memory_is_reused_instead_of_faulted_in_anew():
    """keep_freed_memory (every run calls it): tensors of a few MB reuse freed memory instead of taking a page
    fault per 4 KB page of fresh memory (measured here, 50 rounds: 40-430 thousand faults without, 2-4 thousand with)."""
    faults = {mode: int(subprocess.run([sys.executable, "-c", _ALLOCATIONS, mode], capture_output=True, text=True,
                                       check=True).stdout.split()[-1]) for mode in ("plain", "keep")}
    assert faults["keep"] * 4 < faults["plain"]
