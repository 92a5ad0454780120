"""``make run``: the zoo end to end, on real data, in about two minutes.

1. Seed the catalog (``registry.db``) from the shipped artifacts in ``zoo_artifacts/`` and list it.
2. Pull every entry (sha256-verified), decode it and measure its top-1 on the real test set, next to the
   figure the catalog holds (both computed, never typed in).
3. Train a small LilNetX model on scikit-learn digits, export it to a ``.lnx`` file, add it to the zoo and
   print its model card.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
from torch.utils.data import DataLoader

import lilnetx
from zoo import registry
from zoo.cli import main as cli
from zoo.service import Zoo

DEMO_RUN = Path("runs/demo-digits")


def measure_catalog(zoo: Zoo) -> None:
    """Decode every entry and evaluate it on its dataset's test split."""
    print("\n== Every entry, decoded from its artifact and evaluated on the real test set ==")
    for row in zoo.list():
        path = zoo.pull(row["name"])
        header = lilnetx.read_header(path)
        data = registry.get_dataset(header["dataset"], augment=False)
        model = lilnetx.load(path)
        measured = lilnetx.evaluate(model, DataLoader(data.test, batch_size=500))["top1"]
        stats = lilnetx.stats(model, tuple(header["input_size"]))
        print(f"{row['name']:<34} {path.stat().st_size:>7,} B  catalog top-1 {100 * row['top1']:.2f}%  "
              f"measured now {100 * measured:.2f}%  slice sparsity {100 * stats['slice_sparsity']:.1f}%  "
              f"MACs {stats['macs_sparse']:,} of {stats['macs_dense']:,}")


def train_and_publish_demo() -> None:
    """Train, export, add and describe a small model, all through the public command line."""
    print("\n== Train LeNet-300-100 on digits with LilNetX, export it, add it to the zoo ==")
    shutil.rmtree(DEMO_RUN, ignore_errors=True)
    cli(["train", "lenet_300_100", "--dataset", "digits", "--epochs", "12", "--batch-size", "64",
         "--lambda-rate", "0.5", "--density-lr", "1e-2", "--lr", "2e-2", "--out", str(DEMO_RUN), "--no-progress"])
    cli(["export", str(DEMO_RUN), "-o", str(DEMO_RUN / "model.lnx")])
    cli(["zoo", "add", str(DEMO_RUN / "model.lnx"), "--tag", "digits-demo", "--replace"])
    cli(["zoo", "show", "lenet_300_100.digits-demo"])


def main() -> None:
    torch.manual_seed(0)
    zoo = Zoo.from_env()
    print("== The zoo (seeded from zoo_artifacts/ into registry.db) ==")
    cli(["zoo", "list"])
    measure_catalog(zoo)
    train_and_publish_demo()
    print("\nNext: `lilnetx zoo list`, `lilnetx zoo show NAME`, `lilnetx inspect FILE.lnx`, "
          "`python -c 'import zoo; print(zoo.load(\"lenet5_caffe.mnist-lam20\"))'`")


if __name__ == "__main__":
    main()
