"""Hook specifications of LilNetX Zoo plugins, and the ``hookimpl`` marker plugins decorate them with.

A plugin is a module (or any object) with functions named after these hooks::

    from zoo.hookspecs import hookimpl

    @hookimpl
    def lilnetx_register_architectures(register):
        register("my_net", build_my_net, input_size=(3, 32, 32), num_classes=10, in_chans=3,
                 mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))

Built-in plugins (``plugins/``) are written exactly the same way. Architecture builders are called as
``builder(num_classes=..., in_chans=..., input_size=(C, H, W), **kwargs)`` and return an ``nn.Module``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import pluggy

if TYPE_CHECKING:  # hooks are declared and listed without importing torch
    from torch import nn

PROJECT = "lilnetx"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)

Builder = Callable[..., "nn.Module"]


@dataclass(frozen=True)
class ArchitectureSpec:
    """What the zoo knows about one architecture: its builder and its default input/output config."""

    name: str
    builder: Builder
    input_size: tuple[int, int, int]
    num_classes: int
    in_chans: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    tags: tuple[str, ...] = ()
    description: str = ""
    plugin: str = ""  # filled in by the registry: the plugin that registered it
    # builder keyword arguments a ``.lnx`` file's header may set: name -> (type, min, max); any other one is
    # refused when a file is rebuilt (num_classes, in_chans, input_size, mean and std are always checked)
    options: Mapping[str, tuple[type, float, float]] = field(default_factory=dict)


@dataclass(frozen=True)
class DatasetSpec:
    """A dataset a plugin contributes: ``loader(**kwargs)`` returns a ``zoo.datasets.DatasetBundle``."""

    name: str
    loader: Callable[..., Any]
    description: str = ""
    plugin: str = ""
    # loader keyword arguments an artifact's recipe may ask for when it is measured: name -> (type, min, max)
    options: Mapping[str, tuple[type, float, float]] = field(default_factory=dict)


class ArchitectureRegistrar(Protocol):
    def __call__(self, name: str, builder: Builder, *, input_size: tuple[int, int, int], num_classes: int,
                 in_chans: int, mean: tuple[float, ...], std: tuple[float, ...],
                 tags: tuple[str, ...] = (), description: str = "",
                 options: Mapping[str, tuple[type, float, float]] | None = None) -> None: ...


class DatasetRegistrar(Protocol):
    def __call__(self, name: str, loader: Callable[..., Any], description: str = "",
                 options: Mapping[str, tuple[type, float, float]] | None = None) -> None: ...


@hookspec
def lilnetx_register_architectures(register: ArchitectureRegistrar) -> None:
    """Register architectures by calling ``register(name, builder, *, input_size, num_classes, in_chans,
    mean, std, tags=(), description="", options=None)`` once per architecture.

    ``input_size`` is ``(C, H, W)``; ``mean``/``std`` are the per-channel input normalisation. ``options``
    declares the builder keyword arguments a ``.lnx`` file may pass, ``{name: (type, min, max)}`` (e.g.
    ``{"width": (float, 0.0625, 4.0)}``); a file passing any other is refused. A name may be registered by
    one plugin only.
    """


@hookspec(firstresult=True)
def lilnetx_resolve_architecture(name: str) -> ArchitectureSpec | None:
    """Return an :class:`ArchitectureSpec` for ``name`` if this plugin can build it, else ``None``.

    Asked only for names no plugin registered, so a plugin can serve an open-ended family
    (``timm/<any timm model>``) without listing it. The first non-``None`` answer wins.
    """


@hookspec
def lilnetx_register_datasets(register: DatasetRegistrar) -> None:
    """Register datasets by calling ``register(name, loader, description="")`` once per dataset.

    ``loader(**kwargs)`` must return a ``zoo.datasets.DatasetBundle``; a ``root`` keyword receives the
    ``--data-root`` of ``lilnetx train``.
    """


@hookspec(firstresult=True)
def lilnetx_layer_policy(arch: str, name: str, module: nn.Module) -> str | bool | None:
    """Decide how ``reparameterize`` treats layer ``name`` (a Conv or Linear ``module``) of architecture
    ``arch``: ``False`` leaves it uncompressed, a string puts it in that latent group, ``None`` (the
    default) lets the next plugin or the default kernel-shape grouping decide.
    """
