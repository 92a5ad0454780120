"""The golden artifact that pins the `.lnx` format: a tiny model with exactly reproducible weights.

Regenerate (only together with a format version bump, keeping the old file and a reader for it):

    .venv/bin/python tests/golden/make_golden.py

It writes ``tiny_v{FORMAT_VERSION}.lnx`` and ``tiny_v{FORMAT_VERSION}.json`` (the sha256 of the file and of
the decoded weights). Latents are small integers and decoder entries multiples of 1/256, so every decoded
weight is exact in float32 whatever the summation order: the weight checksum is the same on any machine.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

import lilnetx
from lilnetx.artifact import FORMAT_VERSION

HERE = Path(__file__).resolve().parent
ARCH = "golden_tiny"
KWARGS = {"num_classes": 3}
ARTIFACT = HERE / f"tiny_v{FORMAT_VERSION}.lnx"
EXPECTED = HERE / f"tiny_v{FORMAT_VERSION}.json"
DECODER_FORMS = {"conv5x5": "diagonal", "conv3x3": "scalar"}  # format 2: compact decoders (format 1: all full)
QINT8_GROUP = "conv5x5"  # format 3: its decoder is int8 x a power-of-two scale, so it is stored as qint8


def build(num_classes: int = 3) -> nn.Module:
    """5x5 conv, BN, depthwise 3x3 conv, BN, 1x1 conv with bias, linear: every kind of group."""
    return nn.Sequential(
        nn.Conv2d(1, 4, 5, bias=False), nn.BatchNorm2d(4), nn.ReLU(),
        nn.Conv2d(4, 4, 3, padding=1, groups=4, bias=False), nn.BatchNorm2d(4), nn.ReLU(),
        nn.Conv2d(4, 6, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, num_classes),
    )


def builder(name: str, kwargs: dict[str, Any]) -> nn.Module:
    if name != ARCH:
        raise KeyError(f"unknown architecture {name!r}")
    return build(**kwargs)


@torch.no_grad()
def golden_model() -> nn.Module:
    """The reparameterised model with integer latents (some zero slices) and dyadic decoders / BN values."""
    torch.manual_seed(0)
    model = lilnetx.reparameterize(build(**KWARGS), density_filters=(2, 2), decoder_forms=DECODER_FORMS)
    rng = np.random.default_rng(20240601)
    for t in lilnetx.latent_tensors(model):
        values = np.clip(np.round(rng.laplace(0.0, 1.5, t.latent.shape)), -12, 12) + 0.0  # no -0.0
        rows = values.reshape(-1, t.group.width)
        rows[rng.random(len(rows)) < 0.3] = 0  # zero slices
        t.latent.copy_(torch.from_numpy(values))
    for group in lilnetx.latent_groups(model).values():
        group.decoder.copy_(torch.from_numpy(rng.integers(-64, 65, group.decoder.shape) / 256))
    q = rng.integers(-126, 127, model_group(model, QINT8_GROUP).decoder.shape)
    q[:, 0] = 127  # each row's largest magnitude is 127: its scale is exactly 1/512
    model_group(model, QINT8_GROUP).decoder.copy_(torch.from_numpy(q / 512))
    for name, value in model.state_dict().items():
        if ".parametrizations." in f".{name}":
            continue
        if value.dtype == torch.int64:
            value.fill_(7)
        else:
            value.copy_(torch.from_numpy(rng.integers(1, 128, value.shape) / 64))
    model.lilnetx_arch = {"name": ARCH, "kwargs": dict(KWARGS)}
    model.pretrained_cfg = {"input_size": (1, 8, 8), "mean": (0.5,), "std": (0.25,), "num_classes": 3}
    return model


def model_group(model: nn.Module, name: str) -> nn.Module:
    return lilnetx.latent_groups(model)[name]


def weights_sha256(model: nn.Module) -> str:
    """Checksum of a plain model's state dict: names, dtypes, shapes and little-endian bytes, by name."""
    digest = hashlib.sha256()
    for name, value in sorted(model.state_dict().items()):
        array = value.detach().cpu().numpy()
        digest.update(f"{name}:{array.dtype.str}:{list(array.shape)};".encode())
        digest.update(array.astype(array.dtype.newbyteorder("<")).tobytes())
    return digest.hexdigest()


def main() -> None:
    info = lilnetx.save(golden_model(), ARTIFACT, metadata={"dataset": "none", "metrics": {"top1": 0.5},
                                                             "recipe": {"note": "tests/golden/make_golden.py"}})
    decoded = lilnetx.load(ARTIFACT, builder=builder)
    EXPECTED.write_text(json.dumps({"format_version": FORMAT_VERSION, "file_sha256": info.sha256,
                                    "size_bytes": info.size_bytes, "weights_sha256": weights_sha256(decoded)},
                                   indent=2) + "\n")
    print(f"wrote {ARTIFACT} ({info.size_bytes} bytes) and {EXPECTED}")


if __name__ == "__main__":
    main()
