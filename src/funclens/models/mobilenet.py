"""MobileNetV1 (Howard et al. 2017), width 1.0: 28 layers counting depthwise and pointwise convs
separately (1 full conv + 13 x (depthwise + pointwise) + 1 linear).

The ImageNet network downsamples 32x; on 32x32 inputs the first conv keeps stride 1 so the last
feature map is 2x2 rather than a single pixel.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from funclens.models import register_model

# (output channels, stride) of the 13 depthwise-separable blocks, from the paper's Table 1.
_BLOCKS = [(64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2),
           (512, 1), (512, 1), (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1)]


def _conv_bn(cin: int, cout: int, stride: int, groups: int = 1, k: int = 3) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class MobileNetV1(nn.Module):
    def __init__(self, in_shape: tuple[int, int, int], num_classes: int) -> None:
        super().__init__()
        c, h, w = in_shape
        first_stride = 2 if min(h, w) > 64 else 1
        layers = [_conv_bn(c, 32, first_stride)]
        cin = 32
        for cout, stride in _BLOCKS:
            layers += [_conv_bn(cin, cin, stride, groups=cin), _conv_bn(cin, cout, 1, k=1)]
            cin = cout
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(1024, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))


@register_model
def mobilenet_v1(in_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    return MobileNetV1(in_shape, num_classes)
