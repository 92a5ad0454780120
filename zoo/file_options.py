"""Builder keyword arguments read from a ``.lnx`` file's header are data, checked before any builder runs.

An architecture declares what a file may set (``ArchitectureSpec.options``: name -> (type, min, max)); the
arguments every builder takes (``num_classes``, ``in_chans``, ``input_size``) and the normalisation
(``mean``, ``std``) have fixed bounds here. Loading options (timm's ``checkpoint_path``, ``pretrained``,
``pretrained_cfg*``...) are never taken from a file, and no plugin may declare them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lilnetx.artifact.errors import CorruptHeaderError
    from zoo.hookspecs import ArchitectureSpec

MAX_CLASSES = 100_000
MAX_CHANS = 64
LOADING_OPTIONS = ("checkpoint_path", "cache_dir", "pretrained", "pretrained_cfg", "pretrained_cfg_overlay",
                   "pretrained_strict", "features_only", "scriptable", "exportable")
COMMON = ("num_classes", "in_chans", "input_size", "mean", "std")
OPTION_TYPES = (int, float, bool)


def _is_loading_option(name: str) -> bool:
    return name in LOADING_OPTIONS or name.startswith("pretrained")


def option_declaration_error(options: Mapping[str, Any]) -> str | None:
    """What is wrong with a plugin's ``options`` declaration, or ``None``."""
    if not isinstance(options, Mapping):
        return "must be a mapping name -> (type, min, max)"
    for name, bounds in options.items():
        if not isinstance(name, str) or _is_loading_option(name) or name in COMMON:
            return f"may not declare {name!r} (a loading option, or one the registry checks itself)"
        if not (isinstance(bounds, tuple) and len(bounds) == 3 and bounds[0] in OPTION_TYPES
                and all(isinstance(b, int | float) for b in bounds[1:]) and bounds[1] <= bounds[2]):
            return f"{name!r}: expected (int | float | bool, min, max), got {bounds!r}"
    return None


def _number(value: Any, kind: type) -> bool:
    if kind is bool:
        return isinstance(value, bool)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    return isinstance(value, int) if kind is int else math.isfinite(value)


def within(value: Any, bounds: tuple[type, float, float]) -> bool:
    """``value`` is of the declared type and in the declared range."""
    kind, lo, hi = bounds
    return _number(value, kind) and lo <= value <= hi


def check_header_claims(header: Mapping[str, Any], source: str) -> None:
    """The header's own claims are data of the right kind: top-1 / top-5 fractions in [0, 1], and the input
    size the same as the one the architecture was built for (``arch_kwargs``); else ``CorruptHeaderError``."""
    from lilnetx.artifact.errors import CorruptHeaderError

    metrics = header.get("metrics")
    if metrics is not None and not isinstance(metrics, dict):
        raise CorruptHeaderError(f"{source}: header['metrics'] is not an object; export the model again")
    for key in ("top1", "top5"):
        value = (metrics or {}).get(key)
        if value is not None and not within(value, (float, 0, 1)):
            raise CorruptHeaderError(f"{source}: metrics.{key} = {value!r} is not a fraction in [0, 1]; export "
                                     "the model again (accuracy is stored as a fraction: 0.99 for 99 %)")
    built = header.get("arch_kwargs", {}).get("input_size")
    if header.get("input_size") is not None and built is not None and list(header["input_size"]) != list(built):
        raise CorruptHeaderError(f"{source}: the header's input_size {header['input_size']} is not the "
                                 f"{list(built)} its architecture was built for; export the model again")


def _refuse(arch: str, key: str, value: Any, expected: str) -> CorruptHeaderError:
    """A ``lilnetx`` ``CorruptHeaderError`` (which the rebuild passes on as it is) naming the key and the bound."""
    from lilnetx.artifact.errors import CorruptHeaderError

    shown = repr(value) if len(repr(value)) <= 60 else f"{repr(value)[:57]}..."
    return CorruptHeaderError(f"the file's arch_kwargs set {key}={shown} for architecture {arch!r}, which takes "
                           f"{expected} from a file; the file was edited or written by another tool: export the "
                           "model again")


def max_side(spec: ArchitectureSpec) -> int:
    """The largest input height / width a file may ask for: twice the architecture's, at least 64."""
    return max(64, 2 * max(spec.input_size[1:]))


def check_file_kwargs(spec: ArchitectureSpec, kwargs: Mapping[str, Any]) -> None:
    """Raise ``lilnetx.CorruptHeaderError`` unless every key of ``kwargs`` is one ``spec`` takes from a file, in
    its bounds (see the module doc)."""
    arch, chans = spec.name, kwargs.get("in_chans", spec.in_chans)
    for key, value in kwargs.items():
        if key == "num_classes" and not (_number(value, int) and 1 <= value <= MAX_CLASSES):
            raise _refuse(arch, key, value, f"an integer in [1, {MAX_CLASSES:,}]")
        if key == "in_chans" and not (_number(value, int) and 1 <= value <= MAX_CHANS):
            raise _refuse(arch, key, value, f"an integer in [1, {MAX_CHANS}]")
        if key == "input_size" and not (
                isinstance(value, list | tuple) and len(value) == 3 and all(_number(v, int) for v in value)
                and value[0] == chans and all(1 <= v <= max_side(spec) for v in value[1:])):
            raise _refuse(arch, key, value, f"[C, H, W] with C = in_chans ({chans}) and H, W in "
                                            f"[1, {max_side(spec)}]")
        if key in ("mean", "std") and not (
                isinstance(value, list | tuple) and len(value) == chans
                and all(_number(v, float) and abs(v) <= 1e3 and (key == "mean" or v > 0) for v in value)):
            raise _refuse(arch, key, value, f"{chans} finite numbers (std > 0)")
        if key in COMMON:
            continue
        if key not in spec.options:
            takes = ", ".join(f"{name} in [{lo:g}, {hi:g}]" for name, (_, lo, hi) in spec.options.items())
            raise _refuse(arch, key, value, f"only {takes}" if takes else "no other options")
        kind, lo, hi = spec.options[key]
        if not within(value, spec.options[key]):
            raise _refuse(arch, key, value, f"{kind.__name__} {key} in [{lo:g}, {hi:g}]")
