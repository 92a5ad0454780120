"""The LilNetX / EPR papers' architectures as a plugin: CIFAR ResNets, VGG-16 for CIFAR, and the MNIST
networks LeNet-300-100 and LeNet5-Caffe.

Convolutions followed by BatchNorm have no bias (the reference code added one silently).
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

from zoo.hookspecs import ArchitectureRegistrar, hookimpl

if TYPE_CHECKING:
    from plugins.paper_nets import CifarResNet, LeNet5Caffe, LeNet300100, VGGCifar

CIFAR_RESNET_DEPTHS = (20, 32, 44, 56, 110)
CIFAR_CFG = {"input_size": (3, 32, 32), "num_classes": 10, "in_chans": 3,
             "mean": (0.4914, 0.4822, 0.4465), "std": (0.2470, 0.2435, 0.2616)}
MNIST_CFG = {"input_size": (1, 28, 28), "num_classes": 10, "in_chans": 1, "mean": (0.1307,), "std": (0.3081,)}


# Builders: called as builder(num_classes=..., in_chans=..., input_size=(C, H, W), **kwargs); they import the
# networks (and torch) on first use, so listing the architectures imports no torch.

def cifar_resnet(depth: int, *, num_classes: int, in_chans: int, input_size: tuple[int, int, int],
                 width: float = 1.0) -> CifarResNet:
    """Any input size works (global pooling), so ``input_size`` only sets the model's config."""
    from plugins.paper_nets import CifarResNet

    return CifarResNet(depth, num_classes=num_classes, in_chans=in_chans, width=width)


def vgg16_cifar(*, num_classes: int, in_chans: int, input_size: tuple[int, int, int],
                width: float = 1.0) -> VGGCifar:
    """Inputs of at least 32x32 (five 2x2 poolings), then global pooling."""
    from plugins.paper_nets import VGGCifar

    return VGGCifar(num_classes=num_classes, in_chans=in_chans, width=width)


def lenet_300_100(*, num_classes: int, in_chans: int, input_size: tuple[int, int, int]) -> LeNet300100:
    from plugins.paper_nets import LeNet300100

    return LeNet300100(num_classes=num_classes, input_size=input_size)


def lenet5_caffe(*, num_classes: int, in_chans: int, input_size: tuple[int, int, int]) -> LeNet5Caffe:
    from plugins.paper_nets import LeNet5Caffe

    return LeNet5Caffe(num_classes=num_classes, input_size=input_size)


@hookimpl
def lilnetx_register_architectures(register: ArchitectureRegistrar) -> None:
    for depth in CIFAR_RESNET_DEPTHS:
        register(f"resnet{depth}", functools.partial(cifar_resnet, depth), tags=("paper", "cifar", "resnet"),
                 description=f"CIFAR ResNet-{depth}, option-A shortcuts; `width` multiplies the channels",
                 options={"width": (float, 1 / 16, 8.0)}, **CIFAR_CFG)
    register("vgg16_cifar", vgg16_cifar, tags=("paper", "cifar", "vgg"),
             description="VGG-16 with BatchNorm for CIFAR (13 convs, 512-512 classifier); `width` multiplies the channels",
             options={"width": (float, 1 / 16, 4.0)}, **CIFAR_CFG)
    register("lenet_300_100", lenet_300_100, tags=("paper", "mnist", "mlp"),
             description="LeNet-300-100 fully connected network (EPR's MNIST baseline)", **MNIST_CFG)
    register("lenet5_caffe", lenet5_caffe, tags=("paper", "mnist", "lenet"),
             description="LeNet5-Caffe: conv 20 5x5, conv 50 5x5, fc 500 (EPR's MNIST baseline)", **MNIST_CFG)
