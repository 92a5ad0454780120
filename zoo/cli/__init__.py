"""The ``lilnetx`` command line: ``lilnetx COMMAND ...``; ``--json`` for machines, ``--debug`` for tracebacks.

Each command module exposes ``register(subparsers)`` which adds its sub-commands and sets ``func`` on
their parsers; ``func(args)`` returns an exit code. Commands are registered from an explicit tuple.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from zoo.errors import ZooError

COMMAND_MODULES = (
    "zoo.cli.train_cmds",
    "zoo.cli.artifact_cmds",
    "zoo.cli.zoo_cmds",
    "zoo.cli.dashboard_cmds",
    "zoo.cli.bench_cmds",
)


class CLIError(ZooError):
    """An error for people: printed as one line, exit code 2."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lilnetx", description=__doc__.splitlines()[0])
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("lilnetx: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # one clear line for people; --debug for the traceback
        if args.debug:
            raise
        print(f"lilnetx: error: {exc}", file=sys.stderr)
        return 2

