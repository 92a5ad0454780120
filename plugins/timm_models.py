"""timm architectures under a ``timm/`` prefix with timm's own names: the ResNet, VGG and MobileNet v2/v3
families are listed; any other timm model is built on demand (``timm/<name>``). Never pretrained.

timm is imported only when one of its models is built or an unlisted ``timm/`` name is resolved: the listed
families' names and default configs come from ``timm_archs.json``, written by ``python -m
plugins.timm_models`` for the timm version it names. With another timm installed, they are read from timm.
"""

from __future__ import annotations

import functools
import importlib.metadata
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from zoo.hookspecs import ArchitectureRegistrar, ArchitectureSpec, hookimpl

if TYPE_CHECKING:
    from torch import nn

PREFIX = "timm/"
# (name pattern, timm module) of each listed family; the module keeps e.g. resnetv2 out of "resnet".
FAMILIES = (
    ("resnet*", "resnet"),
    ("vgg*", "vgg"),
    ("mobilenetv2*", "efficientnet"),
    ("mobilenetv3*", "mobilenetv3"),
)
TABLE = Path(__file__).with_name("timm_archs.json")
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # timm.data's defaults


def build(timm_name: str, *, num_classes: int, in_chans: int, input_size: tuple[int, int, int],
          **kwargs: Any) -> nn.Module:
    """``timm.create_model(timm_name, pretrained=False, ...)``; fixed-size models get ``img_size``."""
    if kwargs.pop("pretrained", False):
        raise ValueError("the zoo never downloads pretrained weights: train with `lilnetx train`, or load your "
                         "own weights into the model and reparameterise with init='fit'")
    import timm

    cfg = timm.models.get_pretrained_cfg(timm_name)
    if cfg is not None and cfg.fixed_input_size and tuple(input_size[1:]) != tuple(cfg.input_size[1:]):
        kwargs.setdefault("img_size", tuple(input_size[1:]))
    return timm.create_model(timm_name, pretrained=False, num_classes=num_classes, in_chans=in_chans, **kwargs)


def _config(timm_name: str) -> dict[str, Any]:
    """Default input size, classes and normalisation from timm's pretrained config (metadata only)."""
    import timm

    cfg = timm.models.get_pretrained_cfg(timm_name)
    input_size = list(cfg.input_size) if cfg else [3, 224, 224]
    return {"input_size": input_size, "num_classes": cfg.num_classes if cfg and cfg.num_classes else 1000,
            "mean": list(cfg.mean) if cfg else list(IMAGENET_MEAN),
            "std": list(cfg.std) if cfg else list(IMAGENET_STD)}


def _timm_version() -> str | None:
    try:
        return importlib.metadata.version("timm")
    except importlib.metadata.PackageNotFoundError:
        return None


def live_table() -> dict[str, Any]:
    """The listed families read from the installed timm: ``{"timm": version, "archs": {name: config}}``."""
    import timm

    archs = {name: {"family": module, **_config(name)}
             for pattern, module in FAMILIES for name in timm.list_models(pattern, module=module)}
    return {"timm": _timm_version(), "archs": archs}


@functools.cache
def table() -> dict[str, Any]:
    """``timm_archs.json`` when it was written for the installed timm, else ``live_table()``."""
    stored = json.loads(TABLE.read_text()) if TABLE.is_file() else None
    return stored if stored is not None and stored["timm"] == _timm_version() else live_table()


def _spec(timm_name: str, family: str, config: dict[str, Any]) -> dict[str, Any]:
    input_size = tuple(config["input_size"])
    return {"builder": functools.partial(build, timm_name), "input_size": input_size,
            "num_classes": config["num_classes"], "in_chans": input_size[0], "mean": tuple(config["mean"]),
            "std": tuple(config["std"]), "tags": ("timm", family),
            "description": f"timm {timm_name} (timm.models.{family})",
            "options": {"drop_rate": (float, 0.0, 1.0), "drop_path_rate": (float, 0.0, 1.0)}}


@hookimpl
def lilnetx_register_architectures(register: ArchitectureRegistrar) -> None:
    if _timm_version() is None:
        return
    for timm_name, config in table()["archs"].items():
        spec = _spec(timm_name, config["family"], config)
        register(PREFIX + timm_name, spec.pop("builder"), **spec)


@hookimpl
def lilnetx_resolve_architecture(name: str) -> ArchitectureSpec | None:
    if not name.startswith(PREFIX) or _timm_version() is None:
        return None
    import timm

    timm_name = name.removeprefix(PREFIX)
    if not timm.is_model(timm_name):
        return None
    module = timm.models.model_entrypoint(timm_name).__module__.rsplit(".", 1)[-1]
    return ArchitectureSpec(name=name, **_spec(timm_name, module, _config(timm_name)))


def write_table() -> int:
    """Write ``timm_archs.json`` from the installed timm (one architecture a line); returns how many."""
    live = live_table()
    rows = ",\n".join(f" {json.dumps(name)}: {json.dumps(config)}" for name, config in live["archs"].items())
    TABLE.write_text(f'{{"timm": {json.dumps(live["timm"])}, "archs": {{\n{rows}\n}}}}\n')
    return len(live["archs"])


if __name__ == "__main__":
    print(f"wrote {TABLE} ({write_table()} architectures)")
