"""Compare models in memory: each is run on the given test tensors, then compared as ``funclens compare`` does.

The check a compression pipeline calls in Python: no study, no files. The rows are those of
:func:`funclens.compare.compare_predictions` (the ``summary.json`` schema, ``method`` "model", ``setting``
the name given), computed from each model's softmax on the CPU, in the order of ``test_x``.

Example:
    >>> import torch, funclens
    >>> _ = torch.manual_seed(0)
    >>> x, y = torch.randn(64, 1, 4, 4), torch.randint(0, 3, (64,))
    >>> def net(): return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
    >>> base = net()
    >>> res = funclens.compare_models(base, {"copy": base}, x, y, independents=[net(), net()])
    >>> row = res["rows"][0]
    >>> row["method"], row["setting"], row["disagreement"], row["verdict"]
    ('model', 'copy', 0.0, 'preserves')
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence

import numpy as np
import torch
import torch.nn as nn

from funclens.compare import CompareError, compare_predictions

BATCH = 256  # test inputs per forward pass: bounds the memory of a large model's activations


def predict(model: nn.Module, x: torch.Tensor | np.ndarray, name: str = "model") -> np.ndarray:
    """Softmax of ``model`` on every row of ``x``, in order, on the CPU, in eval mode (restored after).

    Args:
        model: a module taking ``x`` as it is (already normalized as the model expects).
        x: ``[N, ...]`` inputs.
        name: the model's name in error messages.

    Example:
        >>> predict(torch.nn.Linear(2, 3), torch.zeros(4, 2)).shape
        (4, 3)
    """
    x = torch.as_tensor(x)
    on_cpu = all(t.device.type == "cpu" for t in (*model.parameters(), *model.buffers()))
    net = model if on_cpu else copy.deepcopy(model).cpu()  # the caller's model stays where it is
    was_training = net.training
    net.eval()
    try:
        with torch.inference_mode():
            out = [net(x[i:i + BATCH]).float() for i in range(0, len(x), BATCH)]
    except (RuntimeError, ValueError, TypeError, IndexError) as e:
        why = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise CompareError(f"model {name!r} failed on inputs of shape {tuple(x.shape)} "
                           f"({type(e).__name__}: {why})") from None
    finally:
        net.train(was_training)
    logits = torch.cat(out) if out else torch.empty(0)
    if logits.ndim != 2:
        raise CompareError(f"model {name!r} returned outputs of shape {tuple(logits.shape)}, not [N, classes]")
    return torch.softmax(logits, dim=1).numpy()


def compare_models(base: nn.Module, models: Mapping[str, nn.Module], test_x: torch.Tensor | np.ndarray,
                   test_y: torch.Tensor | np.ndarray | None = None, *,
                   independents: Sequence[nn.Module] | Mapping[str, nn.Module] = (),
                   metric: str = "disagreement") -> dict:
    """Run every model on ``test_x`` and compare each to ``base``: distances, accuracy, and with
    independents RFD, its interval and verdict.

    Args:
        base: the original model.
        models: name -> model to compare (a compressed copy of ``base``, say).
        test_x: ``[N, ...]`` test inputs, as the models take them.
        test_y: ``[N]`` integer labels, for accuracy (None: no accuracy).
        independents: models trained independently of ``base`` (a list, or name -> model): RFD's yardstick.
        metric: RFD's distance (``disagreement``, ``js``, ``kl`` or ``tv``).

    Returns:
        as :func:`funclens.compare.compare_predictions`: ``{"base", "metric", "independents", "rows"}``.
    """
    if not isinstance(independents, Mapping):
        independents = {f"independent_{i + 1}": m for i, m in enumerate(independents)}
    labels = None if test_y is None else np.asarray(torch.as_tensor(test_y).cpu())
    return compare_predictions(predict(base, test_x, "base"),
                               {k: predict(m, test_x, k) for k, m in models.items()},
                               independents={k: predict(m, test_x, k) for k, m in independents.items()},
                               labels=labels, metric=metric)
