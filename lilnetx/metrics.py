"""Size, sparsity and MACs of a model, overall and per layer.

Sparsity is measured on rounded latents and on decoded weights, never on continuous latents. Works on plain
models too (no bits then). Two sparsity figures, each named for what it counts:

- ``conv_slice_sparsity``: the share of zero K×K kernel slices among the convolutions with K×K > 1 (a
  model without such convolutions has none: ``None``). A zero slice is skipped whole by sparse inference.
- ``weight_sparsity``: the share of zero weights among the compressed layers (all conv / linear layers of
  a plain model).

``macs_sparse`` counts the multiply-accumulates left when zero slices (a linear layer's zero weights) are
skipped; ``macs_saved`` is ``1 - macs_sparse / macs_dense``.
"""

from __future__ import annotations

import math
from collections.abc import Collection
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


def is_kxk(shape: tuple[int, ...] | list[int]) -> bool:
    """Whether a weight of ``shape`` belongs to a convolution whose kernel has more than one tap (K×K > 1)."""
    return len(shape) > 2 and math.prod(shape[2:]) > 1


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


def macs_saved(macs_dense: int | None, macs_sparse: int | None) -> float | None:
    """The share of multiply-accumulates that skipping zero slices saves, or ``None`` when MACs are unknown."""
    return None if not macs_dense or macs_sparse is None else 1 - macs_sparse / macs_dense


@torch.no_grad()
def stats(model: nn.Module, input_size: tuple[int, ...] | None = None, *, macs: bool = True,
          compressed: Collection[str] = ()) -> dict[str, Any]:
    """Bits, sparsity (on rounded latents and decoded weights) and MACs, overall and per layer.

    ``input_size`` (C, H, W) defaults to ``model.pretrained_cfg["input_size"]`` (timm's convention);
    without either, or with ``macs=False`` (no forward pass), MACs are ``None``. ``compressed`` names the
    weight tensors (``"conv1.weight"``) a decoded plain model held compressed in its file; a reparameterised
    model's latent tensors count as compressed anyway.
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
        wname = f"{name}.weight" if name else "weight"
        entry: dict[str, Any] = {"type": type(module).__name__.removeprefix("Parametrized"),
                                 "shape": list(weight.shape), "kxk": is_kxk(weight.shape),
                                 "compressed": wname in compressed, "weights": _sparsity(weight, groups)}
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
    every = list(layers.values())
    counted = [e for e in every if e["compressed"]] or every  # a plain model: every layer
    convs = [e for e in every if e["kxk"]]

    def total(kind: str, key: str, among: list[dict[str, Any]] = every) -> int:
        return sum(e[kind][key] for e in among if kind in e)

    def conv_slices(kind: str) -> float | None:
        return ratio(total(kind, "zero_slices", convs), total(kind, "slices", convs)) if convs else None

    out: dict[str, Any] = {"layers": layers}
    for kind in ("weights", "latents"):
        if kind == "latents" and not has_latents:
            continue
        out[kind] = {
            "weight_sparsity": ratio(total(kind, "zero_params", counted), total(kind, "params", counted)),
            "conv_slice_sparsity": conv_slices(kind),
            "zero_in_channels": total(kind, "zero_in_channels"),
            "zero_filters": total(kind, "zero_filters"),
        }
    summary = out["weights"]  # decoded weights: what inference sees
    out["weight_sparsity"] = summary["weight_sparsity"]
    out["conv_slice_sparsity"] = summary["conv_slice_sparsity"]
    out["params"] = total("weights", "params")
    out["bits"] = (sum(e.get("bits", 0.0) + e.get("bias_bits", 0.0) for e in layers.values())
                   if has_latents else None)
    out["macs_dense"] = sum(e["macs_dense"] for e in layers.values() if "macs_dense" in e) if has_macs else None
    out["macs_sparse"] = (sum(e["macs_sparse"] for e in layers.values() if "macs_sparse" in e)
                          if has_macs else None)
    out["macs_saved"] = macs_saved(out["macs_dense"], out["macs_sparse"])
    return out
