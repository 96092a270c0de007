"""The command line as users expect it: --version, --help with defaults, preset descriptions, --set values
as written, did-you-mean, a dry run that validates what a real run validates, log lines off a terminal,
extending a completed run, and a corrupt latest checkpoint falling back to the previous one."""
import json
import sys
from pathlib import Path

import pandas as pd
import pytest

from marie.cli import main
from marie.config import parse_value
from marie.runtime import prepare

ROOT = Path(__file__).resolve().parents[1]
RUN = ["run", "--algo", "random", "--env", "smax", "--map", "3m", "--preset", "smoke"]


def run(capsys, *args):
    code = main([*args])
    out = capsys.readouterr()
    return code, out.out, out.err


def eval_table(path):
    return pd.read_csv(Path(path) / "eval.csv").drop(columns=["wall_s"])


def test_version_and_help_show_defaults(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0 and capsys.readouterr().out.startswith("marie 0.")
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    text = capsys.readouterr().out
    assert "(default: smax)" in text and "(default: small)" in text and "(default: 0)" in text
    assert "--device" in text and "params.lr=1e-4" in text


def test_presets_print_their_descriptions(capsys):
    code, out, _ = run(capsys, "presets", "--algo", "marie")
    lines = dict(line.split(None, 1) for line in out.splitlines())
    assert code == 0 and set(lines) >= {"paper", "small", "smoke", "official-code"}
    assert "paper" in lines["official-code"] and "CPU" in lines["small"]


@pytest.mark.parametrize("raw,value", [("1e-4", 1e-4), ("3", 3), ("1_000", 1000), ("true", True), ("[1, 2]", [1, 2]),
                                       ("none", "none"), ("cuda:1", "cuda:1"), ("-2.5E3", -2500.0)])
def test_set_values_parse_as_users_write_them(raw, value):
    assert parse_value(raw) == value and type(parse_value(raw)) is type(value)


def test_set_lr_and_did_you_mean_for_nested_keys(tmp_path):
    config, _ = prepare(algo="mappo", env="smax", map_name="3m", seed=0, steps=1000, preset="smoke",
                        overrides=["params.lr=1e-4"], out=tmp_path / "x")
    assert config["params"]["lr"] == 1e-4
    from marie.errors import UserError
    with pytest.raises(UserError, match=r"did you mean params\.world_model\.aggregation\?"):
        prepare(algo="marie", env="smax", map_name="3m", seed=0, steps=1000, preset="smoke",
                overrides=["params.world_modl.aggregation=none"], out=tmp_path / "x")


@pytest.mark.parametrize("args,message", [
    (["--algo", "marie", "--set", "params.world_model.aggregation=perciever"], "aggregation must be perceiver or none"),
    (["--algo", "marie", "--set", "params.horizon=-3"], "params.horizon must be a positive integer"),
    (["--algo", "mappo", "--set", "params.chunk_length=7"], "multiple of params.chunk_length"),
    (["--algo", "random", "--device", "gpu"], "run.device must be cpu, cuda or cuda:N, got 'gpu'"),
    (["--algo", "random", "--set", "run.device=tpu"], "run.device must be"),
    (["--algo", "random", "--set", "run.tensorboard=yes please"], "expected a value of type bool"),
])
def test_dry_run_validates_what_a_real_run_validates(args, message, tmp_path, capsys):
    out = tmp_path / "run"
    code, stdout, err = run(capsys, "run", "--env", "smax", "--map", "3m", "--steps", "400", "--preset", "smoke",
                            *args, "--out", str(out), "--dry-run")
    assert code == 2 and stdout == "" and len(err.strip().splitlines()) == 1 and message in err, err
    assert not out.exists()


def test_unwritable_out_is_one_line_before_any_work(tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    code, _, err = run(capsys, *RUN, "--steps", "400", "--out", str(blocker / "run"), "--dry-run")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "is a file, not a folder" in err
    code, _, err = run(capsys, *RUN, "--steps", "400", "--out", "/proc/marie-run", "--dry-run")
    assert code == 2 and "not writable" in err


def test_tensorboard_without_the_package_is_one_line(tmp_path, capsys, monkeypatch):
    import importlib.util
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tensorboard" else real(name, *a))
    code, _, err = run(capsys, *RUN, "--steps", "400", "--set", "run.tensorboard=true", "--out", str(tmp_path / "r"))
    assert code == 2 and "pip install tensorboard" in err and not (tmp_path / "r").exists()


def test_log_lines_off_a_terminal_and_extending_a_completed_run(tmp_path, capsys):
    """stderr is not a terminal under pytest: one line per evaluation. A larger --steps continues the completed
    run from its checkpoint and ends with the eval.csv of a run given the larger budget from the start."""
    straight, extended = tmp_path / "straight", tmp_path / "extended"
    assert main([*RUN, "--steps", "800", "--out", str(straight)]) == 0
    capsys.readouterr()
    code, _, err = run(capsys, *RUN, "--steps", "400", "--out", str(extended))
    lines = [line for line in err.splitlines() if line.startswith("[random 3m seed 0]")]
    assert code == 0 and "started, budget 400 steps" in lines[0]
    assert [line.split()[5] for line in lines[1:]] == ["0/400", "200/400", "400/400"]
    assert all("win " in line and "return " in line and "wall " in line for line in lines[1:])
    assert lines[-1].endswith("steps/s")
    code, _, err = run(capsys, *RUN, "--steps", "800", "--out", str(extended))
    assert code == 0 and "extending the completed run from 400 to 800 steps" in err and "resumed at step 400" in err
    meta = json.loads((extended / "meta.json").read_text())
    assert meta["status"] == "completed" and meta["steps"] == meta["env_steps"] == 800
    assert [(e["from_steps"], e["to_steps"]) for e in meta["extensions"]] == [(400, 800)]
    pd.testing.assert_frame_equal(eval_table(extended), eval_table(straight))
    # a smaller budget cannot shrink it
    code, _, err = run(capsys, *RUN, "--steps", "600", "--out", str(extended))
    assert code == 2 and "cannot shrink" in err


def test_corrupt_latest_checkpoint_falls_back_to_the_previous_one(tmp_path, capsys):
    straight, broken = tmp_path / "straight", tmp_path / "broken"
    assert main([*RUN, "--steps", "800", "--out", str(straight)]) == 0
    assert main([*RUN, "--steps", "600", "--out", str(broken)]) == 0
    ck = broken / "checkpoint"
    assert {p.name for p in ck.iterdir()} == {"state.pt", "previous.pt"}
    data = (ck / "state.pt").read_bytes()
    (ck / "state.pt").write_bytes(data[: len(data) // 2])  # a half-written copy
    capsys.readouterr()
    code, _, err = run(capsys, *RUN, "--steps", "800", "--out", str(broken))
    assert code == 0 and "resumed from previous.pt" in err
    meta = json.loads((broken / "meta.json").read_text())
    assert meta["resumed_from"] == "previous.pt" and "state.pt is corrupt" in meta["checkpoint_note"]
    assert (ck / "state.pt.corrupt").exists()
    pd.testing.assert_frame_equal(eval_table(broken), eval_table(straight))
    # neither readable: one line naming both
    for name in ("state.pt", "previous.pt"):
        (ck / name).write_bytes(b"junk")
    (broken / "meta.json").write_text(json.dumps(dict(meta, status="running")))
    code, _, err = run(capsys, *RUN, "--steps", "1000", "--out", str(broken))
    assert code == 2 and "no readable checkpoint" in err and "previous.pt" in err
