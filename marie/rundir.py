"""The run directory (a contract, see docs/design.md): config.yaml, meta.json, eval.csv, eval_episodes.csv,
train.csv, checkpoint/ (state.pt and previous.pt), run.log (appended to by the workflow, one block per attempt).

Every file is written atomically (write to a temporary file in the same folder, fsync, rename), so a
killed run never leaves a half-written file that looks complete. train.csv is appended to for speed;
a resume truncates it to the rows its checkpoint knew about, so resumed logs equal uninterrupted ones.
Two checkpoints are kept: a latest one that cannot be read (a full disk, a half-copied file) falls back
to the one before it.
"""
from __future__ import annotations

import csv
import io
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any, Iterable

import torch
import yaml

from marie.config import ADDED_KEYS, with_added_keys
from marie.errors import UserError

_UMASK = os.umask(0)
os.umask(_UMASK)

# eval.csv: one row per evaluation point. win_rate .. length_mean are those of the protocol's action mode
# (eval_mode, from run.eval_sample); both modes are always measured, in their own columns.
EVAL_COLUMNS = ["env_steps", "win_rate", "return_mean", "return_std", "episodes", "length_mean", "wall_s",
                "eval_mode", "win_rate_greedy", "return_mean_greedy", "win_rate_sampled", "return_mean_sampled"]
# eval_episodes.csv: one row per evaluation episode and action mode (won is empty where an env has no win).
EVAL_EPISODE_COLUMNS = ["env_steps", "mode", "episode", "won", "return", "length"]


def default_run_dir(root: str | Path, env: str, map_name: str, algo: str, seed: int) -> Path:
    return Path(root) / env / map_name / algo / f"seed{seed}"


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; results are meant to be shared
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_torch_save(obj: Any, path: Path) -> None:
    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())


def rows_to_csv(columns: list[str], rows: Iterable[dict]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in columns})
    return buf.getvalue()


class RunDir:
    """Paths and atomic I/O of one run."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.config_file = self.path / "config.yaml"
        self.meta_file = self.path / "meta.json"
        self.eval_file = self.path / "eval.csv"
        self.eval_episodes_file = self.path / "eval_episodes.csv"
        self.train_file = self.path / "train.csv"
        self.checkpoint_dir = self.path / "checkpoint"
        self.checkpoint_file = self.checkpoint_dir / "state.pt"
        self.previous_checkpoint_file = self.checkpoint_dir / "previous.pt"
        self.log_file = self.path / "run.log"   # appended to by the workflow, one block per attempt
        self.checkpoint_note = ""                # set by load_checkpoint when it fell back to previous.pt
        self.loaded_from = None                  # the checkpoint file load_checkpoint read
        self.analysis_dir = self.path / "analysis"

    # -- configuration ---------------------------------------------------------------------------
    def existing_config(self) -> dict | None:
        if not self.config_file.exists():
            return None
        with open(self.config_file) as f:
            return with_added_keys(yaml.safe_load(f))   # keys added since it was written, at their old behaviour

    def check_compatible(self, config: dict) -> None:
        """Refuse to mix two different configurations in one directory."""
        old = self.existing_config()
        if old is not None and old != config:
            diff = sorted(_diff_keys(old, config))
            if all(key in ADDED_KEYS.get(config.get("algo"), {}) for key in diff):  # keys with a new default only
                sets = " ".join(f"--set {key}={json.dumps(_get(old, key))}" for key in diff)
                raise UserError(f"{self.path} holds a run from before the default of {', '.join(diff)} changed; "
                                f"resume it with {sets}, or choose another --out")
            raise UserError(f"{self.path} holds a run of a different configuration (differs in: "
                            f"{', '.join(diff[:6])}); choose another --out or delete that directory")

    def write_config(self, config: dict) -> None:
        atomic_write_text(self.config_file, yaml.safe_dump(config, sort_keys=False))

    # -- meta ------------------------------------------------------------------------------------
    def read_meta(self) -> dict:
        if not self.meta_file.exists():
            return {}
        with open(self.meta_file) as f:
            return json.load(f)

    def write_meta(self, meta: dict) -> None:
        atomic_write_text(self.meta_file, json.dumps(meta, indent=2, sort_keys=True, default=str) + "\n")

    def update_meta(self, **fields) -> dict:
        meta = self.read_meta()
        meta.update(fields)
        self.write_meta(meta)
        return meta

    # -- logs ------------------------------------------------------------------------------------
    def write_eval(self, rows: list[dict], episode_rows: list[dict]) -> None:
        atomic_write_text(self.eval_episodes_file, rows_to_csv(EVAL_EPISODE_COLUMNS, episode_rows))
        atomic_write_text(self.eval_file, rows_to_csv(EVAL_COLUMNS, rows))

    def rewrite_train(self, columns: list[str]) -> None:
        """Rewrite train.csv under these columns: a wider header when a metric is first reported after the
        first write (e.g. the policy's losses once a staged warm-up ends; earlier rows get empty cells), or
        the checkpoint's header on resume."""
        if not self.train_file.exists():
            return
        with open(self.train_file, newline="") as f:
            rows = list(csv.DictReader(f))
        atomic_write_text(self.train_file, rows_to_csv(columns, rows))

    def append_train(self, rows: list[dict], columns: list[str]) -> None:
        """Append rows under the file's columns (rewrite_train first where rows bring new keys)."""
        new_file = not self.train_file.exists() or self.train_file.stat().st_size == 0
        with open(self.train_file, "a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
            if new_file:
                writer.writeheader()
            for row in rows:
                writer.writerow(row)
            f.flush()

    def train_columns(self) -> list[str] | None:
        if not self.train_file.exists() or self.train_file.stat().st_size == 0:
            return None
        with open(self.train_file) as f:
            return next(csv.reader(f), None)

    def truncate_train(self, n_rows: int) -> None:
        """Keep the header and the first n_rows data rows (drop rows written after the checkpoint)."""
        if not self.train_file.exists():
            return
        with open(self.train_file) as f:
            lines = f.readlines()
        keep = lines[: 1 + n_rows] if n_rows > 0 else lines[:1]
        atomic_write_text(self.train_file, "".join(keep))

    # -- checkpoint ------------------------------------------------------------------------------
    def save_checkpoint(self, state: dict) -> None:
        """Write the new checkpoint; the one it replaces becomes previous.pt."""
        if self.checkpoint_file.exists():
            os.replace(self.checkpoint_file, self.previous_checkpoint_file)
        atomic_torch_save(state, self.checkpoint_file)

    def load_checkpoint(self) -> dict | None:
        """The latest readable checkpoint (None if there is none); a corrupt latest one falls back to
        previous.pt, saying so on stderr and in `checkpoint_note`."""
        problems = []
        for path in (self.checkpoint_file, self.previous_checkpoint_file):
            if not path.exists():
                continue
            try:
                state = torch.load(path, map_location="cpu", weights_only=False)
            except Exception as exc:  # truncated or corrupt: never resume from it
                problems.append(f"{path.name} is corrupt or truncated ({type(exc).__name__})")
                continue
            if problems:  # keep the unreadable file aside, so that the next save does not rotate it into previous.pt
                os.replace(self.checkpoint_file, self.checkpoint_dir / "state.pt.corrupt")
                self.checkpoint_note = f"{problems[0]} (kept as state.pt.corrupt); resumed from {path.name}"
                print(f"{self.path}: {self.checkpoint_note}", file=sys.stderr)
            self.loaded_from = path.name
            return state
        if problems:
            raise UserError(f"{self.checkpoint_dir}: no readable checkpoint ({'; '.join(problems)}); "
                            f"delete {self.checkpoint_dir} to start the run afresh")
        return None


def _get(config: dict, dotted: str) -> Any:
    for key in dotted.split("."):
        config = config[key]
    return config


def _diff_keys(a: Any, b: Any, prefix: str = "") -> set[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = set()
        for k in set(a) | set(b):
            out |= _diff_keys(a.get(k), b.get(k), f"{prefix}{k}.")
        return out
    return set() if a == b else {prefix.rstrip(".")}
