"""``fuse_epilogues(model)``: fold each ``SparseConv2d``'s following ReLU / ReLU6 and residual addition into its
store (and each ``SparseLinear``'s following ReLU / ReLU6).

A slimmed ResNet block ends ``relu(conv2(x) + shortcut)``: three passes over the activations, of which the
addition and the ReLU only read and write memory. Traced with ``torch.fx``, every ``SparseConv2d`` whose only
reader is a ReLU or ReLU6, or an addition of another tensor (itself read only by one, or not followed by
one), takes them over (an addend the kernel cannot take, e.g. one that broadcasts, runs the dense form): ``conv(x, residual)`` with ``activation="relu"`` adds and rectifies in the kernel's store
(dense ``conv2d`` does the same after it, where that form runs). Outputs are unchanged; a model fx cannot trace is
returned as it was, with a warning.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import fx, nn

from lilnetx.channel_graph import ADD_OPS, apply_passes
from lilnetx.measured import MeasuredLayer
from lilnetx.sparse_conv import SparseConv2d
from lilnetx.sparse_linear import SparseLinear

ACTIVATION_MODULES = {nn.ReLU: "relu", nn.ReLU6: "relu6"}
ACTIVATION_FUNCTIONS = {F.relu: "relu", torch.relu: "relu", F.relu6: "relu6"}
ACTIVATION_METHODS = {"relu": "relu", "relu_": "relu"}


def fuse_epilogues(model: nn.Module) -> nn.Module:
    """``model`` as a ``torch.fx.GraphModule`` with ReLU / residual additions fused into its sparse convolutions
    (``model`` itself where nothing fuses or it cannot be traced). The kernel layers are shared with ``model`` and
    take their epilogue in place; a layer that already has one is left as it is."""
    return apply_passes(model, [fuse_pass], leaves=(MeasuredLayer,), untraceable="its epilogues stay unfused")


def fuse_pass(traced: fx.GraphModule) -> int:
    """:func:`fuse_epilogues` on a traced model's graph, in place; returns how many layers took an epilogue."""
    graph, modules = traced.graph, dict(traced.named_modules())
    for node in list(graph.nodes):  # folded BatchNorm leaves nn.Identity between a convolution and its ReLU
        if node.op == "call_module" and type(modules.get(node.target)) is nn.Identity and len(node.args) == 1:
            node.replace_all_uses_with(node.args[0])
            graph.erase_node(node)
    calls = [n for n in graph.nodes
             if n.op == "call_module" and isinstance(modules.get(n.target), SparseConv2d | SparseLinear)]
    targets = [n.target for n in calls]
    fused = 0
    for node in calls:
        if (len(node.args) == 1 and not node.kwargs and targets.count(node.target) == 1  # not a shared module
                and modules[node.target].activation is None):  # not fused before
            fused += _fuse(node, modules[node.target], modules)
    return fused


def _only_user(node: fx.Node) -> fx.Node | None:
    users = list(node.users)
    return users[0] if len(users) == 1 else None


def _activation(node: fx.Node | None, modules: dict[str, nn.Module]) -> str | None:
    """``"relu"`` / ``"relu6"`` where ``node`` applies that activation to its one input, else ``None``."""
    if node is None or len(node.args) != 1:
        return None
    if node.op == "call_module":
        return ACTIVATION_MODULES.get(type(modules.get(node.target)))
    if node.op == "call_function":
        return ACTIVATION_FUNCTIONS.get(node.target)
    return ACTIVATION_METHODS.get(node.target) if node.op == "call_method" else None


def _fuse(conv_node: fx.Node, conv: SparseConv2d | SparseLinear, modules: dict[str, nn.Module]) -> int:
    user = _only_user(conv_node)
    if user is None:
        return 0
    if _activation(user, modules):
        conv.activation = _activation(user, modules)
        user.replace_all_uses_with(conv_node)
        return 1
    if not isinstance(conv, SparseConv2d):  # a linear layer takes its activation only
        return 0
    is_add = (user.op == "call_function" and user.target in ADD_OPS and len(user.args) == 2
              and not user.kwargs) or (user.op == "call_method" and user.target in ("add", "add_")
                                       and len(user.args) == 2 and not user.kwargs)
    if not is_add:
        return 0
    other = user.args[1] if user.args[0] is conv_node else user.args[0]
    if not isinstance(other, fx.Node) or other is conv_node:
        return 0
    after = _only_user(user)
    activation = _activation(after, modules)
    if other not in _placed_before(conv_node):
        user.prepend(conv_node)  # the residual is computed first: the convolution moves after it
    conv_node.args = (conv_node.args[0], other)
    conv.activation = activation
    user.replace_all_uses_with(conv_node)
    if activation:
        after.replace_all_uses_with(conv_node)
    return 1


def _placed_before(conv_node: fx.Node) -> set[fx.Node]:
    """The nodes placed before ``conv_node`` in the graph's order."""
    before, node = set(), conv_node.prev
    while node.op != "root":
        before.add(node)
        node = node.prev
    return before
