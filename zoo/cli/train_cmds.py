"""``lilnetx train`` (also under ``torchrun``)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch.distributed as dist
import yaml

import lilnetx
from zoo import pipeline
from zoo import recipe as recipes
from zoo.cli import CLIError
from zoo.cli.output import print_json

# flags that set the recipe key of the same name in `train` / `reparam`
TRAIN_FLAGS = ("lambda_rate", "lambda_slice", "lambda_l2", "epochs", "lr", "density_lr", "batch_size", "seed",
               "workers", "device")
REPARAM_FLAGS = ("structure", "init", "exclude")


def _key_value(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, yaml.safe_load(value)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("train", help="train an architecture with LilNetX",
                              description="Train ARCH on a dataset with the LilNetX objective. Settings merge "
                                          "left to right: defaults, --recipe, flags.")
    p.add_argument("arch", nargs="?", metavar="ARCH", help="architecture name (`lilnetx archs` lists them)")
    p.add_argument("--dataset", help="dataset name (`lilnetx datasets` lists them)")
    p.add_argument("--data-root", help="dataset folder, for datasets read from files")
    p.add_argument("--recipe", help="YAML recipe holding any of the settings below")
    p.add_argument("--out", required=True, metavar="RUN_DIR", help="run folder for checkpoint, logs, stats")
    p.add_argument("--resume", action="store_true", help="continue RUN_DIR with its recipe.yaml")
    for name in TRAIN_FLAGS:
        kind = type(getattr(lilnetx.TrainConfig(), name))
        p.add_argument(f"--{name.replace('_', '-')}", type=kind, help=f"train.{name}")
    p.add_argument("--structure", help="reparam.structure: slice, channel or filter")
    p.add_argument("--init", help="reparam.init: scratch or fit")
    p.add_argument("--exclude", nargs="+", metavar="PATTERN", help="reparam.exclude: layers left uncompressed")
    p.add_argument("--arch-arg", "--model-arg", action="append", type=_key_value, default=[], metavar="KEY=VALUE",
                   help="architecture option, the recipe's arch_kwargs, e.g. width=4 (repeatable; --model-arg is "
                        "its old name)")
    p.add_argument("--dataset-arg", action="append", type=_key_value, default=[], metavar="KEY=VALUE",
                   help="dataset loader option, e.g. augment=false (repeatable)")
    p.add_argument("--json", action="store_true", help="print a JSON summary (and no progress bar)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run_train)


# -- train -------------------------------------------------------------------------------------------------

def build_recipe(args: argparse.Namespace) -> dict[str, Any]:
    """Defaults, then the recipe file (or RUN_DIR/recipe.yaml on --resume), then the flags."""
    recipe = recipes.default_recipe()
    saved = Path(args.out) / "recipe.yaml"
    if args.resume:
        if args.recipe:
            raise CLIError("--resume continues RUN_DIR with its own recipe.yaml; drop --recipe")
        if not saved.is_file():
            raise CLIError(f"nothing to resume: {saved} does not exist; train without --resume first")
        recipe = recipes.merge(recipe, recipes.load(saved), str(saved))
    elif args.recipe:
        recipe = recipes.merge(recipe, recipes.load(args.recipe), args.recipe)
    flags: dict[str, Any] = {
        "arch": args.arch, "dataset": args.dataset,
        "train": {k: getattr(args, k) for k in TRAIN_FLAGS if getattr(args, k) is not None},
        "reparam": {k: getattr(args, k) for k in REPARAM_FLAGS if getattr(args, k) is not None},
        "arch_kwargs": dict(args.arch_arg),
        "dataset_kwargs": dict(args.dataset_arg),
    }
    if args.data_root:
        flags["dataset_kwargs"]["root"] = str(Path(args.data_root).resolve())  # the recipe works from any folder
    merged = recipes.merge(recipe, flags, "command line")
    for key in ("arch", "dataset"):
        if merged[key] is None:
            raise CLIError(f"no {key}: give {'ARCH' if key == 'arch' else '--dataset'} or `{key}:` in the recipe")
        if args.resume and merged[key] != recipe[key]:
            raise CLIError(f"{args.out} was trained with {key} {recipe[key]!r}, not {merged[key]!r}; "
                           "use another --out for a new run")
    recipes.check_arch_kwargs(merged)
    return merged


def run_train(args: argparse.Namespace) -> int:
    recipe = build_recipe(args)
    config = recipes.train_config(recipe)
    with pipeline.process_group(config.device):
        result = pipeline.train_run(recipe, Path(args.out), resume=args.resume,
                                    progress=not (args.json or args.no_progress))
        if dist.is_initialized() and dist.get_rank() != 0:
            return 0
    summary = {"run_dir": str(args.out), **{k: result[k] for k in (
        "arch", "dataset", "epochs", "top1", "top5", "test_loss", "params", "bits",
        "conv_slice_sparsity", "weight_sparsity", "macs_dense", "macs_sparse")}}
    if args.json:
        print_json(summary)
    else:
        kb = f"{summary['bits'] / 8192:.2f} KB" if summary["bits"] is not None else "n/a"
        print(f"{summary['arch']} on {summary['dataset']}: top-1 {summary['top1']:.4f}, latents {kb}, "
              f"weight sparsity {summary['weight_sparsity']:.4f}; run folder {args.out}")
    return 0
