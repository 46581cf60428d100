"""A compressor of your own: any function (model, calibration) -> torch.nn.Module that Python can import.

Weight sharing, as in Deep Compression: every layer's weights take one of 16 values (k-means on that layer's
weights), so each weight is stored as a 4-bit index into a table of 16 floats. Then bias correction: each
layer's bias is shifted so that its mean output over the calibration images is what it was before.
"""

import torch
import torch.nn as nn


def _cluster(w, k=16, steps=20):
    centres = torch.quantile(w.flatten(), torch.linspace(0, 1, k))   # start spread over the weights
    for _ in range(steps):  # Lloyd's algorithm
        nearest = (w.flatten()[:, None] - centres[None]).abs().argmin(dim=1)
        for j in range(k):
            if (nearest == j).any():
                centres[j] = w.flatten()[nearest == j].mean()
    return centres[nearest].reshape(w.shape)


def _mean_outputs(model, layers, calibration):
    means, hooks = {}, []
    for name, layer in layers:
        def keep(_module, _inputs, out, name=name):
            dims = [0, 2, 3] if out.dim() == 4 else [0]
            means[name] = out.mean(dim=dims)
        hooks.append(layer.register_forward_hook(keep))
    model(calibration)
    for h in hooks:
        h.remove()
    return means


@torch.no_grad()
def cluster16(model, calibration):
    model.eval()
    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    before = _mean_outputs(model, layers, calibration)
    for _, layer in layers:
        layer.weight.copy_(_cluster(layer.weight))
    after = _mean_outputs(model, layers, calibration)
    for name, layer in layers:
        if layer.bias is not None:
            layer.bias -= after[name] - before[name]
    return model
