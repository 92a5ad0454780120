"""Checks of a parsed header (types, names, shapes, section sizes, the reader's limits) and of a built model
against it.

A file is data from a stranger: every count that drives an allocation or a loop is bounded here, before
anything is decoded. Parameters (latents and float parameters together) by :func:`max_params`; latent
channels (each layer's rows times its group's width: tables and decoding calls) by :data:`MAX_CHANNELS`;
the tables by the bytes of their section (a table takes at least :data:`MIN_TABLE_BITS`) and their symbols
by ``entropy_coding.MAX_TABLE_SYMBOLS``; float parameters and decoders by their section's length.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from lilnetx.artifact.errors import ArtifactError, ArtifactTooLargeError, corrupt, mismatch
from lilnetx.artifact.format import (
    DECODER_DTYPES,
    DERIVED_LAYER_FIELDS,
    DTYPES,
    FLOAT_DTYPES,
    MAX_NDIM,
    MAX_WIDTH,
    READABLE_VERSIONS,
    SECTIONS,
    decoder_nbytes,
    decoder_shapes,
    param_entry_error,
    param_layout,
    param_nbytes,
)
from lilnetx.reparam import DECODER_FORMS, INITS, STRUCTURES

MAX_PARAMS_ENV = "LILNETX_MAX_PARAMS"
DEFAULT_MAX_PARAMS = 1 << 25  # 33.5 M: ResNet-50's 25.6 M fit; about 134 MB a copy in float32
MAX_CHANNELS = 1 << 17  # latent channels (group width, per layer) of one file; the shipped files have <= 200
MIN_TABLE_BITS = 7  # a one-symbol table: Exp-Golomb codes of its first symbol (>= 3 bits) and count (>= 4)


def max_params() -> int:
    """The most parameters a file may declare: ``LILNETX_MAX_PARAMS`` or :data:`DEFAULT_MAX_PARAMS`."""
    raw = os.environ.get(MAX_PARAMS_ENV, "").strip()
    if not raw:
        return DEFAULT_MAX_PARAMS
    try:
        return max(1, int(float(raw)))
    except ValueError:
        raise ArtifactError(f"{MAX_PARAMS_ENV}={raw!r} is not a number of parameters; e.g. "
                            f"{MAX_PARAMS_ENV}=200000000") from None


REPARAM_CHECKS: dict[str, Callable[[Any], bool]] = {  # reparameterize options a header may hold
    "init": lambda v: v in INITS, "structure": lambda v: v in STRUCTURES,
    "compress_bias": lambda v: isinstance(v, bool),
    "exclude": lambda v: isinstance(v, list) and all(isinstance(p, str) for p in v),
    "density_filters": lambda v: isinstance(v, list) and len(v) <= 8 and all(is_int(f, 1, 64) for f in v),
    "decoder_forms": lambda v: isinstance(v, dict) and all(f in DECODER_FORMS for f in v.values()),  # format 2
}


def is_int(value: Any, lo: int = 0, hi: int = 1 << 40) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and lo <= value <= hi


def is_shape(value: Any) -> bool:
    return isinstance(value, list) and len(value) <= MAX_NDIM and all(is_int(d) for d in value)


def check_entries(entries: Any, source: str, what: str, fields: dict[str, Callable[[Any], bool]]) -> None:
    """``entries`` is a list of objects with uniquely named ``fields`` that pass their checks."""
    if not isinstance(entries, list):
        raise corrupt(source, f"header[{what!r}] is not a list")
    names = set()
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise corrupt(source, f"header[{what!r}][{i}] is not an object")
        for key, check in fields.items():
            if not check(entry.get(key)):
                raise corrupt(source, f"header[{what!r}][{i}][{key!r}] is missing or invalid: {entry.get(key)!r}")
        if entry["name"] in names:
            raise corrupt(source, f"header[{what!r}] names {entry['name']!r} twice")
        names.add(entry["name"])


def check_header(h: dict[str, Any], source: str) -> None:
    """Everything decoding and rebuilding rely on: types, names, shapes, sizes of the sections."""
    if h.get("format_version") not in READABLE_VERSIONS:
        raise corrupt(source, f"header format_version {h.get('format_version')!r} is not one of {READABLE_VERSIONS}")
    for key, kind in (("arch", str), ("arch_kwargs", dict), ("reparam", dict), ("sections", dict)):
        if not isinstance(h.get(key), kind):
            raise corrupt(source, f"header[{key!r}] is missing or not a {kind.__name__}")
    for key, value in h["reparam"].items():
        if key not in REPARAM_CHECKS or not REPARAM_CHECKS[key](value) or (key == "decoder_forms"
                                                                             and h["format_version"] < 2):
            raise corrupt(source, f"header['reparam'][{key!r}] is unknown or invalid: {value!r}")
    sections = h["sections"]
    if sorted(sections) != sorted(SECTIONS) or not all(is_int(v) for v in sections.values()):
        raise corrupt(source, f"header['sections'] must give the byte length of {', '.join(SECTIONS)}")
    is_name = lambda v: isinstance(v, str) and bool(v)  # noqa: E731
    is_number = lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)  # noqa: E731
    decoder_dtypes = DECODER_DTYPES if h["format_version"] >= 3 else FLOAT_DTYPES
    check_entries(h.get("groups"), source, "groups", {
        "name": is_name, "width": lambda v: is_int(v, 1, MAX_WIDTH),
        "dtype": lambda v: isinstance(v, str) and v in decoder_dtypes,
        "shared": lambda v: isinstance(v, bool)})
    widths = {g["name"]: g["width"] for g in h["groups"]}
    check_entries(h.get("layers"), source, "layers", {
        "name": is_name, "group": lambda v: isinstance(v, str) and v in widths, "shape": is_shape,
        "range": lambda v: isinstance(v, list) and len(v) == 2 and all(is_int(x, -(1 << 24), 1 << 24) for x in v),
        "coded_bits": is_int,  # the decoder checks the stream against each layer's share
        "est_bits": is_number,
        **{key: is_number for key in DERIVED_LAYER_FIELDS if h["format_version"] < 3}})
    check_entries(h.get("float_params"), source, "float_params", {
        "name": is_name, "dtype": lambda v: isinstance(v, str) and (v in DTYPES or v == "qint8"), "shape": is_shape})
    for i, entry in enumerate(h["float_params"]):
        if (error := param_entry_error(entry, h["format_version"])) is not None:
            raise corrupt(source, f"header['float_params'][{i}] ({entry['name']!r}): {error}")
    both = sorted({layer["name"] for layer in h["layers"]}
                  & {name for p in h["float_params"] for name, _, _ in param_layout(p)})
    if both:
        raise corrupt(source, f"header names {both[0]!r} both as a compressed layer and as a float parameter")
    _check_counts(h, widths, source)
    shapes = decoder_shapes(h)
    sizes = {"decoders": sum(decoder_nbytes(g["dtype"], shapes[g["name"]]) for g in h["groups"]),
             "float_params": sum(param_nbytes(p) for p in h["float_params"])}
    for section, size in sizes.items():
        if size != sections[section]:
            raise corrupt(source, f"the {section} described in the header take {size} bytes, "
                                   f"but the section holds {sections[section]}")


def _check_counts(h: dict[str, Any], widths: dict[str, int], source: str) -> None:
    """Parameters, channels and tables within the reader's limits (see the module doc)."""
    latents = channels = 0
    tables = {g["name"]: 0 for g in h["groups"]}
    shared = {g["name"]: g["shared"] for g in h["groups"]}
    for layer in h["layers"]:
        numel, width = math.prod(layer["shape"]), widths[layer["group"]]
        if numel % width:
            raise corrupt(source, f"layer {layer['name']!r} of shape {layer['shape']} does not split into rows "
                                   f"of its group's width {width}")
        latents += numel
        channels += width
        tables[layer["group"]] = width if shared[layer["group"]] else tables[layer["group"]] + width
    params = latents + sum(math.prod(p["shape"]) for p in h["float_params"])
    if params > (limit := max_params()):
        raise ArtifactTooLargeError(f"{source} declares {params:,} parameters, over this installation's limit of "
                                    f"{limit:,} for a file; if you trust the file, set {MAX_PARAMS_ENV} higher")
    if channels > MAX_CHANNELS:
        raise corrupt(source, f"the layers hold {channels:,} latent channels, more than a file may "
                               f"({MAX_CHANNELS:,})")
    count, size = sum(tables.values()), h["sections"]["tables"]
    if count * MIN_TABLE_BITS > 8 * size:
        raise corrupt(source, f"the header describes {count:,} probability tables, which cannot fit in the "
                               f"{size:,} bytes of the tables section")


TensorSpecs = dict[str, tuple[list[int], torch.dtype]]  # state-dict name -> (shape, dtype)


def tensor_specs(model: nn.Module) -> TensorSpecs:
    return {name: (list(value.shape), value.dtype) for name, value in model.state_dict().items()}


def check_tensors(header: dict[str, Any], built: TensorSpecs, source: str) -> None:
    """The header's layers and float parameters are exactly the built model's tensors, with the same shapes
    (and dtypes, for float parameters)."""
    arch = header["arch"]
    recorded = {e["name"]: (e["shape"], None) for e in header["layers"]}
    recorded |= {name: (shape, DTYPES[dtype][1]) for e in header["float_params"] for name, dtype, shape in param_layout(e)}
    if recorded.keys() != built.keys():
        only_file = sorted(recorded.keys() - built.keys())[:5]
        only_model = sorted(built.keys() - recorded.keys())[:5]
        raise mismatch(source, "the tensors", f"{only_file} that the model lacks",
                        f"{only_model} that the file lacks", arch)
    for name, (shape, dtype) in recorded.items():
        built_shape, built_dtype = built[name]
        if shape != built_shape:
            raise mismatch(source, f"the shape of {name!r}", shape, built_shape, arch)
        if dtype is not None and dtype != built_dtype:
            raise mismatch(source, f"the dtype of {name!r}", dtype, built_dtype, arch)
