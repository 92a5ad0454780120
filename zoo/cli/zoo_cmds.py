"""``lilnetx zoo ...``: list, show, pull, add, verify, seed, remove, reindex and publish zoo entries."""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

from zoo.cli.output import print_json, print_table
from zoo.formatting import percent
from zoo.model_card import accuracy_text, to_markdown, to_text
from zoo.names import split_name
from zoo.seed import seed_on_first_use, seed_shipped
from zoo.service import Zoo


def _zoo(args: argparse.Namespace, *, first_use: bool = False) -> Zoo:
    """The environment's zoo with this command's ``--data-root`` / ``--measure-timeout``; ``first_use`` seeds
    an empty, never seeded catalog once (``zoo.seed.seed_on_first_use``)."""
    zoo = Zoo.from_env()
    if getattr(args, "data_root", None):
        zoo.data_root = Path(args.data_root)
    if getattr(args, "measure_timeout", None) is not None:
        zoo.measure_timeout_s = args.measure_timeout
    if first_use:
        if isinstance(getattr(args, "name", None), str):
            split_name(args.name)  # a malformed name fails before the catalog is seeded
        seed_on_first_use(zoo)
    return zoo


def _top1(row: dict[str, Any]) -> str:
    top1 = row["accuracy"]["top1"]
    if top1 is None:
        return "n/a"
    return percent(top1) + ("" if row["accuracy"]["measured"] else " (claimed)")


def _share(value: float | None) -> str:
    return percent(value, 1, missing="—")


def _list(args: argparse.Namespace) -> int:
    rows = _zoo(args, first_use=True).list(args.pattern, dataset=args.dataset, max_bytes=args.max_bytes,
                               min_accuracy=args.min_accuracy, min_slice_sparsity=args.min_slice_sparsity)
    if args.json:
        print_json(rows)
        return 0
    if not rows:
        print("no zoo entries match (add one with `lilnetx zoo add FILE.lnx --tag DATASET-...`)")
        return 0
    table = [("NAME", "DATASET", "BYTES", "TOP-1", "VS FP32", "ZERO SLICES", "ZERO WEIGHTS", "MACS SAVED")]
    table += [(r["name"], r["dataset"], f"{r['bytes']:,}", _top1(r), f"{r['compression_ratio']:.1f}x",
               _share(r["conv_slice_sparsity"]), _share(r["weight_sparsity"]), _share(r["macs_saved"]))
              for r in rows]
    print_table(table, right_align_from=2)
    if any(not r["accuracy"]["measured"] and r["top1"] is not None for r in rows):
        print("(claimed): top-1 from the artifact's header, not measured here; `lilnetx zoo verify NAME` "
              "measures it")
    return 0


def _show(args: argparse.Namespace) -> int:
    card = _zoo(args, first_use=True).card(args.name)
    if args.json:
        print_json(card)
    else:
        print(to_markdown(card) if args.markdown else to_text(card))
    return 0


def _pull(args: argparse.Namespace) -> int:
    print(_zoo(args, first_use=True).pull(args.name, args.output))
    return 0


def _add(args: argparse.Namespace) -> int:
    source, zoo = Path(args.source), _zoo(args)
    if source.is_dir():  # a `lilnetx train` run folder: export it first
        from zoo.pipeline import export_run

        with tempfile.TemporaryDirectory() as tmp:
            export_run(source, Path(tmp) / "model.lnx")
            name = zoo.add(Path(tmp) / "model.lnx", args.tag, replace=args.replace)
    elif source.is_file():
        name = zoo.add(source, args.tag, replace=args.replace)
    else:
        raise FileNotFoundError(f"{source} does not exist: give an .lnx file or a `lilnetx train` run folder")
    card = zoo.card(name)
    print(f"added {name}" + (f": top-1 / top-5 {accuracy_text(card)}" if card["accuracy"]["measured"] else ""))
    return 0


def _verify(args: argparse.Namespace) -> int:
    result = _zoo(args, first_use=True).verify(args.name, timeout_s=args.measure_timeout)
    if args.json:
        print_json(result)
    else:
        print(f"{args.name}: top-1 / top-5 {accuracy_text(result)}")
    if result["claim_error"]:
        print(f"lilnetx: {args.name}: the header's claim is not believable: {result['claim_error']}",
              file=sys.stderr)
        return 1
    return 0


def _seed(args: argparse.Namespace) -> int:
    report = seed_shipped(_zoo(args), force=args.force)
    if args.json:
        print_json(vars(report))
    elif report.up_to_date:
        print("the catalog is already seeded from the shipped models (--force seeds again)")
    else:
        print(f"seeded {len(report.names)} shipped models" + (f", skipped {len(report.skipped)} (see the "
                                                                "warnings)" if report.skipped else ""))
    return 1 if report.skipped else 0


def _remove(args: argparse.Namespace) -> int:
    _zoo(args).remove(args.name)
    print(f"removed {args.name} (its artifact stays in the cache)")
    return 0


def _reindex(args: argparse.Namespace) -> int:
    report = _zoo(args).reindex()
    if args.json:
        print_json(vars(report))
    else:
        print(f"reindexed: {len(report.added)} added, {len(report.removed)} removed, "
              f"{len(report.skipped)} skipped (artifact missing, undecodable or not what its name says: see the "
              "warnings)")
    return 0


def _publish(args: argparse.Namespace) -> int:
    index, count = _zoo(args).publish(args.dest)
    print(f"published {count} entries; index at {index}")
    return 0


def _measure_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-root", help="folder of a dataset read from files (or holding one sub-folder per "
                                       "dataset), for measuring accuracy (default: $LILNETX_DATA_ROOT)")
    p.add_argument("--measure-timeout", type=float, metavar="SECONDS",
                   help="time limit for measuring accuracy; 0 skips it (default: $LILNETX_MEASURE_TIMEOUT or "
                        "300)")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``lilnetx zoo`` and its sub-commands."""
    zoo = subparsers.add_parser("zoo", help="browse, pull and manage the model zoo",
                                description="Browse, pull and manage the model zoo (catalog: LILNETX_DB, "
                                            "store: LILNETX_HOME, remote: LILNETX_ZOO_URL).")
    sub = zoo.add_subparsers(dest="zoo_command", metavar="ZOO_COMMAND", required=True)

    p = sub.add_parser("list", help="list zoo entries")
    p.add_argument("pattern", nargs="?", default="*", help="fnmatch pattern over ARCH.TAG names (default *)")
    p.add_argument("--dataset", help="only entries trained on this dataset")
    p.add_argument("--max-bytes", type=int, help="only artifacts of at most this many bytes")
    p.add_argument("--min-accuracy", type=float, help="only entries with top-1 at least this fraction (0.98)")
    p.add_argument("--min-slice-sparsity", type=float, help="only entries with at least this slice sparsity")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=_list)

    p = sub.add_parser("show", help="show an entry's model card")
    p.add_argument("name", help="ARCH.TAG")
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="the card as JSON")
    fmt.add_argument("--markdown", action="store_true", help="the full card as Markdown")
    p.set_defaults(func=_show)

    p = sub.add_parser("pull", help="download (or find in the cache) and verify an entry's artifact")
    p.add_argument("name", help="ARCH.TAG")
    p.add_argument("-o", "--output", help="copy the .lnx into this folder (or to this .lnx path)")
    _measure_options(p)
    p.set_defaults(func=_pull)

    p = sub.add_parser("add", help="verify an artifact (or export a run) and add it to the zoo as ARCH.TAG")
    p.add_argument("source", metavar="RUN_DIR|FILE.lnx", help="an .lnx file or a `lilnetx train` run folder")
    p.add_argument("--tag", required=True, help="the tag, starting with the dataset, e.g. mnist-lam1e-3")
    p.add_argument("--replace", action="store_true", help="point an existing entry at this artifact")
    _measure_options(p)
    p.set_defaults(func=_add)

    p = sub.add_parser("verify", help="measure an entry's accuracy on its test set now (exit 1 if its header "
                                      "claims more than 0.5 points above it)")
    p.add_argument("name", help="ARCH.TAG")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    _measure_options(p)
    p.set_defaults(func=_verify)

    p = sub.add_parser("seed", help="add (and measure) the models shipped in zoo_artifacts/")
    p.add_argument("--force", action="store_true", help="seed even if the shipped folder did not change")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    _measure_options(p)
    p.set_defaults(func=_seed)

    p = sub.add_parser("remove", help="remove an entry from the catalog (the artifact stays cached)")
    p.add_argument("name", help="ARCH.TAG")
    p.set_defaults(func=_remove)

    p = sub.add_parser("reindex", help="rebuild the catalog from the artifact store")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=_reindex)

    p = sub.add_parser("publish", help="write the zoo as a static site (index.json + artifacts)")
    p.add_argument("dest", help="a folder or fsspec URL (s3://bucket/zoo, ...)")
    p.set_defaults(func=_publish)
