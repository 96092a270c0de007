"""The cluster path without a cluster: resources per method and preset, the two SLURM profiles (the GPU
choice survives a --config), and run.log keeping every attempt of a run (benchmarks/slurm_check.sh runs
the real thing on a SLURM cluster)."""
from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("marie_workflow_plan_cluster", ROOT / "workflows" / "plan.py")
WP = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = WP
spec.loader.exec_module(WP)


def test_resources_per_preset_scaled_by_budget_and_capped():
    default = {"threads": 1, "mem_mb": 4000, "runtime": 1440}
    method = {"threads": 2, "mem_mb": {"paper": 16000, "default": 4000},
              "runtime_per_100k": {"paper": 1440, "small": 100, "default": 30}}
    small = WP.run_resources(default, method, "small", 400_000, None, "r")
    assert small == {"threads": 2, "mem_mb": 4000, "runtime": 4 * 100 + WP.STARTUP_MINUTES}
    assert WP.run_resources(default, method, "smoke", 100_000, None, "r")["runtime"] == 30 + WP.STARTUP_MINUTES
    paper = WP.run_resources(default, method, "paper", 400_000, 2880, "r")
    assert paper["mem_mb"] == 16000 and paper["runtime"] == 2880  # the partition's limit
    # a method's own runtime wins over runtime_per_100k given by default
    assert WP.run_resources({**default, "runtime_per_100k": 50}, {"runtime": 7}, "small", 10**6, None, "r")["runtime"] == 7
    assert WP.run_resources(default, {}, "small", 10**6, None, "r")["runtime"] == 1440
    with pytest.raises(WP.PlanError, match="no value for preset 'paper'"):
        WP.run_resources(default, {"mem_mb": {"small": 1}}, "paper", 1000, None, "r")


def test_the_config_asks_for_runtimes_from_measured_costs():
    cfg = WP.load_config(ROOT / "workflows" / "config.yaml")
    runs = {(r.method, r.map): r for r in WP.build_plan(dict(cfg, seeds=[0]), check=False).runs.values()}
    marie_small = runs[("MARIE", "3m")].resources
    assert marie_small["runtime"] < 300 and marie_small["mem_mb"] <= 4000     # not the old 4 days
    assert runs[("MARIE", "corridor")].resources["runtime"] > marie_small["runtime"]  # 400k vs 100k steps
    paper = {(r.method, r.map): r for r in WP.build_plan(dict(cfg, seeds=[0], preset="paper"), check=False).runs.values()}
    assert paper[("MARIE", "corridor")].resources["runtime"] == cfg["resources"]["max_runtime"]
    assert all(r.resources["runtime"] <= cfg["resources"]["max_runtime"] for r in runs.values())


def _dry_run(profile: str, *config: str) -> str:
    res = subprocess.run([sys.executable, "-m", "snakemake", "--profile", f"workflows/profiles/{profile}", "-n", "-p",
                          "horizon", "--config", "announce=false", *config], cwd=ROOT, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, (res.stdout + res.stderr)[-3000:]
    return res.stdout + res.stderr


@pytest.mark.parametrize("profile,gpu", [("slurm", False), ("slurm-gpu", True)])
def test_the_gpu_choice_of_a_profile_survives_a_config_on_the_command_line(profile, gpu):
    out = _dry_run(profile, "seeds=[0,1]")
    marie_jobs = [b for b in re.split(r"\n(?=rule )", out) if "--algo marie" in b]
    assert marie_jobs and all(("--set run.device=cuda" in b) == gpu and (", gpu=1" in b) == gpu for b in marie_jobs)


def test_run_log_keeps_every_attempt(tmp_path):
    """Snakemake empties a rule's log before each attempt; {rundir}/run.log is appended to."""
    cfg = WP.load_config(ROOT / "workflows" / "config.yaml")
    cfg.update(results=str(tmp_path / "results"), seeds=[0], preset="smoke", announce=False, tiers={},
               model_analysis={}, targets={"all_smac": ["smac"]}, eval={"interval": 200, "episodes": 4},
               maps={"3m": dict(cfg["maps"]["3m"], budget=200)},
               experiments={"smac": {"env": "smax", "maps": ["3m"], "methods": ["Random"]}})
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    rundir = tmp_path / "results/runs/smax/3m/Random/seed0"
    for attempt in (1, 2):
        res = subprocess.run([sys.executable, "-m", "snakemake", "--cores", "1", "--configfile", str(path),
                              "--", str(rundir / "workflow.done")], cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert res.returncode == 0, (res.stdout + res.stderr)[-3000:]
        (rundir / "workflow.done").unlink()  # the next invocation runs the job again
    history = (rundir / "run.log").read_text()
    last = (tmp_path / "results/logs/smax/3m/Random/seed0.log").read_text()
    assert history.count("slurm_job=none: marie run --algo random") == 2
    assert "completed at 200 env steps" in history and "already completed" in history
    assert last.count("slurm_job=none") == 1 and "already completed" in last
