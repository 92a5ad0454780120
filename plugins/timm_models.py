"""timm architectures under a ``timm/`` prefix with timm's own names: the ResNet, VGG and MobileNet v2/v3
families are listed; any other timm model is built on demand (``timm/<name>``). Never pretrained.
"""

from __future__ import annotations

import functools
from typing import Any

import timm
from torch import nn

from zoo.hookspecs import ArchitectureRegistrar, ArchitectureSpec, hookimpl

PREFIX = "timm/"
# (name pattern, timm module) of each listed family; the module keeps e.g. resnetv2 out of "resnet".
FAMILIES = (
    ("resnet*", "resnet"),
    ("vgg*", "vgg"),
    ("mobilenetv2*", "efficientnet"),
    ("mobilenetv3*", "mobilenetv3"),
)


def build(timm_name: str, *, num_classes: int, in_chans: int, input_size: tuple[int, int, int],
          **kwargs: Any) -> nn.Module:
    """``timm.create_model(timm_name, pretrained=False, ...)``; fixed-size models get ``img_size``."""
    if kwargs.pop("pretrained", False):
        raise ValueError("the zoo never downloads pretrained weights: train with `lilnetx train`, or load your "
                         "own weights into the model and reparameterise with init='fit'")
    cfg = timm.models.get_pretrained_cfg(timm_name)
    if cfg is not None and cfg.fixed_input_size and tuple(input_size[1:]) != tuple(cfg.input_size[1:]):
        kwargs.setdefault("img_size", tuple(input_size[1:]))
    return timm.create_model(timm_name, pretrained=False, num_classes=num_classes, in_chans=in_chans, **kwargs)


def _spec(timm_name: str, family: str) -> dict[str, Any]:
    """Default input size, classes and normalisation from timm's pretrained config (metadata only)."""
    cfg = timm.models.get_pretrained_cfg(timm_name)
    input_size = tuple(cfg.input_size) if cfg else (3, 224, 224)
    return {
        "builder": functools.partial(build, timm_name),
        "input_size": input_size,
        "num_classes": cfg.num_classes if cfg and cfg.num_classes else 1000,
        "in_chans": input_size[0],
        "mean": tuple(cfg.mean) if cfg else timm.data.IMAGENET_DEFAULT_MEAN,
        "std": tuple(cfg.std) if cfg else timm.data.IMAGENET_DEFAULT_STD,
        "tags": ("timm", family),
        "description": f"timm {timm_name} (timm.models.{family})",
    }


@hookimpl
def lilnetx_register_architectures(register: ArchitectureRegistrar) -> None:
    for pattern, module in FAMILIES:
        for timm_name in timm.list_models(pattern, module=module):
            spec = _spec(timm_name, module)
            register(PREFIX + timm_name, spec.pop("builder"), **spec)


@hookimpl
def lilnetx_resolve_architecture(name: str) -> ArchitectureSpec | None:
    timm_name = name.removeprefix(PREFIX)
    if not name.startswith(PREFIX) or not timm.is_model(timm_name):
        return None
    module = timm.models.model_entrypoint(timm_name).__module__.rsplit(".", 1)[-1]
    return ArchitectureSpec(name=name, **_spec(timm_name, module))
