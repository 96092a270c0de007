"""The workflow: the dry run lists exactly the planned jobs; config edits change exactly what they should;
bad configs fail at parse time with one clear line; unavailable maps are reported by name, never dropped."""
from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def _plan_module():
    spec = importlib.util.spec_from_file_location("marie_workflow_plan_test", ROOT / "workflows" / "plan.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


WP = _plan_module()
DEFAULT = WP.load_config(ROOT / "workflows" / "config.yaml")
ONLY_RANDOM = {"random": "marie.random_policy:RandomPolicy"}


def merged(base: dict, extra: dict) -> dict:
    """Snakemake's merge of --configfile into the Snakefile's configfile (nested mappings merge)."""
    out = dict(base)
    for k, v in extra.items():
        out[k] = merged(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def full_config(tmp_path: Path, **changes) -> dict:
    return merged(WP.load_config(ROOT / "workflows" / "config.yaml"), small_config(tmp_path, **changes))


def small_config(tmp_path: Path, **changes) -> dict:
    """A config on top of workflows/config.yaml (Snakemake merges --configfile into it): random only."""
    cfg = {"results": str(tmp_path / "results"), "seeds": [0, 1], "announce": False,
           "methods": {"Random": {"algo": "random"}, "Nope": {"algo": "not_an_algo"}},
           "experiments": {"smac": {"env": "{backend}", "maps": ["3m", "2s3z", "HalfCheetah-2x3"],
                                     "methods": ["Random", "Nope"]}}}
    # the other experiments of workflows/config.yaml plan nothing here (keeps the parse fast and independent
    # of which algorithms other packages register)
    for name in DEFAULT["experiments"]:
        cfg["experiments"].setdefault(name, {"maps": []})
    cfg.update(changes)
    return cfg


def dry_run(tmp_path: Path, cfg: dict, target: str = "all_smac") -> tuple[set, dict, str]:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    res = subprocess.run([sys.executable, "-m", "snakemake", "-n", "--cores", "1", "--configfile", str(path),
                          "--", target], cwd=ROOT, capture_output=True, text=True, timeout=300)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-3000:]
    jobs = set()
    for block in re.split(r"\n(?=(?:local)?rule \w+:)", out):
        m = re.match(r"(?:local)?rule (\w+):", block)
        if m and m.group(1) == "train":
            w = dict(re.findall(r"(\w+)=([^,\s]+)", re.search(r"wildcards: (.*)", block).group(1)))
            jobs.add((w["env"], w["map"], w["variant"], int(w["seed"])))
    stats = dict((k, int(v)) for k, v in re.findall(r"^(\w+)\s+(\d+)$", out.split("Job stats:")[1], re.M))
    return jobs, stats, out


def test_dry_run_lists_exactly_the_planned_jobs_and_a_seed_adds_its_jobs(tmp_path):
    cfg = small_config(tmp_path)
    jobs, stats, out = dry_run(tmp_path, cfg)
    expected = {("smax", m, "Random", s) for m in ("3m", "2s3z") for s in (0, 1)}
    assert jobs == expected
    assert stats == {"train": 4, "plan_json": 1, "all_smac": 1, "total": 6}
    outputs = re.findall(r"rule train:\n\s+output: (.*)", out)  # the run directory is never an output
    assert len(outputs) == 4 and all(line.strip().endswith("/workflow.done") for line in outputs)
    # one more seed: exactly that seed's jobs are added; a completed run (its marker exists) is not re-run,
    # an interrupted one (run directory and checkpoint, no marker) is scheduled again and resumes
    runs = tmp_path / "results" / "runs" / "smax"
    (runs / "3m/Random/seed0").mkdir(parents=True)
    (runs / "3m/Random/seed0/workflow.done").write_text("{}")
    (runs / "2s3z/Random/seed1/checkpoint").mkdir(parents=True)
    (runs / "2s3z/Random/seed1/checkpoint/state.pt").write_text("partial")
    jobs3, stats3, _ = dry_run(tmp_path, small_config(tmp_path, seeds=[0, 1, 7]))
    assert jobs3 == (jobs - {("smax", "3m", "Random", 0)}) | {("smax", m, "Random", 7) for m in ("3m", "2s3z")}
    assert stats3["train"] == 5


def test_plan_reports_unavailable_maps_and_unregistered_methods_by_name(tmp_path):
    cfg = full_config(tmp_path)
    plan = WP.build_plan(cfg, registered=ONLY_RANDOM)
    assert sorted(plan.runs) == sorted(f"smax/{m}/Random/seed{s}" for m in ("3m", "2s3z") for s in (0, 1))
    skipped = {(s["key"], s["kind"]) for s in plan.skipped}
    assert ("smax/HalfCheetah-2x3/Random/seed0", "unavailable") in skipped
    assert ("smax/3m/Nope/seed1", "unregistered") in skipped
    text = "\n".join(WP.summary(plan))
    assert "HalfCheetah-2x3" in text and "not a smax task" in text and "not_an_algo" in text
    # the switches make them errors
    with pytest.raises(WP.PlanError, match="HalfCheetah-2x3.*unavailable on smax"):
        WP.build_plan(dict(cfg, on_unavailable="fail"), registered=ONLY_RANDOM)
    cfg2 = merged(cfg, {"experiments": {"smac": {"env": "{backend}", "maps": ["3m"], "methods": ["Nope"]}}})
    with pytest.raises(WP.PlanError, match="not_an_algo.*not registered"):
        WP.build_plan(dict(cfg2, on_unregistered="fail"), registered=ONLY_RANDOM)


def test_plan_commands_overrides_and_demo(tmp_path):
    cfg = full_config(tmp_path)
    cfg["experiments"]["abl"] = {"env": "{backend}", "maps": ["3m"],
                                 "variants": {"Random-fast": {"method": "Random", "label": "fast",
                                                              "set": {"run.num_envs": 2}},
                                              "Random": {"method": "Random", "label": "plain"}}}
    plan = WP.build_plan(cfg, registered=ONLY_RANDOM)
    fast = plan.runs["smax/3m/Random-fast/seed0"]
    assert "run.num_envs=2" in fast.overrides and f"run.eval_every={cfg['eval']['interval']}" in fast.overrides
    assert fast.command().startswith("marie run --algo random --env smax --map 3m --seed 0 --steps 100000")
    shared = plan.runs["smax/3m/Random/seed0"]  # the plain variant is the Table 1 run, planned once
    assert shared.experiments == {"smac": "Random", "abl": "plain"}
    demo = WP.build_plan(cfg, demo=True, registered=ONLY_RANDOM)
    assert demo.root.endswith("/demo") and all(r.steps == cfg["tiers"]["demo"]["steps"] for r in demo.runs.values())
    assert {r.seed for r in demo.runs.values()} == set(cfg["tiers"]["demo"]["seeds"])


@pytest.mark.parametrize("change, message", [
    ({"experiments": {"smac": {"maps": ["3m"], "methods": ["NoSuchMethod"]}}}, "unknown method 'NoSuchMethod'"),
    ({"experiments": {"smac": {"maps": ["4m_vs_9z"], "methods": ["Random"]}}}, "map '4m_vs_9z' is unknown"),
    ({"seeds": [0, 0]}, "seeds repeat"),
])
def test_bad_config_is_a_one_line_error(tmp_path, change, message):
    cfg = merged(full_config(tmp_path), change)
    with pytest.raises(WP.PlanError, match=re.escape(message)):
        WP.build_plan(cfg, registered=ONLY_RANDOM)


def test_snakemake_parse_error_names_the_problem(tmp_path):
    cfg = small_config(tmp_path, experiments={"smac": {"maps": ["3m"], "methods": ["NoSuchMethod"]}})
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    res = subprocess.run([sys.executable, "-m", "snakemake", "-n", "--cores", "1", "--configfile", str(path),
                          "--", "all_smac"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode != 0
    assert "workflow config error: experiment 'smac': unknown method 'NoSuchMethod'" in res.stdout + res.stderr


def test_marker_is_written_only_for_a_completed_run(tmp_path):
    from analysis.cli import main
    rundir = tmp_path / "run"
    rundir.mkdir()
    (rundir / "meta.json").write_text('{"status": "running"}')
    (rundir / "eval.csv").write_text("env_steps,win_rate,return_mean,return_std,episodes,length_mean,wall_s\n"
                                     "0,0,0.1,0,4,10,1\n1000,0.5,1.0,0,4,10,2\n")
    marker = tmp_path / "workflow.done"
    assert main(["mark-done", "--rundir", str(rundir), "--steps", "1000", "--out", str(marker)]) == 1
    assert not marker.exists()
    (rundir / "meta.json").write_text('{"status": "completed"}')
    assert main(["mark-done", "--rundir", str(rundir), "--steps", "2000", "--out", str(marker)]) == 1
    assert main(["mark-done", "--rundir", str(rundir), "--steps", "1000", "--out", str(marker)]) == 0
    assert marker.exists()


def test_tiers_fix_one_protocol_for_every_method_and_plan_under_their_own_root(tmp_path):
    cfg = full_config(tmp_path)
    cfg["methods"]["Random2"] = {"algo": "random", "set": {"run.eval_sample": True}}  # a method's own choice loses
    cfg["tiers"]["cpu_smac"].update(methods=["Random", "Random2"], presets={"Random2": "smoke"})
    plan = WP.build_plan(cfg, tier="cpu_smac", registered=ONLY_RANDOM)
    tier = cfg["tiers"]["cpu_smac"]
    assert plan.name == "cpu_smac" and plan.root.endswith("/cpu_smac")
    assert {r.map for r in plan.runs.values()} == set(tier["maps"]) and len(plan.runs) == 2 * len(tier["maps"]) * 4
    mode = {"greedy": "false", "sampled": "true"}[tier["eval"]["mode"]]
    for run in plan.runs.values():
        assert run.steps == tier["steps"] and run.overrides[-4:-1] == [
            f"run.eval_every={tier['eval']['interval']}", f"run.eval_episodes={tier['eval']['episodes']}",
            f"run.eval_sample={mode}"]  # after the method's own --set, so the protocol wins
        assert run.preset == ("smoke" if run.method == "Random2" else tier["preset"])
    main = WP.build_plan(cfg, registered=ONLY_RANDOM)
    assert all(f"run.eval_sample={'true' if cfg['eval']['mode'] == 'sampled' else 'false'}" in r.overrides
               for r in main.runs.values())
    with pytest.raises(WP.PlanError, match="eval.mode must be greedy or sampled"):
        WP.build_plan(merged(cfg, {"eval": {"mode": "argmax"}}), registered=ONLY_RANDOM)
    with pytest.raises(WP.PlanError, match="no tier 'gpu_smac'"):
        WP.build_plan(cfg, tier="gpu_smac", registered=ONLY_RANDOM)


def test_a_tier_only_experiment_is_planned_by_its_tier_and_not_by_the_main_plan(tmp_path):
    cfg = full_config(tmp_path)
    cfg["experiments"]["probe"] = {"env": "{backend}", "maps": ["3m"], "tier_only": True,
                                   "variants": {"Random-probe": {"method": "Random", "set": {"run.eval_sample": True}}}}
    cfg["tiers"]["probe_tier"] = {"experiment": "probe", "methods": [], "seeds": [0, 1], "steps": 500}
    main = WP.build_plan(cfg, registered=ONLY_RANDOM)
    assert "probe" not in main.experiments and not any("Random-probe" in k for k in main.runs)
    tier = WP.build_plan(cfg, tier="probe_tier", registered=ONLY_RANDOM)
    assert sorted(tier.runs) == ["smax/3m/Random-probe/seed0", "smax/3m/Random-probe/seed1"]
    assert all(r.steps == 500 and "run.eval_sample=true" in r.overrides for r in tier.runs.values())
