"""The run/evaluation runtime every algorithm shares: the loop, evaluation, logs, checkpoints, resume.

`prepare(...)` validates everything and resolves the configuration before any work starts;
`Runner(config, out).train()` runs (or resumes) it and keeps the run-directory contract of docs/design.md.
"""
from __future__ import annotations

import importlib.util
import math
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

import numpy as np
import torch

from marie.algorithm import Algorithm, algorithm_class
from marie.config import resolve_config, with_added_keys
from marie.envs import TimeStep, check_backend, make_env, resolve_reward_scale
from marie.errors import UserError
from marie.rundir import RunDir

CHECKPOINT_VERSION = 1


class NonFiniteLoss(RuntimeError):
    pass


def prepare(*, algo: str, env: str, map_name: str, seed: int, steps: int, preset: str = "small",
            overrides: list[str] | None = None, out: str | Path | None = None,
            results_root: str | Path = "results/runs") -> tuple[dict, RunDir]:
    """Validate the request and resolve its configuration; nothing is written here."""
    cls = algorithm_class(algo)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps <= 0:
        raise UserError(f"--steps must be a positive integer, got {steps!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise UserError(f"--seed must be a non-negative integer, got {seed!r}")
    spec = check_backend(env, map_name)
    kind = "continuous" if spec.family == "mamujoco" else "discrete"
    if kind not in cls.action_spaces:
        raise UserError(f"algo '{algo}' needs {'/'.join(cls.action_spaces)} actions; map '{map_name}' on {env} has "
                        f"{kind} actions")
    config = resolve_config(algo=algo, preset_file=cls.preset_file, preset=preset, env=env, map_name=map_name,
                            seed=seed, steps=steps, overrides=overrides)
    run = config["run"]
    run["reward_scale"] = resolve_reward_scale(env, run["reward_scale"])  # the number, in config.yaml
    for key in ("eval_every", "eval_episodes", "num_envs"):
        if not isinstance(run[key], int) or run[key] <= 0:
            raise UserError(f"run.{key} must be a positive integer, got {run[key]!r}")
    if not isinstance(run["eval_sample"], bool):
        raise UserError(f"run.eval_sample must be true (sampled evaluation actions) or false (greedy), got "
                        f"{run['eval_sample']!r}")
    if run["progress"] not in ("auto", "always", "never"):
        raise UserError(f"run.progress must be auto, always or never, got {run['progress']!r}")
    _check_device(str(run["device"]))
    if run["dtype"] not in ("float32", "float64", "bfloat16", "float16"):
        raise UserError(f"run.dtype must be float32, float64, bfloat16 or float16, got {run['dtype']!r}")
    if not isinstance(run["tensorboard"], bool):
        raise UserError(f"run.tensorboard must be true or false, got {run['tensorboard']!r}")
    if run["tensorboard"] and importlib.util.find_spec("tensorboard") is None:
        raise UserError("run.tensorboard is true but the tensorboard package is not installed: "
                        "`pip install tensorboard`, or --set run.tensorboard=false")
    cls.validate(config["params"], run, spec.allies)  # the algorithm's own checks, without building it
    rundir = RunDir(out if out is not None else Path(results_root) / env / map_name / algo / f"seed{seed}")
    _check_writable(rundir.path)
    old = rundir.existing_config()
    if old is not None and _extends(config, old):
        raise UserError(f"{rundir.path} holds this run with a budget of {old['steps']} steps; a smaller --steps "
                        f"cannot shrink it (a larger one extends it)")
    if not (old is not None and _extends(old, config)):
        rundir.check_compatible(config)
    return config, rundir


def _check_device(device: str) -> None:
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda"):
        raise UserError(f"run.device must be cpu, cuda or cuda:N, got {device!r} (--device or --set run.device=...)")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"run.device is {device} but no CUDA device is visible; use --device cpu")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise UserError(f"run.device is {device} but only {torch.cuda.device_count()} CUDA device(s) are visible")


def _check_writable(path: Path) -> None:
    """The run directory, or the deepest folder above it that exists, must be a writable folder."""
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise UserError(f"--out {path}: {existing} is a file, not a folder; choose another --out")
    try:  # os.access alone says yes to root on a read-only filesystem
        if not os.access(existing, os.W_OK | os.X_OK):
            raise OSError
        tempfile.TemporaryFile(dir=existing).close()
    except OSError:
        raise UserError(f"--out {path}: {existing} is not writable; choose another --out") from None


def _extends(old: dict, new: dict) -> bool:
    """Is `new` the run of `old` with a larger budget? (Then it continues from the last checkpoint.)"""
    return {**old, "steps": 0} == {**new, "steps": 0} and new["steps"] > old["steps"]


def keep_freed_memory() -> None:
    """Let glibc's malloc keep freed memory for the next allocation instead of returning it to the system.

    PyTorch's CPU tensors come straight from malloc, and by default glibc unmaps a freed block of more than
    128 KB-32 MB (its adaptive threshold) or trims the heap above it, so the next tensor of that size is fresh
    memory and takes a page fault per 4 KB page on first touch: 60-75 thousand faults in a paper-size
    world-model step, none with this (docs/marie.md, "Measured"). Peak memory is unchanged; the process
    keeps its peak resident set. A no-op where malloc is not glibc's."""
    import ctypes
    import ctypes.util
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
    mallopt(M_MMAP_THRESHOLD, 32 * 2**20)   # glibc's largest: blocks up to 32 MB come from the heap, reused
    mallopt(M_TRIM_THRESHOLD, 2**30)        # and the heap's top is not handed back below 1 GB of free memory


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _git_commit() -> str:
    try:
        here = Path(__file__).resolve().parent
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or "unknown"
    except Exception:
        return "unknown"


def package_versions() -> dict:
    out = {"python": platform.python_version()}
    for dist in ("torch", "numpy", "jax", "jaxmarl", "mujoco", "gymnasium-robotics", "vector-quantize-pytorch",
                 "smac", "smacv2"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return out


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def check_finite(metrics: dict, update_index: int) -> None:
    """Stop on a NaN or infinite loss, naming the update and the loss."""
    for key, value in metrics.items():
        if "loss" in key and isinstance(value, (int, float)) and not math.isfinite(value):
            raise NonFiniteLoss(f"update {update_index}: {key} is {value}; stopped, the last good checkpoint is kept "
                                f"(lower the learning rate or check the inputs)")


class Runner:
    def __init__(self, config: dict, rundir: RunDir):
        self.config = config
        self.rundir = rundir
        self.run = config["run"]
        self.steps = int(config["steps"])
        self.seed = int(config["seed"])
        self.tb = None  # a TensorBoard writer where run.tensorboard

    # -- set-up --------------------------------------------------------------------------------------
    def _build(self) -> None:
        keep_freed_memory()
        if self.run["torch_threads"]:
            torch.set_num_threads(int(self.run["torch_threads"]))
        self.device = torch.device(self.run["device"])
        options = {"sc2_restarts": self.run["sc2_restarts"], "reward_scale": self.run["reward_scale"]}
        self.env = make_env(self.config["env"], self.config["map"], self.run["num_envs"], **options)
        self.eval_env = make_env(self.config["env"], self.config["map"], self.run["eval_episodes"], **options)
        # Seed after the environments: building (compiling) one draws from the global generators the first
        # time in a process, which would make two runs in one process differ.
        seed_everything(self.seed)
        cls = algorithm_class(self.config["algo"])
        self.algo: Algorithm = cls(self.env.info, self.config["params"], self.run, self.device, self.seed)

    # -- evaluation --------------------------------------------------------------------------------
    def _episodes(self, greedy: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One episode on each evaluation environment, seeded by the evaluation index: both action modes
        of one evaluation point play the same starting states."""
        env, n = self.eval_env, self.run["eval_episodes"]
        ts = env.reset(seed=10_000_019 * (self.seed + 1) + self.eval_index)
        carry = self.algo.initial_carry(n)
        finished = np.zeros(n, bool)
        won, ret, length = np.zeros(n, bool), np.zeros(n), np.zeros(n, np.int64)
        with torch.no_grad():
            while not finished.all():
                actions, carry = self.algo.act(ts, carry, training=False, greedy=greedy)
                ts = env.step(actions)
                new = ts.done & ~finished
                won[new], ret[new], length[new] = ts.won[new], ts.episode_return[new], ts.episode_length[new]
                finished |= ts.done
        return won, ret, length

    def evaluate(self, env_steps: int) -> dict:
        """Evaluate in both action modes (the protocol's first); steps are not counted toward the budget."""
        has_win = self.eval_env.info.has_win
        protocol = "sampled" if self.run["eval_sample"] else "greedy"
        row = {"env_steps": env_steps, "episodes": self.run["eval_episodes"], "eval_mode": protocol}
        for mode in (protocol, "greedy" if protocol == "sampled" else "sampled"):
            won, ret, length = self._episodes(greedy=mode == "greedy")
            row[f"win_rate_{mode}"] = float(won.mean()) if has_win else None
            row[f"return_mean_{mode}"] = float(ret.mean())
            if mode == protocol:
                row.update(win_rate=row[f"win_rate_{mode}"], return_mean=row[f"return_mean_{mode}"],
                           return_std=float(ret.std()), length_mean=float(length.mean()))
            self.eval_episode_rows += [
                {"env_steps": env_steps, "mode": mode, "episode": i, "won": int(won[i]) if has_win else None,
                 "return": float(ret[i]), "length": int(length[i])} for i in range(len(ret))]
        self.eval_index += 1
        row["wall_s"] = round(self._wall(), 3)
        return row

    def _wall(self) -> float:
        return self.wall_before + time.perf_counter() - self.t_start

    def _cpu(self) -> float:
        """Process CPU seconds (all threads), cumulative over resumes: the cost of the run on a CPU."""
        return self.cpu_before + time.process_time() - self.cpu_start

    def _progress_meta(self) -> dict:
        return {"env_steps": self.env_steps, "counters": self.env.counters, "wall_s": round(self._wall(), 3),
                "cpu_s": round(self._cpu(), 3)}

    # -- checkpoints ---------------------------------------------------------------------------------
    def _checkpoint(self) -> None:
        self.rundir.save_checkpoint({
            "version": CHECKPOINT_VERSION, "config": self.config, "env_steps": self.env_steps,
            "next_eval": self.next_eval, "next_checkpoint": self.next_checkpoint, "eval_index": self.eval_index,
            "eval_rows": self.eval_rows, "eval_episode_rows": self.eval_episode_rows, "cpu_s": self._cpu(), "train_rows": self.train_rows, "train_columns": self.train_columns,
            "updates": self.updates, "wall_s": self._wall(), "algo": self.algo.state_dict(),
            "env": self.env.get_state(), "ts": self.ts._asdict(), "carry": self.carry, "rng": _rng_state(),
        })

    def _restore(self, ck: dict) -> None:
        written = with_added_keys(ck.get("config") or {})   # keys added since it was written, at their old value
        same = written == self.config or _extends(written, self.config)
        if ck.get("version") != CHECKPOINT_VERSION or not same:
            raise UserError(f"checkpoint {self.rundir.checkpoint_file} belongs to another configuration or version; "
                            f"delete it to start afresh")
        self.algo.load_state_dict(ck["algo"])
        self.env.set_state(ck["env"])
        self.ts = TimeStep(**ck["ts"])
        self.carry = ck["carry"]
        if not getattr(self.env, "snapshot_exact", True):  # e.g. SC2: start fresh episodes
            self.ts = self.env.reset(seed=self.seed + 7919 * (self.rundir.read_meta().get("resume_count", 0) + 1))
            self.carry = self.algo.initial_carry(self.run["num_envs"])
        for key in ("env_steps", "next_eval", "next_checkpoint", "eval_index", "eval_rows", "train_rows",
                    "train_columns", "updates"):
            setattr(self, key, ck[key])
        self.wall_before, self.cpu_before = ck["wall_s"], ck.get("cpu_s", 0.0)
        self.eval_episode_rows = ck.get("eval_episode_rows", [])
        self.rundir.truncate_train(self.train_rows)
        if self.train_columns is not None:  # the file may have been widened after this checkpoint
            self.rundir.rewrite_train(self.train_columns)
        self.rundir.write_eval(self.eval_rows, self.eval_episode_rows)
        _set_rng_state(ck["rng"])

    # -- the loop ------------------------------------------------------------------------------------
    def train(self) -> dict:
        meta = self.rundir.read_meta()
        extensions = list(meta.get("extensions", []))
        if meta.get("status") == "completed" and self.rundir.eval_file.exists():
            if int(meta.get("steps", 0)) >= self.steps:
                print(f"{self.rundir.path}: already completed", file=sys.stderr)
                return meta
            extensions.append({"from_steps": meta["steps"], "to_steps": self.steps, "time": _now()})
            print(f"{self.rundir.path}: extending the completed run from {meta['steps']} to {self.steps} steps",
                  file=sys.stderr)
        checkpoint = self.rundir.load_checkpoint()  # falls back to previous.pt; refuses if none is readable
        self._build()  # bad algorithm parameters fail here, before anything is written
        self.rundir.path.mkdir(parents=True, exist_ok=True)
        self.rundir.write_config(self.config)
        self.t_start, self.wall_before = time.perf_counter(), 0.0
        self.cpu_start, self.cpu_before = time.process_time(), 0.0
        every = self.run["checkpoint_every"] or self.run["eval_every"]
        if checkpoint is not None:
            self._restore(checkpoint)
            resumes = meta.get("resume_count", 0) + 1
        else:
            self.env_steps, self.eval_index, self.updates = 0, 0, 0
            self.eval_rows, self.eval_episode_rows, self.train_rows, self.train_columns = [], [], 0, None
            self.next_eval = 0 if self.run["eval_at_start"] else self.run["eval_every"]
            self.next_checkpoint = every
            self.ts = self.env.reset(seed=self.seed)
            self.carry = self.algo.initial_carry(self.run["num_envs"])
            resumes = 0
            for stale in (self.rundir.train_file, self.rundir.eval_file, self.rundir.eval_episodes_file):  # from a run killed before its first checkpoint
                if stale.exists():
                    stale.unlink()
        meta = {
            "algo": self.config["algo"], "env": self.config["env"], "map": self.config["map"], "seed": self.seed,
            "preset": self.config["preset"], "steps": self.steps, "versions": package_versions(),
            "suite_commit": _git_commit(), "backend_version": self.env.info.backend_version,
            "env_info": self.env.info.as_dict(), "device": str(self.device),
            "device_name": torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else platform.processor() or platform.machine(),
            "host": platform.node(), "start_time": meta.get("start_time", _now()), "end_time": None,
            "status": "running", "message": "", "resume_count": resumes, "env_steps": self.env_steps,
            "counters": self.env.counters, "wall_s": round(self.wall_before, 3), "cpu_s": round(self.cpu_before, 3),
            "extensions": extensions,
            "resumed_from": self.rundir.loaded_from, "checkpoint_note": self.rundir.checkpoint_note,
            "eval_protocol": {"episodes": self.run["eval_episodes"], "every": self.run["eval_every"],
                              "mode": "sampled" if self.run["eval_sample"] else "greedy", "at_start": self.run["eval_at_start"],
                              "at_end": True},
        }
        self.rundir.write_meta(meta)
        self.tb = self._tensorboard()
        try:
            self._loop(every)
        except BaseException as exc:
            message = str(exc) if isinstance(exc, NonFiniteLoss) else f"{type(exc).__name__}: {exc}"
            self.rundir.update_meta(status="failed", message=message, end_time=_now(), **self._progress_meta())
            raise
        finally:
            self.env.close()
            self.eval_env.close()
            if self.tb is not None:
                self.tb.close()
        return self.rundir.update_meta(status="completed", end_time=_now(), **self._progress_meta())

    def _show_progress(self) -> bool:
        mode = self.run["progress"]
        return mode == "always" or (mode == "auto" and sys.stderr.isatty())

    def _tensorboard(self):
        """A SummaryWriter into {run dir}/tensorboard/ where run.tensorboard; a resume purges the events
        written after its checkpoint, so the curves equal an uninterrupted run's."""
        if not self.run["tensorboard"]:
            return None
        from torch.utils.tensorboard import SummaryWriter
        return SummaryWriter(str(self.rundir.path / "tensorboard"), purge_step=self.env_steps or None)

    def _log_eval(self, row: dict) -> None:
        """One line per evaluation where no progress bar is shown (Snakemake, SLURM, a pipe)."""
        wall, last_steps, last_wall = row["wall_s"], *self.last_logged
        steps = row["env_steps"] - last_steps
        rate = f"{steps / (wall - last_wall):.0f} steps/s" if steps > 0 and wall > last_wall else "-"
        self.last_logged = (row["env_steps"], wall)
        win = "-" if row["win_rate"] is None else f"{row['win_rate']:.2f}"
        print(f"[{self.config['algo']} {self.config['map']} seed {self.seed}] step {row['env_steps']}/{self.steps}"
              f"  win {win}  return {row['return_mean']:.3f} ({row['eval_mode']})  wall {wall:.0f} s  {rate}",
              file=sys.stderr, flush=True)

    def _tb_scalars(self, prefix: str, row: dict) -> None:
        if self.tb is None:
            return
        for key, value in row.items():
            if key not in ("env_steps", "update") and isinstance(value, (int, float)) and not isinstance(value, bool):
                self.tb.add_scalar(f"{prefix}/{key}", value, row["env_steps"])

    def _loop(self, every: int) -> None:
        from tqdm import tqdm
        bar = tqdm(total=self.steps, initial=min(self.env_steps, self.steps), unit="step", dynamic_ncols=True,
                   disable=not self._show_progress(), desc=f"{self.config['algo']} {self.config['map']} s{self.seed}")
        E = self.run["num_envs"]
        pending: list[dict] = []
        log_lines = not self._show_progress()
        self.last_logged = (self.env_steps, self._wall())
        if log_lines:
            start = f"resumed at step {self.env_steps}" if self.env_steps else "started"
            print(f"[{self.config['algo']} {self.config['map']} seed {self.seed}] {start}, budget {self.steps} steps, "
                  f"device {self.device}", file=sys.stderr, flush=True)
        while True:
            if self.env_steps >= self.next_eval or self.env_steps >= self.steps:
                if not self.eval_rows or self.eval_rows[-1]["env_steps"] != self.env_steps:
                    self._flush_train(pending)
                    row = self.evaluate(self.env_steps)
                    self.eval_rows.append(row)
                    self.rundir.write_eval(self.eval_rows, self.eval_episode_rows)
                    bar.set_postfix(win=row["win_rate"], ret=f"{row['return_mean']:.2f}")
                    self._tb_scalars("eval", row)
                    if log_lines:
                        self._log_eval(row)
                while self.next_eval <= self.env_steps:
                    self.next_eval += self.run["eval_every"]
            if self.env_steps >= self.next_checkpoint or self.env_steps >= self.steps:
                self._flush_train(pending)
                self._checkpoint()
                self.rundir.update_meta(**self._progress_meta())
                while self.next_checkpoint <= self.env_steps:
                    self.next_checkpoint += every
            if self.env_steps >= self.steps:
                break
            actions, self.carry = self.algo.act(self.ts, self.carry, training=True)
            ts_next = self.env.step(actions)
            self.algo.observe(self.ts, actions, ts_next)
            self.ts = ts_next
            self.env_steps += E
            bar.update(E)
            for metrics in self.algo.update(self.env_steps):
                self.updates += 1
                check_finite(metrics, self.updates)
                pending.append({"env_steps": self.env_steps, "update": self.updates, **metrics,
                                "wall_s": round(self._wall(), 3)})
        self._flush_train(pending)
        bar.close()

    def _flush_train(self, pending: list[dict]) -> None:
        if not pending:
            return
        fixed = {"env_steps", "update", "wall_s"}
        keys = {k for row in pending for k in row} - fixed
        if self.train_columns is None:
            self.train_columns = ["env_steps", "update"] + sorted(keys) + ["wall_s"]
        elif keys - set(self.train_columns):  # new metrics: widen the file instead of dropping them
            known = [c for c in self.train_columns if c not in fixed]
            self.train_columns = ["env_steps", "update"] + sorted(set(known) | keys) + ["wall_s"]
            self.rundir.rewrite_train(self.train_columns)
        self.rundir.append_train(pending, self.train_columns)
        for row in pending:
            self._tb_scalars("train", row)
        self.train_rows += len(pending)
        pending.clear()
