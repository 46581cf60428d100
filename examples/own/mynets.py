"""A model of your own: any function (in_shape, num_classes) -> torch.nn.Module that Python can import."""

import torch.nn as nn


def small_cnn(in_shape, num_classes):
    c, h, w = in_shape
    return nn.Sequential(nn.Conv2d(c, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * h * w, num_classes))
