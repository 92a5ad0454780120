"""ONNX export of a (slimmed) model, checked with onnxruntime against the PyTorch outputs.

Needs the optional extra ``onnx`` (``pip install 'lilnetx-zoo[onnx]'``: onnx + onnxruntime).
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lilnetx.errors import LilnetxError
from lilnetx.files import atomic_write
from lilnetx.slim import outputs_agree

OPSET = 17
CHECK_RTOL = 1e-4  # of the output's largest magnitude


class OnnxUnavailableError(LilnetxError, RuntimeError):
    """onnx / onnxruntime are not installed."""


class OnnxMismatchError(LilnetxError, ValueError):
    """The exported ONNX model's outputs differ from PyTorch's; nothing is written."""


def require_onnxruntime() -> Any:
    try:
        import onnxruntime
    except ImportError as exc:
        raise OnnxUnavailableError("onnxruntime is not installed: pip install 'lilnetx-zoo[onnx]'") from exc
    return onnxruntime


def to_onnx(model: nn.Module, input_size: tuple[int, ...]) -> bytes:
    """``model`` (eval mode, batch dimension dynamic) as ONNX bytes, through torch's TorchScript exporter."""
    buffer = io.BytesIO()
    was_training = model.training
    model.eval()
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # the legacy exporter's deprecation notice
            torch.onnx.export(model, (torch.zeros(1, *input_size),), buffer, dynamo=False, opset_version=OPSET,
                              input_names=["input"], output_names=["output"],
                              dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}})
    finally:
        model.train(was_training)
    return buffer.getvalue()


def session(data: bytes, threads: int = 1) -> Any:
    """An onnxruntime CPU inference session for ``data`` with ``threads`` intra-op threads."""
    ort = require_onnxruntime()
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])


@torch.no_grad()
def check(model: nn.Module, data: bytes, input_size: tuple[int, ...], batch: int = 2) -> float:
    """Largest absolute difference between onnxruntime and PyTorch on a random batch; raises if too large."""
    x = torch.randn(batch, *input_size, generator=torch.Generator().manual_seed(0))
    ref = model.eval()(x)
    out = torch.from_numpy(session(data).run(None, {"input": x.numpy()})[0])
    if out.shape != ref.shape:
        raise OnnxMismatchError(f"the ONNX model's outputs have shape {tuple(out.shape)}, PyTorch's "
                                f"{tuple(ref.shape)}; not written")
    diff = float((out - ref).abs().max())
    if not outputs_agree(out, ref, CHECK_RTOL):
        raise OnnxMismatchError(f"the ONNX model's outputs differ from PyTorch's by {diff:.3g}; not written")
    return diff


def export_onnx(model: nn.Module, path: str | Path, input_size: tuple[int, ...]) -> dict[str, Any]:
    """Write ``model`` as ONNX to ``path`` after checking it with onnxruntime; returns bytes and max diff."""
    data = to_onnx(model, input_size)
    diff = check(model, data, input_size)
    atomic_write(path, data)
    return {"path": str(path), "bytes": len(data), "max_abs_diff": diff}
