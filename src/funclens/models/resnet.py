"""ResNet-50 from torchvision, with its stem widened or narrowed to the input's channels."""

from __future__ import annotations

import torch.nn as nn

from funclens.models import register_model


@register_model
def resnet50(in_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    # Imported here: torchvision pulls in torch._dynamo, a second of start-up for every worker process
    # even when the study trains no ResNet.
    import torchvision

    model = torchvision.models.resnet50(weights=None, num_classes=num_classes)
    if in_shape[0] != 3:
        model.conv1 = nn.Conv2d(in_shape[0], 64, kernel_size=7, stride=2, padding=3, bias=False)
    return model
