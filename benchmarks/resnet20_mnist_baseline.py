"""Dense baseline of the shipped ResNet-20 MNIST recipe: the same network, data and schedule, plain weights.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/resnet20_mnist_baseline.py [--recipe recipes/resnet20.mnist-lam03.yaml]

Reads the recipe's architecture, dataset options (``pad: 2``: 32x32 inputs) and ``train`` section (epochs,
batch size, lr, warm-up, seed), builds the architecture without reparameterisation and trains it with one
Adam at ``lr`` on the warm-up + cosine schedule ``lilnetx train`` uses, shuffled as ``lilnetx train`` shuffles.
Writes ``benchmarks/results/resnet20_mnist_baseline.json``: test top-1 per epoch and the wall time.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml
from torch.utils.data import DataLoader

from lilnetx.training import TrainConfig, evaluate, seed_everything, warmup_cosine
from zoo import registry
from zoo.recipe import FROM_DATASET

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "resnet20_mnist_baseline.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", type=Path, default=ROOT / "recipes" / "resnet20.mnist-lam03.yaml")
    args = parser.parse_args()
    recipe = yaml.safe_load(args.recipe.read_text())
    config = TrainConfig.from_dict(recipe["train"])
    data = registry.get_dataset(recipe["dataset"], **(recipe.get("dataset_kwargs") or {}))
    seed_everything(config.seed)
    kwargs = {**(recipe.get("arch_kwargs") or {}), **{key: getattr(data, key) for key in FROM_DATASET}}
    model = registry.create_model(recipe["arch"], **kwargs)
    generator = torch.Generator()
    loader = DataLoader(data.train, batch_size=config.batch_size, shuffle=True, generator=generator)
    test = DataLoader(data.test, batch_size=1000)
    opt = torch.optim.Adam(model.parameters(), lr=config.lr)
    steps = config.epochs * len(loader)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(steps, int(config.warmup_epochs * len(loader))))
    epochs = []
    for epoch in range(config.epochs):
        start = time.perf_counter()
        generator.manual_seed(config.seed * 100_003 + epoch)
        model.train()
        for x, y in loader:
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
            sched.step()
        seconds = time.perf_counter() - start
        epochs.append({"epoch": epoch + 1, **evaluate(model, test), "seconds": round(seconds, 1)})
        print(json.dumps(epochs[-1]), flush=True)
    OUT.write_text(json.dumps({
        "recipe": str(args.recipe.resolve().relative_to(ROOT)), "arch": recipe["arch"],
        "dataset": recipe["dataset"], "dataset_kwargs": recipe.get("dataset_kwargs") or {},
        "input_size": list(data.input_size), "test_images": len(data.test), "optimizer": "Adam",
        "train": {k: getattr(config, k) for k in ("epochs", "batch_size", "lr", "warmup_epochs", "seed")},
        "threads": torch.get_num_threads(), "train_seconds": round(sum(e["seconds"] for e in epochs), 1),
        "top1": epochs[-1]["top1"], "epochs": epochs}, indent=1) + "\n")


if __name__ == "__main__":
    main()
