"""pyproject.toml and environment.yml declare the same dependencies, with the pins that matter."""
import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _normalise(req: str) -> str:
    return re.sub(r"\s+", "", req).lower()


def test_environment_yml_matches_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = {_normalise(r) for r in project["dependencies"] + project["optional-dependencies"]["dev"]}
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    declared = {_normalise(r) for r in pip if not r.startswith("-e")}
    assert declared == wanted


def test_critical_pins():
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert "torch==2.13.0" in deps, "an unpinned torch pulls a multi-GB CUDA build"
    assert any(d.startswith("pandas<3") for d in deps), "rliable's arch<8 breaks on pandas 3"
    assert "six" in deps, "gymnax imports six without declaring it"


def test_readme_test_command_is_what_ci_runs():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    command = "python -m pytest -q"
    assert command in readme and command in ci
