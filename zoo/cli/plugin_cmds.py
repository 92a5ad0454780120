"""``lilnetx archs``, ``lilnetx datasets``, ``lilnetx plugins``: what the plugins provide, without importing torch.

The registry lists names and metadata from the plugins' hooks; the built-in plugins import torch only when a model
or dataset is built (``tests/test_cli_light.py``).
"""

from __future__ import annotations

import argparse
from typing import Any

from zoo import registry
from zoo.cli.output import print_json, print_table
from zoo.plugins import list_plugins


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("archs", help="list architectures and the plugin providing each")
    p.add_argument("pattern", nargs="?", default="*", help="fnmatch pattern or exact name (e.g. 'timm/resnet*')")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run_archs)

    p = subparsers.add_parser("datasets", help="list datasets and the plugin providing each")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run_datasets)

    p = subparsers.add_parser("plugins", help="list loaded plugins and the hooks they implement")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run_plugins)


def _print_rows(rows: list[dict[str, Any]], columns: tuple[str, ...]) -> None:
    print_table([columns, *([r[c] for c in columns] for r in rows)])


def run_archs(args: argparse.Namespace) -> int:
    names = registry.list_architectures(args.pattern)
    if not names and not any(ch in args.pattern for ch in "*?["):
        names = [args.pattern]  # an on-demand name such as timm/<model>; unknown names raise with suggestions
    specs = [registry.get_architecture(n) for n in names]
    rows = [{"name": s.name, "plugin": s.plugin, "input_size": list(s.input_size), "num_classes": s.num_classes,
             "tags": list(s.tags), "description": s.description} for s in specs]
    if args.json:
        print_json(rows)
    elif rows:
        _print_rows([{**r, "input_size": "x".join(map(str, r["input_size"]))} for r in rows],
                     ("name", "plugin", "input_size", "num_classes", "description"))
    else:
        print(f"no architecture matches {args.pattern!r}")
    return 0


def run_datasets(args: argparse.Namespace) -> int:
    specs = [registry.get_registry().dataset(n) for n in registry.list_datasets()]
    rows = [{"name": s.name, "plugin": s.plugin, "description": s.description} for s in specs]
    if args.json:
        print_json(rows)
    else:
        _print_rows(rows, ("name", "plugin", "description"))
    return 0


def run_plugins(args: argparse.Namespace) -> int:
    rows = list_plugins()
    if args.json:
        print_json(rows)
    else:
        _print_rows([{**r, "hooks": ", ".join(r["hooks"])} for r in rows], ("name", "source", "hooks"))
    return 0
