"""The workflow's plan: workflows/config.yaml -> the list of runs every target needs.

Pure Python, no Snakemake: the Snakefile, the tests and `python workflows/plan.py` all use it.

A run is one `marie run` (a method or a variant of it, on one map, one seed) with its run directory
{root}/runs/{env}/{map}/{variant}/seed{seed}/. A run used by several experiments (e.g. MARIE on 2s3z is
in Table 1 and in the Fig. 4 ablation) is planned once. A planned run that cannot run (map unavailable
on the backend, algorithm not registered or rejecting the configuration) is *skipped* with its reason,
or is an error when the config says on_unavailable/on_unregistered: fail. Mistakes in the config itself
(an unknown method, a map the registry does not know, a malformed entry) are errors: one line, at parse time.
"""
from __future__ import annotations

import copy
import hashlib
import importlib.util
import json
import math
import shlex
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

MARKER = "workflow.done"          # written into a run directory once `marie run` completed it
ACTIONS = ("skip", "fail")


class PlanError(ValueError):
    """A mistake in the workflow configuration (one line, says what to change)."""


@dataclass
class Run:
    key: str                      # {env}/{map}/{variant}/seed{seed}: the run's name everywhere
    env: str
    map: str
    method: str                   # the method's name in tables (MARIE, QMIX, ...)
    variant: str                  # run-directory name: the method, or a variant such as MARIE-H8
    seed: int
    algo: str
    preset: str
    steps: int
    overrides: list[str]          # --set key=value, in order
    difficulty: str
    root: str
    threads: int
    resources: dict
    experiments: dict = field(default_factory=dict)   # experiment -> label of this run in that experiment
    estimated_minutes: float | None = None              # measured cost per 100k steps x budget (None: unknown)

    @property
    def rundir(self) -> str:
        return f"{self.root}/runs/{self.key}"

    @property
    def marker(self) -> str:
        return f"{self.rundir}/{MARKER}"

    @property
    def log(self) -> str:
        return f"{self.root}/logs/{self.key}.log"

    def signature(self) -> tuple:
        return (self.algo, self.preset, self.steps, tuple(self.overrides))

    def command(self) -> str:
        parts = ["marie", "run", "--algo", self.algo, "--env", self.env, "--map", self.map, "--seed", str(self.seed),
                 "--steps", str(self.steps), "--preset", self.preset, "--out", self.rundir]
        for item in self.overrides:
            parts += ["--set", item]
        return " ".join(shlex.quote(p) for p in parts)


@dataclass
class Plan:
    name: str                     # "main", or a tier of the config's `tiers` (demo, cpu_smac, ...)
    root: str
    backend: str
    seeds: list[int]
    runs: dict[str, Run]          # key -> run
    skipped: list[dict]           # {key, experiment, method, variant, map, seed, kind, reason}
    experiments: dict[str, dict]  # experiment -> {env, maps, variants: {variant: {method, label}}}
    methods: dict[str, dict]      # method -> {algo, registered}
    targets: dict[str, list[str]]
    model_analysis: dict[str, dict]
    analysis: dict
    config_digest: str = ""

    def runs_of(self, experiments: list[str]) -> list[Run]:
        return [r for r in self.runs.values() if any(e in r.experiments for e in experiments)]

    def markers(self, experiments: list[str]) -> list[str]:
        return sorted(r.marker for r in self.runs_of(experiments))

    def by_rundir(self) -> dict[str, Run]:
        return {r.rundir: r for r in self.runs.values()}

    def to_json(self) -> dict:
        out = asdict(self)
        out["runs"] = [dict(asdict(r), rundir=r.rundir, marker=r.marker, log=r.log) for r in self.runs.values()]
        return out


# -- configuration ----------------------------------------------------------------------------------
def load_config(path: str | Path) -> dict:
    with open(path) as f:
        return yaml.safe_load(f) or {}


def _need(cond: bool, message: str) -> None:
    if not cond:
        raise PlanError(message)


def _registered_algorithms() -> dict[str, str]:
    from marie.algorithm import ALGORITHMS
    return dict(ALGORITHMS)


def _format_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (dict, list)):
        return json.dumps(value)
    return str(value)


def _overrides(block: Any, where: str) -> list[str]:
    if block is None:
        return []
    if isinstance(block, dict):
        return [f"{k}={_format_value(v)}" for k, v in block.items()]
    if isinstance(block, list) and all(isinstance(x, str) and "=" in x for x in block):
        return list(block)
    raise PlanError(f"{where}: `set` must be a mapping key: value (or a list of 'key=value'), got {block!r}")


def _resolve_env(spec: Any, backend: str, experiment: str) -> str:
    if isinstance(spec, str):
        return spec.format(backend=backend)
    if isinstance(spec, dict):
        _need(backend in spec, f"experiment '{experiment}': env has no entry for backend '{backend}' "
                               f"(it has: {', '.join(spec)})")
        return str(spec[backend]).format(backend=backend)
    raise PlanError(f"experiment '{experiment}': env must be a backend name or a mapping backend -> env, got {spec!r}")


class _Checker:
    """Can this (algo, preset, env, map, overrides) run? Cached; imports algorithms only when registered."""

    def __init__(self, registered: dict[str, str]):
        self.registered = registered
        self.cache: dict[tuple, str | None] = {}

    def __call__(self, run: Run, deep: bool = True) -> tuple[str, str] | None:
        if run.algo not in self.registered:
            return ("unregistered", f"algo '{run.algo}' of method {run.method} is not registered yet "
                                    f"(registered: {', '.join(sorted(self.registered))})")
        if not deep:
            return None
        key = (run.algo, run.preset, run.env, run.map, tuple(run.overrides))
        if key not in self.cache:
            self.cache[key] = self._check(run)
        reason = self.cache[key]
        return None if reason is None else ("rejected", reason)

    def _check(self, run: Run) -> str | None:
        try:
            from marie.algorithm import algorithm_class
            from marie.config import resolve_config
            from marie.envs.registry import get_map
            cls = algorithm_class(run.algo)
            spec = get_map(run.env, run.map)
            kind = "continuous" if spec.family == "mamujoco" else "discrete"
            if kind not in getattr(cls, "action_spaces", ("discrete",)):
                return f"algo '{run.algo}' needs {'/'.join(cls.action_spaces)} actions; {run.map} has {kind} actions"
            cfg = resolve_config(algo=run.algo, preset_file=cls.preset_file, preset=run.preset, env=run.env,
                                 map_name=run.map, seed=run.seed, steps=run.steps, overrides=run.overrides)
            cls.validate(cfg["params"], cfg["run"], spec.allies)
        except Exception as exc:  # UserError, or an algorithm module that does not import yet
            return f"algo '{run.algo}' rejects this run: {type(exc).__name__ if not str(exc) else exc}"
        return None


STARTUP_MINUTES = 10   # added to every computed runtime: imports, SMAX compilation, the last evaluation


def _for_preset(value: Any, preset: str, where: str) -> Any:
    """A resource value, or a mapping preset -> value (`default` for the presets it does not name)."""
    if not isinstance(value, dict):
        return value
    _need(preset in value or "default" in value, f"{where}: no value for preset '{preset}' and no `default` "
                                                 f"(it has: {', '.join(value)})")
    return value.get(preset, value.get("default"))


def run_resources(default: dict, method: dict, preset: str, steps: int, max_runtime: Any, where: str) -> dict:
    """Resources of one run: `default` updated by the method's entry, each value possibly per preset.
    `runtime_per_100k` (minutes per 100k env steps, measured) gives the runtime, scaled by the run's budget,
    unless the method's entry names `runtime` itself; `max_runtime` (the partition's limit) caps it: a run
    that needs longer resumes from its checkpoint when resubmitted."""
    res = {k: _for_preset(v, preset, f"{where}.{k}") for k, v in {**default, **method}.items()}
    per_100k = res.pop("runtime_per_100k", None)
    if per_100k is not None and "runtime" not in method:
        _need(isinstance(per_100k, (int, float)) and per_100k > 0,
              f"{where}.runtime_per_100k must be a positive number of minutes, got {per_100k!r}")
        res["runtime"] = int(math.ceil(per_100k * steps / 100_000)) + STARTUP_MINUTES
    if max_runtime is not None and "runtime" in res:
        _need(isinstance(max_runtime, int) and max_runtime > 0,
              f"workflow config: resources.max_runtime must be a positive number of minutes, got {max_runtime!r}")
        res["runtime"] = min(int(res["runtime"]), max_runtime)
    return res


EVAL_MODES = {"greedy": "false", "sampled": "true"}   # eval.mode -> run.eval_sample


def _eval_overrides(exp_eval: dict, budget: int, where: str) -> list[str]:
    """The evaluation protocol of an experiment or tier, the same for every method in it."""
    mode = exp_eval.get("mode", "greedy")
    _need(mode in EVAL_MODES, f"{where}: eval.mode must be greedy or sampled, got {mode!r}")
    return [f"run.eval_every={min(int(exp_eval['interval']), budget)}",
            f"run.eval_episodes={int(exp_eval['episodes'])}", f"run.eval_sample={EVAL_MODES[mode]}"]


def tier_names(config: dict) -> list[str]:
    return list(config.get("tiers") or {})


def build_plan(config: dict, tier: str | None = None, registered: dict[str, str] | None = None,
               check: bool = True, demo: bool = False) -> Plan:
    """Every run of every experiment (or of one tier: the demo, the CPU reproduction), validated against the
    map registry and the algorithms.

    A tier (config `tiers`) is one experiment at another scale: its own maps, seeds, budget, presets
    (`preset` for every method, `presets` per method), evaluation protocol and resources, under
    {results}/{tier}/ so its runs never mix with full-budget ones.
    registered: algo name -> "module:Class" (default: marie.algorithm.ALGORITHMS); check=False skips
    importing the algorithms to validate presets, overrides and action spaces (registration still counts).
    demo=True is tier="demo"."""
    from marie.envs.registry import BACKENDS, all_maps

    cfg = copy.deepcopy(config)
    for key in ("backend", "seeds", "maps", "methods", "experiments", "eval"):
        _need(key in cfg, f"workflow config: missing key '{key}'")
    backend = cfg["backend"]
    _need(backend in BACKENDS, f"workflow config: unknown backend '{backend}'; valid: {', '.join(BACKENDS)}")
    for key in ("on_unavailable", "on_unregistered"):
        _need(cfg.get(key, "skip") in ACTIONS, f"workflow config: {key} must be skip or fail, got {cfg.get(key)!r}")
    registry = all_maps()
    maps_cfg: dict = cfg["maps"] or {}
    for name, entry in maps_cfg.items():
        _need(name in registry, f"workflow config: map '{name}' is unknown to the map registry "
                                f"(marie/envs/maps.yaml; `marie maps` lists them)")
        _need(isinstance(entry, dict) and isinstance(entry.get("budget"), int) and entry["budget"] > 0,
              f"workflow config: map '{name}' needs a positive integer budget")
    methods_cfg: dict = cfg["methods"] or {}
    for name, m in methods_cfg.items():
        _need(isinstance(m, dict) and isinstance(m.get("algo"), str),
              f"workflow config: method '{name}' needs `algo: <marie run --algo name>`")
    registered = _registered_algorithms() if registered is None else registered
    checker = _Checker(registered)

    seeds = cfg["seeds"]
    if isinstance(seeds, list):  # `--config 'seeds=[0,1,2]'` gives strings
        seeds = [int(x) if isinstance(x, str) and x.strip().isdigit() else x for x in seeds]
    _need(isinstance(seeds, list) and seeds and all(isinstance(s, int) and s >= 0 for s in seeds),
          f"workflow config: seeds must be a non-empty list of non-negative integers, got {seeds!r}")
    _need(len(set(seeds)) == len(seeds), f"workflow config: seeds repeat: {seeds}")
    root = str(cfg.get("results", "results"))
    experiments_cfg: dict = cfg["experiments"] or {}
    if tier is None and not demo:  # an experiment made for a tier (`tier_only: true`) is not part of the main plan
        experiments_cfg = {k: v for k, v in experiments_cfg.items() if not (v or {}).get("tier_only")}
    res_cfg = cfg.get("resources") or {}
    default_res = dict(res_cfg.get("default") or {})
    eval_cfg = cfg["eval"]
    steps_override = None
    preset_override = None
    method_presets: dict = {}
    tier_res: dict = {}
    tier_analysis: dict = {}
    tier = "demo" if demo and tier is None else tier
    if tier is not None:
        tiers = cfg.get("tiers") or {}
        _need(tier in tiers, f"workflow config: no tier '{tier}' (tiers: {', '.join(tiers) or 'none'})")
        d = tiers[tier] or {}
        _need(d.get("experiment") in experiments_cfg,
              f"workflow config: tiers.{tier}.experiment must name an experiment")
        base = copy.deepcopy(experiments_cfg[d["experiment"]])
        base["maps"] = d.get("maps", base.get("maps"))
        base["methods"] = d.get("methods", base.get("methods"))
        base.pop("eval", None)
        experiments_cfg = {d["experiment"]: base}
        seeds = d.get("seeds", seeds)
        steps_override = d.get("steps")
        preset_override = d.get("preset")
        method_presets = dict(d.get("presets") or {})
        for m in method_presets:
            _need(m in methods_cfg, f"workflow config: tiers.{tier}.presets names unknown method '{m}'")
        eval_cfg = d.get("eval", eval_cfg)
        tier_res = dict(d.get("resources") or {})   # wins over the methods' own resources
        tier_analysis = dict(d.get("model_analysis") or {})   # name -> overrides (maps, methods) of its spec
        for name in tier_analysis:
            _need(name in (cfg.get("model_analysis") or {}),
                  f"workflow config: tiers.{tier}.model_analysis names unknown analysis '{name}' "
                  f"(known: {', '.join(cfg.get('model_analysis') or {}) or 'none'})")
        root = f"{root}/{tier}"
    device = cfg.get("device", "cpu")
    _need(device in ("cpu", "cuda"), f"workflow config: device must be cpu or cuda, got {device!r}")

    runs: dict[str, Run] = {}
    skipped: list[dict] = []
    experiments: dict[str, dict] = {}
    for exp_name, exp in experiments_cfg.items():
        _need(isinstance(exp, dict), f"experiment '{exp_name}' must be a mapping")
        env = _resolve_env(exp.get("env", "{backend}"), backend, exp_name)
        _need(env in BACKENDS, f"experiment '{exp_name}': unknown env '{env}'")
        exp_maps = exp.get("maps") or []
        for m in exp_maps:
            _need(m in maps_cfg, f"experiment '{exp_name}': map '{m}' is not in the config's `maps` "
                                 f"(add it there with its difficulty and budget)" if m in registry else
                                 f"experiment '{exp_name}': map '{m}' is unknown to the map registry "
                                 f"(`marie maps` lists them)")
        variants: dict[str, dict] = {}
        for method in exp.get("methods") or []:
            variants[method] = {"method": method, "label": method, "set": None}
        for vname, v in (exp.get("variants") or {}).items():
            _need(isinstance(v, dict) and "method" in v, f"experiment '{exp_name}': variant '{vname}' needs `method`")
            variants[vname] = {"method": v["method"], "label": str(v.get("label", vname)), "set": v.get("set")}
        for vname, v in variants.items():
            _need(v["method"] in methods_cfg, f"experiment '{exp_name}': unknown method '{v['method']}'; "
                                              f"methods: {', '.join(methods_cfg)}")
            _need("/" not in vname and vname.strip() == vname and vname,
                  f"experiment '{exp_name}': bad variant name {vname!r}")
        exp_eval = dict(eval_cfg) if tier else dict(exp.get("eval") or eval_cfg)
        experiments[exp_name] = {"env": env, "maps": list(exp_maps),
                                 "variants": {k: {"method": v["method"], "label": v["label"]} for k, v in variants.items()}}
        for map_name in exp_maps:
            mspec = registry[map_name]
            difficulty = maps_cfg[map_name].get("difficulty", mspec.difficulty)
            budget = int(steps_override or maps_cfg[map_name]["budget"])
            support = mspec.support(env)
            for vname, v in variants.items():
                method = v["method"]
                mcfg = methods_cfg[method]
                preset = method_presets.get(method) or preset_override or mcfg.get("preset") or cfg.get("preset", "small")
                method_res = {**((res_cfg.get("methods") or {}).get(method) or {}), **tier_res}
                res = run_resources(default_res, method_res, preset, budget, res_cfg.get("max_runtime"),
                                    f"resources of {method}")
                threads = int(res.pop("threads", 1))
                per_100k = _for_preset({**default_res, **method_res}.get("runtime_per_100k"), preset,
                                       f"resources of {method}.runtime_per_100k")
                estimate = per_100k * budget / 100_000 if isinstance(per_100k, (int, float)) else None
                overrides = _overrides(mcfg.get("set"), f"method '{method}'")
                overrides += _overrides(v["set"], f"experiment '{exp_name}' variant '{vname}'")
                overrides += _eval_overrides(exp_eval, budget, f"experiment '{exp_name}'")
                overrides += [f"run.torch_threads={threads}"]
                if device == "cuda" and method in (cfg.get("gpu_methods") or []):
                    overrides.append("run.device=cuda")
                    res.setdefault("gpu", 1)
                for seed in seeds:
                    key = f"{env}/{map_name}/{vname}/seed{seed}"
                    run = Run(key=key, env=env, map=map_name, method=method, variant=vname, seed=int(seed),
                              algo=mcfg["algo"], preset=preset, steps=budget, overrides=overrides,
                              difficulty=difficulty, root=root, threads=threads, resources=res,
                              estimated_minutes=estimate)
                    info = {"key": key, "experiment": exp_name, "method": method, "variant": vname,
                            "map": map_name, "seed": seed, "env": env, "steps": budget, "difficulty": difficulty}
                    if support["status"] == "unavailable":
                        reason = f"map '{map_name}' is unavailable on {env}: {support.get('note', '')}"
                        if cfg.get("on_unavailable", "skip") == "fail":
                            raise PlanError(f"{key}: {reason} (on_unavailable: fail)")
                        skipped.append(dict(info, kind="unavailable", reason=reason))
                        continue
                    problem = checker(run, deep=check)
                    if problem is not None:
                        if cfg.get("on_unregistered", "skip") == "fail":
                            raise PlanError(f"{key}: {problem[1]} (on_unregistered: fail)")
                        skipped.append(dict(info, kind=problem[0], reason=problem[1]))
                        continue
                    if key in runs:
                        old = runs[key]
                        _need(old.signature() == run.signature(),
                              f"run {key} is planned twice with different settings (experiments "
                              f"{', '.join(old.experiments)} and {exp_name}); give one variant another name")
                        old.experiments[exp_name] = v["label"]
                    else:
                        run.experiments[exp_name] = v["label"]
                        runs[key] = run

    methods = {name: {"algo": m["algo"], "registered": m["algo"] in registered} for name, m in methods_cfg.items()}
    targets = {k: list(v) for k, v in (cfg.get("targets") or {}).items()}
    for t, exps in targets.items():
        for e in exps:
            _need(e in cfg["experiments"] or e == "model_analysis",
                  f"target '{t}' names unknown experiment '{e}'")
    model_analysis = {}
    analysis_cfg = cfg.get("model_analysis") or {}
    if tier is None:
        for name, spec in analysis_cfg.items():
            model_analysis[name] = _model_analysis(name, spec, runs, cfg)
    else:  # a tier runs the analyses it names, on its own runs
        for name, override in tier_analysis.items():
            spec = {**analysis_cfg[name], **(override or {}), "experiment": tiers[tier]["experiment"]}
            model_analysis[name] = _model_analysis(name, spec, runs, cfg)
    digest = hashlib.sha256(json.dumps(cfg, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return Plan(name=tier or "main", root=root, backend=backend, seeds=list(seeds), runs=runs,
                skipped=skipped, experiments=experiments, methods=methods, targets=targets,
                model_analysis=model_analysis, analysis=dict(cfg.get("analysis") or {}), config_digest=digest)


def _model_analysis(name: str, spec: dict, runs: dict[str, Run], cfg: dict) -> dict:
    for key in ("module", "command", "file", "maps", "methods", "experiment"):
        _need(key in spec, f"model_analysis.{name}: missing key '{key}'")
    available = bool(spec["module"]) and _module_exists(spec["module"])
    selected = [r for r in runs.values() if spec["experiment"] in r.experiments and r.map in spec["maps"]
                and r.method in spec["methods"] and r.variant == r.method]
    return {"module": spec["module"], "command": spec["command"], "file": spec["file"], "available": available,
            "runs": sorted(r.key for r in selected), "maps": list(spec["maps"]), "methods": list(spec["methods"]),
            "outputs": sorted(f"{r.rundir}/analysis/{spec['file']}" for r in selected)}


def _module_exists(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


REPRODUCED = Path(__file__).resolve().parents[1] / "paper_figures" / "reproduced"


def measured_rates(folders: list[Path] | None = None) -> dict[tuple, list[float]]:
    """CPU seconds per env step of every completed run committed under `folders` (default: every tier's
    committed reproduction, paper_figures/reproduced/), keyed (algo, preset, env, map) from its meta.json."""
    rates: dict[tuple, list[float]] = {}
    for folder in REPRODUCED.glob("*") if folders is None else folders:
        for meta_file in sorted(Path(folder).glob("runs/**/meta.json")):
            try:
                meta = json.loads(meta_file.read_text())
            except (OSError, ValueError):
                continue
            if meta.get("status") == "completed" and meta.get("cpu_s") and meta.get("env_steps"):
                key = (meta.get("algo"), meta.get("preset"), meta.get("env"), meta.get("map"))
                rates.setdefault(key, []).append(float(meta["cpu_s"]) / float(meta["env_steps"]))
    return rates


def estimate_cpu_hours(runs: list[Run], rates: dict[tuple, list[float]]) -> tuple[float, dict[str, float], dict[str, int]]:
    """CPU-hours of `runs`: each run's budget times the median measured rate (`measured_rates`) of its algo,
    preset, env and map; where that map was not measured, of its algo, preset and env on the other maps; else
    the config's `runtime_per_100k` times its threads (a SLURM time limit, padded about 2x). Returns the total,
    the hours per method (variant) and how many runs each source priced (map, other maps, config, unknown)."""
    from statistics import median
    pooled: dict[tuple, list[float]] = {}
    for (algo, preset, env, _), xs in rates.items():
        pooled.setdefault((algo, preset, env), []).extend(xs)
    per_method: dict[str, float] = {}
    sources = {"map": 0, "other maps": 0, "config": 0, "unknown": 0}
    for run in runs:
        if (run.algo, run.preset, run.env, run.map) in rates:
            hours, source = median(rates[(run.algo, run.preset, run.env, run.map)]) * run.steps / 3600, "map"
        elif (run.algo, run.preset, run.env) in pooled:
            hours, source = median(pooled[(run.algo, run.preset, run.env)]) * run.steps / 3600, "other maps"
        elif run.estimated_minutes is not None:
            hours, source = run.estimated_minutes * run.threads / 60, "config"
        else:
            hours, source = 0.0, "unknown"
        sources[source] += 1
        per_method[run.variant] = per_method.get(run.variant, 0.0) + hours
    return sum(per_method.values()), per_method, sources


def cost_line(runs: list[Run], rates: dict[tuple, list[float]], what: str = "estimated cost") -> str:
    """One line pricing `runs` in CPU-hours, per method, and what each figure rests on."""
    hours, per_method, sources = estimate_cpu_hours(runs, rates)
    rest = {"map": "from committed runs of the same method, preset and map",
            "other maps": "from the same method and preset on other maps",
            "config": "from workflows/config.yaml's runtime_per_100k (a time limit, padded about 2x)",
            "unknown": "without a figure"}
    basis = ", ".join(f"{n} {rest[k]}" for k, n in sources.items() if n)
    top = ", ".join(f"{m} {h:,.1f}" for m, h in sorted(per_method.items(), key=lambda x: -x[1]) if h > 0)
    return f"  {what}: about {hours:,.1f} CPU-hours ({top}); priced by CPU time per env step: {basis}"


def summary(plan: Plan, limit: int = 6) -> list[str]:
    """Human-readable lines: how many runs are planned and which are skipped, grouped by reason
    (the report lists every skipped run by name)."""
    lines = [f"workflow ({plan.name}): {len(plan.runs)} runs planned under {plan.root}/runs on backend {plan.backend}"]
    if plan.runs:
        lines.append(cost_line(list(plan.runs.values()), measured_rates()))
    groups: dict[str, list[str]] = {}
    for s in plan.skipped:
        groups.setdefault(s["reason"], []).append(f"{s['experiment']}:{s['key']}")
    for reason, keys in sorted(groups.items(), key=lambda kv: -len(kv[1])):
        names = sorted({k.split(":", 1)[1].rsplit("/seed", 1)[0] for k in keys})
        shown = ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")
        lines.append(f"  skipped {len(keys)} runs ({reason}): {shown}")
    for name, ma in plan.model_analysis.items():
        if not ma["available"]:
            lines.append(f"  model_analysis.{name}: not available yet (module {ma['module']} does not exist), "
                         f"so its figures need {ma['file']} written by hand into the runs' analysis/ folders")
    return lines


def write_json(plan: Plan, path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(plan.to_json(), indent=1, default=str))  # keeps config order
    tmp.replace(path)


def main(argv: list[str] | None = None) -> int:
    """python workflows/plan.py [CONFIG] [--demo | --tier T] [--config-json JSON] [--write PLAN.json]: print or
    write the plan."""
    import argparse
    p = argparse.ArgumentParser(prog="workflows/plan.py", description=main.__doc__)
    p.add_argument("config", nargs="?", default=str(Path(__file__).with_name("config.yaml")))
    p.add_argument("--config-json", help="the whole config as JSON (the workflow passes its merged config)")
    p.add_argument("--demo", action="store_true", help="the demo's plan (= --tier demo)")
    p.add_argument("--tier", help="a tier's plan (config `tiers`: demo, cpu_smac, ...)")
    p.add_argument("--write", help="write the plan as JSON here (for `python -m analysis report --plan`)")
    a = p.parse_args(argv)
    try:
        cfg = json.loads(a.config_json) if a.config_json else load_config(a.config)
        plan = build_plan(cfg, tier=a.tier or ("demo" if a.demo else None))
    except PlanError as exc:
        print(f"workflow config error: {exc}", file=sys.stderr)
        return 2
    if a.write:
        write_json(plan, a.write)
        return 0
    print("\n".join(summary(plan, limit=10**6)))
    for r in plan.runs.values():
        print(f"  {r.key}  [{', '.join(r.experiments)}]  {r.command()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
