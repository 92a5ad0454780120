"""Size of a shipped zoo artifact next to the usual ways of shipping the same network.

Measures ``zoo_artifacts/lenet5_caffe.mnist-lam20.lnx`` (exported from ``runs/lenet5_caffe.mnist-lam20`` first
if it is missing): the file as shipped, the same model re-saved with learned-density tables only and with
float16 decoders, and the decoded network as an fp32 ``state_dict``, fp32 + xz, int8 + xz and int4 + xz
(per-tensor symmetric quantisation of conv / linear weights); every row's accuracy is measured by decoding
it and evaluating on the dataset's test split. Also the artifact's encode and decode times. Writes
``benchmarks/results/artifact_size.json`` and prints a Markdown table.

The artifact does not store the learned density (only its integer tables), so re-saving needs it from the
run's checkpoint: the script checks that the checkpoint's rounded latents and decoders are the artifact's.

    .venv/bin/python benchmarks/artifact_size.py [--artifact FILE.lnx] [--run-dir RUN_DIR]
"""

from __future__ import annotations

import argparse
import copy
import io
import json
import lzma
import platform
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

import lilnetx
from zoo import registry
from zoo.pipeline import export_run

ROOT = Path(__file__).resolve().parents[1]
NAME = "lenet5_caffe.mnist-lam20"


def top1(model: nn.Module, test: Dataset) -> float:
    return lilnetx.evaluate(model.eval(), DataLoader(test, batch_size=1000), torch.device("cpu"))["top1"]


def xz(data: bytes) -> int:
    return len(lzma.compress(data, preset=9 | lzma.PRESET_EXTREME))


def torch_save_bytes(model: nn.Module) -> bytes:
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.getvalue()


def quantize(model: nn.Module, bits: int) -> tuple[bytes, nn.Module]:
    """Per-tensor symmetric quantisation of conv / linear weights; other tensors stay fp32.

    Returns the raw payload (quantised values, one fp32 scale per weight, the other tensors; no names or
    shapes, which favours this baseline) and the dequantised model.
    """
    levels = 2 ** (bits - 1) - 1
    quantized = copy.deepcopy(model)
    chunks = []
    with torch.no_grad():
        for name, value in quantized.state_dict().items():
            if name.endswith("weight") and value.dim() > 1:
                scale = value.abs().max().clamp_min(1e-12) / levels
                q = torch.round(value / scale).clamp(-levels, levels).to(torch.int8)
                value.copy_(q.float() * scale)
                chunks += [_pack(q.flatten().numpy(), bits), np.float32(scale).tobytes()]
            else:
                chunks.append(value.numpy().tobytes())
    return b"".join(chunks), quantized


def _pack(q: np.ndarray, bits: int) -> bytes:
    """int8 as is; int4 as offset-binary nibbles, two per byte."""
    if bits == 8:
        return q.astype(np.int8).tobytes()
    nibbles = (q.astype(np.int16) + 8).astype(np.uint8)
    nibbles = np.append(nibbles, np.uint8(0)) if len(nibbles) % 2 else nibbles
    return (nibbles[0::2] | (nibbles[1::2] << 4)).tobytes()


def timed(fn: Callable[[], Any], repeats: int = 3) -> tuple[Any, float]:
    """Result of ``fn()`` and its best wall time over ``repeats`` runs."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return result, best


def trained_model(artifact: Path, run_dir: Path) -> nn.Module:
    """The artifact's LilNetX model (integer latents, decoders) with the learned density of the run it came from."""
    model = lilnetx.load(artifact, reparameterized=True)
    state = torch.load(run_dir / "checkpoint.pt", map_location="cpu", weights_only=True)["model"]
    for t in lilnetx.latent_tensors(model):
        prefix = f"{t.module_name}.parametrizations.{t.tensor_name}"
        if not (torch.equal(torch.round(state[f"{prefix}.original"]), t.latent.detach())
                and torch.equal(state[f"{prefix}.0.group.decoder"], t.group.decoder.detach())):
            raise SystemExit(f"{run_dir} is not the run {artifact} was exported from ({t.name} differs); "
                             "pass --run-dir of that run")
    density = {k: v for k, v in state.items() if ".density." in k}
    missing, unexpected = model.load_state_dict(density, strict=False)
    if unexpected or any(".density." in k for k in missing):
        raise SystemExit(f"the densities in {run_dir} do not fit {artifact}")
    return model


def same_weights(a: nn.Module, b: nn.Module) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))


def lnx_rows(artifact: Path, model: nn.Module, metadata: dict[str, Any], test: Dataset,
             out_dir: Path) -> list[dict[str, Any]]:
    """The shipped file and the same model re-saved as variants, each decoded and evaluated."""
    shipped = lilnetx.load(artifact)
    rows = [{"format": ".lnx as shipped", "bytes": artifact.stat().st_size, "top1": top1(shipped, test)}]
    variants = {".lnx, learned-density tables only": {"tables": "learned"},
                ".lnx, float16 decoders": {"decoder_dtype": "float16"}}
    for name, options in variants.items():
        info = lilnetx.save(model, out_dir / "variant.lnx", metadata=metadata, **options)
        decoded = lilnetx.load(info.path)
        lossy = "" if same_weights(decoded, shipped) else " (lossy)"
        rows.append({"format": name + lossy, "bytes": info.size_bytes, "top1": top1(decoded, test)})
    return rows


def baseline_rows(decoded: nn.Module, test: Dataset, accuracy: float) -> list[dict[str, Any]]:
    """The decoded network as fp32 ``state_dict`` (plain and xz) and quantised to int8 / int4 (xz)."""
    fp32 = torch_save_bytes(decoded)
    rows = [{"format": "fp32 state_dict (torch.save)", "bytes": len(fp32), "top1": accuracy},
            {"format": "fp32 state_dict + xz", "bytes": xz(fp32), "top1": accuracy}]
    for bits in (8, 4):
        payload, quantized = quantize(decoded, bits)
        rows.append({"format": f"int{bits} + xz", "bytes": xz(payload), "top1": top1(quantized, test)})
    return rows


def measure(artifact: Path, run_dir: Path) -> dict[str, Any]:
    header = lilnetx.read_artifact(artifact).header  # with per-layer ideal bits (recomputed from format 3)
    metadata = {"dataset": header["dataset"], "metrics": header["metrics"], "recipe": header["recipe"],
                **header["metadata"]}
    test = registry.get_dataset(header["dataset"], augment=False).test
    model = trained_model(artifact, run_dir)
    with tempfile.TemporaryDirectory() as tmp:
        out_dir = Path(tmp)
        rows = lnx_rows(artifact, model, metadata, test, out_dir)
        _, encode_s = timed(lambda: lilnetx.save(model, out_dir / "encode.lnx", metadata=metadata))
    decoded, decode_s = timed(lambda: lilnetx.load(artifact))
    baselines = baseline_rows(decoded, test, rows[0]["top1"])
    rows += baselines
    for row in rows:
        row["vs_fp32"] = round(baselines[0]["bytes"] / row["bytes"], 1)
    info = lilnetx.verify(artifact)
    return {
        "artifact": str(artifact.relative_to(ROOT) if artifact.is_relative_to(ROOT) else artifact),
        "sha256": info.sha256, "arch": header["arch"], "dataset": header["dataset"],
        "params": sum(p.numel() for p in decoded.parameters()), "recorded_top1": header["metrics"].get("top1"),
        "rows": rows,
        "lnx": {"parts": info.parts, "latents_only_bytes": info.coded_latent_bytes,
                "estimated_latent_bytes": round(info.estimated_bits / 8, 1),
                "ideal_latent_bytes": round(sum(layer["ideal_bits"] for layer in header["layers"]) / 8, 1),
                "decoder_dtypes": sorted({g["dtype"] for g in header["groups"]}),
                "encode_seconds": round(encode_s, 3), "decode_seconds": round(decode_s, 3),
                "weight_sparsity": lilnetx.stats(decoded)["weight_sparsity"]},
        "environment": {"torch": torch.__version__, "python": platform.python_version(),
                        "machine": platform.machine(), "threads": torch.get_num_threads()},
    }


def table(result: dict[str, Any]) -> str:
    """The README's Markdown table: bytes, ratio to fp32 and accuracy of every format."""
    lines = ["| format | bytes | vs fp32 | MNIST top-1 |", "|---|---:|---:|---:|"]
    lines += [f"| {r['format']} | {r['bytes']:,} | {r['vs_fp32']:.1f}× | {100 * r['top1']:.2f} % |"
              for r in result["rows"]]
    return "\n".join(lines)


def markdown(result: dict[str, Any]) -> str:
    lines = [f"`{result['artifact']}` ({result['params']:,} parameters):", "", table(result)]
    lnx = result["lnx"]
    parts = ", ".join(f"{name} {size:,}" for name, size in lnx["parts"].items())
    lines += ["", f"Shipped `.lnx` parts (bytes): {parts}; decoders {'/'.join(lnx['decoder_dtypes'])}. Latents: "
              f"{lnx['latents_only_bytes']:,} B coded, {lnx['ideal_latent_bytes']:,} B ideal under the file's "
              f"tables, {lnx['estimated_latent_bytes']:,} B estimated by the learned density. Encode "
              f"{lnx['encode_seconds']} s, decode {lnx['decode_seconds']} s "
              f"({result['environment']['threads']} CPU thread)."]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--artifact", type=Path, default=ROOT / "zoo_artifacts" / f"{NAME}.lnx")
    parser.add_argument("--run-dir", type=Path, default=ROOT / "runs" / NAME,
                        help="the run the artifact was exported from (for its learned density)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "artifact_size.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if not args.artifact.is_file():
        export_run(args.run_dir, args.artifact)
    result = measure(args.artifact.resolve(), args.run_dir)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(markdown(result))


if __name__ == "__main__":
    main()
