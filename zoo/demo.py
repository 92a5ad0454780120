"""``python -m zoo.demo``: the zoo end to end, on real data, through the public command line.

1. Seed the catalog (``registry.db``) from the shipped artifacts in ``zoo_artifacts/``: each one is decoded
   and its accuracy measured on the real MNIST test set (``lilnetx zoo seed``), then list it.
2. Show, for every entry, the accuracy its header claims next to the one measured here (any entry not
   measured yet, e.g. from an older catalog, is measured now with ``lilnetx zoo verify``).
3. Train a small LilNetX model on scikit-learn digits, export it to a ``.lnx`` file, add it to the zoo
   (measured on the digits test split) and print its model card.

Every step's exit code is checked: the first failing step stops the demo with a non-zero exit code.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path

import torch

from zoo.cli import main as cli
from zoo.formatting import percent
from zoo.service import Zoo

DEMO_RUN = Path("runs/demo-digits")


class DemoFailed(SystemExit):
    """A demo step failed; its message names the step (``SystemExit``: the exit code is non-zero)."""


def step(argv: Sequence[str]) -> None:
    """Run ``lilnetx ARGV...``; raise :class:`DemoFailed` unless it exits 0."""
    code = cli(list(argv))
    if code != 0:
        raise DemoFailed(f"demo step failed with exit code {code}: lilnetx {' '.join(argv)}")


def claimed_vs_measured() -> None:
    """Every entry's claimed and measured top-1; entries not measured yet are measured now."""
    print("\n== Accuracy: what each artifact's header claims, and what was measured here ==")
    for row in Zoo.from_env().list():
        if not row["accuracy"]["measured"]:
            step(["zoo", "verify", row["name"]])
    rows = Zoo.from_env().list()
    for row in rows:
        claimed, on = row["claimed_accuracy"] or {}, row["measured_on"]
        print(f"{row['name']:<34} {row['bytes']:>7,} B  claimed top-1 {percent(claimed.get('top1')):>7}  "
              f"measured {percent(row['accuracy']['top1']):>7} on {on['images']:,} {on['dataset']} test images")


def train_and_publish_demo() -> None:
    """Train, export, add and describe a small model, all through the public command line."""
    print("\n== Train LeNet-300-100 on digits with LilNetX, export it, add it to the zoo ==")
    shutil.rmtree(DEMO_RUN, ignore_errors=True)
    step(["train", "lenet_300_100", "--dataset", "digits", "--epochs", "12", "--batch-size", "64",
          "--lambda-rate", "0.5", "--density-lr", "1e-2", "--lr", "2e-2", "--out", str(DEMO_RUN),
          "--no-progress"])
    step(["export", str(DEMO_RUN), "-o", str(DEMO_RUN / "model.lnx")])
    step(["zoo", "add", str(DEMO_RUN / "model.lnx"), "--tag", "digits-demo", "--replace"])
    step(["zoo", "show", "lenet_300_100.digits-demo"])


def main() -> None:
    torch.manual_seed(0)
    print("== The zoo: the shipped models, measured on the real MNIST test set ==")
    step(["zoo", "seed"])
    step(["zoo", "list"])
    claimed_vs_measured()
    train_and_publish_demo()
    print("\nNext: `lilnetx zoo list`, `lilnetx zoo show NAME`, `lilnetx zoo verify NAME`, "
          "`lilnetx inspect FILE.lnx`, `python -c 'import zoo; print(zoo.load(\"lenet5_caffe.mnist-lam20\"))'`")


if __name__ == "__main__":
    main()
