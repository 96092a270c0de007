"""Configuration: YAML presets resolved into one plain dict, plus `--set key=value` overrides.

A resolved configuration has the keys
    algo, env, map, seed, steps, preset   what to run
    run                                   runtime settings shared by every algorithm (configs/runtime.yaml)
    params                                the algorithm's own hyperparameters

Each algorithm has one preset file (e.g. marie/configs/marie.yaml) of this shape:
    defaults: {run: {...}, params: {...}}
    presets:
      paper:  {run: {...}, params: {...}, maps: {3s_vs_5z: {params: {...}}}, envs: {mamujoco: {...}}}
      official-code: {inherit: paper, params: {...}}
      small: {...}
      smoke: {...}
`maps` and `envs` blocks (allowed in `defaults` and in presets) hold per-map and per-backend choices.
Resolution order, later wins: runtime.yaml, defaults, the preset chain (inherited first), per-env
blocks, per-map blocks, --set overrides.
"""
from __future__ import annotations

import copy
import difflib
from pathlib import Path
from typing import Any

import yaml

from marie.errors import UserError

CONFIG_DIR = Path(__file__).parent / "configs"

# Keys added to an algorithm's defaults after runs of it existed, each with the value that reproduces those
# runs exactly: a run directory whose config.yaml (or checkpoint) predates a key holds the same configuration
# with that value. It resumes, and compares equal to a new run's, where today's default is that value; where
# the default is new (cpu_decode_kernel: float rounding only), it resumes with `--set KEY=VALUE`, which the
# refusal names (rundir.RunDir.check_compatible).
ADDED_KEYS = {"marie": {"params.world_model.static_cache": False, "params.imagination.compile": None,
                        "params.world_model.cpu_decode_kernel": False}}


def with_added_keys(config: dict) -> dict:
    """A run directory's configuration with each of its algorithm's ADDED_KEYS it lacks, at that value."""
    out = copy.deepcopy(config)
    for dotted, value in ADDED_KEYS.get(out.get("algo"), {}).items():
        *path, last = dotted.split(".")
        node = out
        for key in path:
            node = node.get(key) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.setdefault(last, value)
    return out
RUNTIME_FILE = CONFIG_DIR / "runtime.yaml"
_BLOCK_KEYS = {"run", "params"}
_META_KEYS = {"inherit", "maps", "envs", "description"}


def load_yaml(path: Path) -> Any:
    with open(path) as f:
        return yaml.safe_load(f) or {}


def deep_merge(base: dict, override: dict) -> dict:
    """Recursive dict merge; override wins; neither input is modified."""
    out = copy.deepcopy(base)
    for key, value in (override or {}).items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _check_block(block: dict, where: str) -> None:
    unknown = set(block) - _BLOCK_KEYS - _META_KEYS
    if unknown:
        raise UserError(f"{where}: unknown section(s) {sorted(unknown)}; allowed: run, params, maps, envs, inherit")


def _apply_block(cfg: dict, block: dict, env: str, map_name: str, where: str) -> dict:
    _check_block(block, where)
    cfg = deep_merge(cfg, {k: v for k, v in block.items() if k in _BLOCK_KEYS})
    env_block = (block.get("envs") or {}).get(env)
    if env_block:
        cfg = _apply_block(cfg, env_block, env, map_name, f"{where}.envs.{env}")
    map_block = (block.get("maps") or {}).get(map_name)
    if map_block:
        cfg = _apply_block(cfg, map_block, env, map_name, f"{where}.maps.{map_name}")
    return cfg


def preset_names(preset_file: Path) -> list[str]:
    return sorted((load_yaml(preset_file).get("presets") or {}).keys())


def preset_descriptions(preset_file: Path) -> dict[str, str]:
    """Preset name -> its `description` (with the preset it inherits from), in file order."""
    presets = load_yaml(preset_file).get("presets") or {}
    out = {}
    for name, block in presets.items():
        block = block or {}
        text = str(block.get("description") or "").strip()
        if block.get("inherit"):
            text = f"{text} (inherits {block['inherit']})".strip()
        out[name] = text
    return out


def resolve_config(*, algo: str, preset_file: Path, preset: str, env: str, map_name: str, seed: int,
                   steps: int, overrides: list[str] | None = None) -> dict:
    """Build the fully resolved configuration of one run."""
    spec = load_yaml(preset_file)
    presets = spec.get("presets") or {}
    if preset not in presets:
        raise UserError(f"unknown preset '{preset}' for algo '{algo}'; valid presets: {', '.join(sorted(presets))}")
    cfg = {"run": load_yaml(RUNTIME_FILE), "params": {}}
    cfg = _apply_block(cfg, spec.get("defaults") or {}, env, map_name, f"{preset_file.name}:defaults")
    chain, name = [], preset
    while name is not None:
        if name in chain or name not in presets:
            raise UserError(f"{preset_file.name}: preset '{name}' inherits in a cycle or from an unknown preset")
        chain.append(name)
        name = presets[name].get("inherit")
    for name in reversed(chain):
        cfg = _apply_block(cfg, presets[name], env, map_name, f"{preset_file.name}:{name}")
    cfg = {"algo": algo, "env": env, "map": map_name, "seed": seed, "steps": steps, "preset": preset, **cfg}
    for item in overrides or []:
        apply_override(cfg, item)
    return cfg


def _type_ok(old: Any, new: Any) -> bool:
    if old is None:
        return True
    if isinstance(old, bool):
        return isinstance(new, bool)
    if isinstance(old, int):
        return isinstance(new, int) and not isinstance(new, bool)
    if isinstance(old, float):
        return isinstance(new, (int, float)) and not isinstance(new, bool)
    return isinstance(new, type(old))


def _flat_keys(d: dict, prefix: str = "") -> list[str]:
    keys = []
    for k, v in d.items():
        keys.append(prefix + k)
        if isinstance(v, dict):
            keys.extend(_flat_keys(v, prefix + k + "."))
    return keys


def parse_value(raw: str) -> Any:
    """A `--set` value as users write it: YAML (true, [1, 2], {a: 1}, null), and numbers as Python reads
    them (YAML 1.1 reads `1e-4` as a string)."""
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        return raw
    if isinstance(value, str):
        for number in (int, float):
            try:
                return number(value)
            except ValueError:
                pass
    return value


def _unknown_key(cfg: dict, key: str, where: dict | None = None) -> UserError:
    known = _flat_keys(cfg["params"], "params.") + _flat_keys(cfg["run"], "run.")
    if key.split(".", 1)[0] not in ("run", "params"):  # a bare key: suggest bare keys
        known = [k.split(".", 1)[1] for k in known]
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.75)
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    here = f"; valid keys here: {', '.join(sorted(where))}" if where and not close else ""
    return UserError(f"unknown --set key '{key}'{hint}{here}; keys live under run.* and params.* "
                     f"(`marie run ... --dry-run` prints them all)")


def apply_override(cfg: dict, item: str) -> None:
    """Apply one `key=value` (see parse_value). `key` is a dotted path under run/params;
    a bare key is looked up in params first, then run. Unknown keys and wrong types are errors."""
    if "=" not in item:
        raise UserError(f"--set expects key=value, got '{item}'")
    key, raw = item.split("=", 1)
    key = key.strip()
    value = parse_value(raw)
    path = key.split(".")
    if path[0] not in ("run", "params"):
        candidates = [p for p in ("params", "run") if _has_path(cfg[p], path)]
        if not candidates:
            raise _unknown_key(cfg, key)
        path = [candidates[0]] + path
    node = cfg
    for part in path[:-1]:
        if not isinstance(node.get(part), dict):
            raise _unknown_key(cfg, key)
        node = node[part]
    if path[-1] not in node:
        raise _unknown_key(cfg, key, node)
    old = node[path[-1]]
    if isinstance(old, dict) or not _type_ok(old, value):
        raise UserError(f"--set {key}: expected a value of type {type(old).__name__} (current {old!r}), got {raw!r}")
    if isinstance(old, float) and isinstance(value, int):
        value = float(value)
    node[path[-1]] = value


def _has_path(d: dict, path: list[str]) -> bool:
    for part in path:
        if not isinstance(d, dict) or part not in d:
            return False
        d = d[part]
    return True


def dump_config(cfg: dict) -> str:
    return yaml.safe_dump(cfg, sort_keys=False, default_flow_style=False)
