"""Published results to compare with, as their authors report them (claims, not measured here).

Source: the EPR paper (Oktay, Ballé, Singh, Shrivastava, "Scalable Model Compression by Entropy Penalized
Reparameterization", ICLR 2020), as quoted in the project's METHOD.md, section 6. KB = 1,000 bytes.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Reference:
    """One published (claimed) point: a whole model's file size and its top-1 accuracy."""

    method: str
    arch: str
    dataset: str
    size_kb: float
    top1_pct: float
    source: str

    @property
    def label(self) -> str:
        return f"{self.method} {self.arch} (published, claimed)"


_EPR = "EPR (ICLR 2020), as quoted in METHOD.md §6"

PUBLISHED: tuple[Reference, ...] = (
    Reference("EPR", "lenet5_caffe", "mnist", 2.84, 99.0, _EPR),
    Reference("EPR", "lenet_300_100", "mnist", 8.56, 98.1, _EPR),
)


def references_for(datasets: set[str] | None = None) -> list[Reference]:
    """The published points on ``datasets`` (all of them when ``None``)."""
    return [r for r in PUBLISHED if datasets is None or r.dataset in datasets]
