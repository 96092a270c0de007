"""workflows/reproduction.py: a tier's committed reproduction lists what is missing and collects only the
small files of completed runs."""
import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _module(name, path):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


def _random_tier(tmp_path, seeds, model_analysis=None):
    """The reproduction module and a cpu_smac plan of Random on 3m with these seeds, results under tmp_path
    (model_analysis: the tier's, instead of the configured one)."""
    repro = _module("marie_workflow_reproduction", ROOT / "workflows" / "reproduction.py")
    WP = repro.WP
    cfg = WP.load_config(ROOT / "workflows" / "config.yaml")
    cfg["results"] = str(tmp_path / "results")
    cfg["methods"] = {"Random": {"algo": "random"}}
    cfg["tiers"]["cpu_smac"].update(maps=["3m"], methods=["Random"], seeds=seeds, presets={},
                                    model_analysis=model_analysis or {})
    return repro, WP.build_plan(cfg, tier="cpu_smac", registered={"random": "marie.random_policy:RandomPolicy"},
                                check=False)


def test_status_and_collect(tmp_path):
    repro, plan = _random_tier(tmp_path, [0, 1], {"compounding_error": {"maps": ["3m"], "methods": ["Random"]}})
    assert plan.model_analysis["compounding_error"]["runs"] == sorted(r.key for r in plan.runs.values())
    done, partial = sorted(plan.runs.values(), key=lambda r: r.seed)
    for run, status, steps in ((done, "completed", done.steps), (partial, "running", 400)):
        d = Path(run.rundir)
        (d / "checkpoint").mkdir(parents=True)
        (d / "checkpoint" / "state.pt").write_bytes(b"big")
        (d / "meta.json").write_text(json.dumps({"status": status, "env_steps": steps}))
        (d / "eval.csv").write_text("env_steps,win_rate\n0,0.0\n")
        (d / "analysis").mkdir()
        for name in ("compounding_error.csv", "compounding_error.json", "attention.npz"):
            (d / "analysis" / name).write_text("x")
    into = tmp_path / "reproduced"
    groups = repro.status(plan, Path("/"), into)
    assert groups["finished, not collected"] == [done.key] and groups["started"][0].startswith(partial.key)
    assert repro.collect(plan, Path("/"), into) == [done.key]
    copied = into / "runs" / done.key
    assert {p.name for p in copied.iterdir()} == {"meta.json", "eval.csv", "analysis"}  # never the checkpoint
    # the tier's analysis output, small files only (the attention arrays are no analysis of this tier)
    assert {p.name for p in (copied / "analysis").iterdir()} == {"compounding_error.csv", "compounding_error.json"}
    assert repro.status(plan, Path("/"), into)["committed"] == [done.key]
    readme = (into / "README.md").read_text()      # generated: how far, what it cost, each run's exact command
    assert readme.startswith("# The committed reproduction of the `cpu_smac` tier: 1 of 2 runs")
    assert f"| {done.key} | `{done.command()}` |" in readme and partial.key not in readme
    assert "| Random | 1 |" in readme
    moved = json.loads((into / "plan.json").read_text())
    assert all(r["root"] == str(into) for r in moved["runs"])


def test_remaining_cpu_hours_from_committed_runs(tmp_path):
    repro, plan = _random_tier(tmp_path, [0, 1, 2])
    runs = sorted(plan.runs.values(), key=lambda r: r.seed)
    into = tmp_path / "reproduced"
    keys = [r.key for r in runs[1:]]
    hours, _ = repro.remaining_cpu_hours(plan, into, keys)            # nothing committed: the plan's estimate
    assert hours == sum(r.estimated_minutes * r.threads for r in runs[1:]) / 60
    d = into / "runs" / runs[0].key
    d.mkdir(parents=True)
    (d / "meta.json").write_text(json.dumps({"status": "completed", "env_steps": runs[0].steps, "cpu_s": 720.0,
                                             "algo": "random", "preset": runs[0].preset, "env": "smax", "map": "3m"}))
    hours, per_method = repro.remaining_cpu_hours(plan, into, keys)
    assert hours == pytest.approx(0.4) and per_method == {"Random": pytest.approx(0.4)}  # 720 CPU s a run, 2 to go


def test_a_grid_is_priced_by_map_then_by_other_maps_then_by_config(tmp_path):
    repro, plan = _random_tier(tmp_path, [0])
    WP = repro.WP
    run = next(iter(plan.runs.values()))
    other_map = WP.Run(**{**vars(run), "map": "8m", "key": "smax/8m/Random/seed0"})
    other_preset = WP.Run(**{**vars(run), "preset": "paper", "key": "x", "estimated_minutes": 30.0, "threads": 2})
    for name, m, cpu_s in (("a", "3m", 10.0), ("b", "3m", 30.0), ("c", "3m", 20.0), ("d", "2s3z", 100.0)):
        d = tmp_path / "rep" / "runs" / name
        d.mkdir(parents=True)
        (d / "meta.json").write_text(json.dumps({"status": "completed", "env_steps": 1000, "cpu_s": cpu_s,
                                                 "algo": "random", "preset": run.preset, "env": "smax", "map": m}))
    rates = WP.measured_rates([tmp_path / "rep"])
    assert sorted(rates[("random", run.preset, "smax", "3m")]) == [0.01, 0.02, 0.03]
    hours, per_method, sources = WP.estimate_cpu_hours([run, other_map, other_preset], rates)
    # 3m: median 0.02 s/step; 8m unmeasured: median of all four (0.02, 0.03 -> 0.025); paper: 30 min x 2 threads
    expected = [0.02 * run.steps / 3600, 0.025 * run.steps / 3600, 1.0]
    assert hours == pytest.approx(sum(expected)) and per_method == {"Random": pytest.approx(sum(expected))}
    assert sources == {"map": 1, "other maps": 1, "config": 1, "unknown": 0}
    assert "priced by CPU time per env step: 1 from committed runs of the same method, preset and map" in \
        WP.cost_line([run, other_map, other_preset], rates)


def test_a_tier_names_only_configured_model_analyses(tmp_path):
    repro = _module("marie_workflow_reproduction", ROOT / "workflows" / "reproduction.py")
    with pytest.raises(repro.WP.PlanError, match="unknown analysis 'fig7'"):
        _random_tier(tmp_path, [0], {"fig7": {}})


def test_restore_puts_committed_runs_back_so_the_workflow_skips_them(tmp_path):
    """A fresh clone has no results/: restore copies each committed run there with the workflow's marker, so
    that the tier's target re-runs only what is missing; a run already completed under results/ is left alone."""
    repro, plan = _random_tier(tmp_path, [0, 1, 2])
    committed, elsewhere, missing = sorted(plan.runs.values(), key=lambda r: r.seed)
    into = tmp_path / "reproduced"
    for run, base in ((committed, into / "runs" / committed.key), (elsewhere, Path(elsewhere.rundir))):
        base.mkdir(parents=True)
        (base / "meta.json").write_text(json.dumps({"status": "completed", "env_steps": run.steps}))
        (base / "eval.csv").write_text(f"env_steps,win_rate,return_mean\n{run.steps},0.5,1.0\n")
    assert repro.restore(plan, Path("/"), into) == [committed.key]
    restored = Path(committed.rundir)
    assert (restored / repro.WP.MARKER).exists() and (restored / "eval.csv").exists()
    assert json.loads((restored / repro.WP.MARKER).read_text())["env_steps"] == committed.steps
    assert not (Path(elsewhere.rundir) / repro.WP.MARKER).exists() and not Path(missing.rundir).exists()
    assert repro.restore(plan, Path("/"), into) == []            # idempotent
    # a committed run that does not pass the workflow's completion check is refused, not marked done
    bad = into / "runs" / missing.key
    bad.mkdir(parents=True)
    (bad / "meta.json").write_text(json.dumps({"status": "completed", "env_steps": missing.steps}))
    (bad / "eval.csv").write_text("env_steps,win_rate,return_mean\n10,0.5,1.0\n")
    with pytest.raises(SystemExit, match="completion check"):
        repro.restore(plan, Path("/"), into)
