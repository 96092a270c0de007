"""Command line (a contract, see DESIGN.md):

    marie run --algo A --env E --map M --seed S --steps N [--preset P] [--out DIR] [--set key=value ...]
    marie maps
    marie presets --algo A
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


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="marie", description="MARIE reproduction suite")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    r = sub.add_parser("run", help="train and evaluate one algorithm on one map with one seed")
    r.add_argument("--algo", required=True)
    r.add_argument("--env", default="smax", help="backend: smax (default), smac, smacv2, mamujoco")
    r.add_argument("--map", required=True)
    r.add_argument("--seed", type=_int, default=0)
    r.add_argument("--steps", type=_int, required=True, help="environment-step budget")
    r.add_argument("--preset", default="small", help="paper, small, smoke, ... (see `marie presets --algo A`)")
    r.add_argument("--out", default=None, help="run directory (default results/runs/{env}/{map}/{algo}/seed{seed})")
    r.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set run.eval_every=5000 --set params.actor_lr=1e-4")
    r.add_argument("--dry-run", action="store_true", help="print the resolved configuration and exit")
    sub.add_parser("maps", help="which maps exist on which backend")
    pr = sub.add_parser("presets", help="the presets of an algorithm")
    pr.add_argument("--algo", required=True)
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
        from marie.config import preset_names
        print("\n".join(preset_names(algorithm_class(args.algo).preset_file)))
        return 0
    from marie.config import dump_config
    from marie.runtime import Runner, prepare
    config, rundir = prepare(algo=args.algo, env=args.env, map_name=args.map, seed=args.seed, steps=args.steps,
                             preset=args.preset, overrides=args.overrides, out=args.out)
    if args.dry_run:
        print(dump_config(config))
        return 0
    meta = Runner(config, rundir).train()
    print(f"{rundir.path}: {meta.get('status')} at {meta.get('env_steps')} env steps")
    return 0


if __name__ == "__main__":
    sys.exit(main())
