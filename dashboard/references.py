"""Published results to compare with, as their authors report them (claims, not measured here).

Source: the EPR paper (Oktay, Ballé, Singh, Shrivastava, "Scalable Model Compression by Entropy Penalized
Reparameterization", ICLR 2020), as its authors report them. KB = 1,000 bytes.
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


_EPR = "EPR (Oktay et al., ICLR 2020), as its authors report it"

PUBLISHED: tuple[Reference, ...] = (
    Reference("EPR", "lenet5_caffe", "mnist", 2.84, 99.0, _EPR),
    Reference("EPR", "lenet_300_100", "mnist", 8.56, 98.1, _EPR),
)


_FASHION = ("Fashion-MNIST benchmark table (github.com/zalandoresearch/fashion-mnist README: submitted results, "
            "not verified by its maintainers); dense float32 networks, size = 4 bytes x the stated parameters")

# Dense networks on Fashion-MNIST as submitted to the dataset's own benchmark table: no compressed
# Fashion-MNIST result with a whole-file size could be cited precisely, so these mark what uncompressed
# networks reach (with longer training and augmentation than the zoo's recipes).
DENSE_PUBLISHED: tuple[Reference, ...] = (
    Reference("dense", "2 conv layers, 113K params", "fashion-mnist", 452.0, 92.2, _FASHION),
    Reference("dense", "DenseNet-BC, 768K params", "fashion-mnist", 3072.0, 95.4, _FASHION),
    Reference("dense", "WRN40-4, 8.9M params", "fashion-mnist", 35600.0, 96.7, _FASHION),
)


def references_for(datasets: set[str] | None = None) -> list[Reference]:
    """The published points on ``datasets`` (all of them when ``None``): compressed models, then dense ones."""
    return [r for r in (*PUBLISHED, *DENSE_PUBLISHED) if datasets is None or r.dataset in datasets]
