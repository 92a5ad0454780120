"""JSON-serialisable descriptions of an artifact: what the catalog stores and a static zoo's index holds.

They are computed from a verified artifact (see ``zoo.ingest.describe``), never typed in;
``disagreements`` compares a record that only claims to describe a file (a remote zoo's index) with one
computed from the file.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from zoo.errors import InvalidNameError, ZooError
from zoo.names import check_arch, check_sha256

# what the catalog lists, filters on and shows on a card, besides the sha256 the bytes were checked against
CLAIMS = ("arch", "arch_kwargs", "dataset", "num_classes", "input_size", "mean", "std", "size_bytes",
          "format_version", "metrics")


@dataclass(frozen=True)
class LayerRecord:
    """One conv / linear layer of a decoded model.

    ``conv_slice_sparsity`` is the share of zero K×K slices of a convolution with K×K > 1 (``None`` for other
    layers); ``weight_sparsity`` the share of zero weights.
    """

    name: str
    latent_group: str | None
    shape: list[int]
    params: int
    coded_bits: int | None
    estimated_bits: float | None
    conv_slice_sparsity: float | None
    weight_sparsity: float
    macs_dense: int | None
    macs_sparse: int | None


@dataclass(frozen=True)
class MetricsRecord:
    """Accuracy (fractions in [0, 1]), sizes, sparsity and MACs of a decoded model.

    ``params`` counts every parameter; ``fp32_bytes`` is 4 bytes per floating-point value of the state_dict.
    Sparsity as ``lilnetx.metrics`` defines it: ``conv_slice_sparsity`` over the convolutions with K×K > 1
    (``None`` without any), ``weight_sparsity`` over the compressed layers.
    """

    top1: float | None
    top5: float | None
    fp32_bytes: int
    size_parts: dict[str, int]
    params: int
    estimated_bits: float | None
    coded_latent_bytes: int | None
    conv_slice_sparsity: float | None
    weight_sparsity: float
    macs_dense: int | None
    macs_sparse: int | None

    @property
    def macs_saved(self) -> float | None:
        return macs_saved(self.macs_dense, self.macs_sparse)


def macs_saved(macs_dense: int | None, macs_sparse: int | None) -> float | None:
    """The share of multiply-accumulates skipped with zero slices (``lilnetx.metrics.macs_saved``, without
    importing torch), or ``None`` when MACs are unknown."""
    return None if not macs_dense or macs_sparse is None else 1 - macs_sparse / macs_dense


@dataclass(frozen=True)
class ArtifactRecord:
    """Everything the catalog knows about one ``.lnx`` file."""

    sha256: str
    size_bytes: int
    format_version: int
    arch: str
    arch_kwargs: dict[str, Any]
    dataset: str | None
    num_classes: int | None
    input_size: list[int] | None
    mean: list[float] | None
    std: list[float] | None
    metrics: MetricsRecord
    recipe: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, Any] = field(default_factory=dict)
    layers: list[LayerRecord] = field(default_factory=list)
    header: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Any) -> ArtifactRecord:
        """Rebuild a record (e.g. from a static zoo's ``index.json``), every field type- and range-checked.

        Raises :class:`RecordError` naming the first bad field (``metrics.fp32_bytes``, ``layers[2].shape``).
        """
        fields = _fields(cls, data, "")
        fields["metrics"] = MetricsRecord(**_fields(MetricsRecord, fields["metrics"], "metrics."))
        layers = fields.get("layers", [])
        if not isinstance(layers, list):
            raise RecordError("layers", "a list", layers)
        fields["layers"] = [LayerRecord(**_fields(LayerRecord, layer, f"layers[{i}].")) for i, layer in
                            enumerate(layers)]
        return cls(**fields)


@dataclass(frozen=True)
class Measurement:
    """Accuracy this installation measured by running the decoded model over a dataset's test split."""

    top1: float
    top5: float | None
    dataset: str
    images: int
    measured_at: datetime


class RecordError(ZooError, ValueError):
    """A field of a record (a remote index entry) with the wrong type or out of range."""

    def __init__(self, field_name: str, expected: str, value: Any):
        shown = repr(value)
        shown = shown if len(shown) <= 60 else f"{shown[:57]}..."
        super().__init__(f"field {field_name}: expected {expected}, got {shown}")
        self.field = field_name


_BIG = 1 << 62  # larger counts cannot be stored (BigInteger) nor be true


def _int(lo: int = 0, hi: int = _BIG) -> tuple[str, Callable[[Any], bool]]:
    return (f"an integer in [{lo}, {hi}]" if hi < _BIG else f"an integer >= {lo}",
            lambda v: isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi)


def _number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) and abs(v) < 1e300


_FRACTION = ("a number in [0, 1]", lambda v: _number(v) and 0 <= v <= 1)
_NONNEG = ("a finite number >= 0", lambda v: _number(v) and v >= 0)
_STR = ("a string of 1 to 512 characters", lambda v: isinstance(v, str) and 0 < len(v) <= 512)
_DICT = ("a JSON object with string keys", lambda v: isinstance(v, dict) and all(isinstance(k, str) for k in v))
_SHAPE = ("a list of at most 8 integers >= 0",
          lambda v: isinstance(v, list) and len(v) <= 8 and all(_int()[1](d) for d in v))
_INPUT = ("a list of 1 to 4 integers in [1, 100000]",
          lambda v: isinstance(v, list) and 1 <= len(v) <= 4 and all(_int(1, 100_000)[1](d) for d in v))
_CHANNELS = ("a list of 1 to 64 finite numbers",
             lambda v: isinstance(v, list) and 1 <= len(v) <= 64 and all(_number(x) for x in v))
_PARTS = ("a JSON object of integers >= 0",
          lambda v: _DICT[1](v) and all(_int()[1](n) for n in v.values()))
_DATASET = ("a string of 1 to 64 characters", lambda v: isinstance(v, str) and 0 < len(v) <= 64)
_HEX = ("a sha256 (64 lowercase hex digits)", lambda v: isinstance(v, str) and _valid(check_sha256, v))
_ARCH = ("an architecture name (e.g. timm/resnet18)", lambda v: isinstance(v, str) and _valid(check_arch, v))
_ANY = ("anything", lambda v: True)

# (check, may be null) for every field of each record type; "metrics" and "layers" are checked separately
_SCHEMA: dict[type, dict[str, tuple[tuple[str, Callable[[Any], bool]], bool]]] = {
    LayerRecord: {
        "name": (("a string of at most 512 characters", lambda v: isinstance(v, str) and len(v) <= 512), False),
        "latent_group": (_STR, True), "shape": (_SHAPE, False), "params": (_int(), False),
        "coded_bits": (_int(), True), "estimated_bits": (_NONNEG, True),
        "conv_slice_sparsity": (_FRACTION, True), "weight_sparsity": (_FRACTION, False),
        "macs_dense": (_int(), True), "macs_sparse": (_int(), True),
    },
    MetricsRecord: {
        "top1": (_FRACTION, True), "top5": (_FRACTION, True), "fp32_bytes": (_int(), False),
        "size_parts": (_PARTS, False), "params": (_int(), False), "estimated_bits": (_NONNEG, True),
        "coded_latent_bytes": (_int(), True), "conv_slice_sparsity": (_FRACTION, True),
        "weight_sparsity": (_FRACTION, False), "macs_dense": (_int(), True), "macs_sparse": (_int(), True),
    },
    ArtifactRecord: {
        "sha256": (_HEX, False), "size_bytes": (_int(1, 1 << 40), False), "format_version": (_int(1, 1000), False),
        "arch": (_ARCH, False), "arch_kwargs": (_DICT, False), "dataset": (_DATASET, True),
        "num_classes": (_int(1, 10_000_000), True), "input_size": (_INPUT, True), "mean": (_CHANNELS, True),
        "std": (_CHANNELS, True), "metrics": (_DICT, False), "recipe": (_DICT, False),
        "versions": (_DICT, False), "layers": (_ANY, False), "header": (_DICT, False),
    },
}


def _valid(check: Callable[[str], str], value: str) -> bool:
    try:
        check(value)
    except InvalidNameError:
        return False
    return True


def _fields(kind: type, data: Any, prefix: str) -> dict[str, Any]:
    """``data``'s fields for a ``kind`` record, each checked (floats given as integers become floats)."""
    where = prefix.rstrip(".") or "artifact"
    if not isinstance(data, dict):
        raise RecordError(where, "a JSON object", data)
    schema = _SCHEMA[kind]
    required = {f.name for f in dataclasses.fields(kind)
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}
    for key in data:
        if key not in schema:
            raise RecordError(f"{prefix}{key}", "no such field", data[key])
    fields = {}
    for key, ((expected, ok), nullable) in schema.items():
        if key not in data:
            if key in required:
                raise RecordError(f"{prefix}{key}", expected, "(missing)")
            continue
        value = data[key]
        if not ((value is None and nullable) or (value is not None and ok(value))):
            raise RecordError(f"{prefix}{key}", expected + (" or null" if nullable else ""), value)
        if expected in (_FRACTION[0], _NONNEG[0]) and isinstance(value, int):
            value = float(value)
        fields[key] = value
    return fields


def from_legacy(artifact: Any) -> Any:
    """An artifact record of a version-1 index (one mixed ``slice_sparsity``) with the sparsity fields of today.

    Recomputed from its layers as revision 0004 of the catalog does: a layer's zero slices count towards the
    conv slice sparsity when it is a K×K convolution, its zero weights towards the weight sparsity when it is
    compressed (every layer when none is). Anything malformed is returned as it is, for
    :meth:`ArtifactRecord.from_dict` to name.
    """
    layers, metrics = (artifact.get("layers"), artifact.get("metrics")) if isinstance(artifact, dict) else (0, 0)
    if not (isinstance(layers, list) and isinstance(metrics, dict)
            and all(isinstance(x, dict) and _SHAPE[1](x.get("shape")) and _int()[1](x.get("params"))
                    and _FRACTION[1](x.get("slice_sparsity")) and _FRACTION[1](x.get("unstructured_sparsity"))
                    for x in layers)):
        return artifact
    new_layers = []
    conv_zero = conv_total = weight_zero = weight_total = 0
    compressed = any(x.get("latent_group") is not None for x in layers)
    for x in layers:
        old = {k: v for k, v in x.items() if k not in ("slice_sparsity", "unstructured_sparsity")}
        shape, kxk = x["shape"], len(x["shape"]) > 2 and math.prod(x["shape"][2:]) > 1
        if kxk:
            slices = shape[0] * shape[1]
            conv_zero += round(x["slice_sparsity"] * slices)
            conv_total += slices
        if x.get("latent_group") is not None or not compressed:
            weight_zero += round(x["unstructured_sparsity"] * x["params"])
            weight_total += x["params"]
        new_layers.append({**old, "conv_slice_sparsity": x["slice_sparsity"] if kxk else None,
                           "weight_sparsity": x["unstructured_sparsity"]})
    new_metrics = {k: v for k, v in metrics.items() if k not in ("slice_sparsity", "unstructured_sparsity")}
    new_metrics["conv_slice_sparsity"] = conv_zero / conv_total if conv_total else None
    new_metrics["weight_sparsity"] = weight_zero / weight_total if weight_total else 0.0
    return {**artifact, "layers": new_layers, "metrics": new_metrics}


def _same(claimed: Any, actual: Any) -> bool:
    """Equal, floats up to rounding (a record may have been through JSON and another platform's torch)."""
    if isinstance(claimed, dict) and isinstance(actual, dict):
        return claimed.keys() == actual.keys() and all(_same(claimed[k], actual[k]) for k in claimed)
    if isinstance(claimed, list | tuple) and isinstance(actual, list | tuple):
        return len(claimed) == len(actual) and all(_same(c, a) for c, a in zip(claimed, actual, strict=True))
    if isinstance(claimed, float) or isinstance(actual, float):
        numbers = all(isinstance(v, int | float) and not isinstance(v, bool) for v in (claimed, actual))
        return numbers and math.isclose(claimed, actual, rel_tol=1e-6, abs_tol=1e-12)
    return type(claimed) is type(actual) and claimed == actual


def disagreements(claimed: ArtifactRecord, actual: ArtifactRecord) -> list[str]:
    """``"field: claimed X, the artifact says Y"`` for every :data:`CLAIMS` field on which they differ."""
    found = []
    for key in CLAIMS:
        mine, theirs = getattr(claimed, key), getattr(actual, key)
        pairs = ([(f"metrics.{k}", v, vars(theirs)[k]) for k, v in vars(mine).items()] if key == "metrics"
                 else [(key, mine, theirs)])
        found += [f"{what}: claimed {c!r}, the artifact says {a!r}" for what, c, a in pairs if not _same(c, a)]
    return found
