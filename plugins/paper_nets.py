"""The LilNetX / EPR papers' networks in plain PyTorch (the modules ``plugins.paper_models`` builds).

Convolutions followed by BatchNorm have no bias (the reference code added one silently).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

VGG16_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")


def _conv_bn(in_chans: int, out_chans: int, stride: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(in_chans, out_chans, 3, stride, 1, bias=False), nn.BatchNorm2d(out_chans)]


def _init_weights(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class ShortcutA(nn.Module):
    """Option-A shortcut: subsample by ``stride``, zero-pad the extra channels (no parameters)."""

    def __init__(self, in_chans: int, out_chans: int, stride: int):
        super().__init__()
        self.stride, self.pad = stride, out_chans - in_chans

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, self.pad // 2, self.pad - self.pad // 2))


class BasicBlock(nn.Module):
    def __init__(self, in_chans: int, out_chans: int, stride: int):
        super().__init__()
        self.conv1, self.bn1 = _conv_bn(in_chans, out_chans, stride)
        self.conv2, self.bn2 = _conv_bn(out_chans, out_chans)
        same = stride == 1 and in_chans == out_chans
        self.shortcut = nn.Identity() if same else ShortcutA(in_chans, out_chans, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class CifarResNet(nn.Module):
    """He et al. (2016) CIFAR ResNet: 3 stages of ``(depth - 2) / 6`` basic blocks, widths 16/32/64 x width."""

    def __init__(self, depth: int, num_classes: int = 10, in_chans: int = 3, width: float = 1.0):
        super().__init__()
        if depth < 8 or (depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n + 2 (20, 32, 44, 56, 110...), got {depth}")
        if width <= 0:
            raise ValueError(f"width must be positive, got {width}")
        blocks = (depth - 2) // 6
        widths = [max(1, round(c * width)) for c in (16, 32, 64)]
        self.num_classes, self.num_features = num_classes, widths[-1]
        self.conv1, self.bn1 = _conv_bn(in_chans, widths[0])
        stages, prev = [], widths[0]
        for i, w in enumerate(widths):
            stages.append(nn.Sequential(*(BasicBlock(prev if b == 0 else w, w, 2 if (i and b == 0) else 1)
                                          for b in range(blocks))))
            prev = w
        self.layer1, self.layer2, self.layer3 = stages
        self.fc = nn.Linear(self.num_features, num_classes)
        _init_weights(self)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        return self.layer3(self.layer2(self.layer1(x)))

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.mean(dim=(2, 3)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


class VGGCifar(nn.Module):
    """VGG-16 with BatchNorm for 32x32 inputs: 13 convs, then 512-512-classes fully connected (15M params).

    ``width`` multiplies every layer's channels (0.25: 64..512 become 16..128, 1/16 of the MACs).
    """

    def __init__(self, num_classes: int = 10, in_chans: int = 3, width: float = 1.0):
        super().__init__()
        if width <= 0:
            raise ValueError(f"width must be positive, got {width}")
        layers: list[nn.Module] = []
        prev = in_chans
        for v in VGG16_CFG:
            if v == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                out = max(1, round(v * width))
                layers += [*_conv_bn(prev, out), nn.ReLU(inplace=True)]
                prev = out
        self.features = nn.Sequential(*layers)
        self.num_classes, self.num_features = num_classes, prev
        self.pre_logits = nn.Sequential(nn.Linear(prev, prev), nn.ReLU(inplace=True))
        self.fc = nn.Linear(prev, num_classes)
        _init_weights(self)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pre_logits(F.adaptive_avg_pool2d(x, 1).flatten(1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


class LeNet300100(nn.Module):
    """LeNet-300-100: fully connected ``C*H*W``-300-100-classes with ReLUs."""

    def __init__(self, num_classes: int = 10, input_size: tuple[int, int, int] = (1, 28, 28)):
        super().__init__()
        self.num_classes = num_classes
        self.fc1 = nn.Linear(math.prod(input_size), 300)
        self.fc2 = nn.Linear(300, 100)
        self.fc3 = nn.Linear(100, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.fc1(x.flatten(1)))
        return self.fc3(F.relu(self.fc2(x)))


class LeNet5Caffe(nn.Module):
    """LeNet5-Caffe: conv 20 5x5, pool, conv 50 5x5, pool, fc 500, fc classes (431k params on MNIST)."""

    def __init__(self, num_classes: int = 10, input_size: tuple[int, int, int] = (1, 28, 28)):
        super().__init__()
        c, h, w = input_size
        spatial = [((s - 4) // 2 - 4) // 2 for s in (h, w)]
        if min(spatial) < 1:
            raise ValueError(f"lenet5_caffe needs inputs of at least 16x16 pixels, got {h}x{w}")
        self.num_classes = num_classes
        self.conv1 = nn.Conv2d(c, 20, 5)
        self.conv2 = nn.Conv2d(20, 50, 5)
        self.fc1 = nn.Linear(50 * spatial[0] * spatial[1], 500)
        self.fc2 = nn.Linear(500, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return self.fc2(F.relu(self.fc1(x.flatten(1))))
