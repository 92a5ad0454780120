"""``slim(model)``: a plain, smaller PyTorch model with the same outputs.

1. BatchNorm that directly follows a convolution (and nothing else reads the convolution's output) is
   folded into it (exact up to float rounding; timm's ``BatchNormAct2d`` leaves its activation behind).
2. Channels are removed where that cannot change any output. The model is traced with ``torch.fx``; every
   tensor with a channel dimension belongs to a *channel space*, the set of tensors that must keep the same
   channels: element-wise ops, pooling, BatchNorm and depthwise convolutions keep the space, and an
   addition or multiplication of two tensors joins their spaces (residual adds, squeeze-excite gates).
   Channel ``c`` of a space is removed when every layer that reads the space either has only zero weights
   for ``c`` or reads a tensor whose channel ``c`` is identically zero (zero filter and zero bias, passed
   through zero-preserving ops). Every filter, BatchNorm channel, depthwise kernel and linear column of the
   space follows. A space that meets an operation slim does not understand (channel padding, reshapes,
   concatenation, grouped convolutions, unknown layer types, the model's output) keeps all its channels,
   and the types responsible are named in a warning when that left removable channels in place.
   Removal repeats until nothing changes (a removed filter can leave its own inputs unread).
3. ``sparse=True`` then replaces each remaining convolution by a ``lilnetx.sparse_conv.SparseConv2d``, each
   linear layer by a ``lilnetx.sparse_linear.SparseLinear`` and each max pooling by a
   ``lilnetx.pooling.KernelMaxPool2d``, which run the compiled kernel only where it measured faster than
   PyTorch's op on this machine for the input configuration they are called with (measured now on
   ``example_input`` or the default probe, else at the first call; decisions cached per machine), so they are
   never knowingly slower; ReLU and residual additions after a convolution go into its store.

Channel removal needs tensor shapes: they come from ``example_input`` or ``model.pretrained_cfg["input_size"]``;
without either only BatchNorm is folded (with a warning). The slimmed model is checked against the
original on a random input; a mismatch (a bug, never expected) returns the unslimmed copy with a warning.
"""

from __future__ import annotations

import copy
import operator
import warnings
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from lilnetx.channel_graph import (
    ADD_OPS,
    CHANNELWISE_FUNCTIONS,
    CHANNELWISE_METHODS,
    CHANNELWISE_MODULES,
    KNOWN_MODULES,
    MUL_OPS,
    SCALAR_ZERO_PRESERVING,
    ZERO_PRESERVING_FUNCTIONS,
    ZERO_PRESERVING_METHODS,
    ZERO_PRESERVING_MODULES,
    apply_passes,
    is_flatten,
    shape_query,
    trace,
)
from lilnetx.reparam import is_reparameterized, strip

MAX_ROUNDS = 8
CHECK_RTOL = 1e-3  # of the output's largest magnitude: float32 rounding of folded BatchNorm stays far below

def slim(model: nn.Module, *, sparse: bool = False, example_input: Tensor | None = None) -> nn.Module:
    """A plain eval-mode copy of ``model`` with BatchNorm folded and every removable channel removed.

    ``sparse=True`` also runs convolutions with zero K×K slices through the slice-sparse kernel where it
    beats dense. ``example_input`` (a batch) gives the shapes, and with ``sparse=True`` the per-layer timing;
    it defaults to one zero image of ``model.pretrained_cfg["input_size"]``. The input model is not changed.
    """
    source = strip(copy.deepcopy(model)) if is_reparameterized(model) else model
    slimmed = copy.deepcopy(source).eval()
    probe = example_input if example_input is not None else default_input(slimmed)
    traced = _trace(slimmed)
    if traced is None:
        return with_kernels(slimmed, example_input) if sparse else slimmed
    _fold_batchnorm(slimmed, traced)
    if probe is None:
        warnings.warn("slim: no example_input and no model.pretrained_cfg['input_size']: BatchNorm folded, "
                      "no channels removed; pass example_input to remove channels", stacklevel=2)
    else:
        blockers: dict[str, int] = {}
        for _ in range(MAX_ROUNDS):
            traced = _trace(slimmed)
            try:
                if traced is None or not _remove_channels(slimmed, traced, probe, blockers):
                    break
            except Exception as exc:  # a shape or op the analysis trips on: keep what is done, check below
                warnings.warn(f"slim: channel analysis stopped ({type(exc).__name__}: {exc}); the remaining "
                              "channels are kept", stacklevel=2)
                break
        if blockers:
            names = ", ".join(f"{k} ({v} removable channels)" if v else k for k, v in sorted(blockers.items()))
            warnings.warn(f"slim: kept dense around layer types it does not understand: {names}", stacklevel=2)
    if probe is not None and not _same_outputs(source, slimmed, probe):
        warnings.warn("slim: the slimmed model's outputs differ from the original's; returning it unslimmed "
                      "(please report this model)", stacklevel=2)
        slimmed = copy.deepcopy(source).eval()
    return with_kernels(slimmed, example_input if example_input is not None else probe) if sparse else slimmed


def with_kernels(model: nn.Module, example_input: Tensor | None = None) -> nn.Module:
    """``model`` (slimmed, eval mode; changed in place) with its convolutions, linear layers and max pooling run by
    measured kernel layers and ReLU / residual additions fused into the convolutions: step 3 of the module doc.
    With ``example_input`` each layer's form is measured now rather than at the first call."""
    from lilnetx.fuse import fuse_pass
    from lilnetx.measured import MeasuredLayer
    from lilnetx.pooling import pooling_pass
    from lilnetx.sparse_conv import sparsify

    sparsify(model)
    model = apply_passes(model, [fuse_pass, pooling_pass], leaves=(MeasuredLayer,),
                         untraceable="its epilogues and max pooling run unfused in PyTorch")
    if example_input is not None:
        with torch.no_grad():
            model(example_input)
    return model


def default_input(model: nn.Module) -> Tensor | None:
    """One zero image of ``model.pretrained_cfg["input_size"]`` (``None`` without one)."""
    cfg = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None) or {}
    size = cfg.get("input_size") if isinstance(cfg, dict) else None
    param = next(model.parameters(), None)
    if not size:
        return None
    return torch.zeros(1, *size) if param is None else torch.zeros(1, *size, dtype=param.dtype, device=param.device)


@torch.no_grad()
def _same_outputs(reference: nn.Module, slimmed: nn.Module, probe: Tensor) -> bool:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(probe.shape, generator=generator, dtype=probe.dtype).to(probe.device)
    was_training = reference.training
    reference.eval()
    try:
        ref, out = reference(x), slimmed(x)
    finally:
        reference.train(was_training)
    return isinstance(ref, Tensor) and outputs_agree(out, ref, CHECK_RTOL, floor=0.0)


def outputs_agree(out: Any, reference: Tensor, rtol: float, floor: float = 1.0) -> bool:
    """``out`` has ``reference``'s shape and differs from it by at most ``rtol`` of max(``floor``, its largest
    magnitude) (of 1 where both are 0)."""
    if not isinstance(out, Tensor) or out.shape != reference.shape:
        return False
    return float((out - reference).abs().max()) <= rtol * (max(floor, float(reference.abs().max())) or 1.0)


# -- tracing ------------------------------------------------------------------------------------------------

def _trace(model: nn.Module) -> fx.GraphModule | None:
    try:
        return trace(model)
    except Exception as exc:  # data-dependent control flow and the like
        warnings.warn(f"slim: {type(model).__name__} cannot be traced by torch.fx ({type(exc).__name__}: "
                      f"{str(exc).splitlines()[0][:200]}); it is kept dense", stacklevel=3)
        return None


# -- BatchNorm folding --------------------------------------------------------------------------------------

def _foldable_bn(bn: nn.Module) -> bool:
    if not isinstance(bn, nn.BatchNorm2d) or bn.running_mean is None or bn.running_var is None:
        return False
    return type(bn) is nn.BatchNorm2d or (hasattr(bn, "act") and hasattr(bn, "drop"))


@torch.no_grad()
def _fold_batchnorm(model: nn.Module, traced: fx.GraphModule) -> None:
    modules = dict(model.named_modules())
    calls = _call_counts(traced)
    for node in traced.graph.nodes:
        if node.op != "call_module" or type(modules.get(node.target)) is not nn.Conv2d or len(node.users) != 1:
            continue
        (user,) = node.users
        if user.op != "call_module" or calls[node.target] != 1 or calls[user.target] != 1:
            continue
        bn = modules[user.target]
        if not _foldable_bn(bn) or user.args[:1] != (node,):
            continue
        conv = modules[node.target]
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps) if bn.affine else \
            1 / torch.sqrt(bn.running_var + bn.eps)
        shift = (bn.bias if bn.affine else 0) - bn.running_mean * scale
        bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
        conv.weight.copy_(conv.weight * scale.reshape(-1, 1, 1, 1))
        conv.bias = nn.Parameter(bias * scale + shift)
        after = nn.Identity() if type(bn) is nn.BatchNorm2d else nn.Sequential(bn.drop, bn.act)
        _set_module(model, user.target, after)


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, module)


def _call_counts(traced: fx.GraphModule) -> dict[str, int]:
    counts: dict[str, int] = {}
    for node in traced.graph.nodes:
        if node.op == "call_module":
            counts[node.target] = counts.get(node.target, 0) + 1
    return counts


# -- channel analysis ---------------------------------------------------------------------------------------

@dataclass
class _Space:
    """One channel space: tensors that must keep the same channels."""

    size: int
    frozen: bool = False
    blockers: set[str] = field(default_factory=set)


@dataclass
class _Value:
    """What is known of one fx node's tensor: its space, features per channel (after a flatten) and which
    channels are identically zero."""

    space: int
    factor: int
    zero: Tensor


class _Analysis:
    def __init__(self, model: nn.Module, traced: fx.GraphModule):
        self.modules = dict(model.named_modules())
        self.calls = _call_counts(traced)
        self.spaces: list[_Space] = []
        self.parent: list[int] = []
        self.values: dict[fx.Node, _Value] = {}
        # (space, consumer) pairs: which channels the consumer reads, per space
        self.reads: list[tuple[int, Tensor]] = []
        self.layer_spaces: dict[str, tuple[int | None, int | None, int]] = {}  # name: (in, out, factor)
        self.bn_spaces: dict[str, int] = {}
        self.unknown_modules: set[str] = set()  # leaf layer types slim does not understand

    # union-find over spaces
    def new_space(self, size: int) -> int:
        self.spaces.append(_Space(size))
        self.parent.append(len(self.parent))
        return len(self.parent) - 1

    def find(self, s: int) -> int:
        while self.parent[s] != s:
            self.parent[s] = self.parent[self.parent[s]]
            s = self.parent[s]
        return s

    def union(self, a: int, b: int) -> int:
        a, b = self.find(a), self.find(b)
        if a != b:
            self.parent[b] = a
            self.spaces[a].frozen |= self.spaces[b].frozen
            self.spaces[a].blockers |= self.spaces[b].blockers
        return a

    def freeze(self, arg: object, why: str | None) -> None:
        for node in _tensor_nodes(arg):
            value = self.values.get(node)
            if value is not None:
                space = self.spaces[self.find(value.space)]
                space.frozen = True
                if why:
                    space.blockers.add(why)


def _tensor_nodes(arg: object) -> list[fx.Node]:
    nodes: list[fx.Node] = []
    fx.node.map_arg(arg, nodes.append)
    return nodes


def _shape(node: fx.Node) -> tuple[int, ...] | None:
    meta = node.meta.get("tensor_meta")
    return tuple(meta.shape) if meta is not None and hasattr(meta, "shape") else None


def _describe(node: fx.Node, modules: dict[str, nn.Module]) -> str:
    if node.op == "call_module":
        return type(modules[node.target]).__name__
    if node.op == "call_method":
        return f"Tensor.{node.target}"
    return getattr(node.target, "__name__", str(node.target))


def _analyse(model: nn.Module, traced: fx.GraphModule, probe: Tensor) -> _Analysis:
    ShapeProp(traced).propagate(probe)
    a = _Analysis(model, traced)
    for node in traced.graph.nodes:
        if node.op == "placeholder" and _shape(node) is not None and len(_shape(node)) in (2, 4):
            space = a.new_space(_shape(node)[1])
            a.spaces[space].frozen = True  # the model's input keeps its channels
            a.values[node] = _Value(space, 1, torch.zeros(_shape(node)[1], dtype=torch.bool))
            continue
        if node.op in ("placeholder", "get_attr") or shape_query(node):
            continue
        if node.op == "output":
            a.freeze(node.args, None)
            continue
        if not _step(a, node):
            why = _describe(node, a.modules)
            a.freeze((node.args, node.kwargs), why)
            if node.op == "call_module" and not isinstance(a.modules[node.target], KNOWN_MODULES):
                a.unknown_modules.add(why)
            shape = _shape(node)
            if shape is not None and len(shape) in (2, 4):  # a fresh, frozen space: analysis goes on after it
                space = a.new_space(shape[1])
                a.spaces[space].frozen = True
                a.spaces[space].blockers.add(why)
                a.values[node] = _Value(space, 1, torch.zeros(shape[1], dtype=torch.bool))
    return a


def _channel_value(a: _Analysis, node: fx.Node) -> _Value | None:
    """The analysed tensor of ``node`` (4-D maps or 2-D features), else ``None``."""
    value = a.values.get(node) if isinstance(node, fx.Node) else None
    shape = _shape(node) if isinstance(node, fx.Node) else None
    return value if value is not None and shape is not None and len(shape) in (2, 4) else None


def _step(a: _Analysis, node: fx.Node) -> bool:
    """Record ``node``'s output value; ``False`` when slim does not understand it."""
    args = node.args
    x = args[0] if args else None
    if node.op == "call_module":
        module = a.modules[node.target]
        if a.calls[node.target] != 1:
            return False  # a module called twice would need two different slimmings
        if type(module) is nn.Conv2d:
            return _conv(a, node, module)
        if type(module) is nn.Linear:
            return _linear(a, node, module)
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            return _batchnorm(a, node, module)
        if isinstance(module, nn.Flatten):
            return _flatten(a, node, x, module.start_dim, module.end_dim)
        if isinstance(module, nn.Sequential) and len(module) == 0:
            return _passthrough(a, node, x, zero_preserving=True)
        if isinstance(module, ZERO_PRESERVING_MODULES + CHANNELWISE_MODULES):
            return _passthrough(a, node, x, zero_preserving=isinstance(module, ZERO_PRESERVING_MODULES))
        return False
    if node.op == "call_function":
        target = node.target
        if target in ZERO_PRESERVING_FUNCTIONS or target in CHANNELWISE_FUNCTIONS:
            return _passthrough(a, node, x, zero_preserving=target in ZERO_PRESERVING_FUNCTIONS)
        if target in ADD_OPS or target in MUL_OPS or target in SCALAR_ZERO_PRESERVING:
            return _binary(a, node, target)
        if target is torch.flatten:
            return _flatten(a, node, x, _arg(node, 1, "start_dim", 0), _arg(node, 2, "end_dim", -1))
        if target is torch.mean:
            return _mean(a, node, x, _arg(node, 1, "dim", None), _arg(node, 2, "keepdim", False))
        if target is operator.getitem:
            return _getitem(a, node, x, args[1] if len(args) > 1 else None)
        if target is F.pad:
            pad = _arg(node, 1, "pad", ())
            value = _arg(node, 3, "value", None)
            return len(pad) <= 4 and not value and _passthrough(a, node, x, zero_preserving=True)
        return False
    if node.op == "call_method":
        if node.target in ZERO_PRESERVING_METHODS or node.target in CHANNELWISE_METHODS:
            return _passthrough(a, node, x, zero_preserving=node.target in ZERO_PRESERVING_METHODS)
        if node.target == "flatten":
            return _flatten(a, node, x, _arg(node, 1, "start_dim", 0), _arg(node, 2, "end_dim", -1))
        if is_flatten(node, a.modules):  # x.view(x.size(0), -1), x.reshape(...): as dead_paths reads them
            return _flatten(a, node, x, 1, -1)
        if node.target == "mean":
            return _mean(a, node, x, _arg(node, 1, "dim", None), _arg(node, 2, "keepdim", False))
        if node.target in ("add", "add_", "mul", "mul_"):
            return _binary(a, node, operator.add if node.target.startswith("add") else operator.mul)
        return False
    return False


def _arg(node: fx.Node, index: int, name: str, default: object) -> object:
    return node.args[index] if len(node.args) > index else node.kwargs.get(name, default)


def _passthrough(a: _Analysis, node: fx.Node, x: object, *, zero_preserving: bool) -> bool:
    value = _channel_value(a, x)
    if value is None or _shape(node) is None or _shape(node)[:2] != _shape(x)[:2]:
        return False
    zero = value.zero if zero_preserving else torch.zeros_like(value.zero)
    a.values[node] = _Value(value.space, value.factor, zero)
    return True


def _binary(a: _Analysis, node: fx.Node, op: object) -> bool:
    left, right = (node.args + (None, None))[:2]
    lv, rv = _channel_value(a, left), _channel_value(a, right)
    tensors = [n for n in (left, right) if isinstance(n, fx.Node)]
    if len(tensors) == 1 and lv is not None and not isinstance(right, fx.Node):
        # tensor (op) scalar: per channel; zero-preserving for mul / div
        return _passthrough(a, node, left, zero_preserving=op in SCALAR_ZERO_PRESERVING)
    if len(tensors) == 1 and rv is not None and not isinstance(left, fx.Node) and op in MUL_OPS | ADD_OPS:
        return _passthrough(a, node, right, zero_preserving=op in MUL_OPS)
    if lv is None or rv is None or op not in ADD_OPS | MUL_OPS or lv.factor != rv.factor:
        return False
    out_shape = _shape(node)
    if out_shape is None or out_shape[:2] != _shape(left)[:2] or _shape(left)[:2] != _shape(right)[:2]:
        return False
    space = a.union(lv.space, rv.space)
    zero = lv.zero & rv.zero if op in ADD_OPS else lv.zero | rv.zero
    a.values[node] = _Value(space, lv.factor, zero)
    return True


def _flatten(a: _Analysis, node: fx.Node, x: object, start: object, end: object) -> bool:
    value = _channel_value(a, x)
    in_shape = _shape(x) if isinstance(x, fx.Node) else None
    if value is None or in_shape is None or start != 1 or end not in (-1, len(in_shape) - 1):
        return False
    factor = value.factor
    for s in in_shape[2:]:
        factor *= s
    a.values[node] = _Value(value.space, factor, value.zero)
    return True


def _mean(a: _Analysis, node: fx.Node, x: object, dim: object, keepdim: object) -> bool:
    value = _channel_value(a, x)
    in_shape = _shape(x) if isinstance(x, fx.Node) else None
    if value is None or in_shape is None or len(in_shape) != 4 or value.factor != 1 or dim is None:
        return False
    dims = {d % 4 for d in (dim if isinstance(dim, (tuple, list)) else (dim,))}
    if dims != {2, 3}:
        return False
    a.values[node] = _Value(value.space, 1, value.zero)
    return True


def _getitem(a: _Analysis, node: fx.Node, x: object, index: object) -> bool:
    """Spatial slicing ``x[:, :, a:b:s, c:d:t]`` keeps the channels."""
    value = _channel_value(a, x)
    if value is None or not isinstance(index, tuple) or len(index) < 2:
        return False
    full = slice(None)
    if index[0] != full or index[1] != full or not all(isinstance(i, slice) for i in index):
        return False
    return _passthrough(a, node, x, zero_preserving=True)


def _layer_zero(module: nn.Module) -> Tensor:
    """Output channels of a conv / linear layer that are identically zero (zero filter, zero bias)."""
    weight = module.weight.detach()
    zero = weight.reshape(weight.shape[0], -1).eq(0).all(dim=1)
    if module.bias is not None:
        zero &= module.bias.detach().eq(0)
    return zero


def _conv(a: _Analysis, node: fx.Node, conv: nn.Conv2d) -> bool:
    value = _channel_value(a, node.args[0] if node.args else None)
    if value is None or value.factor != 1 or len(node.args) != 1 or node.kwargs:
        return False
    weight = conv.weight.detach()
    if conv.groups == 1:
        reads = weight.ne(0).flatten(2).any(dim=2).any(dim=0)  # (in,)
        a.reads.append((value.space, reads & ~value.zero))
        out = a.new_space(conv.out_channels)
        a.values[node] = _Value(out, 1, _layer_zero(conv))
        a.layer_spaces[node.target] = (value.space, out, 1)
        return True
    if conv.groups == conv.in_channels == conv.out_channels:  # depthwise: channel c only feeds channel c
        zero = (value.zero | weight.flatten(1).eq(0).all(dim=1))
        if conv.bias is not None:
            zero &= conv.bias.detach().eq(0)
        a.values[node] = _Value(value.space, 1, zero)
        a.layer_spaces[node.target] = (value.space, value.space, 1)
        return True
    return False  # grouped (not depthwise): kept as it is


def _linear(a: _Analysis, node: fx.Node, linear: nn.Linear) -> bool:
    value = _channel_value(a, node.args[0] if node.args else None)
    if value is None or len(_shape(node.args[0])) != 2 or len(node.args) != 1 or node.kwargs:
        return False
    blocks = linear.weight.detach().reshape(linear.out_features, -1, value.factor)
    if blocks.shape[1] != a.spaces[a.find(value.space)].size:
        return False
    a.reads.append((value.space, blocks.ne(0).any(dim=2).any(dim=0) & ~value.zero))
    out = a.new_space(linear.out_features)
    a.values[node] = _Value(out, 1, _layer_zero(linear))
    a.layer_spaces[node.target] = (value.space, out, value.factor)
    return True


def _batchnorm(a: _Analysis, node: fx.Node, bn: nn.Module) -> bool:
    value = _channel_value(a, node.args[0] if node.args else None)
    plain = type(bn) in (nn.BatchNorm1d, nn.BatchNorm2d)
    timm_act = isinstance(bn, nn.BatchNorm2d) and hasattr(bn, "act") and hasattr(bn, "drop")
    if value is None or value.factor != 1 or not (plain or timm_act) or bn.running_mean is None:
        return False
    a.values[node] = _Value(value.space, 1, torch.zeros_like(value.zero))  # shift makes zeros non-zero
    a.bn_spaces[node.target] = value.space
    return True


# -- applying the removal -----------------------------------------------------------------------------------

def _keep_masks(a: _Analysis, blocked: dict[str, int]) -> dict[int, Tensor]:
    """Per root space with something to remove: the channels to keep. ``blocked`` gains the unknown
    operations that kept removable channels in place, and every unknown layer (module) type."""
    needed: dict[int, Tensor] = {}
    for space, reads in a.reads:
        root = a.find(space)
        needed[root] = needed.get(root, torch.zeros_like(reads)) | reads
    keep: dict[int, Tensor] = {}
    for name in a.unknown_modules:
        blocked.setdefault(name, 0)
    for root, mask in needed.items():
        space = a.spaces[root]
        removable = int((~mask).sum())
        if not removable or int(mask.sum()) == 0:
            continue  # nothing to remove, or everything: keep at least the shape
        if space.frozen:
            for name in space.blockers:
                blocked[name] = max(blocked.get(name, 0), removable)
            continue
        keep[root] = mask
    return keep


@torch.no_grad()
def _remove_channels(model: nn.Module, traced: fx.GraphModule, probe: Tensor, blocked: dict[str, int]) -> bool:
    """One round of channel removal; whether anything was removed."""
    a = _analyse(model, traced, probe)
    keep = _keep_masks(a, blocked)
    if not keep:
        return False

    def mask(space: int | None) -> Tensor | None:
        return keep.get(a.find(space)) if space is not None else None

    for name, (in_space, out_space, factor) in a.layer_spaces.items():
        module = a.modules[name]
        kin, kout = mask(in_space), mask(out_space)
        if kin is None and kout is None:
            continue
        if isinstance(module, nn.Conv2d):
            _set_module(model, name, _sliced_conv(module, kin, kout))
        else:
            _set_module(model, name, _sliced_linear(module, kin, kout, factor))
    for name, space in a.bn_spaces.items():
        k = mask(space)
        if k is not None:
            _slice_batchnorm(a.modules[name], k)
    return True


def _sliced_conv(conv: nn.Conv2d, kin: Tensor | None, kout: Tensor | None) -> nn.Conv2d:
    weight, bias = conv.weight.detach(), conv.bias
    depthwise = conv.groups > 1
    if depthwise:  # same space in and out
        kin = kout = kin if kin is not None else kout
    if kout is not None:
        weight = weight[kout]
        bias = bias[kout] if bias is not None else None
    if kin is not None and not depthwise:
        weight = weight[:, kin]
    out_ch = weight.shape[0]
    new = nn.Conv2d(weight.shape[1] * (out_ch if depthwise else 1), out_ch, conv.kernel_size, conv.stride,
                    conv.padding, conv.dilation, out_ch if depthwise else 1, bias is not None, conv.padding_mode,
                    device=weight.device, dtype=weight.dtype)
    new.weight.copy_(weight)
    if bias is not None:
        new.bias.copy_(bias.detach())
    return new


def _sliced_linear(linear: nn.Linear, kin: Tensor | None, kout: Tensor | None, factor: int) -> nn.Linear:
    weight, bias = linear.weight.detach(), linear.bias
    if kout is not None:
        weight = weight[kout]
        bias = bias[kout] if bias is not None else None
    if kin is not None:
        weight = weight.reshape(weight.shape[0], -1, factor)[:, kin].reshape(weight.shape[0], -1)
    new = nn.Linear(weight.shape[1], weight.shape[0], bias is not None, device=weight.device, dtype=weight.dtype)
    new.weight.copy_(weight)
    if bias is not None:
        new.bias.copy_(bias.detach())
    return new


def _slice_batchnorm(bn: nn.Module, keep: Tensor) -> None:
    for name in ("weight", "bias"):
        p = getattr(bn, name, None)
        if p is not None:
            setattr(bn, name, nn.Parameter(p.detach()[keep].clone(), requires_grad=p.requires_grad))
    for name in ("running_mean", "running_var"):
        b = getattr(bn, name, None)
        if b is not None:
            setattr(bn, name, b[keep].clone())
    bn.num_features = int(keep.sum())
