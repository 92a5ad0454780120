"""The ``lilnetx`` command line: ``lilnetx COMMAND ...``; ``--json`` for machines, ``--debug`` for tracebacks.

Each command module exposes ``register(subparsers)`` which adds its sub-commands and sets ``func`` on
their parsers; ``func(args)`` returns an exit code. Commands are registered from an explicit table, and a
command line that names a command imports only that command's module (listing the zoo imports no torch).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from zoo.errors import ZooError

COMMANDS = {  # command -> the module that registers it
    "train": "zoo.cli.train_cmds",
    "archs": "zoo.cli.plugin_cmds",
    "datasets": "zoo.cli.plugin_cmds",
    "plugins": "zoo.cli.plugin_cmds",
    "export": "zoo.cli.artifact_cmds",
    "compress": "zoo.cli.artifact_cmds",
    "inspect": "zoo.cli.artifact_cmds",
    "verify": "zoo.cli.artifact_cmds",
    "zoo": "zoo.cli.zoo_cmds",
    "dashboard": "zoo.cli.dashboard_cmds",
    "bench": "zoo.cli.bench_cmds",
    "build-kernels": "zoo.cli.bench_cmds",
}
COMMAND_MODULES = tuple(dict.fromkeys(COMMANDS.values()))


class CLIError(ZooError):
    """An error for people: printed as one line, exit code 2."""


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser of every command, or of ``command`` alone (it imports only that command's module)."""
    parser = argparse.ArgumentParser(prog="lilnetx", description=__doc__.splitlines()[0])
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    modules = (COMMANDS[command],) if command in COMMANDS else COMMAND_MODULES
    for module_name in modules:
        importlib.import_module(module_name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(next((a for a in argv if not a.startswith("-")), None))
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

