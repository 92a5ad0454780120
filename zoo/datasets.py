"""What a dataset plugin returns: a :class:`DatasetBundle` of train and test splits (``TensorImageDataset``
holds small image sets in memory), and :class:`DatasetError` for a missing or malformed dataset.

Items are ``(image, label)`` pairs: a float tensor of shape ``input_size`` normalised with the bundle's
``mean``/``std``, and an ``int`` label. The built-in loaders live in ``plugins/datasets.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from zoo.errors import ZooError

if TYPE_CHECKING:  # plugins register their loaders without importing torch
    import torch
    from torch.utils.data import Dataset


class DatasetError(ZooError, ValueError):
    """A dataset is missing or malformed; the message names the path, what was expected and the fix."""


@dataclass(frozen=True)
class DatasetBundle:
    """Train and test splits of one dataset plus what a model needs to know about its inputs."""

    train: Dataset
    test: Dataset
    num_classes: int
    input_size: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    name: str
    classes: tuple[str, ...] | None = None  # class names by label, when the dataset has them


class TensorImageDataset:
    """In-memory images ``(N, C, H, W)`` with labels; scales, augments and normalises per item (a map-style
    dataset for ``torch.utils.data.DataLoader``).

    ``images / scale`` must lie in [0, 1]; ``augment`` acts on that [0, 1] float image.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        scale: float = 255.0,
        augment: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        if images.ndim != 4 or len(images) != len(labels):
            raise DatasetError(
                f"need images (N, C, H, W) and N labels, got {tuple(images.shape)} and {len(labels)}"
            )
        self.images, self.labels = images, labels.long()
        self.scale, self.augment = scale, augment
        import torch

        self._mean = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        self._std = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = self.images[index].float() / self.scale
        if self.augment is not None:
            image = self.augment(image)
        return (image - self._mean) / self._std, int(self.labels[index])
