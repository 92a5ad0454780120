"""Helpers for the zoo tests: an isolated environment, real and fake artifacts, a local HTTP zoo."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

import zoo.seed
from zoo.catalog import queries
from zoo.catalog.engine import get_engine
from zoo.catalog.records import ArtifactRecord, LayerRecord, MetricsRecord
from zoo.service import Zoo
from zoo.store import Store


def isolate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Point every zoo setting at ``tmp_path`` (catalog, store, shipped artifacts; no remote, online).

    Accuracy measuring is off (``LILNETX_MEASURE_TIMEOUT=0``): the artifacts of these tests have random
    weights; the measuring tests turn it on.
    """
    monkeypatch.setenv("LILNETX_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("LILNETX_MEASURE_TIMEOUT", "0")
    monkeypatch.delenv("LILNETX_DATA_ROOT", raising=False)
    monkeypatch.setenv("LILNETX_DB", f"sqlite:///{tmp_path / 'registry.db'}")
    monkeypatch.delenv("LILNETX_ZOO_URL", raising=False)
    monkeypatch.delenv("LILNETX_OFFLINE", raising=False)
    monkeypatch.setattr(zoo.seed, "SHIPPED_DIR", tmp_path / "shipped")


def local_zoo(tmp_path: Path, name: str = "local", remote_url: str | None = None,
              offline: bool = False, measure_timeout_s: float = 0) -> Zoo:
    """A zoo with its own SQLite catalog and store under ``tmp_path/name`` (measuring off unless asked)."""
    return Zoo(get_engine(f"sqlite:///{tmp_path / name / 'registry.db'}"), Store(tmp_path / name / "store"),
               remote_url, offline, measure_timeout_s=measure_timeout_s)


def fake_record(sha256: str, size: int, *, arch: str = "tiny", dataset: str = "mnist", top1: float = 0.9,
                slice_sparsity: float | None = 0.5) -> ArtifactRecord:
    """A record for bytes that are not a real artifact (transport and catalog tests need no codec).

    ``slice_sparsity`` is its 3×3 conv's share of zero slices (``None``: a model of one linear layer).
    """
    if slice_sparsity is None:
        layer = LayerRecord(name="fc", latent_group="dense", shape=[10, 4], params=40, coded_bits=7,
                            estimated_bits=50.0, conv_slice_sparsity=None, weight_sparsity=0.5,
                            macs_dense=40, macs_sparse=20)
    else:
        layer = LayerRecord(name="conv", latent_group="conv3x3", shape=[10, 4, 3, 3], params=360, coded_bits=7,
                            estimated_bits=50.0, conv_slice_sparsity=slice_sparsity,
                            weight_sparsity=slice_sparsity, macs_dense=360, macs_sparse=180)
    metrics = MetricsRecord(top1=top1, top5=0.99, fp32_bytes=4 * 50, size_parts={"header": size}, params=50,
                            estimated_bits=50.0, coded_latent_bytes=7, conv_slice_sparsity=slice_sparsity,
                            weight_sparsity=layer.weight_sparsity, macs_dense=40, macs_sparse=20)
    return ArtifactRecord(sha256=sha256, size_bytes=size, format_version=1, arch=arch, arch_kwargs={},
                          dataset=dataset, num_classes=10, input_size=[1, 2, 2], mean=[0.5], std=[0.25],
                          metrics=metrics, recipe={"epochs": 1}, versions={"lilnetx-zoo": "0.1.0"},
                          layers=[layer], header={"arch": arch})


TIMM_ARCH = "timm/mobilenetv3_small_050"
TIMM_KWARGS = {"num_classes": 10, "in_chans": 1, "input_size": (1, 32, 32)}


def make_artifact(path: Path, *, arch: str = "lenet_300_100", arch_kwargs: dict[str, Any] | None = None,
                  seed: int = 0, dataset: str | None = "mnist", top1: float | None = 0.9,
                  keep: float = 0.05) -> Path:
    """A real, small ``.lnx`` of ``arch`` (via ``zoo.create_model``): random latents, all but ``keep`` zeroed."""
    import torch

    import lilnetx
    from zoo.registry import create_model

    torch.manual_seed(seed)
    model = lilnetx.reparameterize(create_model(arch, **(arch_kwargs or {})))
    with torch.no_grad():
        for t in lilnetx.latent_tensors(model):
            t.latent.mul_(torch.rand_like(t.latent) < keep)
    metadata = {"dataset": dataset, "metrics": {"top1": top1, "top5": 0.99} if top1 is not None else None,
                "recipe": {"epochs": 1, "lambda_rate": 1e-4}}
    lilnetx.save(model, path, metadata=metadata)
    return path


def put_fake(z: Zoo, name: str, data: bytes, **record_options: object) -> ArtifactRecord:
    """Store ``data`` and catalogue it as entry ``name`` (``arch.dataset-...``) with a fake record."""
    path = z.store.root.parent / f"{name}.bin"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    sha, _ = z.store.put_file(path)
    arch, tag = name.split(".")
    record = fake_record(sha, len(data), arch=arch, dataset=tag.split("-")[0], **record_options)
    z.catalogue(name, tag.split("-")[0], record, f"{queries.STORE_URI}{sha}")
    return record


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - signature of the base class
        pass


class _CorruptingHandler(_QuietHandler):
    """Serves ``.lnx`` files with one byte flipped (same length, wrong hash)."""

    def copyfile(self, source, outputfile) -> None:  # type: ignore[no-untyped-def]
        data = bytearray(source.read())
        if self.path.endswith(".lnx") and data:
            data[len(data) // 2] ^= 0xFF
        outputfile.write(bytes(data))


@contextmanager
def http_zoo(folder: Path, *, corrupt: bool = False) -> Iterator[str]:
    """Serve ``folder`` over HTTP on 127.0.0.1 from a thread; yield its base URL."""
    handler = partial(_CorruptingHandler if corrupt else _QuietHandler, directory=str(folder))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def dead_url() -> str:
    """The URL of a port on 127.0.0.1 where nothing listens."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"
