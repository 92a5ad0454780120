"""How much input loading the zoo's convolutions could share across output channels (PatDNN-style filter grouping).

    .venv/bin/python benchmarks/slice_overlap.py

For every shipped model, slimmed (zero channels removed), and each of its K×K convolutions (K > 1, not grouped,
more than one input channel: with one, grouping shares by arithmetic alone):
the non-zero slice mask (output channel × input channel) is split into groups of G output channels, greedily (the
channel with the most slices first, then the channels overlapping the group's input channels most). A kernel
computing a group together loads each of the group's input channels once: its loads are the sum of the groups'
unions, against one load per non-zero slice today. Running the whole union for every channel of a group would
multiply-add zeros: ``G × union / non-zero slices`` is that work against today's. Writes
``benchmarks/results/slice_overlap.json``; no timing, so the figures do not depend on the machine.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from torch import nn

import lilnetx
from zoo.names import from_filename

ROOT = Path(__file__).resolve().parents[1]
RESULT = ROOT / "benchmarks" / "results" / "slice_overlap.json"
GROUPS = (2, 4)


def grouped_loads(mask: torch.Tensor, group: int) -> int:
    """Input-channel loads of ``mask`` (O × I, bool) when ``group`` output channels are computed together."""
    rows = mask.float()
    left = list(range(mask.shape[0]))
    loads = 0
    while left:
        members = [max(left, key=lambda o: rows[o].sum().item())]
        left.remove(members[0])
        while len(members) < group and left:
            union = mask[members].any(0).float()
            best = max(left, key=lambda o: (rows[o] @ union).item())
            members.append(best)
            left.remove(best)
        loads += int(mask[members].any(0).sum())
    return loads


@torch.no_grad()
def model_overlap(path: Path) -> dict:
    """Non-zero slices of the slimmed model's K×K convolutions and, per group size, loads and multiply-adds."""
    model = lilnetx.slim(lilnetx.load(path))
    slices = 0
    loads = dict.fromkeys(GROUPS, 0)
    for module in model.modules():
        if (isinstance(module, nn.Conv2d) and module.kernel_size != (1, 1) and module.groups == 1
                and module.in_channels > 1):
            mask = module.weight.ne(0).flatten(2).any(2)
            slices += int(mask.sum())
            for group in GROUPS:
                loads[group] += grouped_loads(mask, group)
    return {"name": from_filename(path.stem), "nonzero_slices": slices,
            "groups": {str(g): {"loads": loads[g], "loads_saved": 1 - loads[g] / slices if slices else 0.0,
                                "union_macs": g * loads[g] / slices if slices else 0.0} for g in GROUPS}}


def markdown(result: dict) -> str:
    head = " | ".join(f"groups of {g}: loads saved / MACs if the union runs" for g in GROUPS)
    lines = [f"| zoo model | non-zero K×K slices | {head} |", "|---|---:|" + "---:|" * len(GROUPS)]
    for row in result["models"]:
        cells = " | ".join(f"{row['groups'][str(g)]['loads_saved']:.0%} / {row['groups'][str(g)]['union_macs']:.2f}×"
                           for g in GROUPS)
        lines.append(f"| `{row['name']}` | {row['nonzero_slices']:,} | {cells} |")
    return "\n".join(lines)


def main() -> None:
    models = [model_overlap(p) for p in sorted((ROOT / "zoo_artifacts").glob("*.lnx"))]
    result = {"groups": list(GROUPS), "models": [m for m in models if m["nonzero_slices"]]}
    RESULT.write_text(json.dumps(result, indent=1) + "\n")
    sys.stdout.write(markdown(result) + "\n")


if __name__ == "__main__":
    main()
