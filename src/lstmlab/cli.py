"""The `lstmlab` command. Each subcommand lives beside the code it drives and registers
itself through a `register(subparsers)` function listed here."""

from __future__ import annotations

import argparse
import importlib
import sys

from .extras import MissingExtra

# module -> provides register(subparsers); imported lazily so that `lstmlab cells`
# does not pay for matplotlib or optuna.
COMMANDS = [
    "lstmlab.commands",
    "lstmlab.analysis.cli",
    "lstmlab.analysis.bench",
    "lstmlab.analysis.flow_report",
    "lstmlab.analysis.explore",
    "lstmlab.sweep.cli",
    "lstmlab.train.cli",
    "lstmlab.bench",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lstmlab", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for mod in COMMANDS:
        importlib.import_module(mod).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args) or 0
    except ValueError as e:  # bad input from the user: one clear line, no traceback
        print(f"lstmlab {args.command}: error: {e}", file=sys.stderr)
        return 2
    except MissingExtra as e:  # an optional dependency: which extra installs it
        print(f"lstmlab {args.command}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as e:  # Ctrl-C: what was kept (if anything), and the usual status
        print(f"lstmlab {args.command}: interrupted{': ' + str(e) if str(e) else ''}", file=sys.stderr)
        return 130
