"""Format 4 of the ``.lnx`` file (reads 1 to 3 too): constants, framing, varints, the compressed header and raw
tensor bytes. Format 2 adds ``reparam.decoder_forms``: a group's decoder may be stored as ``1 x width``
(diagonal) or ``1 x 1`` (scalar) instead of ``width x width``. Format 3 compresses the header with a preset
dictionary of today's header fields (``ZDICT_V3``), leaves out the per-layer figures a reader recomputes from
the latents (``ideal_bits``, ``zeros``, ``zero_slices``) and adds the decoder type ``qint8``: int8 values with
one float16 scale per decoder row (value = q * scale). Format 4 stores each BatchNorm as one ``float_params``
entry ``{"fold": "batchnorm"}``: its per-channel scale ``weight / sqrt(running_var + eps)`` and shift
``bias - running_mean * scale`` as a (2, C) float16 or qint8 tensor, the scale stored times ``sqrt(1 + eps)``
(running statistics dropped; on reading, weight = stored scale, bias = shift, mean = 0, var = 1, so the
BatchNorm computes ``x * scale + shift``), and may store other float parameters as float16 (``"as"``: the
dtype they are read back as). Older files are read unchanged.

Layout (varints are unsigned LEB128)::

    magic b"\\x89LNX" | format version (1 byte) | file size (varint) | header length (varint)
    | header: raw-deflate JSON (fixed preset dictionary ``ZDICT``)
    | tables | decoders | float_params | coded_latents        (byte lengths in header["sections"])
    | sha256 of every byte before it (32 bytes)
"""

from __future__ import annotations

import hashlib
import json
import math
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lilnetx.artifact.errors import (
    ArtifactError,
    BadMagicError,
    ChecksumMismatchError,
    CorruptHeaderError,
    TruncatedArtifactError,
    UnsupportedVersionError,
    corrupt,
)
from lilnetx.reparam import decoder_shape

MAGIC = b"\x89LNX"

FORMAT_VERSION = 4

READABLE_VERSIONS = (1, 2, 3, 4)

DIGEST_SIZE = 32

SECTIONS = ("tables", "decoders", "float_params", "coded_latents")

MAX_HEADER_BYTES = 1 << 22  # decompressed JSON header: 4 MiB (~30,000 tensors; 16 MiB of empty objects took ~380 MB)

MAX_WIDTH = 1 << 12  # values per latent row (kernel positions)

MAX_NDIM = 8

# name -> (little-endian numpy dtype of the stored bytes, torch dtype)
DTYPES: dict[str, tuple[str, torch.dtype]] = {
    "float32": ("<f4", torch.float32), "float64": ("<f8", torch.float64), "float16": ("<f2", torch.float16),
    "bfloat16": ("<i2", torch.bfloat16), "int64": ("<i8", torch.int64), "int32": ("<i4", torch.int32),
    "int16": ("<i2", torch.int16), "int8": ("i1", torch.int8), "uint8": ("u1", torch.uint8),
    "bool": ("?", torch.bool),
}


FLOAT_DTYPES = ("float32", "float64", "float16", "bfloat16")

DECODER_DTYPES = (*FLOAT_DTYPES, "qint8")  # qint8: format 3

QINT8_MAX = 127

FLOAT_PARAM_DTYPES = ("float32", "float16", "qint8")  # save(float_dtype=): float32 keeps every tensor as it is

BATCHNORM_KEYS = ("weight", "bias", "running_mean", "running_var")  # then num_batches_tracked, in state-dict order

DERIVED_LAYER_FIELDS = ("ideal_bits", "zeros", "zero_slices")  # stored up to format 2, recomputed from format 3

# Preset dictionary of the header's deflate stream in formats 1 and 2: a typical header with placeholder
# values. Changing it changes every file, so it needs a new format version.
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

_TRAIN_TEMPLATE = {"epochs": 10, "batch_size": 128, "lr": 0.01, "decoder_lr": 0.01, "decoder_dtype": "float16",
                   "density_lr": 0.01, "density_schedule": "cosine", "lambda_rate": 1.0, "lambda_l2": 1e-06,
                   "lambda_slice": 1e-05, "warmup_epochs": 1.0, "grad_clip": None, "label_smoothing": 0.0,
                   "compile": False, "seed": 0, "workers": 0, "device": "auto", "eval_every": 1}
_REPARAM_TEMPLATE = {"init": "scratch", "structure": "slice", "compress_bias": True, "exclude": [],
                     "group_overrides": {"fc2": "classifier"}, "density_filters": [3, 3, 3], "latent_bound": 1.0,
                     "decoder_forms": None}
_HEADER_TEMPLATE = {  # placeholder values; the most common strings last (deflate's nearest matches are cheapest)
    "format_version": 3, "arch": "timm/resnet18",
    "arch_kwargs": {"num_classes": 1000, "in_chans": 3, "input_size": [3, 224, 224],
                    "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]},
    "input_size": [3, 32, 32], "mean": [0.4914, 0.4822, 0.4465], "std": [0.247, 0.2435, 0.2616],
    "num_classes": 10, "dataset": "cifar10", "metrics": {"top1": 0.9, "top5": 0.99, "test_loss": 0.3},
    "recipe": {"arch": "resnet20", "arch_kwargs": {}, "dataset": "cifar10", "dataset_kwargs": {},
               "reparam": _REPARAM_TEMPLATE, "train": _TRAIN_TEMPLATE},
    "metadata": {"run": {"epochs": 10}},
    "versions": {"lilnetx": "0.1.0", "torch": "2.14.1+cpu", "constriction": "0.5.0",
                 "plugin": "plugins.timm_archs", "plugin_version": "0.1.0"},
    "reparam": {"init": "scratch", "structure": "slice", "compress_bias": True, "exclude": [],
                "density_filters": [3, 3, 3], "decoder_forms": {"conv5x5": "diagonal", "dense": "scalar"}},
    "groups": [{"name": n, "width": w, "shared": True, "dtype": "qint8"}
               for n, w in (("conv3x3", 9), ("conv1x1", 1), ("conv5x5", 25), ("dense", 1), ("classifier", 1))],
    "layers": [{"name": n, "group": g, "shape": s, "range": [-1, 1], "est_bits": 0.0, "coded_bits": 0}
               for n, g, s in (("layer1.0.conv1.weight", "conv3x3", [16, 16, 3, 3]),
                               ("layer1.0.conv2.weight", "conv3x3", [16, 16, 3, 3]), ("fc.bias", "bias", [10]),
                               ("conv1.weight", "conv5x5", [20, 1, 5, 5]), ("conv1.bias", "bias", [20]),
                               ("conv2.weight", "conv5x5", [50, 20, 5, 5]), ("fc1.weight", "dense", [500, 800]),
                               ("fc2.weight", "dense", [100, 300]), ("fc3.weight", "classifier", [10, 100]))],
    "float_params": [{"name": f"bn1.{k}", "dtype": "float32", "shape": [16]}
                     for k in ("weight", "bias", "running_mean", "running_var")],
    "sections": {"tables": 0, "decoders": 0, "float_params": 0, "coded_latents": 0},
}
# Format 3's preset dictionary: the template above as compact JSON, then the LeNet/MNIST header a model of
# this zoo typically has. Never change it (a test pins its digest); a new dictionary needs a new format version.
ZDICT_V3 = json.dumps(_HEADER_TEMPLATE, separators=(",", ":")).encode() + json.dumps({
    "arch": "lenet5_caffe", "arch_kwargs": {"num_classes": 10, "in_chans": 1, "input_size": [1, 28, 28],
                                            "mean": [0.1307], "std": [0.3081]},
    "input_size": [1, 28, 28], "mean": [0.1307], "std": [0.3081], "num_classes": 10, "dataset": "mnist",
    "recipe": {"arch": "lenet_300_100", "arch_kwargs": {}, "dataset": "mnist", "dataset_kwargs": {},
               "reparam": {**_REPARAM_TEMPLATE, "group_overrides": {"fc3": "classifier"}}, "train": _TRAIN_TEMPLATE},
    "versions": {"lilnetx": "0.1.0", "torch": "2.14.1+cu130", "constriction": "0.5.0",
                 "plugin": "plugins.paper_models", "plugin_version": "0.1.0"},
    "reparam": {"init": "scratch", "structure": "slice", "compress_bias": True, "exclude": [],
                "density_filters": [3, 3, 3]},
    "groups": [{"name": "conv5x5", "width": 25, "shared": False, "dtype": "qint8"},
               {"name": "bias", "width": 1, "shared": True, "dtype": "float16"},
               {"name": "dense", "width": 1, "shared": True, "dtype": "float16"},
               {"name": "classifier", "width": 1, "shared": True, "dtype": "float16"}],
    "layers": [{"name": "fc1.bias", "group": "bias", "shape": [500], "range": [0, 0], "est_bits": 0.0,
                "coded_bits": 0}],
    "float_params": [], "sections": {"tables": 0, "decoders": 0, "float_params": 0, "coded_latents": 0},
}, separators=(",", ":")).encode()


def _zdict(version: int) -> bytes:
    return ZDICT_V3 if version >= 3 else ZDICT  # format 4 keeps format 3's dictionary


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
class DecodedArtifact:
    """A verified, fully decoded artifact (no model built)."""

    header: dict[str, Any]
    sha256: str
    size_bytes: int
    parts: dict[str, int]
    latents: dict[str, np.ndarray]  # integer latents (int32) by tensor name, in the tensor's shape
    decoders: dict[str, np.ndarray]  # group name -> decoder as stored: (width, width), (1, width) or (1, 1)
    float_params: dict[str, torch.Tensor]  # state-dict name -> tensor

    def info(self, path: str | Path) -> ArtifactInfo:
        return make_info(Path(path), self.header, self.sha256, self.size_bytes, self.parts)


def varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def read_varint(data: bytes, pos: int, end: int) -> tuple[int, int] | None:
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


def compress_header(header: dict[str, Any]) -> bytes:
    text = json.dumps(header, separators=(",", ":"), allow_nan=False).encode()
    deflate = zlib.compressobj(9, zlib.DEFLATED, -15, 9, zdict=_zdict(FORMAT_VERSION))  # files are written in the current format
    return deflate.compress(text) + deflate.flush()


def decompress_header(blob: bytes, source: str, version: int = FORMAT_VERSION) -> dict[str, Any]:
    """The header JSON of a file of format ``version`` (whose preset dictionary differs)."""
    inflate = zlib.decompressobj(-15, zdict=_zdict(version))
    try:
        text = inflate.decompress(blob, MAX_HEADER_BYTES)
    except zlib.error as exc:
        raise corrupt(source, f"the header cannot be decompressed ({exc})") from exc
    if inflate.unconsumed_tail or inflate.unused_data or not inflate.eof:
        raise corrupt(source, f"the header is incomplete, followed by junk or over {MAX_HEADER_BYTES} bytes")
    try:
        header = json.loads(text, parse_constant=_not_a_number, parse_float=_finite)
    except (ValueError, RecursionError) as exc:
        raise corrupt(source, f"the header is not valid JSON ({exc})") from exc
    if not isinstance(header, dict):
        raise corrupt(source, "the header is not a JSON object")
    return header


def _not_a_number(text: str) -> float:
    raise CorruptHeaderError(f"{text} is not a number JSON allows")  # a ValueError: re-raised with the file


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise CorruptHeaderError(f"{text} is too large for a float")
    return value


def assemble(header: dict[str, Any], sections: list[bytes]) -> bytes:
    """Frame header and sections, fill in the file size, append the digest."""
    blob = compress_header(header)
    body = varint(len(blob)) + blob + b"".join(sections)
    rest = len(MAGIC) + 1 + len(body) + DIGEST_SIZE
    width = 1
    while len(varint(rest + width)) != width:  # the file size counts its own varint
        width += 1
    content = MAGIC + bytes([FORMAT_VERSION]) + varint(rest + width) + body
    return content + hashlib.sha256(content).digest()


def check_framing(data: bytes, source: str) -> int:
    """Magic, version, file size and checksum; returns the position after the size field (the version is the
    byte at ``len(MAGIC)``)."""
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
    if version not in READABLE_VERSIONS:
        raise UnsupportedVersionError(f"{source} claims .lnx format version {version}, which never existed "
                                      f"(this lilnetx reads {FORMAT_VERSION}); the file is damaged")
    field = read_varint(data, len(MAGIC) + 1, len(data))
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


def decoder_shapes(header: dict[str, Any]) -> dict[str, list[int]]:
    """Stored shape of each group's decoder: ``width x width`` unless ``reparam.decoder_forms`` says otherwise."""
    forms = header["reparam"].get("decoder_forms", {})
    return {g["name"]: list(decoder_shape(forms.get(g["name"], "full"), g["width"])) for g in header["groups"]}


def decoder_nbytes(dtype: str, shape: list[int]) -> int:
    """Bytes a decoder of ``shape`` takes stored as ``dtype`` (qint8: a float16 scale per row, then the values)."""
    if dtype == "qint8":
        return 2 * shape[0] + math.prod(shape)
    return math.prod(shape) * np.dtype(DTYPES[dtype][0]).itemsize


def snap_decoder(decoder: torch.Tensor, dtype: str) -> torch.Tensor:
    """``decoder`` rounded to the nearest value ``dtype`` stores exactly, in ``decoder``'s own dtype.

    For qint8 each row gets the float16 scale max|row| / 127 and its values become multiples of it; snapping
    twice gives the same tensor, so a decoder snapped during training is stored without loss.
    """
    if dtype != "qint8":
        return decoder.to(DTYPES[dtype][1]).to(decoder.dtype)
    return _dequantize(*_quantize(decoder)).to(decoder.dtype)


def _quantize(decoder: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(int8 values, float16 scale per row) of a 2-D decoder."""
    rows = decoder.detach().float().reshape(decoder.shape[0], -1)
    scale = (rows.abs().amax(dim=1) / QINT8_MAX).to(torch.float16)
    if not torch.isfinite(scale).all():
        raise ArtifactError("a decoder row is too large (or not finite) for a float16 scale; store it as float32")
    safe = torch.where(scale == 0, torch.ones_like(scale), scale).float()
    q = torch.round(rows / safe[:, None]).clamp(-QINT8_MAX, QINT8_MAX).to(torch.int8)
    return q.reshape(decoder.shape), scale


def _dequantize(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return (q.float().reshape(q.shape[0], -1) * scale.float()[:, None]).reshape(q.shape)


def decoder_bytes(decoder: torch.Tensor, dtype: str) -> bytes:
    """The stored bytes of ``decoder`` as ``dtype`` (see ``decoder_nbytes``)."""
    if dtype != "qint8":
        return raw_bytes(decoder.detach().to(DTYPES[dtype][1]))
    q, scale = _quantize(decoder)
    return raw_bytes(scale) + raw_bytes(q)


def split_decoders(data: bytes, entries: list[tuple[str, str, list[int]]]) -> dict[str, torch.Tensor]:
    """Decoders laid end to end (sizes already checked against the header); qint8 ones come back as float32."""
    out, pos = {}, 0
    for name, dtype, shape in entries:
        size = decoder_nbytes(dtype, shape)
        chunk = data[pos:pos + size]
        pos += size
        if dtype == "qint8":
            parts = split_tensors(chunk, [("scale", "float16", [shape[0]]), ("q", "int8", shape)])
            out[name] = _dequantize(parts["q"], parts["scale"])
        else:
            out[name] = split_tensors(chunk, [(name, dtype, shape)])[name]
    return out


def section_parts(header: dict[str, Any], size: int) -> dict[str, int]:
    sections = header["sections"]
    return {"header": size - sum(sections[name] for name in SECTIONS), **{n: sections[n] for n in SECTIONS}}


def make_info(path: Path, header: dict[str, Any], sha256: str, size: int, parts: dict[str, int]) -> ArtifactInfo:
    return ArtifactInfo(path=path, sha256=sha256, size_bytes=size, arch=header["arch"], parts=parts,
                        estimated_bits=round(sum(layer["est_bits"] for layer in header["layers"]), 1),
                        coded_latent_bytes=parts["coded_latents"])


def is_latent_key(key: str) -> bool:
    return key.startswith("parametrizations.") or ".parametrizations." in key


def dtype_name(tensor: torch.Tensor, what: str) -> str:
    for name, (_, dtype) in DTYPES.items():
        if tensor.dtype == dtype:
            return name
    raise ArtifactError(f"cannot store {what}: dtype {tensor.dtype} is not one of {', '.join(DTYPES)}")


def raw_bytes(tensor: torch.Tensor) -> bytes:
    t = tensor.detach().cpu().contiguous()
    np_dtype, _ = DTYPES[dtype_name(t, "tensor")]
    if t.dtype == torch.bfloat16:
        t = t.view(torch.int16)
    return t.numpy().astype(np_dtype, copy=False).tobytes()


def split_tensors(data: bytes, entries: list[tuple[str, str, list[int]]]) -> dict[str, torch.Tensor]:
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


def param_layout(entry: dict[str, Any]) -> list[tuple[str, str, list[int]]]:
    """The state-dict tensors ``(name, dtype, shape)`` that one header ``float_params`` entry stands for."""
    if entry.get("fold") == "batchnorm":
        name, shape, dtype = entry["name"], entry["shape"], entry["as"]
        return [*((f"{name}.{key}", dtype, shape) for key in BATCHNORM_KEYS), (f"{name}.num_batches_tracked", "int64", [])]
    return [(entry["name"], entry.get("as", entry["dtype"]), entry["shape"])]


def param_nbytes(entry: dict[str, Any]) -> int:
    """Bytes one ``float_params`` entry takes in the file (a folded BatchNorm: its (2, C) scale and shift)."""
    if entry.get("fold") == "batchnorm":
        return decoder_nbytes(entry["dtype"], [2, *entry["shape"]])
    return math.prod(entry["shape"]) * np.dtype(DTYPES[entry["dtype"]][0]).itemsize


def param_entry_error(entry: dict[str, Any], version: int) -> str | None:
    """What is wrong with the format-4 keys of a ``float_params`` entry (``name``, ``dtype`` and ``shape`` are
    checked by the caller), or ``None``."""
    extra = {"fold", "as"} & entry.keys()
    if version < 4:
        if extra or entry["dtype"] == "qint8":
            return f"has {sorted(extra) or 'dtype qint8'}, which format {version} does not have"
        return None
    if "as" in entry and entry["as"] not in FLOAT_DTYPES:
        return f"'as' {entry['as']!r} is not one of {FLOAT_DTYPES}"
    if "fold" not in entry:
        return "dtype 'qint8' belongs to a folded BatchNorm" if entry["dtype"] == "qint8" else None
    if (entry["fold"] != "batchnorm" or "as" not in entry or len(entry["shape"]) != 1
            or entry["dtype"] not in FLOAT_PARAM_DTYPES):
        return f"a folded BatchNorm needs fold 'batchnorm', a shape [C], a dtype in {FLOAT_PARAM_DTYPES} and 'as'"
    return None


def fold_batchnorm(module: torch.nn.modules.batchnorm._BatchNorm, dtype: str,
                   zero_inputs: torch.Tensor | None = None) -> torch.Tensor:
    """The (2, C) scale and shift of an eval-mode BatchNorm as the file stores them (rounded to ``dtype``), the
    scale times ``sqrt(1 + eps)``: the BatchNorm read back with variance 1 divides by that again. Channels in
    ``zero_inputs`` (inputs that are always exactly zero) get scale 0: their output is the shift either way, and
    their running variance near 0 would otherwise give a huge scale that ruins the row's qint8 step."""
    weight, bias = module.weight.detach().double(), module.bias.detach().double()
    scale = weight / torch.sqrt(module.running_var.detach().double() + module.eps)
    if zero_inputs is not None:
        scale = torch.where(zero_inputs.to(scale.device), torch.zeros_like(scale), scale)
    shift = bias - module.running_mean.detach().double() * scale
    rows = torch.stack([scale * math.sqrt(1 + module.eps), shift]).float()
    return snap_decoder(rows, dtype)


def batchnorm_bytes(module: torch.nn.modules.batchnorm._BatchNorm, dtype: str,
                    zero_inputs: torch.Tensor | None = None) -> bytes:
    return decoder_bytes(fold_batchnorm(module, dtype, zero_inputs), dtype)


def unfold_params(entries: list[dict[str, Any]], data: bytes) -> dict[str, torch.Tensor]:
    """Every state-dict tensor the ``float_params`` section stands for (sizes already checked)."""
    out, pos = {}, 0
    for entry in entries:
        size = param_nbytes(entry)
        chunk, pos = data[pos:pos + size], pos + size
        if entry.get("fold") != "batchnorm":
            stored = split_tensors(chunk, [(entry["name"], entry["dtype"], entry["shape"])])[entry["name"]]
            out[entry["name"]] = stored.to(DTYPES[entry.get("as", entry["dtype"])][1])
            continue
        scale, shift = split_decoders(chunk, [("bn", entry["dtype"], [2, *entry["shape"]])])["bn"].float()
        dtype = DTYPES[entry["as"]][1]
        names = [name for name, _, _ in param_layout(entry)]
        tensors = (scale, shift, torch.zeros_like(scale), torch.ones_like(scale), torch.zeros((), dtype=torch.int64))
        for name, tensor in zip(names, tensors, strict=True):
            out[name] = tensor if tensor.dtype == torch.int64 else tensor.to(dtype)
    return out
