"""Command line (a contract, see docs/design.md):

    marie run --algo A --env E --map M --seed S --steps N [--preset P] [--out DIR] [--device D]
              [--set key=value ...] [--dry-run]
    marie maps
    marie algos
    marie presets --algo A
    marie --version
"""
from __future__ import annotations

import argparse
import os
import sys

from marie.errors import UserError


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got '{text}'") from None


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit code 2
        print(f"marie: error: {message}", file=sys.stderr)
        sys.exit(2)


class _Help(argparse.RawDescriptionHelpFormatter):
    """Defaults in --help (where there is one), and the epilog's examples as written."""

    def _get_help_string(self, action):
        text = action.help or ""
        default = action.default
        if default is not None and default is not False and default != [] and default != argparse.SUPPRESS \
                and "default" not in text:
            text += " (default: %(default)s)"
        return text


RUN_EXAMPLES = """examples:
  marie run --algo random --env smax --map 3m --steps 2000
  marie run --algo mappo --map 3m --seed 1 --steps 100000 --set run.eval_every=5000 --set params.lr=1e-4
  marie run --algo marie --map 3m --steps 100000 --preset paper --device cuda
  marie run --algo marie --map 3m --steps 100000 --set params.world_model.aggregation=none --dry-run

Keys of --set: `marie run ... --dry-run` prints every run.* and params.* key of that algorithm and preset.
Running the same command again resumes a killed run from its checkpoint; a larger --steps extends a
completed run."""


def _version() -> str:
    try:
        from importlib import metadata
        return metadata.version("marie-suite")
    except Exception:
        from marie import __version__
        return __version__


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="marie", description="MARIE reproduction suite: train, evaluate and resume runs")
    p.add_argument("--version", action="version", version=f"marie {_version()}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    r = sub.add_parser("run", help="train and evaluate one algorithm on one map with one seed", formatter_class=_Help,
                       description="Train and evaluate one algorithm on one map with one seed.", epilog=RUN_EXAMPLES)
    r.add_argument("--algo", required=True, help="algorithm (see `marie algos`)")
    r.add_argument("--env", default="smax", help="backend: smax, smac, smacv2, mamujoco")
    r.add_argument("--map", required=True, help="map or task (see `marie maps`)")
    r.add_argument("--seed", type=_int, default=0, help="random seed")
    r.add_argument("--steps", type=_int, required=True, help="environment-step budget")
    r.add_argument("--preset", default="small", help="paper, small, smoke, ... (see `marie presets --algo A`)")
    r.add_argument("--out", default=None, help="run directory (default: results/runs/ENV/MAP/ALGO/seedSEED)")
    r.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (the same as --set run.device=D; "
                                                  "default: the preset's run.device, cpu)")
    r.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value (repeatable), e.g. --set run.eval_every=5000")
    r.add_argument("--dry-run", action="store_true",
                   help="validate everything, print the resolved configuration and exit")
    sub.add_parser("maps", help="which maps exist on which backend")
    pr = sub.add_parser("presets", help="the presets of an algorithm, with their descriptions")
    pr.add_argument("--algo", required=True, help="algorithm (see `marie algos`)")
    sub.add_parser("algos", help="the registered algorithms")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _dispatch(args)
    except UserError as exc:
        print(f"marie: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # e.g. `marie maps | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def _dispatch(args) -> int:
    if args.command == "maps":
        from marie.envs import maps_table
        print(maps_table())
        return 0
    if args.command == "algos":
        from marie.algorithm import ALGORITHMS
        print("\n".join(sorted(ALGORITHMS)))
        return 0
    if args.command == "presets":
        from marie.algorithm import algorithm_class
        from marie.config import preset_descriptions
        presets = preset_descriptions(algorithm_class(args.algo).preset_file)
        width = max(map(len, presets), default=0)
        print("\n".join(f"{name:<{width}}  {text}".rstrip() for name, text in presets.items()))
        return 0
    from marie.config import dump_config
    from marie.runtime import Runner, prepare
    overrides = list(args.overrides) + ([f"run.device={args.device}"] if args.device is not None else [])
    config, rundir = prepare(algo=args.algo, env=args.env, map_name=args.map, seed=args.seed, steps=args.steps,
                             preset=args.preset, overrides=overrides, out=args.out)
    if args.dry_run:
        print(dump_config(config))
        return 0
    meta = Runner(config, rundir).train()
    print(f"{rundir.path}: {meta.get('status')} at {meta.get('env_steps')} env steps")
    return 0


if __name__ == "__main__":
    sys.exit(main())
