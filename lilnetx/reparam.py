"""Reparameterise any ``nn.Module``: every conv / linear weight becomes ``decode(round_ste(Z))``.

Layers are grouped by kernel shape (``conv3x3``, ``conv1x1``, ``dense``, ``bias``...), and a kernel shape's
layers by initialisation fan (fan-out; 2 x fan-in for the output layer) where it differs more than 4x
(``conv1x1_fo48``...), so that every layer's latents start in a similar range. Each group owns one
linear decoder (by default a ``width x width`` matrix, ``width = K*K``; a scalar for 1x1 convs, dense layers
and biases; ``decoder_forms`` may make a K x K group's decoder diagonal or scalar, which costs fewer bytes
of side information) and one factorised density with ``width`` channels. There is no shift term, so a zero latent slice decodes to
an exactly zero weight slice. The weights are ``torch.nn.utils.parametrize`` parametrizations, so the model
keeps its own class and ``forward``.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from lilnetx.channel_graph import Tracer
from lilnetx.density import FactorizedDensity
from lilnetx.errors import LilnetxError

STRUCTURES = ("slice", "channel", "filter")
INITS = ("scratch", "fit")
OUTPUT_INITS = ("lecun", "he")  # the output layer's initial variance: 1 / fan-in, or He fan-out as every layer
DECODER_FORMS = ("full", "diagonal", "scalar")  # width x width matrix, one scale per kernel position, one scale
LATENT_BOUND_B = 3  # b of docs/method.md: latents of the widest layer start in about [-b, b]
FAN_OUT_SPLIT = 4.0  # a kernel-shape group is split where its layers' fan-outs differ by more than this factor
FIT_LEVELS_PER_STD = 16  # init="fit": quantisation step = RMS of the group's weights / this

LayerPolicy = Callable[[str, nn.Module], "str | bool | None"]


class ReparamError(LilnetxError, ValueError):
    """A model or option that cannot be reparameterised."""


def round_ste(z: Tensor) -> Tensor:
    """Round in the forward pass, identity gradient in the backward pass (straight-through).

    Scriptable (no custom autograd Function). ``z + (round(z) - z)`` is exactly ``round(z)``: the
    difference is exact (Sterbenz) and the sum representable; a zero comes out as +0.0, never -0.0, so
    weights match the decoded artifact bit for bit.
    """
    return z + (torch.round(z) - z).detach()


class LatentGroup(nn.Module):
    """Decoder and density shared by every tensor of one kernel shape."""

    def __init__(self, name: str, width: int, density_filters: tuple[int, ...] = (3, 3, 3), form: str = "full"):
        super().__init__()
        if form not in DECODER_FORMS:
            raise ReparamError(f"unknown decoder form {form!r} for group {name!r}; choose one of {DECODER_FORMS}")
        self.name = name
        self.width = width
        self.form = "full" if width == 1 else form  # a 1-wide decoder is a scalar whatever the form
        self.decoder = nn.Parameter(torch.ones(decoder_shape(self.form, width)))
        with torch.no_grad():
            self.set_scaled_identity(1.0)
        self.density = FactorizedDensity(width, density_filters)

    def decode(self, rows: Tensor) -> Tensor:
        """``rows`` of shape ``(N, width)`` -> decoded rows ``rows @ matrix()`` (no shift)."""
        if self.width == 1 or self.form != "full":
            return rows * self.decoder  # (1, width) or (1, 1) scales broadcast over the rows
        return rows @ self.decoder

    def matrix(self) -> Tensor:
        """The decoder as a ``width x width`` matrix, whatever its stored form."""
        if self.form == "full":
            return self.decoder
        return torch.eye(self.width, dtype=self.decoder.dtype, device=self.decoder.device) * self.decoder

    def set_scaled_identity(self, scale: float) -> None:
        """Decoder = ``scale`` times the identity, in the group's form (call under ``torch.no_grad``)."""
        if self.form == "full":
            self.decoder.copy_(torch.eye(self.width) * scale)
        else:
            self.decoder.fill_(scale)

    def extra_repr(self) -> str:
        return f"name={self.name!r}, width={self.width}, form={self.form!r}"


def decoder_shape(form: str, width: int) -> tuple[int, int]:
    """Shape of a decoder stored in ``form``: ``(width, width)``, ``(1, width)`` or ``(1, 1)``."""
    if width == 1 or form == "scalar":
        return (1, 1)
    return (width, width) if form == "full" else (1, width)


class LatentWeight(nn.Module):
    """Parametrization ``Z -> decode(round_ste(Z))`` for one weight or bias tensor."""

    def __init__(self, group: LatentGroup):
        super().__init__()
        self.group = group
        self.step_weight: Tensor | None = None  # set during a training step by lilnetx.objective.TrainingTerms

    def use_step_weight(self, weight: Tensor | None) -> None:
        """Set ``step_weight`` as a plain attribute, without ``nn.Module.__setattr__``'s checks (twice per layer
        and training step)."""
        self.__dict__["step_weight"] = weight

    def forward(self, z: Tensor) -> Tensor:
        step_weight = self.step_weight
        if step_weight is not None:  # decoded once for the whole group this step
            return step_weight
        return self.group.decode(round_ste(z).reshape(-1, self.group.width)).reshape(z.shape)

    def right_inverse(self, w: Tensor) -> Tensor:
        """Continuous latents whose decoding is ``w`` (before rounding)."""
        inverse = torch.linalg.inv(self.group.matrix().detach().double()).to(w.dtype)
        return (w.detach().reshape(-1, self.group.width) @ inverse).reshape(w.shape)


@dataclass(frozen=True)
class LatentTensor:
    """One reparameterised tensor of a model, e.g. ``features.0.weight``."""

    module_name: str
    tensor_name: str
    module: nn.Module
    group: LatentGroup

    @property
    def name(self) -> str:
        return f"{self.module_name}.{self.tensor_name}" if self.module_name else self.tensor_name

    @property
    def latent(self) -> nn.Parameter:
        return self.module.parametrizations[self.tensor_name].original

    def rows(self) -> Tensor:
        """Latents as ``(slices, width)`` rows, the layout of the decoder and density."""
        return self.latent.reshape(-1, self.group.width)

    @property
    def is_weight(self) -> bool:
        return self.tensor_name == "weight"


def latent_tensors(model: nn.Module) -> list[LatentTensor]:
    """Every reparameterised tensor of ``model``, in module order."""
    found = []
    for module_name, module in model.named_modules():
        if not parametrize.is_parametrized(module):
            continue
        for tensor_name, plist in module.parametrizations.items():
            if isinstance(plist[0], LatentWeight):
                found.append(LatentTensor(module_name, tensor_name, module, plist[0].group))
    return found


def latent_groups(model: nn.Module) -> dict[str, LatentGroup]:
    """The model's groups by name, in first-use order."""
    return {t.group.name: t.group for t in latent_tensors(model)}


def is_reparameterized(model: nn.Module) -> bool:
    return bool(latent_tensors(model))


def default_group_name(module: nn.Module) -> str:
    """``conv3x3``, ``conv1x1``, ``conv7x7``, ``conv1x7``... for convs, ``dense`` for linear layers."""
    if isinstance(module, nn.Linear):
        return "dense"
    return "conv" + "x".join(str(k) for k in module.kernel_size)


def _slice_width(module: nn.Module) -> int:
    return 1 if isinstance(module, nn.Linear) else math.prod(module.kernel_size)


def _fan_out(module: nn.Module) -> int:
    """He fan-out of a layer's weight: outputs each input reaches (a grouped conv's out_channels / groups)."""
    if isinstance(module, nn.Linear):
        return module.out_features
    return module.out_channels // module.groups * math.prod(module.kernel_size)


def _init_fans(model: nn.Module, modules: list[nn.Module], output_init: str = "lecun") -> dict[nn.Module, int]:
    """Per layer of ``modules`` the fan F of the variance 2 / F its decoded weights start with: its fan-out (He),
    except, with ``output_init="lecun"``, the model's output layers (:func:`output_layers`): 2 x fan-in, i.e.
    variance 1 / fan-in (LeCun). He's rule assumes a ReLU follows; on MobileNetV2's 1280-wide head it started the
    logits at std 10 (loss 16, 49 % after one epoch against 90 % with the output layer at 1 / fan-in)."""
    outputs = output_layers(model) if output_init == "lecun" else []
    return {module: 2 * module.in_features if module in outputs else _fan_out(module) for module in modules}


def output_layers(model: nn.Module) -> list[nn.Linear]:
    """The linear layers whose outputs are ``model``'s: timm's ``get_classifier()`` (a tuple for two-headed
    models), else those its traced graph reaches walking back from the output through parameter-free operations
    (the last ``nn.Linear`` it registers where fx cannot trace it)."""
    if callable(getattr(model, "get_classifier", None)):
        heads = model.get_classifier()
        return [h for h in (heads if isinstance(heads, tuple) else (heads,)) if isinstance(h, nn.Linear)]
    try:
        graph = Tracer().trace(model)
    except Exception:  # dynamic control flow and the like
        return [m for m in model.modules() if isinstance(m, nn.Linear)][-1:]
    modules = dict(model.named_modules())
    found: list[nn.Linear] = []
    stack, seen = [n for n in graph.nodes if n.op == "output"], set()
    while stack:
        node = stack.pop()
        if node in seen:
            continue
        seen.add(node)
        module = modules.get(node.target) if node.op == "call_module" else None
        if isinstance(module, nn.Linear):
            found.append(module)
        elif module is None or not any(True for _ in module.parameters()):  # e.g. flatten, pooling, dropout
            stack.extend(node.all_input_nodes)
    return found


def _select_layers(
    model: nn.Module, exclude: Iterable[str], group_overrides: dict[str, str], layer_policy: LayerPolicy | None,
    fan_out_split: float | None = None, with_fans: bool = True, output_init: str = "lecun",
) -> tuple[list[tuple[str, nn.Module, str, str]], dict[nn.Module, int]]:
    """(name, module, group name, group name before any fan-out split) of every layer to compress, and its
    initialisation fan (:func:`_init_fans`) where ``with_fans`` or a fan-out split needs it."""
    patterns = tuple(exclude)
    chosen = []
    named: set[str] = set()  # groups that a policy or an override named
    for name, module in model.named_modules():
        if not isinstance(module, (nn.Linear, nn.modules.conv._ConvNd)):
            continue
        if isinstance(module, nn.modules.conv._ConvTransposeNd):
            continue
        if any(fnmatch.fnmatchcase(name, p) for p in patterns):
            continue
        decision = layer_policy(name, module) if layer_policy else None
        if decision is False:
            continue
        override = next((g for p, g in group_overrides.items() if fnmatch.fnmatchcase(name, p)), None)
        group = override or (decision if isinstance(decision, str) else default_group_name(module))
        if override or isinstance(decision, str):
            named.add(group)
        chosen.append((name, module, group))
    splits = fan_out_split is not None and any(group not in named for _, _, group in chosen)
    fans = _init_fans(model, [m for _, m, _ in chosen], output_init) if with_fans or splits else {}
    split = {} if not splits else _fan_out_groups(
        [(g, fans[m]) for _, m, g in chosen if g not in named], fan_out_split)
    return [(name, module, split.get((group, fans.get(module)), group), group)
            for name, module, group in chosen], fans


def _fan_out_groups(members: list[tuple[str, int]], ratio: float) -> dict[tuple[str, int], str]:
    """(group, initialisation fan) -> group name, so that no group's fans differ by more than ``ratio``.

    The widest layers keep the group's name; each further cluster, from the widest remaining fan F down to
    F / ``ratio``, is named ``<group>_fo<F>``. With one decoder per group calibrated on its widest layer, every
    layer's latents then start within [b / sqrt(ratio), b] (one shared decoder scale puts a layer of fan-out
    F at ``b * sqrt(F_max / F)``: ±43 for MobileNetV2's narrowest 1x1 convs).
    """
    fans: dict[str, set[int]] = {}
    for group, fan in members:
        fans.setdefault(group, set()).add(fan)
    names = {}
    for group, values in fans.items():
        ordered = sorted(values, reverse=True)
        head = ordered[0]
        for fan in ordered:
            if fan * ratio < head:
                head = fan
            names[(group, fan)] = group if head == ordered[0] else f"{group}_fo{head}"
    return names


def reparameterize(
    model: nn.Module,
    *,
    init: str = "scratch",
    structure: str = "slice",
    compress_bias: bool = True,
    exclude: Iterable[str] = (),
    group_overrides: dict[str, str] | None = None,
    layer_policy: LayerPolicy | None = None,
    density_filters: tuple[int, ...] = (3, 3, 3),
    latent_bound: float = LATENT_BOUND_B,
    decoder_forms: dict[str, str] | None = None,
    fan_out_split: float | None = FAN_OUT_SPLIT,
    output_init: str = "lecun",
    initialize: bool = True,
) -> nn.Module:
    """Turn ``model`` into a LilNetX model in place and return it.

    ``init="scratch"`` draws decoders and latents as docs/method.md says (decoded weights of He variance, the output
    layer's of variance 1 / fan-in with the default ``output_init``: :func:`_init_fans`);
    ``init="fit"`` keeps the current (trained) weights: decoders become scaled identities and latents
    ``W / step``; the relative RMS fit error is stored in ``model.lilnetx_config["fit_error"]``.
    ``exclude`` holds fnmatch patterns of module names left uncompressed; ``group_overrides`` maps module-name
    patterns to group names (e.g. ``{"fc2": "classifier"}`` gives the classifier its own decoder and
    density instead of sharing ``dense`` with the large hidden layers). ``layer_policy(name, module)``
    may return ``False`` (leave the layer alone), a group name, or ``None`` (default grouping).
    ``structure`` picks the structured prior's unit: ``slice`` (K x K kernel), ``channel`` or ``filter``.
    ``latent_bound`` is b of docs/method.md: the widest layer's latents start in about [-b, b] (keep it >= ~0.5:
    below that every latent rounds to zero and no gradient reaches the weights). ``decoder_forms`` maps
    group names to a decoder form, ``full`` (default), ``diagonal`` or ``scalar``, e.g.
    ``{"conv5x5": "diagonal"}``: 25 stored values instead of 625 (a split group ``conv1x1_fo48`` takes
    ``conv1x1``'s form unless named itself). ``fan_out_split`` splits a kernel-shape group whose layers'
    initialisation fans (:func:`_init_fans`) differ by more than this factor into groups ``<group>_fo<F>`` (its
    widest layers keep the name), so every layer's latents start within [b / sqrt(fan_out_split), b];
    ``None`` keeps one group per kernel shape, as before (a layer of fan-out F then starts in about
    ±b·sqrt(F_max / F)). Groups named by ``group_overrides`` or the layer policy are never split.
    ``output_init="he"`` starts the output layer at He fan-out variance like every other layer instead of
    1 / fan-in (the zoo's LeNets and MNIST ResNet-20s were trained that way).
    ``initialize=False`` leaves decoders and latents as they come (for a state loaded next, as
    :func:`lilnetx.load` does) and skips what only initialisation needs (finding the output layer traces the
    model); ``init`` is still recorded.
    """
    if fan_out_split is not None and not fan_out_split >= 1:
        raise ReparamError(f"fan_out_split must be a factor >= 1 (or None to keep one group per kernel shape), "
                           f"got {fan_out_split!r}")
    if init not in INITS:
        raise ReparamError(f"unknown init {init!r}; choose one of {INITS}")
    if output_init not in OUTPUT_INITS:
        raise ReparamError(f"unknown output_init {output_init!r}; choose one of {OUTPUT_INITS}")
    if structure not in STRUCTURES:
        raise ReparamError(f"unknown structure {structure!r}; choose one of {STRUCTURES}")
    if is_reparameterized(model):
        raise ReparamError("model is already reparameterised; build a fresh model to reparameterise again")
    group_overrides = dict(group_overrides or {})
    decoder_forms = dict(decoder_forms or {})
    start = init if initialize else None  # how decoders and latents start: drawn, fitted, or left as built
    layers, fans = _select_layers(model, exclude, group_overrides, layer_policy, fan_out_split,
                                  with_fans=start == "scratch", output_init=output_init)
    if not layers:
        raise ReparamError("no Conv or Linear layer left to compress (check `exclude` and the layer policy)")
    unknown = sorted(set(decoder_forms) - {g for layer in layers for g in layer[2:]}
                     - ({"bias"} if compress_bias else set()))
    if unknown:
        raise ReparamError(f"decoder_forms names group(s) {unknown} that this model does not have; its groups: "
                           f"{sorted({g for _, _, g, _ in layers})}")

    groups: dict[str, LatentGroup] = {}
    members: dict[str, list[tuple[nn.Module, str]]] = {}
    for name, module, group_name, unsplit_name in layers:
        width = _slice_width(module)
        if group_name not in groups:
            form = decoder_forms.get(group_name, decoder_forms.get(unsplit_name, "full"))
            groups[group_name] = LatentGroup(group_name, width, density_filters, form)
        group = groups[group_name]
        if group.width != width:
            raise ReparamError(
                f"layer {name!r} has slices of {width} values but group {group_name!r} has {group.width}; "
                "a group holds one kernel shape"
            )
        members.setdefault(group_name, []).append((module, "weight"))
        if compress_bias and module.bias is not None:
            groups.setdefault("bias", LatentGroup("bias", 1, density_filters))
            members.setdefault("bias", []).append((module, "bias"))

    device = next(model.parameters()).device
    fit_errors: list[float] = []
    for group_name, group in groups.items():
        group.to(device)
        if start == "fit":
            _init_fit_decoder(group, [getattr(module, tensor_name) for module, tensor_name in members[group_name]])
        elif start == "scratch":
            _init_scratch_decoder(group, [fans[module] for module, _ in members[group_name]], latent_bound)
        for module, tensor_name in members[group_name]:
            original = getattr(module, tensor_name).detach().clone() if start == "fit" else None
            parametrize.register_parametrization(module, tensor_name, LatentWeight(group))
            _step_weight_shortcut(module, tensor_name)
            latent = module.parametrizations[tensor_name].original
            with torch.no_grad():
                if start == "scratch":
                    latent.copy_(_scratch_latent(group, latent, fans[module], tensor_name, latent_bound))
                elif start == "fit":
                    fit_errors.append(_relative_error(getattr(module, tensor_name), original))
    config = {"init": init, "structure": structure, "compress_bias": compress_bias,
              "exclude": list(exclude), "group_overrides": group_overrides,
              "density_filters": list(density_filters)}
    if decoder_forms:
        config["decoder_forms"] = decoder_forms
    if output_init != "lecun":
        config["output_init"] = output_init
    if fit_errors:
        config["fit_error"] = max(fit_errors)
    model.lilnetx_config = config
    return model


def _step_weight_shortcut(module: nn.Module, tensor_name: str) -> None:
    """Give the module's parametrized class a getter for ``tensor_name`` that returns the step's decoded weight
    directly while one is set (``LatentWeight.use_step_weight``), and otherwise defers to torch's getter.

    torch's getter calls the ``ParametrizationList`` and the ``LatentWeight`` as modules and probes for a second
    parametrization with a failing attribute lookup: inside training steps MobileNetV2-0.5's 54 tensors cost
    ~1 ms a forward pass that way. A tensor with more than one parametrization always takes torch's getter. While a
    step weight is set, module hooks on the parametrization modules do not fire for the access, and an active
    ``parametrize.cached()`` returns the step weight, which is what it would have cached."""
    torch_property = type(module).__dict__[tensor_name]

    def get(self: nn.Module) -> Tensor:
        if torch.jit.is_scripting():  # torch's own error: parametrizations do not script (``strip`` first)
            raise RuntimeError("Parametrization is not working with scripting.")
        chain = self._modules["parametrizations"]._modules[tensor_name]._modules
        step_weight = chain["0"].step_weight if len(chain) == 1 else None
        return step_weight if step_weight is not None else torch_property.fget(self)

    setattr(type(module), tensor_name, property(get, torch_property.fset))


def _init_scratch_decoder(group: LatentGroup, fans: list[int], b: float) -> None:
    """docs/method.md: decoder ~ N(0, var) calibrated so the latents of the layer with the widest initialisation fan
    span about [-b, b]."""
    with torch.no_grad():
        if group.name == "bias":
            group.decoder.fill_(1 / 64)
            return
        fan_ref = max(fans)
        var = 24 / (fan_ref * group.width * ((2 * b + 1) ** 2 - 1))
        if group.width == 1 or group.form != "full":  # one scale per output: the gain of a full column
            group.decoder.fill_(math.sqrt(var * group.width))
        else:
            group.decoder.normal_(0.0, math.sqrt(var))


def _scratch_latent(group: LatentGroup, latent: Tensor, fan: int, tensor_name: str, b: float) -> Tensor:
    """Latents ~ U(-B, B) with B chosen so the decoded weights have variance 2 / ``fan`` (:func:`_init_fans`)."""
    if tensor_name == "bias":
        return torch.zeros_like(latent)
    gain = group.matrix().detach().pow(2).sum(0).mean().item()  # variance of a decoded weight per unit latent
    bound = (math.sqrt(24 / (gain * fan) + 1) - 1) / 2
    return torch.empty_like(latent).uniform_(-bound, bound)


def _init_fit_decoder(group: LatentGroup, tensors: list[Tensor]) -> None:
    """Decoder = step * I, with the step a fixed fraction of the group's weight RMS."""
    rms = torch.sqrt(torch.mean(torch.cat([t.detach().flatten() for t in tensors]).pow(2))).item()
    with torch.no_grad():
        group.set_scaled_identity((rms or 1.0) / FIT_LEVELS_PER_STD)


def _relative_error(decoded: Tensor, target: Tensor) -> float:
    scale = target.pow(2).mean().sqrt().item() or 1.0
    return (decoded.detach() - target).pow(2).mean().sqrt().item() / scale


def load_latent_state(model: nn.Module, state: dict[str, Tensor]) -> None:
    """``model.load_state_dict(state)`` for a reparameterised model, refusing a ``state`` grouped otherwise.

    A latent group's decoder and density are one module shared by its layers, saved under every member's key;
    loading keeps the last copy, so a checkpoint whose layers were grouped differently (another lilnetx version or
    ``fan_out_split``) would load silently wrong. Copies that one group of ``model`` holds must agree in ``state``."""
    first: dict[int, str] = {}
    for key, tensor in model.state_dict(keep_vars=True).items():
        other = first.setdefault(id(tensor), key)
        if other != key and key in state and other in state and not torch.equal(state[key], state[other]):
            raise ReparamError(f"the checkpoint's latent groups differ from this model's: {other!r} and {key!r} share "
                               "a group here but not in the checkpoint (it was trained with another grouping, e.g. "
                               "another lilnetx version or fan_out_split); load it with the version that wrote it")
    model.load_state_dict(state)


def strip(model: nn.Module) -> nn.Module:
    """Replace every latent parametrization by its decoded weight, in place: a plain PyTorch model.

    Done by hand rather than with ``parametrize.remove_parametrizations``, which deletes the property from
    the parametrized class that deep copies of the model share, breaking the other copies.
    """
    modules = {id(t.module): t.module for t in latent_tensors(model)}
    for module in modules.values():
        decoded = {name: getattr(module, name).detach().clone() for name in module.parametrizations}
        module.__class__ = module.__class__.__bases__[0]
        del module._modules["parametrizations"]
        for name, value in decoded.items():
            module.register_parameter(name, nn.Parameter(value))
    if hasattr(model, "lilnetx_config"):
        del model.lilnetx_config
    return model
