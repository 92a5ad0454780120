"""Do the defaults work for a new architecture? A/B of training defaults against dense training, on digits.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/new_user_defaults.py

The architecture is one no recipe was tuned for (depthwise, dilated and 1x3 convolutions, as a new user
might write). Each variant is ``lilnetx.train`` with ``TrainConfig(epochs=15)`` plus the variant's changes
(what ``lilnetx train NAME --dataset digits --epochs 15`` runs), over three seeds; the dense baseline is the
same network trained with plain Adam on the same schedule. Writes ``benchmarks/results/new_user_defaults.json``.
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

import lilnetx
from lilnetx.training import TrainConfig, Trainer, evaluate, seed_everything, warmup_cosine
from plugins.datasets import digits

OUT = Path(__file__).resolve().parent / "results" / "new_user_defaults.json"
EPOCHS = 15
SEEDS = (0, 1, 2)
VARIANTS: dict[str, tuple[dict, dict]] = {  # name -> (TrainConfig changes, reparameterize changes)
    "defaults (lr 6e-2, density lr 1e-3)": ({}, {}),
    "paper's lr 1e-2 and density lr 1e-4 (old defaults)": ({"lr": 1e-2, "density_lr": 1e-4}, {}),
    "lr 6e-2, density lr 1e-4": ({"density_lr": 1e-4}, {}),
    "defaults, decoder_lr = lr / 10": ({"decoder_lr": 6e-3}, {}),
    "defaults, latent_bound=1": ({}, {"latent_bound": 1.0}),
    "defaults without warm-up": ({"warmup_epochs": 0}, {}),
}


def new_user_net() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding=2, dilation=2, groups=16, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 32, (1, 3), padding=(0, 1), bias=False), nn.BatchNorm2d(32), nn.ReLU(),
        nn.Conv2d(32, 32, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10),
    )


def dense(data, seed: int) -> float:
    seed_everything(seed)
    model = new_user_net()
    loader = DataLoader(data.train, batch_size=128, shuffle=True, generator=torch.Generator().manual_seed(seed))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    config = TrainConfig(epochs=EPOCHS)
    steps = EPOCHS * len(loader)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(steps, int(config.warmup_epochs * len(loader))))
    for _ in range(EPOCHS):
        model.train()
        for x, y in loader:
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
            sched.step()
    return evaluate(model, DataLoader(data.test, batch_size=500))["top1"]


def lilnetx_run(data, seed: int, train_changes: dict, reparam_changes: dict) -> dict:
    seed_everything(seed)
    model = lilnetx.reparameterize(new_user_net(), **reparam_changes)
    config = TrainConfig.from_dict({"epochs": EPOCHS, "seed": seed, "device": "cpu", **train_changes})
    result = Trainer(model, data.train, data.test, config, progress=False).fit()
    return {"top1": result["top1"], "est_bytes": result["est_bytes"], "weight_sparsity": result["weight_sparsity"]}


def main() -> None:
    data = digits()
    start = time.perf_counter()
    rows = {"dense": {"top1": [dense(data, s) for s in SEEDS]}}
    for name, (train_changes, reparam_changes) in VARIANTS.items():
        runs = [lilnetx_run(data, s, train_changes, reparam_changes) for s in SEEDS]
        rows[name] = {k: [r[k] for r in runs] for k in runs[0]}
        print(name, {k: round(statistics.mean(v), 4) for k, v in rows[name].items()}, flush=True)
    summary = {name: {f"mean_{k}": statistics.mean(v) for k, v in row.items()} for name, row in rows.items()}
    OUT.write_text(json.dumps({"epochs": EPOCHS, "seeds": list(SEEDS), "test_images": len(data.test),
                               "seconds": round(time.perf_counter() - start, 1), "runs": rows,
                               "summary": summary}, indent=1) + "\n")
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
