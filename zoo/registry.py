"""Architectures and datasets contributed by plugins: look them up, build them, reparameterise them.

``create_model`` works like timm's: the result carries ``model.pretrained_cfg`` (input size, classes,
mean/std, and the plugin that provided it with its version) and ``model.lilnetx_arch`` (name and complete
keyword arguments, enough to rebuild it).
"""

from __future__ import annotations

import difflib
import fnmatch
import functools
import inspect
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from zoo.errors import ZooError
from zoo.file_options import check_file_kwargs, option_declaration_error
from zoo.hookspecs import ArchitectureSpec, Builder, DatasetSpec
from zoo.plugins import DISABLE_AUTOLOAD_ENV, PluginManager, get_plugin_manager

if TYPE_CHECKING:  # listing architectures and datasets imports no torch; building does
    from torch import nn

    from lilnetx.reparam import LayerPolicy
    from zoo.datasets import DatasetBundle

BUILDER_ARGS = ("num_classes", "in_chans", "input_size")  # what every builder receives from create_model


class UnknownNameError(ZooError, KeyError):
    """A name no plugin provides; the message lists close matches."""

    def __str__(self) -> str:  # KeyError would print the message in quotes
        return str(self.args[0])


class UnknownArchitectureError(UnknownNameError):
    """No plugin provides an architecture of this name."""


class UnknownDatasetError(UnknownNameError):
    """No plugin provides a dataset of this name."""


class RegistrationError(ZooError, ValueError):
    """A plugin registered something invalid, or a name another plugin already holds."""


class OptionError(ZooError, ValueError):
    """An architecture or dataset option that the builder or loader does not take, or a bad input config."""


def _unknown(kind: str, name: str, known: list[str]) -> str:
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
    hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    return f"unknown {kind} {name!r}{hint} (`lilnetx {'archs' if kind == 'architecture' else 'datasets'}` lists them)"


def check_options(what: str, fn: Callable[..., Any], options: Iterable[str], reserved: Iterable[str] = ()) -> None:
    """Raise ``OptionError`` naming the first of ``options`` that ``fn`` does not accept (unless it takes ``**kw``)."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):  # no introspectable signature: let the call itself complain
        return
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return
    accepted = [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
                and p.name not in reserved]
    for key in options:
        if key not in accepted:
            close = difflib.get_close_matches(key, accepted, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise OptionError(f"{what} takes no option {key!r}{hint}; its options: {', '.join(accepted) or 'none'}")


def _dataset_key(name: str) -> str:
    return name.lower().replace("_", "-")


def _claim(table: dict[str, Any], key: str, spec: ArchitectureSpec | DatasetSpec, kind: str) -> None:
    if key in table:
        first, second = sorted((table[key].plugin, spec.plugin))
        by = f"plugins {first!r} and {second!r}" if first != second else f"plugin {first!r} twice"
        raise RegistrationError(
            f"{kind} {spec.name!r} is registered by {by}; uninstall or rename one "
            f"(or set {DISABLE_AUTOLOAD_ENV}=1 to load the built-in plugins only)"
        )
    table[key] = spec


def _validated(spec: ArchitectureSpec) -> ArchitectureSpec:
    """``spec`` with tuples of the right types, or a RegistrationError naming the plugin."""
    where = f"architecture {spec.name!r} of plugin {spec.plugin!r}"
    if not isinstance(spec.name, str) or not spec.name or not callable(spec.builder):
        raise RegistrationError(f"{where}: needs a non-empty name and a callable builder")
    input_size = tuple(int(v) for v in spec.input_size)
    if len(input_size) != 3 or input_size[0] != spec.in_chans:
        raise RegistrationError(f"{where}: input_size {spec.input_size} must be (C, H, W) with C = in_chans "
                                f"({spec.in_chans})")
    mean, std = tuple(float(v) for v in spec.mean), tuple(float(v) for v in spec.std)
    if len(mean) != spec.in_chans or len(std) != spec.in_chans:
        raise RegistrationError(f"{where}: mean and std need one value per input channel ({spec.in_chans})")
    if (problem := option_declaration_error(spec.options)) is not None:
        raise RegistrationError(f"{where}: options {problem}")
    return replace(spec, input_size=input_size, mean=mean, std=std, tags=tuple(spec.tags))


@dataclass(frozen=True)
class Registry:
    """Everything the loaded plugins contribute; built once per set of plugins."""

    pm: PluginManager
    architectures: dict[str, ArchitectureSpec]
    datasets: dict[str, DatasetSpec]
    resolved: dict[str, ArchitectureSpec] = field(default_factory=dict)  # on-demand names, not listed

    @classmethod
    def collect(cls, pm: PluginManager) -> Registry:
        archs: dict[str, ArchitectureSpec] = {}
        datasets: dict[str, DatasetSpec] = {}

        def register_architecture(plugin: str, name: str, builder: Builder, *,
                                  input_size: tuple[int, int, int], num_classes: int, in_chans: int,
                                  mean: tuple[float, ...], std: tuple[float, ...],
                                  tags: tuple[str, ...] = (), description: str = "",
                                  options: dict[str, tuple[type, float, float]] | None = None) -> None:
            spec = _validated(ArchitectureSpec(name, builder, input_size, num_classes, in_chans, mean, std,
                                               tags, description, plugin, dict(options or {})))
            _claim(archs, name, spec, "architecture")

        def register_dataset(plugin: str, name: str, loader: Any, description: str = "",
                             options: dict[str, tuple[type, float, float]] | None = None) -> None:
            if not isinstance(name, str) or not name or not callable(loader):
                raise RegistrationError(f"dataset {name!r} of plugin {plugin!r}: needs a name and a callable loader")
            if (problem := option_declaration_error(options or {})) is not None:
                raise RegistrationError(f"dataset {name!r} of plugin {plugin!r}: options {problem}")
            _claim(datasets, _dataset_key(name), DatasetSpec(name, loader, description, plugin, dict(options or {})),
                   "dataset")

        for plugin, call in pm.implementations("lilnetx_register_architectures"):
            call(register=functools.partial(register_architecture, plugin))
        for plugin, call in pm.implementations("lilnetx_register_datasets"):
            call(register=functools.partial(register_dataset, plugin))
        return cls(pm, archs, datasets)

    def architecture(self, name: str) -> ArchitectureSpec:
        if name in self.architectures or name in self.resolved:
            return self.architectures.get(name) or self.resolved[name]
        for plugin, call in self.pm.implementations("lilnetx_resolve_architecture"):
            spec = call(name=name)
            if spec is not None:
                spec = _validated(replace(spec, name=name, plugin=plugin))
                self.resolved[name] = spec
                return spec
        raise UnknownArchitectureError(_unknown("architecture", name, sorted(self.architectures)))

    def dataset(self, name: str) -> DatasetSpec:
        try:
            return self.datasets[_dataset_key(name)]
        except KeyError:
            known = sorted(s.name for s in self.datasets.values())
            raise UnknownDatasetError(_unknown("dataset", name, known)) from None


_cache: tuple[PluginManager, list[tuple[str, object]], Registry] | None = None


def get_registry() -> Registry:
    """The registry of the current plugin manager (rebuilt when plugins are added or removed)."""
    global _cache
    pm = get_plugin_manager()
    plugins = sorted(pm.list_name_plugin(), key=lambda item: item[0])
    if _cache is None or _cache[0] is not pm or _cache[1] != plugins:
        _cache = (pm, plugins, Registry.collect(pm))
    return _cache[2]


def get_architecture(name: str) -> ArchitectureSpec:
    """The spec of architecture ``name``; ``UnknownArchitectureError`` lists close matches."""
    return get_registry().architecture(name)


def list_architectures(pattern: str = "*") -> list[str]:
    """Registered architecture names matching the fnmatch ``pattern``, sorted.

    Open-ended families served on demand (``timm/<any timm model>``) are not listed.
    """
    return sorted(n for n in get_registry().architectures if fnmatch.fnmatchcase(n, pattern))


def _per_channel(values: Any, in_chans: int, what: str, given: bool) -> list[float]:
    values = [float(v) for v in values]
    if len(values) == in_chans:
        return values
    if given:
        raise OptionError(f"{what} has {len(values)} values but the model has {in_chans} input channels")
    return [sum(values) / len(values)] * in_chans  # architecture default, other channel count


def create_model(arch: str, **kwargs: Any) -> nn.Module:
    """An untrained ``arch`` from any plugin (never pretrained weights).

    ``num_classes``, ``in_chans`` and ``input_size`` (C, H, W) default to the architecture's config;
    ``mean`` / ``std`` only go to ``model.pretrained_cfg``; other keywords go to the builder.
    ``pretrained_cfg["plugin"]`` / ``["plugin_version"]`` name the plugin that registered ``arch`` and its
    distribution's version (``None`` for a plugin registered at runtime); ``lilnetx.save`` records them.
    """
    registry = get_registry()
    spec = registry.architecture(arch)
    extra = dict(kwargs)
    num_classes = int(extra.pop("num_classes", spec.num_classes))
    in_chans = extra.pop("in_chans", None)
    input_size = extra.pop("input_size", None)
    if input_size is None:
        in_chans = spec.in_chans if in_chans is None else int(in_chans)
        input_size = (in_chans, *spec.input_size[1:])
    input_size = tuple(int(v) for v in input_size)
    if len(input_size) != 3 or (in_chans is not None and int(in_chans) != input_size[0]):
        raise OptionError(f"input_size {input_size} must be (C, H, W)"
                         + (f" with C = in_chans ({in_chans})" if in_chans is not None else ""))
    in_chans = input_size[0]
    mean = _per_channel(extra.pop("mean", spec.mean), in_chans, "mean", "mean" in kwargs)
    std = _per_channel(extra.pop("std", spec.std), in_chans, "std", "std" in kwargs)
    check_options(f"architecture {arch!r}", spec.builder, extra, BUILDER_ARGS)
    try:
        model = spec.builder(num_classes=num_classes, in_chans=in_chans, input_size=input_size, **extra)
    except ValueError as exc:  # a plugin refusing an option value: one OptionError, whichever plugin it is
        if isinstance(exc, OptionError):
            raise
        raise OptionError(f"architecture {arch!r} (plugin {spec.plugin}): {exc}") from exc
    resolved = {"num_classes": num_classes, "in_chans": in_chans, "input_size": list(input_size),
                "mean": mean, "std": std, **extra}
    model.pretrained_cfg = {"architecture": arch, "plugin": spec.plugin,
                            "plugin_version": registry.pm.versions.get(spec.plugin), "input_size": input_size,
                            "num_classes": num_classes, "in_chans": in_chans, "mean": tuple(mean),
                            "std": tuple(std)}
    model.lilnetx_arch = {"name": arch, "kwargs": resolved}
    return model


def build_model(name: str, kwargs: dict[str, Any]) -> nn.Module:
    """Entry point ``lilnetx.model_builders``: rebuild ``model.lilnetx_arch`` (``name``, ``kwargs``) read from a
    file, whose keyword arguments are checked against what the architecture declares first."""
    check_file_kwargs(get_architecture(name), kwargs)
    return create_model(name, **kwargs)


def layer_policy_for(arch: str) -> LayerPolicy:
    """``reparameterize(layer_policy=...)`` that asks the plugins' ``lilnetx_layer_policy`` hooks."""
    hook = get_plugin_manager().hook.lilnetx_layer_policy

    def policy(name: str, module: nn.Module) -> str | bool | None:
        return hook(arch=arch, name=name, module=module)

    return policy


def reparameterized_model(arch: str, arch_kwargs: dict[str, Any] | None = None,
                          reparam_options: dict[str, Any] | None = None) -> nn.Module:
    """``create_model`` then ``lilnetx.reparameterize`` with the plugins' layer policy."""
    import lilnetx

    model = create_model(arch, **(arch_kwargs or {}))
    return lilnetx.reparameterize(model, layer_policy=layer_policy_for(arch), **(reparam_options or {}))


def list_datasets() -> list[str]:
    """Names of the datasets plugins registered, sorted."""
    return sorted(s.name for s in get_registry().datasets.values())


def get_dataset(name: str, **kwargs: Any) -> DatasetBundle:
    """Load dataset ``name`` (case and ``_``/``-`` insensitive) from the plugin that registered it."""
    spec = get_registry().dataset(name)
    check_options(f"dataset {spec.name!r}", spec.loader, kwargs)
    return spec.loader(**kwargs)
