"""The ``.lnx`` artifact: one self-describing, verified, entropy-coded file per LilNetX model.

Layout of format 1 (varints are unsigned LEB128)::

    magic b"\\x89LNX" | format version (1 byte) | file size (varint) | header length (varint)
    | header: raw-deflate JSON (fixed preset dictionary ``ZDICT``)
    | tables | decoders | float_params | coded_latents        (byte lengths in header["sections"])
    | sha256 of every byte before it (32 bytes)

``tables``: one bit stream of per-channel integer frequency tables (``lilnetx.entropy_coding``), groups in
header order. ``decoders``: each group's ``width x width`` decoder, raw little-endian. ``float_params``:
every state-dict entry that is not a latent (BatchNorm, biases and layers left uncompressed, buffers),
raw little-endian, dtype and shape in the header. ``coded_latents``: one ANS stream of every latent tensor
(layer order, then channel order); each layer's share of it in bits is the header's ``coded_bits``, which
the decoder checks as it goes. ``load`` compares the architecture's tensor names and shapes with the header
(on the meta device) before decoding anything. Nothing is pickled; every length read from a file is checked
against the bytes present and fixed limits before anything is allocated.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import math
import os
import tempfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from lilnetx import entropy_coding as ec
from lilnetx.reparam import LatentTensor, ReparamError, latent_groups, latent_tensors, reparameterize, strip

MAGIC = b"\x89LNX"
FORMAT_VERSION = 1
DIGEST_SIZE = 32
SECTIONS = ("tables", "decoders", "float_params", "coded_latents")
BUILDER_GROUP = "lilnetx.model_builders"
MAX_HEADER_BYTES = 1 << 24  # decompressed JSON header
MAX_ELEMENTS = 1 << 28  # latents per file
MAX_WIDTH = 1 << 12  # values per latent row (kernel positions)
MAX_NDIM = 8
REPARAM_CHECKS: dict[str, Callable[[Any], bool]] = {  # reparameterize options a header may hold
    "init": lambda v: isinstance(v, str), "structure": lambda v: isinstance(v, str),
    "compress_bias": lambda v: isinstance(v, bool),
    "exclude": lambda v: isinstance(v, list) and all(isinstance(p, str) for p in v),
    "density_filters": lambda v: isinstance(v, list) and len(v) <= 8 and all(_is_int(f, 1, 64) for f in v),
}

# name -> (little-endian numpy dtype of the stored bytes, torch dtype)
DTYPES: dict[str, tuple[str, torch.dtype]] = {
    "float32": ("<f4", torch.float32), "float64": ("<f8", torch.float64), "float16": ("<f2", torch.float16),
    "bfloat16": ("<i2", torch.bfloat16), "int64": ("<i8", torch.int64), "int32": ("<i4", torch.int32),
    "int16": ("<i2", torch.int16), "int8": ("i1", torch.int8), "uint8": ("u1", torch.uint8),
    "bool": ("?", torch.bool),
}
FLOAT_DTYPES = ("float32", "float64", "float16", "bfloat16")

# Preset dictionary of the header's deflate stream: a typical header with placeholder values. Part of
# format 1: changing it changes every file, so it needs a new format version.
ZDICT = (
    b'{"format_version":1,"arch":"resnet20","arch_kwargs":{"num_classes":10,"in_chans":3,"input_size":[3,3'
    b'2,32],"mean":[0.4914,0.4822,0.4465],"std":[0.247,0.2435,0.2616]},"input_size":[3,224,224],"mean":[0.'
    b'485,0.456,0.406],"std":[0.229,0.224,0.225],"num_classes":1000,"dataset":"cifar10","metrics":{"top1":'
    b'0.9,"top5":0.99,"test_loss":0.3},"recipe":{"arch":"lenet5_caffe","arch_kwargs":{},"dataset":"mnist",'
    b'"dataset_kwargs":{"root":""},"reparam":{"init":"scratch","structure":"slice","compress_bias":true,"e'
    b'xclude":[],"density_filters":[3,3,3],"latent_bound":3},"train":{"epochs":20,"batch_size":128,"lr":0.'
    b'01,"density_lr":0.0001,"lambda_rate":0.0001,"lambda_l2":1e-06,"lambda_slice":1e-06,"warmup_epochs":5'
    b',"grad_clip":null,"label_smoothing":0.0,"seed":0,"workers":0,"device":"auto","eval_every":1,"extra":'
    b'{}}},"metadata":{"run":{"epochs":20}},"versions":{"lilnetx":"0.1.0","torch":"2.","constriction":"0.5'
    b'.0"},"reparam":{"init":"scratch","structure":"slice","compress_bias":true,"exclude":[],"density_filt'
    b'ers":[3,3,3]},"groups":[{"name":"conv3x3","width":9,"shared":false,"dtype":"float32"},{"name":"conv1'
    b'x1","width":1,"shared":true,"dtype":"float32"},{"name":"conv5x5","width":25,"shared":false,"dtype":"'
    b'float16"},{"name":"bias","width":1,"shared":false,"dtype":"float32"},{"name":"dense","width":1,"shar'
    b'ed":true,"dtype":"float32"}],"layers":[{"name":"layer1.0.conv1.weight","group":"conv3x3","shape":[16'
    b',16,3,3],"range":[-1,1],"est_bits":0.0,"ideal_bits":0.0,"coded_bits":0,"zeros":0,"zero_slices":0},{"'
    b'name":"fc.bias","group":"bias","shape":[10],"range":[0,0],"est_bits":0.0,"ideal_bits":0.0,"coded_bit'
    b's":0,"zeros":10,"zero_slices":10}],"float_params":[{"name":"bn1.weight","dtype":"float32","shape":[1'
    b'6]},{"name":"bn1.bias","dtype":"float32","shape":[16]},{"name":"bn1.running_mean","dtype":"float32",'
    b'"shape":[16]},{"name":"bn1.running_var","dtype":"float32","shape":[16]},{"name":"bn1.num_batches_tra'
    b'cked","dtype":"int64","shape":[]}],"sections":{"tables":0,"decoders":0,"float_params":0,"coded_laten'
    b'ts":0}}'
)


class ArtifactError(ValueError):
    """Base class: a ``.lnx`` file that cannot be written, read or rebuilt. The message says what to do."""


class TruncatedArtifactError(ArtifactError):
    """The file is shorter than its header says: an interrupted download or copy. Fetch it again."""


class ChecksumMismatchError(ArtifactError):
    """The sha256 stored in the file does not match its bytes: the file is damaged. Fetch it again."""


class BadMagicError(ArtifactError):
    """The file does not start with the ``.lnx`` magic bytes: it is not a LilNetX artifact."""


class UnsupportedVersionError(ArtifactError):
    """The file uses a format version this lilnetx cannot read (usually newer): upgrade lilnetx."""


class CorruptHeaderError(ArtifactError):
    """The checksum matches but the content is inconsistent: the header disagrees with the data, with itself
    or with the architecture the builder builds. The file was edited or written by a broken writer."""


class UnknownArchitectureError(ArtifactError):
    """No model builder can build the file's architecture: install the plugin providing it or pass builder=."""


@dataclass(frozen=True)
class ArtifactInfo:
    """Summary of a written or verified artifact. ``sha256`` is the whole file's (as ``sha256sum`` prints)."""

    path: Path
    sha256: str
    size_bytes: int
    arch: str
    parts: dict[str, int]
    estimated_bits: float
    coded_latent_bytes: int


@dataclass(frozen=True)
class Artifact:
    """A verified, fully decoded artifact (no model built)."""

    header: dict[str, Any]
    sha256: str
    size_bytes: int
    parts: dict[str, int]
    latents: dict[str, np.ndarray]  # integer latents (int32) by tensor name, in the tensor's shape
    decoders: dict[str, np.ndarray]  # group name -> (width, width) matrix
    float_params: dict[str, torch.Tensor]  # state-dict name -> tensor

    def info(self, path: str | Path) -> ArtifactInfo:
        return _info(Path(path), self.header, self.sha256, self.size_bytes, self.parts)


Builder = Callable[[str, dict[str, Any]], nn.Module]
TensorSpecs = dict[str, tuple[list[int], torch.dtype]]  # state-dict name -> (shape, dtype)


# =========================================================================== writing


def save(
    model: nn.Module,
    path: str | Path,
    *,
    arch: str | None = None,
    arch_kwargs: dict[str, Any] | None = None,
    metadata: dict[str, Any] | None = None,
    tables: Literal["best", "learned"] = "best",
    decoder_dtype: str | None = None,
) -> ArtifactInfo:
    """Write the reparameterised ``model`` to ``path`` atomically; same model, same bytes.

    ``arch`` / ``arch_kwargs`` default to ``model.lilnetx_arch`` (set by ``zoo.create_model``); input size,
    mean, std and classes come from ``model.pretrained_cfg``. ``metadata`` is free JSON; its ``dataset``,
    ``metrics`` and ``recipe`` keys become header fields. ``tables="best"`` lets each channel's table follow
    the learned density or the latents' histogram, whichever makes the file smaller; ``"learned"`` always
    follows the learned density. Each decoder is stored in the narrowest float type that holds it exactly;
    ``decoder_dtype`` (``"float16"``, ``"bfloat16"``) forces a type: a smaller file whose weights differ
    slightly from ``model``'s (lossy).
    """
    tensors = latent_tensors(model)
    if not tensors:
        raise ArtifactError("model is not reparameterised: call lilnetx.reparameterize(model) and train it "
                            "before saving; a plain model has no latents to code")
    if tables not in ("best", "learned"):
        raise ArtifactError(f"tables must be 'best' or 'learned', not {tables!r}")
    if decoder_dtype not in (None, *FLOAT_DTYPES):
        raise ArtifactError(f"decoder_dtype must be one of {FLOAT_DTYPES}, not {decoder_dtype!r}")
    arch, arch_kwargs = _arch(model, arch, arch_kwargs)
    sections, groups, layers = _encode_latents(model, tensors, tables, decoder_dtype)
    float_meta, sections["float_params"] = _encode_float_params(model)
    header = {
        "format_version": FORMAT_VERSION, "arch": arch, "arch_kwargs": arch_kwargs,
        **_input_cfg(model), **_split_metadata(metadata or {}), "versions": _versions(model),
        "reparam": {k: v for k, v in getattr(model, "lilnetx_config", {}).items() if k in REPARAM_CHECKS},
        "groups": groups, "layers": layers, "float_params": float_meta,
        "sections": {name: len(sections[name]) for name in SECTIONS},
    }
    data = _assemble(header, [sections[name] for name in SECTIONS])
    _atomic_write(Path(path), data)
    return _info(Path(path), header, hashlib.sha256(data).hexdigest(), len(data), _parts(header, len(data)))


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
        dtype = decoder_dtype or _narrowest_exact(group.decoder.detach(), f"decoder of {name}")
        decoders.append(_raw_bytes(group.decoder.detach().to(DTYPES[dtype][1])))
        group_meta.append({"name": name, "width": group.width, "shared": is_shared, "dtype": dtype})
    coded, shares = ec.encode([(rows[t.name], tensor_tables[t.name]) for t in tensors])
    layers = [_layer_entry(t, rows[t.name], tensor_tables[t.name], bits)
              for t, bits in zip(tensors, shares, strict=True)]
    sections = {"tables": ec.write_tables(table_list), "decoders": b"".join(decoders), "coded_latents": coded}
    return sections, group_meta, layers


def _fit_tables(group: nn.Module, rows: np.ndarray, tables: str) -> list[ec.Table]:
    """One table per channel over the channel's symbol range ``[min, max]`` in ``rows``."""
    lo, hi = rows.min(axis=0), rows.max(axis=0)
    if int((hi - lo).max()) >= ec.MAX_SYMBOLS:
        raise ArtifactError(f"latents of group {group.name!r} span {int((hi - lo).max()) + 1} values; at most "
                            f"{ec.MAX_SYMBOLS} per channel can be coded (train with a rate penalty)")
    learned = _learned_pmfs(group, lo, hi)
    return [ec.choose_table(int(lo[c]), _counts(rows[:, c], int(lo[c]), int(hi[c])), learned[c],
                            histogram=tables == "best") for c in range(group.width)]


@torch.no_grad()
def _learned_pmfs(group: nn.Module, lo: np.ndarray, hi: np.ndarray) -> list[np.ndarray]:
    """The learned density's probabilities of the integers ``lo[c]..hi[c]`` of each channel ``c``, as floats
    (the table chooser quantises them once). One likelihood call: column ``c`` repeats ``hi[c]`` past its end."""
    param = group.density.matrices[0]
    steps = torch.arange(int((hi - lo).max()) + 1, dtype=param.dtype, device=param.device)[:, None]
    low, high = (torch.as_tensor(v, dtype=param.dtype, device=param.device) for v in (lo, hi))
    pmf = group.density.likelihood(torch.minimum(low + steps, high)).double().cpu().numpy()
    return [pmf[:int(hi[c] - lo[c]) + 1, c] for c in range(group.width)]


def _narrowest_exact(tensor: torch.Tensor, what: str) -> str:
    """The smallest float dtype that holds every value of ``tensor`` exactly (e.g. float16 for dyadic values)."""
    for name in ("float16", "bfloat16"):
        dtype = DTYPES[name][1]
        if dtype.itemsize < tensor.dtype.itemsize and torch.equal(tensor.to(dtype).to(tensor.dtype), tensor):
            return name
    return _dtype_name(tensor, what)


def _counts(column: np.ndarray, lo: int, hi: int) -> np.ndarray:
    return np.bincount(column - lo, minlength=hi - lo + 1)


def _ideal_bits(tables: list[ec.Table], rows: np.ndarray) -> float:
    """Bits of ``rows`` under ``tables`` (one per column) with an ideal coder."""
    return sum(ec.ideal_bits(t.freq, _counts(rows[:, c], t.lo, t.hi)) for c, t in enumerate(tables))


def _cost(tables: list[list[ec.Table]], rows: list[np.ndarray]) -> float:
    """Bits of distinct tables plus the bits of each ``rows`` under its tables."""
    distinct = {id(t): t for ts in tables for t in ts}.values()
    return sum(t.cost() for t in distinct) + sum(_ideal_bits(ts, r) for ts, r in zip(tables, rows, strict=True))


def _layer_entry(t: LatentTensor, rows: np.ndarray, tables: list[ec.Table], coded_bits: int) -> dict[str, Any]:
    """The header's per-layer row: shape, symbol range, bits (estimated, ideal, coded) and zeros."""
    est = float(t.group.density.total_bits(torch.as_tensor(rows, dtype=t.latent.dtype, device=t.latent.device),
                                            resolution=1))
    ideal = _ideal_bits(tables, rows)
    return {"name": t.name, "group": t.group.name, "shape": list(t.latent.shape),
            "range": [int(rows.min()), int(rows.max())],
            "est_bits": round(est, 1), "ideal_bits": round(ideal, 1), "coded_bits": int(coded_bits),
            "zeros": int((rows == 0).sum()), "zero_slices": int((rows == 0).all(axis=1).sum())}


def _is_latent_key(key: str) -> bool:
    return key.startswith("parametrizations.") or ".parametrizations." in key


def _encode_float_params(model: nn.Module) -> tuple[list[dict[str, Any]], bytes]:
    meta, chunks = [], []
    for key, value in model.state_dict().items():
        if _is_latent_key(key):
            continue
        meta.append({"name": key, "dtype": _dtype_name(value, key), "shape": list(value.shape)})
        chunks.append(_raw_bytes(value))
    return meta, b"".join(chunks)


def _dtype_name(tensor: torch.Tensor, what: str) -> str:
    for name, (_, dtype) in DTYPES.items():
        if tensor.dtype == dtype:
            return name
    raise ArtifactError(f"cannot store {what}: dtype {tensor.dtype} is not one of {', '.join(DTYPES)}")


def _raw_bytes(tensor: torch.Tensor) -> bytes:
    t = tensor.detach().cpu().contiguous()
    np_dtype, _ = DTYPES[_dtype_name(t, "tensor")]
    if t.dtype == torch.bfloat16:
        t = t.view(torch.int16)
    return t.numpy().astype(np_dtype, copy=False).tobytes()


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _compress_header(header: dict[str, Any]) -> bytes:
    text = json.dumps(header, separators=(",", ":"), allow_nan=False).encode()
    deflate = zlib.compressobj(9, zlib.DEFLATED, -15, 9, zdict=ZDICT)
    return deflate.compress(text) + deflate.flush()


def _assemble(header: dict[str, Any], sections: list[bytes]) -> bytes:
    """Frame header and sections, fill in the file size, append the digest."""
    blob = _compress_header(header)
    body = _varint(len(blob)) + blob + b"".join(sections)
    rest = len(MAGIC) + 1 + len(body) + DIGEST_SIZE
    width = 1
    while len(_varint(rest + width)) != width:  # the file size counts its own varint
        width += 1
    content = MAGIC + bytes([FORMAT_VERSION]) + _varint(rest + width) + body
    return content + hashlib.sha256(content).digest()


def _atomic_write(path: Path, data: bytes) -> None:
    """Write to a temporary file beside ``path``, then rename over it: never a partial file at ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _parts(header: dict[str, Any], size: int) -> dict[str, int]:
    sections = header["sections"]
    return {"header": size - sum(sections[name] for name in SECTIONS), **{n: sections[n] for n in SECTIONS}}


def _info(path: Path, header: dict[str, Any], sha256: str, size: int, parts: dict[str, int]) -> ArtifactInfo:
    return ArtifactInfo(path=path, sha256=sha256, size_bytes=size, arch=header["arch"], parts=parts,
                        estimated_bits=round(sum(layer["est_bits"] for layer in header["layers"]), 1),
                        coded_latent_bytes=parts["coded_latents"])


# =========================================================================== reading


def read_artifact(path: str | Path) -> Artifact:
    """Read, verify (magic, version, checksum, header consistency) and decode ``path``; builds no model."""
    data = Path(path).read_bytes()
    header, sections = _parse(data, str(path))
    return _decode(data, header, sections, str(path))


def _decode(data: bytes, header: dict[str, Any], sections: dict[str, bytes], source: str) -> Artifact:
    latents = _decode_latents(header, sections, source)
    decoders = _split_tensors(sections["decoders"],
                              [(g["name"], g["dtype"], [g["width"], g["width"]]) for g in header["groups"]])
    params = _split_tensors(sections["float_params"],
                            [(p["name"], p["dtype"], p["shape"]) for p in header["float_params"]])
    return Artifact(header=header, sha256=hashlib.sha256(data).hexdigest(), size_bytes=len(data),
                    parts=_parts(header, len(data)), latents=latents, decoders=decoders, float_params=params)


def read_header(path: str | Path) -> dict[str, Any]:
    """The verified header of ``path`` (checksum and header consistency checked, latents not decoded)."""
    return _parse(Path(path).read_bytes(), str(path))[0]


def verify(path: str | Path) -> ArtifactInfo:
    """Check everything that can be checked without building the model; raises an ``ArtifactError``."""
    return read_artifact(path).info(path)


def _corrupt(source: str, what: str) -> CorruptHeaderError:
    return CorruptHeaderError(f"{source}: {what}. The checksum matches, so the file was edited or written by a "
                              "broken writer; export the model again")


def _read_varint(data: bytes, pos: int, end: int) -> tuple[int, int] | None:
    """(value, position after it), or ``None`` when the varint runs past ``end`` or over 10 bytes."""
    value = 0
    for i in range(10):
        if pos + i >= end:
            return None
        byte = data[pos + i]
        value |= (byte & 0x7F) << (7 * i)
        if not byte & 0x80:
            return value, pos + i + 1
    return None


def _check_framing(data: bytes, source: str) -> int:
    """Magic, version, file size and checksum; returns the position after the size field."""
    prefix = data[:len(MAGIC)]
    if prefix != MAGIC:
        if MAGIC.startswith(prefix):
            raise TruncatedArtifactError(f"{source} is only {len(data)} bytes long: the file is truncated; "
                                         "download or copy it again")
        raise BadMagicError(f"{source} is not a LilNetX .lnx artifact: it starts with {prefix!r}, not {MAGIC!r}")
    if len(data) == len(MAGIC):
        raise TruncatedArtifactError(f"{source} ends after its magic bytes: the file is truncated")
    version = data[len(MAGIC)]
    if version > FORMAT_VERSION:
        raise UnsupportedVersionError(f"{source} uses .lnx format version {version}, newer than this lilnetx "
                                      f"reads ({FORMAT_VERSION}); upgrade lilnetx")
    if version != FORMAT_VERSION:
        raise UnsupportedVersionError(f"{source} claims .lnx format version {version}, which never existed "
                                      f"(this lilnetx reads {FORMAT_VERSION}); the file is damaged")
    field = _read_varint(data, len(MAGIC) + 1, len(data))
    if field is None:
        raise TruncatedArtifactError(f"{source} ends inside its file-size field: the file is truncated")
    size, pos = field
    if size > len(data):
        raise TruncatedArtifactError(f"{source} has {len(data)} bytes but its header says {size}: the file is "
                                     "truncated (interrupted download or copy); fetch it again")
    if size < len(data) or size < pos + DIGEST_SIZE:
        raise CorruptHeaderError(f"{source} has {len(data)} bytes but its header says {size}: data was appended "
                                 "or the size field is damaged; fetch the file again")
    if hashlib.sha256(data[:-DIGEST_SIZE]).digest() != data[-DIGEST_SIZE:]:
        raise ChecksumMismatchError(f"{source} is damaged: its sha256 checksum does not match its content; "
                                    "fetch it again")
    return pos


def _parse(data: bytes, source: str) -> tuple[dict[str, Any], dict[str, bytes]]:
    """Verified header and the raw bytes of each section."""
    pos = _check_framing(data, source)
    end = len(data) - DIGEST_SIZE
    field = _read_varint(data, pos, end)
    if field is None or field[0] > end - field[1]:
        raise _corrupt(source, "the header length runs past the end of the file")
    length, pos = field
    header = _decompress_header(data[pos:pos + length], source)
    _check_header(header, source)
    pos += length
    sections = {}
    for name in SECTIONS:
        sections[name] = data[pos:pos + header["sections"][name]]
        pos += header["sections"][name]
    if pos != end:
        raise _corrupt(source, f"the section lengths add up to {pos} bytes, but the content is {end} bytes")
    return header, sections


def _decompress_header(blob: bytes, source: str) -> dict[str, Any]:
    inflate = zlib.decompressobj(-15, zdict=ZDICT)
    try:
        text = inflate.decompress(blob, MAX_HEADER_BYTES)
    except zlib.error as exc:
        raise _corrupt(source, f"the header cannot be decompressed ({exc})") from exc
    if inflate.unconsumed_tail or inflate.unused_data or not inflate.eof:
        raise _corrupt(source, f"the header is incomplete, followed by junk or over {MAX_HEADER_BYTES} bytes")
    try:
        header = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise _corrupt(source, f"the header is not valid JSON ({exc})") from exc
    if not isinstance(header, dict):
        raise _corrupt(source, "the header is not a JSON object")
    return header


def _is_int(value: Any, lo: int = 0, hi: int = 1 << 40) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and lo <= value <= hi


def _is_shape(value: Any) -> bool:
    return isinstance(value, list) and len(value) <= MAX_NDIM and all(_is_int(d) for d in value)


def _check_entries(entries: Any, source: str, what: str, fields: dict[str, Callable[[Any], bool]]) -> None:
    """``entries`` is a list of objects with uniquely named ``fields`` that pass their checks."""
    if not isinstance(entries, list):
        raise _corrupt(source, f"header[{what!r}] is not a list")
    names = set()
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise _corrupt(source, f"header[{what!r}][{i}] is not an object")
        for key, check in fields.items():
            if not check(entry.get(key)):
                raise _corrupt(source, f"header[{what!r}][{i}][{key!r}] is missing or invalid: {entry.get(key)!r}")
        if entry["name"] in names:
            raise _corrupt(source, f"header[{what!r}] names {entry['name']!r} twice")
        names.add(entry["name"])


def _check_header(h: dict[str, Any], source: str) -> None:
    """Everything decoding and rebuilding rely on: types, names, shapes, sizes of the sections."""
    if h.get("format_version") != FORMAT_VERSION:
        raise _corrupt(source, f"header format_version {h.get('format_version')!r} != {FORMAT_VERSION}")
    for key, kind in (("arch", str), ("arch_kwargs", dict), ("reparam", dict), ("sections", dict)):
        if not isinstance(h.get(key), kind):
            raise _corrupt(source, f"header[{key!r}] is missing or not a {kind.__name__}")
    for key, value in h["reparam"].items():
        if key not in REPARAM_CHECKS or not REPARAM_CHECKS[key](value):
            raise _corrupt(source, f"header['reparam'][{key!r}] is unknown or invalid: {value!r}")
    sections = h["sections"]
    if sorted(sections) != sorted(SECTIONS) or not all(_is_int(v) for v in sections.values()):
        raise _corrupt(source, f"header['sections'] must give the byte length of {', '.join(SECTIONS)}")
    is_name = lambda v: isinstance(v, str) and bool(v)  # noqa: E731
    is_number = lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)  # noqa: E731
    _check_entries(h.get("groups"), source, "groups", {
        "name": is_name, "width": lambda v: _is_int(v, 1, MAX_WIDTH),
        "dtype": lambda v: isinstance(v, str) and v in FLOAT_DTYPES,
        "shared": lambda v: isinstance(v, bool)})
    widths = {g["name"]: g["width"] for g in h["groups"]}
    _check_entries(h.get("layers"), source, "layers", {
        "name": is_name, "group": lambda v: isinstance(v, str) and v in widths, "shape": _is_shape,
        "range": lambda v: isinstance(v, list) and len(v) == 2 and all(_is_int(x, -(1 << 24), 1 << 24) for x in v),
        "coded_bits": _is_int,  # the decoder checks the stream against each layer's share
        **{key: is_number for key in ("est_bits", "ideal_bits", "zeros", "zero_slices")}})
    _check_entries(h.get("float_params"), source, "float_params", {
        "name": is_name, "dtype": lambda v: isinstance(v, str) and v in DTYPES, "shape": _is_shape})
    both = sorted({layer["name"] for layer in h["layers"]} & {p["name"] for p in h["float_params"]})
    if both:
        raise _corrupt(source, f"header names {both[0]!r} both as a compressed layer and as a float parameter")
    total = 0
    for layer in h["layers"]:
        numel = math.prod(layer["shape"])
        if numel % widths[layer["group"]]:
            raise _corrupt(source, f"layer {layer['name']!r} of shape {layer['shape']} does not split into rows "
                                   f"of its group's width {widths[layer['group']]}")
        total += numel
    if total > MAX_ELEMENTS:
        raise _corrupt(source, f"the layers claim {total} latents, more than the limit of {MAX_ELEMENTS}")
    for section, entries in (("decoders", [(g["dtype"], [g["width"]] * 2) for g in h["groups"]]),
                             ("float_params", [(p["dtype"], p["shape"]) for p in h["float_params"]])):
        size = sum(math.prod(shape) * np.dtype(DTYPES[dtype][0]).itemsize for dtype, shape in entries)
        if size != sections[section]:
            raise _corrupt(source, f"the {section} described in the header take {size} bytes, "
                                   f"but the section holds {sections[section]}")


def _decode_latents(header: dict[str, Any], sections: dict[str, bytes], source: str) -> dict[str, np.ndarray]:
    layers = header["layers"]
    try:
        tables = _read_tables(header, sections["tables"])
    except ec.CodingError as exc:
        raise _corrupt(source, f"the probability tables are malformed ({exc})") from exc
    items = [(math.prod(layer["shape"]) // len(tables[layer["name"]]), tables[layer["name"]], layer["coded_bits"])
             for layer in layers]
    try:
        rows = ec.decode(sections["coded_latents"], items)
    except ec.CodingError as exc:
        raise _corrupt(source, f"the coded latents do not match the layer table ({exc})") from exc
    latents = {}
    for layer, values in zip(layers, rows, strict=True):
        if values.size and [int(values.min()), int(values.max())] != layer["range"]:
            raise _corrupt(source, f"layer {layer['name']!r} decodes to the range "
                                   f"[{values.min()}, {values.max()}], not {layer['range']}")
        latents[layer["name"]] = values.reshape(layer["shape"])
    return latents


def _read_tables(header: dict[str, Any], data: bytes) -> dict[str, list[ec.Table]]:
    """Each latent tensor's tables: one set per group when shared, else one set per tensor."""
    reader = ec.BitReader(data)
    tables: dict[str, list[ec.Table]] = {}
    for group in header["groups"]:
        own: list[ec.Table] = []
        for layer in (entry for entry in header["layers"] if entry["group"] == group["name"]):
            if not own or not group["shared"]:
                own = [ec.Table.read(reader) for _ in range(group["width"])]
            tables[layer["name"]] = own
    reader.finish()
    return tables


def _split_tensors(data: bytes, entries: list[tuple[str, str, list[int]]]) -> dict[str, torch.Tensor]:
    """Raw little-endian tensors laid end to end (sizes already checked against the header)."""
    out, pos = {}, 0
    for name, dtype, shape in entries:
        np_dtype = np.dtype(DTYPES[dtype][0])
        count = math.prod(shape)
        array = np.frombuffer(data, np_dtype, count, pos).astype(np_dtype.newbyteorder("="))
        pos += count * np_dtype.itemsize
        tensor = torch.from_numpy(array)
        out[name] = (tensor.view(torch.bfloat16) if dtype == "bfloat16" else tensor).reshape(shape)
    return out


# =========================================================================== rebuilding


def load(path: str | Path, *, builder: Builder | None = None, reparameterized: bool = False) -> nn.Module:
    """Rebuild the model stored in ``path``: a plain PyTorch module with the decoded weights, in eval mode.

    ``builder(arch_name, arch_kwargs) -> nn.Module`` rebuilds the architecture; by default the builders
    installed under the entry-point group ``lilnetx.model_builders`` are tried in name order. The
    architecture's tensor names and shapes are checked against the header before any latent is decoded.
    ``reparameterized=True`` keeps the latent parametrisation (integer latents and decoders; the learned
    density itself is not stored, the header holds the bits).
    """
    data = Path(path).read_bytes()
    header, sections = _parse(data, str(path))
    model = _rebuild(header, builder, str(path))
    return _finish(model, _decode(data, header, sections, str(path)), reparameterized, str(path))


def from_artifact(artifact: Artifact, *, builder: Builder | None = None, reparameterized: bool = False,
                  source: str = "artifact") -> nn.Module:
    """``load`` for an already read ``Artifact``."""
    return _finish(_rebuild(artifact.header, builder, source), artifact, reparameterized, source)


def _rebuild(header: dict[str, Any], builder: Builder | None, source: str) -> nn.Module:
    """The header's architecture, checked against the header and reparameterised like it; latents not filled."""
    with torch.random.fork_rng(devices=[]):  # building and reparameterising must not move the global RNG
        model = _build(header, builder, source)
        _reparameterize_like(model, header, source)
    return model


def _finish(model: nn.Module, artifact: Artifact, reparameterized: bool, source: str) -> nn.Module:
    """Fill ``model`` with the decoded artifact, record its config, strip it unless ``reparameterized``."""
    header = artifact.header
    _fill(model, artifact, source)
    model.lilnetx_arch = {"name": header["arch"], "kwargs": header["arch_kwargs"]}
    model.pretrained_cfg = {**(getattr(model, "pretrained_cfg", None) or {}), "architecture": header["arch"],
                            **{k: header[k] for k in ("input_size", "mean", "std", "num_classes")
                               if header.get(k) is not None}}
    if reparameterized:
        model.lilnetx_config = dict(header["reparam"])
    else:
        strip(model)
    return model.eval()


def _installed_builders() -> list[tuple[str, Callable[[], Builder]]]:
    points = sorted(importlib.metadata.entry_points(group=BUILDER_GROUP), key=lambda ep: ep.name)
    return [(f"{ep.name} ({ep.value})", ep.load) for ep in points]


def _build(header: dict[str, Any], builder: Builder | None, source: str) -> nn.Module:
    """Build the header's architecture. Its tensors are checked against the header first on a meta-device
    copy (no memory), so a header that lies about shapes fails before anything is allocated or decoded."""
    arch, kwargs = header["arch"], header["arch_kwargs"]
    candidates = [("builder", lambda: builder)] if builder is not None else _installed_builders()
    if not candidates:
        raise UnknownArchitectureError(
            f"cannot build architecture {arch!r}: no model builder is installed (entry-point group "
            f"{BUILDER_GROUP!r}); install lilnetx-zoo or the plugin providing it, or pass builder=")
    failures = []
    for name, get in candidates:
        try:
            fn = get()
            probe = _meta_specs(fn, arch, kwargs)
            if probe is not None:
                _check_tensors(header, probe, source)
            model = fn(arch, dict(kwargs))
        except CorruptHeaderError:
            raise
        except Exception as exc:  # any builder failure means "cannot build it here"
            failures.append(f"{name}: {type(exc).__name__}: {exc}")
            continue
        if isinstance(model, nn.Module):
            if probe is None:
                _check_tensors(header, _specs(model), source)
            return model
        failures.append(f"{name}: returned {type(model).__name__}, not an nn.Module")
    raise UnknownArchitectureError(
        f"cannot build architecture {arch!r} with {kwargs}: {'; '.join(failures)}. Install the plugin that "
        "provides it, or pass builder=")


def _specs(model: nn.Module) -> TensorSpecs:
    return {name: (list(value.shape), value.dtype) for name, value in model.state_dict().items()}


def _meta_specs(fn: Builder, arch: str, kwargs: dict[str, Any]) -> TensorSpecs | None:
    """Tensors of ``fn``'s model built on the meta device; ``None`` if it cannot be built there."""
    try:
        with torch.device("meta"):
            return _specs(fn(arch, dict(kwargs)))
    except Exception:  # builders that do real work at build time are built directly
        return None


def _check_tensors(header: dict[str, Any], built: TensorSpecs, source: str) -> None:
    """The header's layers and float parameters are exactly the built model's tensors, with the same shapes
    (and dtypes, for float parameters)."""
    arch = header["arch"]
    recorded = {e["name"]: (e["shape"], None) for e in header["layers"]}
    recorded |= {e["name"]: (e["shape"], DTYPES[e["dtype"]][1]) for e in header["float_params"]}
    if recorded.keys() != built.keys():
        only_file = sorted(recorded.keys() - built.keys())[:5]
        only_model = sorted(built.keys() - recorded.keys())[:5]
        raise _mismatch(source, "the tensors", f"{only_file} that the model lacks",
                        f"{only_model} that the file lacks", arch)
    for name, (shape, dtype) in recorded.items():
        built_shape, built_dtype = built[name]
        if shape != built_shape:
            raise _mismatch(source, f"the shape of {name!r}", shape, built_shape, arch)
        if dtype is not None and dtype != built_dtype:
            raise _mismatch(source, f"the dtype of {name!r}", dtype, built_dtype, arch)


def _reparameterize_like(model: nn.Module, header: dict[str, Any], source: str) -> None:
    """Apply ``reparameterize`` with the header's options and exactly its layers and groups."""
    groups = {}
    for layer in header["layers"]:
        module, _, tensor = layer["name"].rpartition(".")
        if tensor == "weight":
            groups[module] = layer["group"]
    options = {k: v for k, v in header["reparam"].items() if k != "exclude"}  # the layer list says it all
    if "density_filters" in options:
        options["density_filters"] = tuple(options["density_filters"])
    try:
        reparameterize(model, **options, layer_policy=lambda name, _: groups.get(name, False))
    except (ReparamError, TypeError, ValueError) as exc:
        raise _corrupt(source, f"its reparameterisation options {options} cannot be applied to architecture "
                               f"{header['arch']!r} ({exc})") from exc


def _mismatch(source: str, what: str, recorded: Any, built: Any, arch: str) -> CorruptHeaderError:
    return CorruptHeaderError(
        f"{source}: {what}: the file says {recorded} but architecture {arch!r} as built here has {built}. The "
        "file does not match this architecture: it was edited, or the architecture's code changed since export")


@torch.no_grad()
def _fill(model: nn.Module, artifact: Artifact, source: str) -> None:
    """Check every name and shape against the header, then copy latents, decoders and float params in."""
    header, arch = artifact.header, artifact.header["arch"]
    tensors = latent_tensors(model)
    built = [(t.name, t.group.name, list(t.latent.shape)) for t in tensors]
    recorded = [(layer["name"], layer["group"], layer["shape"]) for layer in header["layers"]]
    if built != recorded:
        first = next((i for i, (a, b) in enumerate(zip(recorded, built, strict=False)) if a != b),
                     min(len(built), len(recorded)))
        raise _mismatch(source, f"compressed tensor #{first}", recorded[first:first + 1], built[first:first + 1],
                        arch)
    for t in tensors:
        t.latent.copy_(torch.from_numpy(artifact.latents[t.name]))
    for name, group in latent_groups(model).items():
        decoder = artifact.decoders[name]
        if decoder.shape != group.decoder.shape:
            raise _mismatch(source, f"decoder of group {name!r}", list(decoder.shape), list(group.decoder.shape),
                            arch)
        group.decoder.copy_(decoder)
    state = {k: v for k, v in model.state_dict().items() if not _is_latent_key(k)}
    if list(state) != list(artifact.float_params):
        only_file = sorted(set(artifact.float_params) - set(state))[:5]
        only_model = sorted(set(state) - set(artifact.float_params))[:5]
        raise _mismatch(source, "float parameters", f"{only_file} that the model lacks",
                        f"{only_model} that the file lacks (or another order)", arch)
    for key, value in state.items():
        stored = artifact.float_params[key]
        if stored.shape != value.shape or stored.dtype != value.dtype:
            raise _mismatch(source, f"parameter {key!r}", f"{stored.dtype} {list(stored.shape)}",
                            f"{value.dtype} {list(value.shape)}", arch)
        value.copy_(stored)
