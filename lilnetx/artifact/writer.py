"""Writing a ``.lnx`` file: integer tables from each group's density, one ANS stream, an atomic write."""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import fx, nn

from lilnetx import channel_graph
from lilnetx import entropy_coding as ec
from lilnetx.artifact.errors import ArtifactError
from lilnetx.artifact.format import (
    DECODER_DTYPES,
    FLOAT_DTYPES,
    FLOAT_PARAM_DTYPES,
    FORMAT_VERSION,
    SECTIONS,
    ArtifactInfo,
    assemble,
    batchnorm_bytes,
    decoder_bytes,
    decoder_nbytes,
    dtype_name,
    is_latent_key,
    make_info,
    raw_bytes,
    section_parts,
    snap_decoder,
)
from lilnetx.artifact.validation import REPARAM_CHECKS
from lilnetx.files import atomic_write
from lilnetx.reparam import LatentTensor, latent_groups, latent_tensors


def save(
    model: nn.Module,
    path: str | Path,
    *,
    arch: str | None = None,
    arch_kwargs: dict[str, Any] | None = None,
    metadata: dict[str, Any] | None = None,
    tables: Literal["best", "learned"] = "best",
    decoder_dtype: str | None = None,
    float_dtype: str = "float16",
) -> ArtifactInfo:
    """Write the reparameterised ``model`` to ``path`` atomically; same model, same bytes.

    ``arch`` / ``arch_kwargs`` default to ``model.lilnetx_arch`` (set by ``zoo.create_model``); input size,
    mean, std and classes come from ``model.pretrained_cfg``. ``metadata`` is free JSON; its ``dataset``,
    ``metrics`` and ``recipe`` keys become header fields. ``tables="best"`` lets each channel's table follow
    the learned density or the latents' histogram, whichever makes the file smaller; ``"learned"`` always
    follows the learned density. Each decoder is stored in the smallest type that holds it exactly (float16,
    bfloat16, or ``"qint8"``: int8 with a float16 scale per row, which decoders trained with
    ``TrainConfig(decoder_dtype="qint8")`` are); ``decoder_dtype`` forces a type: a smaller file whose weights
    may differ slightly from ``model``'s (lossy). ``float_dtype`` stores each BatchNorm as its per-channel scale
    and shift in float16 (default) or qint8, and other float parameters in float16: lossy too, so measure the
    decoded model; ``"float32"`` keeps every float parameter (running statistics included) as it is.
    """
    tensors = latent_tensors(model)
    if not tensors:
        raise ArtifactError("model is not reparameterised: call lilnetx.reparameterize(model) and train it "
                            "before saving; a plain model has no latents to code")
    if tables not in ("best", "learned"):
        raise ArtifactError(f"tables must be 'best' or 'learned', not {tables!r}")
    if decoder_dtype not in (None, *DECODER_DTYPES):
        raise ArtifactError(f"decoder_dtype must be one of {DECODER_DTYPES}, not {decoder_dtype!r}")
    if float_dtype not in FLOAT_PARAM_DTYPES:
        raise ArtifactError(f"float_dtype must be one of {FLOAT_PARAM_DTYPES}, not {float_dtype!r}")
    arch, arch_kwargs = _arch(model, arch, arch_kwargs)
    sections, groups, layers = _encode_latents(model, tensors, tables, decoder_dtype)
    float_meta, sections["float_params"] = _encode_float_params(model, float_dtype)
    header = {
        "format_version": FORMAT_VERSION, "arch": arch, "arch_kwargs": arch_kwargs,
        **_input_cfg(model), **_split_metadata(metadata or {}), "versions": _versions(model),
        "reparam": {k: v for k, v in getattr(model, "lilnetx_config", {}).items() if k in REPARAM_CHECKS},
        "groups": groups, "layers": layers, "float_params": float_meta,
        "sections": {name: len(sections[name]) for name in SECTIONS},
    }
    data = assemble(header, [sections[name] for name in SECTIONS])
    atomic_write(path, data)
    return make_info(Path(path), header, hashlib.sha256(data).hexdigest(), len(data), section_parts(header, len(data)))


def _arch(model: nn.Module, arch: str | None, kwargs: dict[str, Any] | None) -> tuple[str, dict[str, Any]]:
    recorded = getattr(model, "lilnetx_arch", None) or {}
    name = arch or recorded.get("name")
    if not name:
        raise ArtifactError("unknown architecture: pass arch= (and arch_kwargs=) to save, or build the model "
                            "with zoo.create_model, which records model.lilnetx_arch")
    if kwargs is None:
        kwargs = recorded.get("kwargs", {}) if name == recorded.get("name") else {}
    return str(name), _jsonable(dict(kwargs), "arch_kwargs")


def _jsonable(value: Any, what: str) -> Any:
    """``value`` as plain JSON types (tuples become lists); a clear error for anything else."""
    try:
        return json.loads(json.dumps(value, allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise ArtifactError(f"{what} must be JSON data with finite numbers ({exc})") from exc


def _input_cfg(model: nn.Module) -> dict[str, Any]:
    cfg = getattr(model, "pretrained_cfg", None) or {}
    return {key: _jsonable(cfg.get(key), key) for key in ("input_size", "mean", "std", "num_classes")}


def _split_metadata(metadata: dict[str, Any]) -> dict[str, Any]:
    meta = dict(_jsonable(metadata, "metadata"))
    fields = {key: meta.pop(key, None) for key in ("dataset", "metrics", "recipe")}
    return {**fields, "metadata": meta}


def _versions(model: nn.Module) -> dict[str, str]:
    """Package versions, plus the plugin that provided the architecture and its version when
    ``model.pretrained_cfg`` names them (``zoo.create_model`` does)."""
    def version(dist: str) -> str:
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            return "unknown"

    versions = {"lilnetx": version("lilnetx-zoo"), "torch": torch.__version__,
                "constriction": version("constriction")}
    cfg = getattr(model, "pretrained_cfg", None) or {}
    if cfg.get("plugin"):
        versions |= {"plugin": str(cfg["plugin"]), "plugin_version": str(cfg.get("plugin_version") or "unknown")}
    return versions


@torch.no_grad()
def _encode_latents(model: nn.Module, tensors: list[LatentTensor], tables: str,
                    decoder_dtype: str | None) -> tuple[dict[str, bytes], list, list]:
    """Sections ``tables``, ``decoders``, ``coded_latents`` and the header's ``groups`` and ``layers``."""
    rows = {t.name: torch.round(t.rows().detach()).cpu().numpy().astype(np.int32) for t in tensors}
    group_meta, tensor_tables, table_list, decoders = [], {}, [], []
    for name, group in latent_groups(model).items():
        members = [t.name for t in tensors if t.group is group]
        shared = _fit_tables(group, np.concatenate([rows[m] for m in members]), tables)
        separate = [_fit_tables(group, rows[m], tables) for m in members]
        is_shared = len(members) == 1 or (_cost([shared] * len(members), [rows[m] for m in members])
                                          <= _cost(separate, [rows[m] for m in members]))
        for member, own in zip(members, separate, strict=True):
            tensor_tables[member] = shared if is_shared else own
        table_list += shared if is_shared else [t for own in separate for t in own]
        dtype = decoder_dtype or _smallest_exact(group.decoder.detach(), f"decoder of {name}")
        decoders.append(decoder_bytes(group.decoder, dtype))
        group_meta.append({"name": name, "width": group.width, "shared": is_shared, "dtype": dtype})
    coded, shares = ec.encode([(rows[t.name], tensor_tables[t.name]) for t in tensors])
    layers = [_layer_entry(t, rows[t.name], bits)
              for t, bits in zip(tensors, shares, strict=True)]
    sections = {"tables": ec.write_tables(table_list), "decoders": b"".join(decoders), "coded_latents": coded}
    return sections, group_meta, layers


def _fit_tables(group: nn.Module, rows: np.ndarray, tables: str) -> list[ec.Table]:
    """One table per channel over the channel's symbol range ``[min, max]`` in ``rows``."""
    lo, hi = rows.min(axis=0), rows.max(axis=0)
    if int((hi - lo).max()) >= ec.MAX_SYMBOLS:
        raise ArtifactError(f"latents of group {group.name!r} span {int((hi - lo).max()) + 1} values; at most "
                            f"{ec.MAX_SYMBOLS} per channel can be coded (train with a rate penalty)")
    counts = [np.bincount(rows[:, c] - lo[c], minlength=int(hi[c] - lo[c]) + 1) for c in range(group.width)]
    return group.density.freeze(lo, counts, histogram=tables == "best")


def _smallest_exact(decoder: torch.Tensor, what: str) -> str:
    """The decoder type of fewest bytes that holds every value of ``decoder`` exactly (float16 for dyadic
    values, qint8 for a decoder snapped to it in training), else the decoder's own dtype."""
    exact = [name for name in ("qint8", "float16", "bfloat16")
             if torch.equal(snap_decoder(decoder, name), decoder)]
    own = dtype_name(decoder, what)
    shape = list(decoder.shape)
    return min([*exact, own], key=lambda name: decoder_nbytes(name, shape))


def _cost(tables: list[list[ec.Table]], rows: list[np.ndarray]) -> float:
    """Bits of distinct tables plus the bits of each ``rows`` under its tables."""
    distinct = {id(t): t for ts in tables for t in ts}.values()
    return sum(t.cost() for t in distinct) + sum(ec.rows_ideal_bits(ts, r) for ts, r in zip(tables, rows, strict=True))


def _layer_entry(t: LatentTensor, rows: np.ndarray, coded_bits: int) -> dict[str, Any]:
    """The header's per-layer row: shape, symbol range, bits (estimated by the density, coded); the reader
    recomputes ideal bits and zeros from the latents."""
    est = float(t.group.density.total_bits(torch.as_tensor(rows, dtype=t.latent.dtype, device=t.latent.device),
                                            resolution=1))
    return {"name": t.name, "group": t.group.name, "shape": list(t.latent.shape),
            "range": [int(rows.min()), int(rows.max())], "est_bits": round(est, 1), "coded_bits": int(coded_bits)}


def _encode_float_params(model: nn.Module, float_dtype: str) -> tuple[list[dict[str, Any]], bytes]:
    """The header's ``float_params`` entries and their bytes: every state-dict tensor that is not a latent, as
    it is (``float32``), or BatchNorms folded to scale and shift and other float tensors in float16."""
    state = {key: value for key, value in model.state_dict().items() if not is_latent_key(key)}
    folded = {} if float_dtype == "float32" else _foldable_batchnorms(model, state)
    zero_inputs = _zero_inputs(model) if folded else {}
    meta, chunks, skip = [], [], set()
    for key, value in state.items():
        if key in skip:
            continue
        module_name = key.removesuffix(".weight")
        if module_name in folded:
            bn = folded[module_name]
            meta.append({"name": module_name, "fold": "batchnorm", "dtype": float_dtype,
                         "shape": [bn.num_features], "as": dtype_name(bn.weight, key)})
            chunks.append(batchnorm_bytes(bn, float_dtype, zero_inputs.get(module_name)))
            skip |= {f"{module_name}.{k}" for k in ("bias", "running_mean", "running_var", "num_batches_tracked")}
            continue
        dtype = dtype_name(value, key)
        entry = {"name": key, "dtype": dtype, "shape": list(value.shape)}
        if float_dtype != "float32" and dtype in FLOAT_DTYPES and dtype != "float16":
            entry, value = {**entry, "dtype": "float16", "as": dtype}, value.to(torch.float16)
        meta.append(entry)
        chunks.append(raw_bytes(value))
    return meta, b"".join(chunks)


def _zero_inputs(model: nn.Module) -> dict[str, torch.Tensor]:
    """BatchNorm name -> its input channels that are always exactly zero: the output channels of the conv or
    linear layer feeding it directly whose weights (and bias) are all zero. Found by ``lilnetx.channel_graph``'s
    tracer; ``{}`` for a model that cannot be traced."""
    try:
        graph = channel_graph.Tracer().trace(model)  # BatchNorms stay module calls (timm's too)
    except Exception:  # data-dependent control flow and the like: no channel is known to be zero
        return {}
    modules = dict(model.named_modules())
    out = {}
    for node in graph.nodes:
        source = node.args[0] if node.op == "call_module" and node.args else None
        if not (isinstance(modules.get(node.target), nn.modules.batchnorm._BatchNorm)
                and isinstance(source, fx.Node) and source.op == "call_module"
                and isinstance(modules.get(source.target), nn.Conv2d | nn.Linear)):
            continue
        layer = modules[source.target]
        zero = layer.weight.detach().flatten(1).eq(0).all(dim=1)
        if layer.bias is not None:
            zero &= layer.bias.detach().eq(0)
        out[str(node.target)] = zero
    return out


def _foldable_batchnorms(model: nn.Module, state: dict[str, torch.Tensor]) -> dict[str, nn.Module]:
    """BatchNorms with affine parameters and running statistics whose five state-dict entries come in order."""
    names = list(state)
    position = {key: i for i, key in enumerate(names)}
    out = {}
    for name, module in model.named_modules():
        if not (name and isinstance(module, nn.modules.batchnorm._BatchNorm) and module.affine
                and module.running_mean is not None and module.weight.dtype in (torch.float32, torch.float64)):
            continue
        keys = [f"{name}.{k}" for k in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")]
        start = position.get(keys[0], -1)
        if start >= 0 and names[start:start + 5] == keys:
            out[name] = module
    return out
