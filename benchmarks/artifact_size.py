"""Size of a trained LilNetX LeNet5-Caffe on MNIST as a `.lnx` file next to the usual ways of shipping it.

Trains (or reuses, with ``--reuse``) a LeNet5-Caffe on MNIST with the LilNetX objective, writes it as a
`.lnx` artifact, and compares the file with the same decoded network stored as an fp32 ``state_dict``,
fp32 + xz, int8 + xz and int4 + xz (per-tensor symmetric quantisation of conv / linear weights), each with
its measured MNIST test accuracy, plus the artifact's encode and decode times. Writes
``benchmarks/results/artifact_size.json`` and prints a Markdown table.

    .venv/bin/python benchmarks/artifact_size.py            # ~8 CPU minutes (12 epochs, one thread)
    .venv/bin/python benchmarks/artifact_size.py --reuse    # reuse runs/bench_lenet5/checkpoint.pt
"""

from __future__ import annotations

import argparse
import io
import json
import lzma
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch import nn
from torch.utils.data import DataLoader

import lilnetx
from lilnetx.data import DatasetBundle, mnist
from lilnetx.training import TrainConfig, Trainer, evaluate

ARCH = "lenet5_caffe"
REPARAM: dict[str, Any] = {}
TRAIN = {"epochs": 12, "batch_size": 128, "lr": 1e-2, "density_lr": 1e-2, "lambda_rate": 1.0,
         "lambda_l2": 1e-6, "lambda_slice": 1e-6, "warmup_epochs": 1, "seed": 0, "device": "cpu"}
ROOT = Path(__file__).resolve().parents[1]


def lenet5_caffe(num_classes: int = 10) -> nn.Module:
    """LeNet5-Caffe (the EPR / LilNetX MNIST network): 20 and 50 5x5 convs, 800-500-10 dense."""
    return nn.Sequential(
        nn.Conv2d(1, 20, 5), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(20, 50, 5), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(800, 500), nn.ReLU(), nn.Linear(500, num_classes),
    )


def builder(name: str, kwargs: dict[str, Any]) -> nn.Module:
    """Model builder for ``lilnetx.load``: this benchmark knows one architecture."""
    if name != ARCH:
        raise KeyError(name)
    return lenet5_caffe(**kwargs)


def build(bundle: DatasetBundle) -> nn.Module:
    """A fresh reparameterised LeNet5-Caffe carrying the metadata ``lilnetx.save`` reads."""
    torch.manual_seed(TRAIN["seed"])
    model = lilnetx.reparameterize(lenet5_caffe(bundle.num_classes), **REPARAM)
    model.lilnetx_arch = {"name": ARCH, "kwargs": {"num_classes": bundle.num_classes}}
    model.pretrained_cfg = {"input_size": list(bundle.input_size), "mean": list(bundle.mean),
                            "std": list(bundle.std), "num_classes": bundle.num_classes}
    return model


def train_or_reuse(bundle: DatasetBundle, run_dir: Path, reuse: bool) -> nn.Module:
    """Train into ``run_dir`` (the layout of ``lilnetx train``), or load its checkpoint when reusing."""
    model = build(bundle)
    checkpoint = run_dir / "checkpoint.pt"
    if not (reuse and checkpoint.is_file()):
        config = TrainConfig.from_dict(TRAIN)
        metrics = Trainer(model, bundle.train, bundle.test, config, run_dir=run_dir).fit()
        recipe = {"arch": ARCH, "arch_kwargs": model.lilnetx_arch["kwargs"], "dataset": bundle.name,
                  "reparam": REPARAM, "train": config.to_dict()}
        (run_dir / "recipe.yaml").write_text(yaml.safe_dump(recipe, sort_keys=False))
        (run_dir / "stats.json").write_text(json.dumps(metrics, indent=2))
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    model.load_state_dict(state["model"])
    return model.eval()
