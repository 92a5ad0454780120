"""Dense baseline of a recipe: the same architecture and data trained without LilNetX, on the same schedule.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/dense_baseline.py RECIPE.yaml

The plain model (``zoo.create_model`` with the dataset's classes, input size and channels) is trained with one
Adam at the recipe's ``lr``, ``batch_size``, ``epochs``, warm-up and cosine schedule and ``seed``, and
evaluated on the full test split. Adds or replaces the recipe's row in ``benchmarks/results/dense_baseline.json``
(top-1, top-5, seconds of training on this machine, and the recipe file's own settings).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

import zoo
from lilnetx.training import TrainConfig, evaluate, seed_everything, warmup_cosine
from zoo import recipe as recipes
from zoo import registry

OUT = Path(__file__).resolve().parent / "results" / "dense_baseline.json"


def train_dense(recipe: dict, progress: bool = True) -> dict:
    """Train the recipe's architecture densely; top-1 / top-5 on the test split and the training seconds."""
    config = TrainConfig.from_dict(recipe["train"])
    data = registry.get_dataset(recipe["dataset"], **(recipe.get("dataset_kwargs") or {}))
    kwargs = {**(recipe.get("arch_kwargs") or {}), **{k: getattr(data, k) for k in recipes.FROM_DATASET}}
    seed_everything(config.seed)
    model = zoo.create_model(recipe["arch"], **kwargs)
    loader = DataLoader(data.train, batch_size=config.batch_size, shuffle=True,
                        generator=torch.Generator().manual_seed(config.seed))
    opt = torch.optim.Adam(model.parameters(), lr=config.lr)
    steps = config.epochs * len(loader)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(steps, int(config.warmup_epochs * len(loader))))
    start = time.perf_counter()
    for epoch in range(config.epochs):
        model.train()
        for x, y in loader:
            opt.zero_grad()
            F.cross_entropy(model(x), y, label_smoothing=config.label_smoothing).backward()
            opt.step()
            sched.step()
        if progress:
            print(f"epoch {epoch + 1}: {time.perf_counter() - start:.0f} s", flush=True)
    seconds = time.perf_counter() - start
    metrics = evaluate(model, DataLoader(data.test, batch_size=500))
    return {"arch": recipe["arch"], "dataset": recipe["dataset"], "epochs": config.epochs,
            "top1": metrics["top1"], "top5": metrics["top5"], "test_images": len(data.test),
            "train_seconds": round(seconds, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recipe", type=Path)
    args = parser.parse_args()
    recipe = recipes.merge(recipes.default_recipe(), recipes.load(args.recipe), str(args.recipe))
    row = {**train_dense(recipe), "recipe": recipes.load(args.recipe)}
    results = json.loads(OUT.read_text()) if OUT.exists() else {}
    results[args.recipe.stem] = row
    OUT.write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")
    print(json.dumps(row))


if __name__ == "__main__":
    main()
