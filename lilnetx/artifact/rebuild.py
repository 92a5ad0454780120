"""Rebuilding the model stored in a ``.lnx`` file through an installed model builder."""

from __future__ import annotations

import importlib.metadata
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lilnetx.artifact.errors import CorruptHeaderError, UnknownArchitectureError, corrupt, mismatch
from lilnetx.artifact.format import Artifact, is_latent_key
from lilnetx.artifact.reader import decode, parse
from lilnetx.artifact.validation import TensorSpecs, check_tensors, tensor_specs
from lilnetx.reparam import ReparamError, latent_groups, latent_tensors, reparameterize, strip

BUILDER_GROUP = "lilnetx.model_builders"

Builder = Callable[[str, dict[str, Any]], nn.Module]


def load(path: str | Path, *, builder: Builder | None = None, reparameterized: bool = False) -> nn.Module:
    """Rebuild the model stored in ``path``: a plain PyTorch module with the decoded weights, in eval mode.

    ``builder(arch_name, arch_kwargs) -> nn.Module`` rebuilds the architecture; by default the builders
    installed under the entry-point group ``lilnetx.model_builders`` are tried in name order. The
    architecture's tensor names and shapes are checked against the header before any latent is decoded.
    ``reparameterized=True`` keeps the latent parametrisation (integer latents and decoders; the learned
    density itself is not stored, the header holds the bits).
    """
    data = Path(path).read_bytes()
    header, sections = parse(data, str(path))
    model = _rebuild(header, builder, str(path))
    return _finish(model, decode(data, header, sections, str(path)), reparameterized, str(path))


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
                check_tensors(header, probe, source)
            model = fn(arch, dict(kwargs))
        except CorruptHeaderError:
            raise
        except Exception as exc:  # any builder failure means "cannot build it here"
            failures.append(f"{name}: {type(exc).__name__}: {exc}")
            continue
        if isinstance(model, nn.Module):
            if probe is None:
                check_tensors(header, tensor_specs(model), source)
            return model
        failures.append(f"{name}: returned {type(model).__name__}, not an nn.Module")
    raise UnknownArchitectureError(
        f"cannot build architecture {arch!r} with {kwargs}: {'; '.join(failures)}. Install the plugin that "
        "provides it, or pass builder=")


def _meta_specs(fn: Builder, arch: str, kwargs: dict[str, Any]) -> TensorSpecs | None:
    """Tensors of ``fn``'s model built on the meta device; ``None`` if it cannot be built there."""
    try:
        with torch.device("meta"):
            return tensor_specs(fn(arch, dict(kwargs)))
    except Exception:  # builders that do real work at build time are built directly
        return None


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
        raise corrupt(source, f"its reparameterisation options {options} cannot be applied to architecture "
                               f"{header['arch']!r} ({exc})") from exc


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
        raise mismatch(source, f"compressed tensor #{first}", recorded[first:first + 1], built[first:first + 1],
                        arch)
    for t in tensors:
        t.latent.copy_(torch.from_numpy(artifact.latents[t.name]))
    for name, group in latent_groups(model).items():
        decoder = artifact.decoders[name]
        if decoder.shape != group.decoder.shape:
            raise mismatch(source, f"decoder of group {name!r}", list(decoder.shape), list(group.decoder.shape),
                            arch)
        group.decoder.copy_(decoder)
    state = {k: v for k, v in model.state_dict().items() if not is_latent_key(k)}
    if list(state) != list(artifact.float_params):
        only_file = sorted(set(artifact.float_params) - set(state))[:5]
        only_model = sorted(set(state) - set(artifact.float_params))[:5]
        raise mismatch(source, "float parameters", f"{only_file} that the model lacks",
                        f"{only_model} that the file lacks (or another order)", arch)
    for key, value in state.items():
        stored = artifact.float_params[key]
        if stored.shape != value.shape or stored.dtype != value.dtype:
            raise mismatch(source, f"parameter {key!r}", f"{stored.dtype} {list(stored.shape)}",
                            f"{value.dtype} {list(value.shape)}", arch)
        value.copy_(stored)
