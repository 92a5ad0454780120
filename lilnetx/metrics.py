"""Size, sparsity and MACs of a model, overall and per layer (METHOD.md §5).

Sparsity is measured on rounded latents and on decoded weights, never on continuous latents. Works on plain
models too (no bits then).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from lilnetx.reparam import latent_tensors

COMPUTE_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def _sparsity(weight: Tensor, groups: int) -> dict[str, int]:
    """Zero counts of a weight tensor (or rounded latents) of shape ``(out, in/groups, *kernel)``."""
    slices = weight.reshape(weight.shape[0], weight.shape[1], -1)
    nonzero_slice = slices.ne(0).any(dim=2)  # (out, in/groups)
    per_group = nonzero_slice.reshape(groups, -1, nonzero_slice.shape[1])  # (groups, out/groups, in/groups)
    return {
        "params": weight.numel(),
        "zero_params": int(weight.eq(0).sum()),
        "slices": nonzero_slice.numel(),
        "zero_slices": int((~nonzero_slice).sum()),
        "in_channels": per_group.shape[0] * per_group.shape[2],
        "zero_in_channels": int((~per_group.any(dim=1)).sum()),
        "filters": nonzero_slice.shape[0],
        "zero_filters": int((~nonzero_slice.any(dim=1)).sum()),
    }


def _positions(module: nn.Module, out: Tensor) -> int:
    """Times a layer's weights are applied for one sample: output pixels of a conv, tokens of a linear."""
    if isinstance(module, nn.Linear):
        return out.numel() // out.shape[-1]
    return out[0, 0].numel()


def _output_numel(model: nn.Module, input_size: tuple[int, ...] | None) -> dict[str, int]:
    """Output positions (spatial size × batch 1) of every conv / linear layer, from one forward pass."""
    if input_size is None:
        return {}
    seen: dict[str, int] = {}
    hooks = [
        m.register_forward_hook(lambda mod, inp, out, n=name: seen.__setitem__(n, _positions(mod, out)))
        for name, m in model.named_modules() if isinstance(m, COMPUTE_LAYERS)
    ]
    param = next(model.parameters())
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, *input_size, dtype=param.dtype, device=param.device))
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    return seen


def _input_size(model: nn.Module) -> tuple[int, ...] | None:
    cfg = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None) or {}
    size = cfg.get("input_size") if isinstance(cfg, dict) else None
    return tuple(size) if size else None


def ratio(zero: int, total: int) -> float:
    """``zero / total``, 0 for an empty total."""
    return zero / total if total else 0.0


@torch.no_grad()
def stats(model: nn.Module, input_size: tuple[int, ...] | None = None, *, macs: bool = True) -> dict[str, Any]:
    """Bits, sparsity (on rounded latents and decoded weights) and MACs, overall and per layer.

    ``input_size`` (C, H, W) defaults to ``model.pretrained_cfg["input_size"]`` (timm's convention);
    without either, or with ``macs=False`` (no forward pass), MACs are ``None``.
    """
    input_size = (input_size or _input_size(model)) if macs else None
    positions = _output_numel(model, input_size)
    latents = {t.name: t for t in latent_tensors(model)}
    layers: dict[str, dict[str, Any]] = {}
    for name, module in model.named_modules():
        if not isinstance(module, COMPUTE_LAYERS):
            continue
        groups = getattr(module, "groups", 1)
        weight = module.weight.detach()
        entry: dict[str, Any] = {"type": type(module).__name__.removeprefix("Parametrized"),
                                 "shape": list(weight.shape), "compressed": False,
                                 "weights": _sparsity(weight, groups)}
        wname = f"{name}.weight" if name else "weight"
        if wname in latents:
            t = latents[wname]
            rounded = torch.round(t.latent.detach())
            entry.update(compressed=True, group=t.group.name, latents=_sparsity(rounded, groups),
                         bits=float(t.group.density.total_bits(rounded.reshape(-1, t.group.width), resolution=1)))
            bname = f"{name}.bias" if name else "bias"
            if bname in latents:
                b = latents[bname]
                entry["bias_bits"] = float(b.group.density.total_bits(torch.round(b.rows().detach()), resolution=1))
        if name in positions:
            width = math.prod(weight.shape[2:]) if weight.dim() > 2 else 1
            nonzero = entry["weights"]["slices"] - entry["weights"]["zero_slices"]
            entry["macs_dense"] = positions[name] * weight.numel()
            entry["macs_sparse"] = positions[name] * nonzero * width
        layers[name] = entry
    return _summarise(layers, bool(latents), bool(positions))


def _summarise(layers: dict[str, dict[str, Any]], has_latents: bool, has_macs: bool) -> dict[str, Any]:
    def total(kind: str, key: str) -> int:
        return sum(e[kind][key] for e in layers.values() if kind in e)

    out: dict[str, Any] = {"layers": layers}
    for kind in ("weights", "latents"):
        if kind == "latents" and not has_latents:
            continue
        out[kind] = {
            "unstructured_sparsity": ratio(total(kind, "zero_params"), total(kind, "params")),
            "slice_sparsity": ratio(total(kind, "zero_slices"), total(kind, "slices")),
            "zero_in_channels": total(kind, "zero_in_channels"),
            "zero_filters": total(kind, "zero_filters"),
        }
    summary = out["weights"]  # decoded weights of the whole model: what inference sees
    out["unstructured_sparsity"] = summary["unstructured_sparsity"]
    out["slice_sparsity"] = summary["slice_sparsity"]
    out["params"] = total("weights", "params")
    out["bits"] = (sum(e.get("bits", 0.0) + e.get("bias_bits", 0.0) for e in layers.values())
                   if has_latents else None)
    out["macs_dense"] = sum(e["macs_dense"] for e in layers.values() if "macs_dense" in e) if has_macs else None
    out["macs_sparse"] = (sum(e["macs_sparse"] for e in layers.values() if "macs_sparse" in e)
                          if has_macs else None)
    return out
