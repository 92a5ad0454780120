"""Size of a trained LilNetX LeNet5-Caffe on MNIST as a `.lnx` file next to the usual ways of shipping it.

Trains (or reuses, with ``--reuse``) a LeNet5-Caffe on MNIST with the LilNetX objective, writes it as a
`.lnx` artifact, and compares the file with the same decoded network stored as an fp32 ``state_dict``,
fp32 + xz, int8 + xz and int4 + xz (per-tensor symmetric quantisation of conv / linear weights), each with
its measured MNIST test accuracy, plus the artifact's encode and decode times. Writes
``benchmarks/results/artifact_size.json`` and prints a Markdown table.

    .venv/bin/python benchmarks/artifact_size.py            # about 6 CPU minutes (12 epochs, one thread)
    .venv/bin/python benchmarks/artifact_size.py --reuse    # reuse runs/bench_lenet5/checkpoint.pt
"""

from __future__ import annotations

import argparse
import copy
import io
import json
import lzma
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch import nn
from torch.utils.data import DataLoader

import lilnetx
from lilnetx.data import DatasetBundle, mnist
from lilnetx.training import TrainConfig, Trainer, evaluate

ARCH = "lenet5_caffe"
REPARAM: dict[str, Any] = {}
TRAIN = {"epochs": 12, "batch_size": 128, "lr": 1e-2, "density_lr": 1e-2, "lambda_rate": 10.0,
         "lambda_l2": 1e-6, "lambda_slice": 1e-6, "warmup_epochs": 1, "seed": 0, "device": "cpu"}
ROOT = Path(__file__).resolve().parents[1]


def lenet5_caffe(num_classes: int = 10) -> nn.Module:
    """LeNet5-Caffe (the EPR / LilNetX MNIST network): 20 and 50 5x5 convs, 800-500-10 dense."""
    return nn.Sequential(
        nn.Conv2d(1, 20, 5), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(20, 50, 5), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(800, 500), nn.ReLU(), nn.Linear(500, num_classes),
    )


def builder(name: str, kwargs: dict[str, Any]) -> nn.Module:
    """Model builder for ``lilnetx.load``: this benchmark knows one architecture."""
    if name != ARCH:
        raise KeyError(name)
    return lenet5_caffe(**kwargs)


def classifier_apart(name: str, module: nn.Module) -> str | None:
    """Layer policy: the 500x10 classifier gets its own decoder and density instead of sharing the
    ``dense`` group with the 800x500 layer, whose latents are almost all zero."""
    return "classifier" if name == "9" else None


def build(bundle: DatasetBundle) -> nn.Module:
    """A fresh reparameterised LeNet5-Caffe carrying the metadata ``lilnetx.save`` reads."""
    torch.manual_seed(TRAIN["seed"])
    model = lilnetx.reparameterize(lenet5_caffe(bundle.num_classes), layer_policy=classifier_apart, **REPARAM)
    model.lilnetx_arch = {"name": ARCH, "kwargs": {"num_classes": bundle.num_classes}}
    model.pretrained_cfg = {"input_size": list(bundle.input_size), "mean": list(bundle.mean),
                            "std": list(bundle.std), "num_classes": bundle.num_classes}
    return model


def train_or_reuse(bundle: DatasetBundle, run_dir: Path, reuse: bool) -> nn.Module:
    """Train into ``run_dir`` (the layout of ``lilnetx train``), or load its checkpoint when reusing."""
    model = build(bundle)
    checkpoint = run_dir / "checkpoint.pt"
    if not (reuse and checkpoint.is_file()):
        config = TrainConfig.from_dict(TRAIN)
        metrics = Trainer(model, bundle.train, bundle.test, config, run_dir=run_dir).fit()
        recipe = {"arch": ARCH, "arch_kwargs": model.lilnetx_arch["kwargs"], "dataset": bundle.name,
                  "reparam": REPARAM, "train": config.to_dict()}
        (run_dir / "recipe.yaml").write_text(yaml.safe_dump(recipe, sort_keys=False))
        (run_dir / "stats.json").write_text(json.dumps(metrics, indent=2))
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    model.load_state_dict(state["model"])
    return model.eval()


def top1(model: nn.Module, bundle: DatasetBundle) -> float:
    return evaluate(model.eval(), DataLoader(bundle.test, batch_size=1000), torch.device("cpu"))["top1"]


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


def timed(fn, repeats: int = 3) -> tuple[Any, float]:
    """Result of ``fn()`` and its best wall time over ``repeats`` runs."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return result, best


def lnx_rows(model: nn.Module, bundle: DatasetBundle, out_dir: Path, metadata: dict[str, Any]) -> list[dict]:
    """The exact artifact and its variants, each decoded and evaluated."""
    variants = {".lnx (exact)": {}, ".lnx, learned-density tables only": {"tables": "learned"},
                ".lnx, float16 decoders (lossy)": {"decoder_dtype": "float16"}}
    rows = []
    for name, options in variants.items():
        info = lilnetx.save(model, out_dir / "variant.lnx", metadata=metadata, **options)
        rows.append({"format": name, "bytes": info.size_bytes,
                     "top1": top1(lilnetx.load(info.path, builder=builder), bundle)})
    return rows


def baseline_rows(decoded: nn.Module, bundle: DatasetBundle, accuracy: float) -> list[dict]:
    """The decoded network as fp32 ``state_dict`` (plain and xz) and quantised to int8 / int4 (xz)."""
    fp32 = torch_save_bytes(decoded)
    rows = [{"format": "fp32 state_dict (torch.save)", "bytes": len(fp32), "top1": accuracy},
            {"format": "fp32 state_dict + xz", "bytes": xz(fp32), "top1": accuracy}]
    for bits in (8, 4):
        payload, quantized = quantize(decoded, bits)
        rows.append({"format": f"int{bits} + xz", "bytes": xz(payload), "top1": top1(quantized, bundle)})
    return rows


def measure(model: nn.Module, bundle: DatasetBundle, out_dir: Path) -> dict[str, Any]:
    metadata = {"dataset": "mnist", "metrics": {"top1": top1(model, bundle)}}
    path = out_dir / f"{ARCH}.lnx"
    info, encode_s = timed(lambda: lilnetx.save(model, path, metadata=metadata))
    decoded, decode_s = timed(lambda: lilnetx.load(path, builder=builder))
    baselines = baseline_rows(decoded, bundle, metadata["metrics"]["top1"])
    rows = lnx_rows(model, bundle, out_dir, metadata) + baselines
    for row in rows:
        row["vs_fp32"] = round(baselines[0]["bytes"] / row["bytes"], 1)
    layers = lilnetx.read_header(path)["layers"]
    return {
        "model": ARCH, "dataset": "mnist", "params": sum(p.numel() for p in decoded.parameters()),
        "train": TRAIN, "reparam": {**REPARAM, "layer_policy": classifier_apart.__name__}, "rows": rows,
        "lnx": {"sha256": info.sha256, "parts": info.parts, "latents_only_bytes": info.coded_latent_bytes,
                "estimated_latent_bytes": round(info.estimated_bits / 8, 1),
                "ideal_latent_bytes": round(sum(layer["ideal_bits"] for layer in layers) / 8, 1),
                "encode_seconds": round(encode_s, 3), "decode_seconds": round(decode_s, 3),
                "slice_sparsity": lilnetx.stats(decoded)["slice_sparsity"]},
        "environment": {"torch": torch.__version__, "python": platform.python_version(),
                        "machine": platform.machine(), "threads": torch.get_num_threads()},
    }


def markdown(result: dict[str, Any]) -> str:
    lines = ["| format | bytes | vs fp32 | MNIST top-1 |", "|---|---:|---:|---:|"]
    lines += [f"| {r['format']} | {r['bytes']:,} | {r['vs_fp32']}x | {100 * r['top1']:.2f} % |"
              for r in result["rows"]]
    lnx = result["lnx"]
    parts = ", ".join(f"{name} {size:,}" for name, size in lnx["parts"].items())
    lines += ["", f"`.lnx` parts (bytes): {parts}. Latents: {lnx['latents_only_bytes']:,} B coded, "
              f"{lnx['ideal_latent_bytes']:,} B ideal under the file's tables, "
              f"{lnx['estimated_latent_bytes']:,} B estimated by the learned density. "
              f"Encode {lnx['encode_seconds']} s, decode {lnx['decode_seconds']} s "
              f"({result['environment']['threads']} CPU thread)."]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", type=Path, default=ROOT / "runs" / "bench_lenet5")
    parser.add_argument("--reuse", action="store_true", help="reuse RUN_DIR/checkpoint.pt instead of training")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "artifact_size.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    bundle = mnist()
    model = train_or_reuse(bundle, args.run_dir, args.reuse)
    result = measure(model, bundle, args.run_dir)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(markdown(result))


if __name__ == "__main__":
    main()
