"""Dead-path removal: weights that can never change a model's output are set to exactly zero (lossless).

Two layers are *linked* when the only path from one conv / linear layer (the producer) to the next (the
consumer) goes through channel-wise operations that map zero to zero and flattening, as the channel graph
(``lilnetx.channel_graph``, which ``lilnetx.slim`` queries too) defines them: activations such as ReLU / GELU /
SiLU, max / average pooling, dropout, identity; ``flatten`` and ``view`` / ``reshape`` to ``(batch, -1)``. Then

- a producer output channel that is always zero (zero weights and zero bias) feeds nothing: the consumer's
  weights that read it are set to zero;
- a producer output channel that no consumer weight reads is unused: its weights and bias are set to zero.

Links are found on the traced graph (``channel_graph.trace``); a model that cannot be traced, or a layer whose output also goes
elsewhere (a residual add, BatchNorm, a second consumer), gets no link and is left alone. Zeroing a latent
gives an exactly zero weight (the decoders have no shift), so the rate and the file shrink while every
output stays the same. ``lilnetx export`` applies it before writing the artifact.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, fx, nn
from torch.nn.utils import parametrize

from lilnetx.channel_graph import is_flatten, trace, value_users, zero_preserving

LAYERS = (nn.Conv2d, nn.Linear)


@dataclass(frozen=True)
class Link:
    """Producer layer ``producer`` feeds only consumer layer ``consumer``, through zero-preserving ops."""

    producer: str
    consumer: str


def find_links(model: nn.Module) -> list[Link]:
    """Producer -> consumer pairs of ``model`` (see the module docstring); ``[]`` if it cannot be traced."""
    try:
        graph = trace(model).graph
    except Exception:  # data-dependent control flow and the like: no links, nothing removed
        return []
    modules = dict(model.named_modules())
    links = []
    for node in graph.nodes:
        if node.op == "call_module" and isinstance(modules.get(node.target), LAYERS):
            consumer = _only_consumer(node, modules)
            if consumer is not None and _compatible(modules[node.target], modules[consumer]):
                links.append(Link(str(node.target), consumer))
    return links


def _passes(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    return zero_preserving(node, modules) or is_flatten(node, modules)


def _only_consumer(node: fx.Node, modules: dict[str, nn.Module]) -> str | None:
    """The single layer reached from ``node`` through pass-through ops, else ``None``."""
    while len(users := value_users(node)) == 1:
        (user,) = users
        if user.args[:1] != (node,):  # the value must be the op's main input
            return None
        if user.op == "call_module" and isinstance(modules.get(user.target), LAYERS):
            return str(user.target)
        if not _passes(user, modules):
            return None
        node = user
    return None


def _compatible(producer: nn.Module, consumer: nn.Module) -> bool:
    """The consumer's inputs split into one equal block per producer output channel (no grouped convs)."""
    channels = producer.out_channels if isinstance(producer, nn.Conv2d) else producer.out_features
    if isinstance(consumer, nn.Conv2d):
        return consumer.groups == 1 and consumer.in_channels == channels
    return consumer.in_features % channels == 0


def _stored(module: nn.Module, name: str) -> Tensor | None:
    """The tensor to zero for ``module.name``: its latent when reparameterised, else the parameter."""
    if parametrize.is_parametrized(module, name):
        return module.parametrizations[name].original
    return getattr(module, name, None)


def _output_alive(module: nn.Module) -> Tensor:
    """Per output channel: does any weight or the bias differ from zero?"""
    weight = module.weight.detach()
    alive = weight.reshape(weight.shape[0], -1).ne(0).any(dim=1)
    if module.bias is not None:
        alive |= module.bias.detach().ne(0)
    return alive


def _input_blocks(consumer: nn.Module, channels: int) -> Tensor:
    """Consumer weight viewed as ``(out, channels, block)``: the weights reading each producer channel."""
    weight = consumer.weight.detach()
    return weight.reshape(weight.shape[0], channels, -1)


@torch.no_grad()
def remove_dead_paths(model: nn.Module, links: list[Link] | None = None) -> dict[str, int]:
    """Zero every weight on a dead path of ``model`` in place; returns the number of weights zeroed per tensor.

    ``links`` defaults to ``find_links(model)``. Repeats until nothing changes (a removed channel can make
    the layer before it unused).
    """
    links = find_links(model) if links is None else links
    modules = dict(model.named_modules())
    zeroed: dict[str, int] = {}

    def zero(name: str, tensor_name: str, index: tuple) -> None:
        module = modules[name]
        stored = _stored(module, tensor_name)
        before = int(getattr(module, tensor_name).detach()[index].ne(0).sum())
        if before:
            stored[index] = 0
            key = f"{name}.{tensor_name}"
            zeroed[key] = zeroed.get(key, 0) + before

    changed = True
    while changed:
        total = sum(zeroed.values())
        for link in links:
            producer, consumer = modules[link.producer], modules[link.consumer]
            alive = _output_alive(producer)
            channels = alive.numel()
            reads = _input_blocks(consumer, channels).ne(0).any(dim=2).any(dim=0)
            dead_inputs = (~alive & reads).nonzero().flatten().tolist()
            for k in dead_inputs:
                zero(link.consumer, "weight", _consumer_index(consumer, channels, k))
            for k in (alive & ~reads).nonzero().flatten().tolist():
                zero(link.producer, "weight", (k,))
                if producer.bias is not None:
                    zero(link.producer, "bias", (k,))
        changed = sum(zeroed.values()) != total
    return zeroed


def _consumer_index(consumer: nn.Module, channels: int, k: int) -> tuple:
    if isinstance(consumer, nn.Conv2d):
        return (slice(None), k)
    block = consumer.in_features // channels
    return (slice(None), slice(k * block, (k + 1) * block))
