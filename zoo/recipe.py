"""Training recipes: one YAML mapping that holds every choice of a run.

Sections: ``arch`` and ``arch_kwargs`` (builder options), ``dataset`` and ``dataset_kwargs`` (loader
options, e.g. ``root``), ``reparam`` (``lilnetx.reparameterize`` options), ``train`` (``TrainConfig``) and
``export`` (how ``lilnetx export`` writes the run: ``decoder_dtype``, ``dead_paths``).
Layers merge left to right: defaults, a recipe file, command-line flags. ``model_and_data`` builds a
recipe's model and dataset for training; ``model_from_spec`` rebuilds the same model from the resolved architecture
spec a run folder stores, for export.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import inspect
from pathlib import Path
from typing import Any

import yaml
from torch import nn

import lilnetx
from lilnetx import TrainConfig
from zoo import registry
from zoo.datasets import DatasetBundle
from zoo.errors import ZooError

FREE_FORM = ("arch_kwargs", "dataset_kwargs")  # checked against the builder / loader signature later
FROM_DATASET = ("num_classes", "input_size", "mean", "std")  # architecture options the dataset decides
TYPED = ("reparam", "train", "export")
EXPORT_OPTIONS: dict[str, tuple[Any, str]] = {  # zoo.pipeline.export_run's settings: (default, type)
    "decoder_dtype": (None, "str | None"),  # None: the smallest exact type; else lossy, re-measured on export
    "dead_paths": (True, "bool"),  # zero the weights no output can see (lossless)
    "float_dtype": ("float16", "str"),  # BatchNorm as float16 (or qint8) scale and shift; float32: exact
    "history": (True, "bool"),  # keep the per-epoch training curves in the header (about 60 bytes an epoch)
}


class RecipeError(ZooError, ValueError):
    """A recipe key or value that cannot be used; the message names it and the fix."""


def _reparam_options() -> dict[str, tuple[Any, str]]:
    """``reparameterize``'s keyword options (except the plugin-provided layer policy, and ``initialize``: a
    recipe trains from an initialised model): (default, type)."""
    params = inspect.signature(lilnetx.reparameterize).parameters.values()
    return {p.name: (p.default, str(p.annotation)) for p in params
            if p.kind is p.KEYWORD_ONLY and p.name not in ("layer_policy", "initialize")}


def _train_options() -> dict[str, tuple[Any, str]]:
    defaults = TrainConfig().to_dict()
    return {f.name: (defaults[f.name], str(f.type)) for f in dataclasses.fields(TrainConfig)}


def _plain(value: Any) -> Any:
    """Tuples as lists, so the recipe round-trips through YAML."""
    return list(value) if isinstance(value, tuple) else value


def default_recipe() -> dict[str, Any]:
    return {
        "arch": None,
        "arch_kwargs": {},
        "dataset": None,
        "dataset_kwargs": {},
        "reparam": {k: _plain(d) for k, (d, _) in _reparam_options().items()},
        "train": {k: _plain(d) for k, (d, _) in _train_options().items()},
        "export": {k: d for k, (d, _) in EXPORT_OPTIONS.items()},
    }


def _check_key(key: Any, known: list[str], where: str) -> None:
    if key not in known:
        close = difflib.get_close_matches(str(key), known, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise RecipeError(f"{where}: unknown key {key!r}; {hint}known keys: {', '.join(known)}")


def _coerce(value: Any, annotation: str, where: str) -> Any:
    """``value`` as the option's annotated scalar type (YAML reads ``1e-4`` as a string), else an error."""
    base = annotation.removesuffix(" | None")
    if value is None and base != annotation:
        return value
    try:
        if base == "bool" and isinstance(value, bool):
            return value
        if base in ("int", "float") and not isinstance(value, bool):
            number = float(value) if base == "float" else int(value)
            if base == "float" or number == float(value):
                return number
        if base == "str" and isinstance(value, str):
            return value
        if base not in ("bool", "int", "float", "str") and isinstance(value, (list, tuple, dict)):
            return _plain(value)
    except (TypeError, ValueError):
        pass
    raise RecipeError(f"{where}: expected {annotation}, got {value!r}")


def merge(base: dict[str, Any], update: dict[str, Any], source: str) -> dict[str, Any]:
    """``base`` updated by ``update`` (from ``source``, named in errors); unknown keys are errors."""
    if not isinstance(update, dict):
        raise RecipeError(f"{source}: a recipe is a mapping of sections ({', '.join(base)}), "
                          f"got {type(update).__name__}")
    merged = copy.deepcopy(base)
    options = {"reparam": _reparam_options(), "train": _train_options(), "export": EXPORT_OPTIONS}
    for key, value in update.items():
        _check_key(key, list(base), source)
        if key in TYPED or key in FREE_FORM:
            if not isinstance(value, dict):
                raise RecipeError(f"{source}: {key!r} must be a mapping, got {value!r}")
            for sub, sub_value in value.items():
                where = f"{source}: {key}.{sub}"
                if (key, sub, sub_value) == ("train", "extra", {}):
                    continue  # written by lilnetx 0.1 (TrainConfig.extra, never used): old runs still resume
                if key in TYPED:
                    _check_key(sub, list(options[key]), f"{source}: {key}")
                    sub_value = _coerce(sub_value, options[key][sub][1], where)
                merged[key][sub] = sub_value
        elif value is not None and not isinstance(value, str):
            raise RecipeError(f"{source}: {key!r} must be a name, got {value!r}")
        elif value is not None:
            merged[key] = value
    return merged


def load(path: str | Path) -> dict[str, Any]:
    """The mapping in YAML file ``path`` (not yet merged with defaults)."""
    path = Path(path)
    try:
        content = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise RecipeError(f"cannot read recipe {path}: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise RecipeError(f"recipe {path} is not valid YAML: {exc}".replace("\n", " ")) from exc
    return content if content is not None else {}


def dump(recipe: dict[str, Any], path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(recipe, sort_keys=False))


def train_config(recipe: dict[str, Any]) -> TrainConfig:
    """The recipe's ``train`` section as a validated ``TrainConfig`` (``RecipeError`` if invalid)."""
    try:
        return TrainConfig.from_dict(recipe["train"])
    except lilnetx.ConfigError as exc:
        raise RecipeError(f"recipe train section: {exc}") from exc


def export_settings(recipe: dict[str, Any]) -> dict[str, Any]:
    """The recipe's ``export`` section with defaults filled in (recipes older than the section have none)."""
    settings = {k: d for k, (d, _) in EXPORT_OPTIONS.items()} | (recipe.get("export") or {})
    if settings["decoder_dtype"] not in (None, *lilnetx.artifact.DECODER_DTYPES):
        raise RecipeError(f"recipe export.decoder_dtype {settings['decoder_dtype']!r} is not one of "
                          f"{', '.join(lilnetx.artifact.DECODER_DTYPES)} (or null: the smallest exact type)")
    if settings["float_dtype"] not in lilnetx.artifact.FLOAT_PARAM_DTYPES:
        raise RecipeError(f"recipe export.float_dtype {settings['float_dtype']!r} is not one of "
                          f"{', '.join(lilnetx.artifact.FLOAT_PARAM_DTYPES)}")
    return settings


def check_arch_kwargs(recipe: dict[str, Any]) -> None:
    """``RecipeError`` if ``arch_kwargs`` sets an option the dataset decides (``in_chans`` follows ``input_size``)."""
    clash = sorted(set(recipe.get("arch_kwargs") or {}) & {*FROM_DATASET, "in_chans"})
    if clash:
        raise RecipeError(f"arch_kwargs {', '.join(clash)} come from the dataset; change the dataset options instead")


def published(recipe: dict[str, Any]) -> dict[str, Any]:
    """``recipe`` without machine paths, for headers others read: dataset options holding an absolute or
    home-relative path (``root`` from ``--data-root``) are dropped; whoever reruns it passes their own."""
    clean = copy.deepcopy(recipe)
    kwargs = clean.get("dataset_kwargs") or {}
    clean["dataset_kwargs"] = {k: v for k, v in kwargs.items()
                               if not (isinstance(v, str) and (Path(v).is_absolute() or v.startswith("~")))}
    return clean


def model_from_spec(spec: dict[str, Any], reparam: dict[str, Any]) -> nn.Module:
    """The reparameterised (untrained) model of a resolved architecture spec (``model.lilnetx_arch``, stored
    in a run folder as ``arch.json``): no dataset needed."""
    return registry.reparameterized_model(spec["name"], spec["kwargs"], reparam)


def model_and_data(recipe: dict[str, Any]) -> tuple[nn.Module, DatasetBundle]:
    """The recipe's reparameterised (untrained) model and its dataset.

    The dataset decides the model's classes, input size, mean and std; the plugins' layer policy and the
    recipe's ``reparam`` options decide what is compressed. ``lilnetx train`` builds through here and stores
    ``model.lilnetx_arch``, from which ``model_from_spec`` rebuilds it for export.
    """
    check_arch_kwargs(recipe)
    data = registry.get_dataset(recipe["dataset"], **(recipe.get("dataset_kwargs") or {}))
    kwargs = {**(recipe.get("arch_kwargs") or {}), **{key: getattr(data, key) for key in FROM_DATASET}}
    return registry.reparameterized_model(recipe["arch"], kwargs, recipe.get("reparam") or {}), data
