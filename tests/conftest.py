"""Shared fixtures: small models and data that make tests fast and deterministic."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

torch.set_num_threads(1)


def small_convnet(in_chans: int = 1, num_classes: int = 10) -> nn.Module:
    """A LeNet-like net with a 5x5 conv, BN, a depthwise 3x3 conv, a 1x1 conv and two linear layers."""
    return nn.Sequential(
        nn.Conv2d(in_chans, 8, 5, padding=2, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 16, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
        nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, num_classes),
    )


@pytest.fixture
def convnet() -> nn.Module:
    torch.manual_seed(0)
    return small_convnet()


@pytest.fixture(scope="session")
def timm_lnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real, read-only ``.lnx`` of ``timm/mobilenetv3_small_050`` (dataset digits), built once per session."""
    from zoo_helpers import TIMM_ARCH, TIMM_KWARGS, make_artifact

    path = make_artifact(tmp_path_factory.mktemp("timm") / "timm.lnx", arch=TIMM_ARCH, arch_kwargs=TIMM_KWARGS,
                         dataset="digits", top1=0.5)
    path.chmod(0o444)
    return path


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A zoo of its own under ``tmp_path``: catalog, store and shipped folder there; no remote; measuring off."""
    from zoo_helpers import isolate

    isolate(tmp_path, monkeypatch)
    return tmp_path
