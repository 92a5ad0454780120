"""A third-party LilNetX Zoo plugin: registers ``tiny_cnn`` and keeps its stem uncompressed."""

from torch import nn

from zoo.hookspecs import hookimpl


def tiny_cnn(*, num_classes: int, in_chans: int, input_size: tuple[int, int, int], width: int = 8) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(in_chans, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
        nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, num_classes),
    )


@hookimpl
def lilnetx_register_architectures(register):
    register("tiny_cnn", tiny_cnn, input_size=(1, 8, 8), num_classes=10, in_chans=1, mean=(0.5,), std=(0.25,),
             tags=("example",), description="two 3x3 convs and a linear head")


@hookimpl
def lilnetx_layer_policy(arch, name, module):
    if arch == "tiny_cnn" and name == "0":
        return False  # the stem stays float
    return None
