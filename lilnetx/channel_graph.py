"""The channel graph of a model: one ``torch.fx`` tracer and one table of channel-wise operations, queried by
``lilnetx.slim`` (channel removal) and ``lilnetx.dead_paths`` (dead-path zeroing).

The tracer keeps torch.nn modules, every BatchNorm (timm's ``BatchNormAct2d`` included) and timm's
untraceable modules as leaves and traces through the rest. The table says which operations act on each
channel alone (so a channel keeps its identity through them) and which of those also map zero to zero (so an
all-zero channel stays all-zero). :func:`is_flatten` is the one rule for flattening: ``nn.Flatten``,
``torch.flatten`` / ``x.flatten(1)`` and ``x.view(x.size(0), -1)`` / ``x.reshape(n, -1)``.
"""

from __future__ import annotations

import operator
import sys
import warnings
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import fx, nn

ZERO_PRESERVING_MODULES = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.Hardswish, nn.SiLU, nn.GELU, nn.Tanh, nn.ELU,
                           nn.Mish, nn.Hardtanh, nn.Identity, nn.Dropout, nn.Dropout2d, nn.MaxPool2d,
                           nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)
CHANNELWISE_MODULES = (nn.Sigmoid, nn.Hardsigmoid)  # per-channel but f(0) != 0
ZERO_PRESERVING_FUNCTIONS = {F.relu, torch.relu, F.relu_, torch.relu_, F.relu6, F.hardswish, F.silu, F.gelu,
                             F.leaky_relu, torch.tanh, F.hardtanh, F.elu, F.mish, F.dropout, F.max_pool2d,
                             F.avg_pool2d, F.adaptive_avg_pool2d, F.adaptive_max_pool2d}
CHANNELWISE_FUNCTIONS = {torch.sigmoid, F.sigmoid, F.hardsigmoid}
ZERO_PRESERVING_METHODS = {"relu", "relu_", "tanh", "contiguous", "clone", "hardswish"}
CHANNELWISE_METHODS = {"sigmoid", "sigmoid_"}
KNOWN_MODULES = (nn.Conv2d, nn.Linear, nn.Flatten, nn.modules.batchnorm._BatchNorm, nn.Sequential,
                 *ZERO_PRESERVING_MODULES, *CHANNELWISE_MODULES)
ADD_OPS = {operator.add, operator.iadd, torch.add}
MUL_OPS = {operator.mul, operator.imul, torch.mul}
SCALAR_ZERO_PRESERVING = {operator.mul, operator.imul, torch.mul, operator.truediv, operator.itruediv}
SCALAR_CHANNELWISE = {operator.add, operator.iadd, torch.add, operator.sub, operator.isub}
KEEP_ATTRIBUTES = ("pretrained_cfg", "default_cfg", "lilnetx_config", "lilnetx_header")  # survive a rewrite


class Tracer(fx.Tracer):
    """The project's tracer (see the module doc); ``leaves``: more module types to keep as single calls."""

    def __init__(self, leaves: tuple[type[nn.Module], ...] = ()):
        super().__init__()
        self.leaves = leaves

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        if isinstance(m, (nn.modules.batchnorm._BatchNorm, *self.leaves)) or _timm_notrace(m):
            return True
        return super().is_leaf_module(m, qualname)


def rewritten(model: nn.Module, graph: fx.Graph) -> fx.GraphModule:
    """``model``'s modules running ``graph`` (a rewrite of its trace), with ``model``'s metadata attributes
    (timm's ``pretrained_cfg`` and LilNetX's own) and training mode."""
    result = fx.GraphModule(model, graph, class_name=type(model).__name__)
    for name in KEEP_ATTRIBUTES:
        if hasattr(model, name):
            setattr(result, name, getattr(model, name))
    return result.train(model.training)


GraphPass = Callable[[fx.GraphModule], int]  # edits a traced model's graph in place; returns how many rewrites


def apply_passes(model: nn.Module, passes: Sequence[GraphPass], leaves: tuple[type[nn.Module], ...] = (),
                 untraceable: str | None = None) -> nn.Module:
    """``model`` traced once and rewritten by each of ``passes`` in turn, as a ``GraphModule`` sharing its modules;
    ``model`` itself where no pass rewrote anything or fx cannot trace it (then, with ``untraceable``, a warning
    naming what stays undone, attributed to the caller's caller)."""
    try:
        graph = Tracer(leaves).trace(model)
    except Exception as exc:  # dynamic control flow and the like: leave the model as it is
        if untraceable:
            warnings.warn(f"torch.fx cannot trace {type(model).__name__} ({type(exc).__name__}): {untraceable}",
                          stacklevel=3)
        return model
    result = rewritten(model, graph)
    if not sum(graph_pass(result) for graph_pass in passes):
        return model
    result.graph.eliminate_dead_code()
    result.recompile()
    return result


def _timm_notrace(m: nn.Module) -> bool:
    if "timm" not in sys.modules:  # nothing can be registered with timm before it is imported (saves ~2 s)
        return False
    try:
        from timm.models._features_fx import is_notrace_module
    except ImportError:  # timm not installed or reorganised: trace everything
        return False
    return bool(is_notrace_module(type(m)))


def trace(model: nn.Module) -> fx.GraphModule:
    """``model`` as a ``GraphModule`` traced by :class:`Tracer`; raises whatever tracing raises."""
    return fx.GraphModule(model, Tracer().trace(model))


def zero_preserving(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    """Whether ``node`` acts on each channel alone and maps an all-zero channel to an all-zero channel."""
    if node.op == "call_module":
        return isinstance(modules.get(node.target), ZERO_PRESERVING_MODULES)
    if node.op == "call_function":
        return node.target in ZERO_PRESERVING_FUNCTIONS
    return node.op == "call_method" and node.target in ZERO_PRESERVING_METHODS


def shape_query(node: fx.Node) -> bool:
    """``x.size()``, ``x.dim()``, ``x.shape``, ``x.ndim`` (and an index into them): they read no channel values."""
    if node.op == "call_method":
        return node.target in ("size", "dim")
    if node.op == "call_function" and node.target is operator.getitem:
        return isinstance(node.args[0], fx.Node) and shape_query(node.args[0])
    return node.op == "call_function" and node.target is getattr and node.args[1:2] in (("shape",), ("ndim",))


def value_users(node: fx.Node) -> list[fx.Node]:
    """The users of ``node`` that read its values (every user but :func:`shape_query` ones)."""
    return [user for user in node.users if not shape_query(user)]


def is_flatten(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    """Whether ``node`` flattens every dimension but the first (the batch) of its input."""
    def arg(index: int, name: str, default: object) -> object:
        return node.args[index] if len(node.args) > index else node.kwargs.get(name, default)

    if node.op == "call_module":
        module = modules.get(node.target)
        return isinstance(module, nn.Flatten) and module.start_dim == 1 and module.end_dim == -1
    if (node.op == "call_function" and node.target is torch.flatten) or (
            node.op == "call_method" and node.target == "flatten"):
        return arg(1, "start_dim", 0) == 1 and arg(2, "end_dim", -1) == -1
    if node.op == "call_method" and node.target in ("view", "reshape"):
        shape = node.args[1:] if len(node.args) != 2 else node.args[1]
        return isinstance(shape, tuple | list) and len(shape) == 2 and shape[1] == -1 and _batch(shape[0],
                                                                                                 node.args[0])
    return False


def _batch(size: object, x: object) -> bool:
    """``size`` is ``x.size(0)`` or ``x.shape[0]``: the batch dimension of ``x``."""
    if not isinstance(size, fx.Node):
        return False
    if size.op == "call_method" and size.target == "size":
        return size.args == (x, 0)
    if size.op == "call_function" and size.target is operator.getitem and size.args[1:] == (0,):
        shape = size.args[0]
        return (isinstance(shape, fx.Node) and shape.op == "call_function" and shape.target is getattr
                and shape.args == (x, "shape"))
    return False
