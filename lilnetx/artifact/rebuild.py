"""Rebuilding the model stored in a ``.lnx`` file through an installed model builder."""

from __future__ import annotations

import importlib.metadata
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lilnetx.artifact.errors import (
    ArchitectureBuildError,
    ArtifactError,
    CorruptHeaderError,
    corrupt,
    mismatch,
    read_file,
)
from lilnetx.artifact.format import DecodedArtifact, is_latent_key
from lilnetx.artifact.reader import decode, parse
from lilnetx.artifact.validation import TensorSpecs, check_tensors, tensor_specs
from lilnetx.reparam import ReparamError, latent_groups, latent_tensors, reparameterize

BUILDER_GROUP = "lilnetx.model_builders"

Builder = Callable[[str, dict[str, Any]], nn.Module]


def load(path: str | Path, *, builder: Builder | None = None, reparameterized: bool = False,
         slim: bool = False) -> nn.Module:
    """Rebuild the model stored in ``path``: a plain PyTorch module with the decoded weights, in eval mode.

    ``builder(arch_name, arch_kwargs) -> nn.Module`` rebuilds the architecture; by default the builders
    installed under the entry-point group ``lilnetx.model_builders`` are tried in name order. The
    architecture is built once (on the meta device when its builder allows, then materialised), its tensor
    names and shapes are checked against the header before any latent is decoded, and each compressed
    weight is decoded straight into it: ``round(Z) @ decoder`` (``round(Z) * decoder`` for a diagonal or
    scalar decoder). ``reparameterized=True`` keeps the latent parametrisation instead (integer latents and
    decoders; the learned density itself is not stored, the header holds the bits). ``slim=True`` returns a
    ``lilnetx.runtime.SparseRuntime``: the model slimmed (BatchNorm folded, zero channels removed, ReLU and
    residual additions fused), each convolution running the sparse kernel or dense ``conv2d``, whichever
    measured faster on this machine, as frozen TorchScript per input shape (same outputs; inference only).
    """
    if slim and reparameterized:
        raise ArtifactError("load(slim=True) returns a plain slimmed model; it cannot keep the latents "
                         "(reparameterized=True)")
    if slim:
        from lilnetx.runtime import compile_sparse

        return compile_sparse(load(path, builder=builder))
    data = read_file(path)
    header, sections = parse(data, str(path))
    if reparameterized:
        model = _rebuild(header, builder, str(path))
        return _finish(model, decode(data, header, sections, str(path), layer_stats=False), str(path))
    model = _build(header, builder, str(path))
    return _load_plain(model, decode(data, header, sections, str(path), layer_stats=False), str(path))


def from_artifact(artifact: DecodedArtifact, *, builder: Builder | None = None, reparameterized: bool = False,
                  source: str = "artifact") -> nn.Module:
    """``load`` for an already read ``DecodedArtifact``."""
    if reparameterized:
        return _finish(_rebuild(artifact.header, builder, source), artifact, source)
    return _load_plain(_build(artifact.header, builder, source), artifact, source)


def read_and_load(path: str | Path, *, builder: Builder | None = None) -> tuple[DecodedArtifact, nn.Module]:
    """``read_artifact(path)`` and ``load(path)`` from one reading: the architecture is built and checked
    against the header (on the meta device) before anything is decoded, as in ``load``."""
    data = read_file(path)
    header, sections = parse(data, str(path))
    model = _build(header, builder, str(path))
    artifact = decode(data, header, sections, str(path))
    return artifact, _load_plain(model, artifact, str(path))


def decoded_state(artifact: DecodedArtifact, specs: TensorSpecs) -> dict[str, torch.Tensor]:
    """Every state-dict tensor of the artifact's model: the compressed ones decoded from their integer
    latents and their group's decoder, in the dtype ``specs`` gives them, and the stored float parameters."""
    header = artifact.header
    widths = {g["name"]: g["width"] for g in header["groups"]}
    state = dict(artifact.float_params)
    for layer in header["layers"]:
        name, group = layer["name"], layer["group"]
        dtype = specs[name][1]
        rows = torch.from_numpy(artifact.latents[name]).to(dtype).reshape(-1, widths[group])
        decoder = torch.as_tensor(artifact.decoders[group]).to(dtype)
        # LatentGroup.decode: a matrix multiplies the rows, a (1, width) or (1, 1) decoder scales them
        decoded = rows @ decoder if decoder.shape[0] > 1 else rows * decoder
        state[name] = decoded.reshape(layer["shape"])
    return state


@torch.no_grad()
def _load_plain(model: nn.Module, artifact: DecodedArtifact, source: str) -> nn.Module:
    """Decode the artifact into the built plain ``model`` (already checked against the header)."""
    specs = tensor_specs(model)
    try:
        model.load_state_dict(decoded_state(artifact, specs))
    except RuntimeError as exc:  # names and shapes were checked: only a builder that changed underfoot
        raise mismatch(source, "the state dict", "its tensors", str(exc), artifact.header["arch"]) from exc
    return _record(model, artifact.header).eval()


def _record(model: nn.Module, header: dict[str, Any]) -> nn.Module:
    """Record the header's architecture and input config on ``model`` (as ``zoo.create_model`` does)."""
    model.lilnetx_arch = {"name": header["arch"], "kwargs": header["arch_kwargs"]}
    model.pretrained_cfg = {**(getattr(model, "pretrained_cfg", None) or {}), "architecture": header["arch"],
                            **{k: header[k] for k in ("input_size", "mean", "std", "num_classes")
                               if header.get(k) is not None}}
    return model


def _rebuild(header: dict[str, Any], builder: Builder | None, source: str) -> nn.Module:
    """The header's architecture, checked against the header and reparameterised like it; latents not filled."""
    model = _build(header, builder, source)
    with torch.no_grad():
        for tensor in model.state_dict().values():  # defined values (the build may leave memory uninitialised)
            tensor.zero_()
    with torch.random.fork_rng(devices=[]):  # reparameterising must not move the global RNG
        _reparameterize_like(model, header, source)
    return model


def _finish(model: nn.Module, artifact: DecodedArtifact, source: str) -> nn.Module:
    """Fill the reparameterised ``model`` with the decoded artifact and record its config."""
    _fill(model, artifact, source)
    _record(model, artifact.header)
    model.lilnetx_config = dict(artifact.header["reparam"])
    return model.eval()


def _installed_builders() -> list[tuple[str, Callable[[], Builder]]]:
    points = sorted(importlib.metadata.entry_points(group=BUILDER_GROUP), key=lambda ep: ep.name)
    return [(f"{ep.name} ({ep.value})", ep.load) for ep in points]


def _build(header: dict[str, Any], builder: Builder | None, source: str) -> nn.Module:
    """Build the header's architecture once, checked against the header before any memory is used.

    The builder runs on the meta device, the tensors are checked there (so a header that lies about shapes
    fails before anything is allocated or decoded), then the model is materialised uninitialised: every
    tensor in its state dict is overwritten by the artifact. Builders that cannot build on the meta device,
    and models holding tensors outside their state dict (non-persistent buffers), are built directly.
    """
    arch, kwargs = header["arch"], header["arch_kwargs"]
    candidates = [("builder", lambda: builder)] if builder is not None else _installed_builders()
    if not candidates:
        raise ArchitectureBuildError(
            f"cannot build architecture {arch!r}: no model builder is installed (entry-point group "
            f"{BUILDER_GROUP!r}); install lilnetx-zoo or the plugin providing it, or pass builder=")
    failures = []
    for name, get in candidates:
        try:
            fn = get()
            with torch.random.fork_rng(devices=[]):  # building must not move the global RNG
                model = _build_on_meta(fn, arch, kwargs, header, source)
                if model is None:
                    model = fn(arch, dict(kwargs))
                    if isinstance(model, nn.Module):
                        check_tensors(header, tensor_specs(model), source)
        except CorruptHeaderError:
            raise
        except Exception as exc:  # any builder failure means "cannot build it here"
            failures.append(f"{name}: {type(exc).__name__}: {exc}")
            continue
        if isinstance(model, nn.Module):
            return model
        failures.append(f"{name}: returned {type(model).__name__}, not an nn.Module")
    raise ArchitectureBuildError(
        f"cannot build architecture {arch!r} with {kwargs}: {'; '.join(failures)}. Install the plugin that "
        "provides it, or pass builder=")


def _build_on_meta(fn: Builder, arch: str, kwargs: dict[str, Any], header: dict[str, Any],
                   source: str) -> nn.Module | None:
    """``fn``'s model built on the meta device, checked against the header, then given uninitialised CPU
    memory; ``None`` when it cannot be built there or holds tensors its state dict does not cover."""
    try:
        with torch.device("meta"):
            model = fn(arch, dict(kwargs))
    except Exception:  # builders that do real work at build time are built directly
        return None
    if not isinstance(model, nn.Module):
        return None
    check_tensors(header, tensor_specs(model), source)
    state = model.state_dict(keep_vars=True)
    covered = {id(t) for t in state.values()}
    if any(id(t) not in covered for t in _all_tensors(model)):
        return None  # e.g. a non-persistent buffer: its build-time value is needed, so build for real
    # Module.to_empty would do, but its empty_like on meta tensors imports sympy (about a second)
    return model._apply(lambda t: torch.empty(t.shape, dtype=t.dtype))


def _all_tensors(model: nn.Module) -> list[torch.Tensor]:
    """Parameters, buffers and plain tensor attributes of every module of ``model``."""
    return [value for module in model.modules() for value in
            (*module._parameters.values(), *module._buffers.values(), *vars(module).values())
            if isinstance(value, torch.Tensor)]


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
        reparameterize(model, **options, layer_policy=lambda name, _: groups.get(name, False), initialize=False)
    except (ReparamError, TypeError, ValueError) as exc:
        raise corrupt(source, f"its reparameterisation options {options} cannot be applied to architecture "
                               f"{header['arch']!r} ({exc})") from exc


@torch.no_grad()
def _fill(model: nn.Module, artifact: DecodedArtifact, source: str) -> None:
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
