"""Time per training step: LilNetX vs plain training of the same model and batch, measured side by side.

    .venv/bin/python benchmarks/train_overhead.py [--steps 60] [--out benchmarks/results/train_overhead.json]

Plain: cross-entropy + one Adam. LilNetX: the full objective (rate, L2, group lasso) + the two Adam
optimisers of the Trainer. Steps of the two are interleaved in blocks so drift of this noisy machine hits
both alike; the ratio of medians is reported.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import lilnetx
import zoo
from lilnetx.training import TrainConfig, parameter_groups

CASES = (  # (architecture, kwargs, batch, input size)
    ("lenet5_caffe", {}, 128, (1, 28, 28)),
    ("resnet20", {}, 128, (3, 32, 32)),
    ("resnet20", {"width": 4}, 128, (3, 32, 32)),
)


def plain_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> Callable[[], None]:
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)

    def step() -> None:
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return step


def lilnetx_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> Callable[[], None]:
    lilnetx.reparameterize(model)
    tensors = lilnetx.latent_tensors(model)
    groups, density = parameter_groups(model, TrainConfig(lr=1e-3))
    opt, opt_density = torch.optim.Adam(groups), torch.optim.Adam(density, lr=1e-4)

    def step() -> None:
        terms = lilnetx.objective(model, F.cross_entropy(model(x), y), tensors=tensors)
        opt.zero_grad(set_to_none=True)
        opt_density.zero_grad(set_to_none=True)
        terms["total"].backward()
        opt.step()
        opt_density.step()
    return step


def timed(step: Callable[[], None]) -> float:
    start = time.perf_counter()
    step()
    return time.perf_counter() - start


def measure(arch: str, kwargs: dict, batch: int, input_size: tuple, steps: int, block: int = 5) -> dict:
    torch.manual_seed(0)
    x, y = torch.randn(batch, *input_size), torch.randint(0, 10, (batch,))
    plain = plain_step(zoo.create_model(arch, **kwargs), x, y)
    lnx = lilnetx_step(zoo.create_model(arch, **kwargs), x, y)
    for _ in range(3):  # warm-up
        plain()
        lnx()
    times: dict[str, list[float]] = {"plain": [], "lilnetx": []}
    while len(times["plain"]) < steps:
        for name, step in (("plain", plain), ("lilnetx", lnx)):
            times[name] += [timed(step) for _ in range(block)]
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"arch": arch, "kwargs": kwargs, "batch": batch, "steps": len(times["plain"]),
            "plain_ms": 1000 * med["plain"], "lilnetx_ms": 1000 * med["lilnetx"],
            "ratio": med["lilnetx"] / med["plain"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/train_overhead.json"))
    args = parser.parse_args()
    rows = [measure(*case, steps=args.steps) for case in CASES]
    result = {"machine": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
              "torch": torch.__version__, "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print("| model | batch | plain ms/step | LilNetX ms/step | ratio |\n|---|---|---|---|---|")
    for r in rows:
        name = r["arch"] + "".join(f" {k}={v}" for k, v in r["kwargs"].items())
        print(f"| {name} | {r['batch']} | {r['plain_ms']:.1f} | {r['lilnetx_ms']:.1f} | {r['ratio']:.3f}× |")


if __name__ == "__main__":
    main()
