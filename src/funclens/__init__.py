"""funclens: is the compressed model still the same function as the original?

The public API, in ``__all__``. Each name is imported from its module on first use, so that ``import funclens``
(and the command's start) does not wait for torch.

- comparing predictions: :func:`compare_predictions` (rows as in ``summary.json``), :func:`compare_models`
  (models run on test tensors, then the same rows), :func:`rfd` (RFD, its
  interval and verdict), :func:`distance`, :func:`pairwise`, :func:`independent_reference`; predictions are
  probabilities ``[N, C]``, and :func:`check_predictions` turns logits into them (the others refuse logits);
- models: :func:`create_model`, :func:`list_models`, :func:`register_model`;
- studies: :class:`StudyCfg`, :func:`load_study_toml`, :func:`preset_study`;
- errors: :class:`FunclensError`, the base of every error funclens raises for bad input.

Example:
    >>> import numpy as np, funclens
    >>> res = funclens.compare_predictions(np.eye(2), {"copy": np.eye(2)}, independents={"s1": np.eye(2)[::-1]})
    >>> res["rows"][0]["verdict"]
    'preserves'
    >>> "lenet" in funclens.list_models()
    True
"""

import sys
import types

__version__ = "0.1.0"

# public name -> the module that defines it
_API = {
    "compare_predictions": "funclens.compare",
    "compare_models": "funclens.modelcompare",
    "rfd": "funclens.rfd",
    "independent_reference": "funclens.rfd",
    "distance": "funclens.metrics",
    "check_predictions": "funclens.metrics",
    "pairwise": "funclens.pairwise",
    "create_model": "funclens.models",
    "list_models": "funclens.models",
    "register_model": "funclens.models",
    "StudyCfg": "funclens.config",
    "load_study_toml": "funclens.config",
    "preset_study": "funclens.config",
    "FunclensError": "funclens.errors",
}
__all__ = ["__version__", *_API]


def __getattr__(name: str):
    if name in _API:
        import importlib

        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'funclens' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_API))


class _Package(types.ModuleType):
    """``funclens.rfd`` and ``funclens.pairwise`` name both a function of the API and the module defining it.
    Importing such a module binds it on the package, which would hide the function after the first import:
    the function wins (``from funclens.rfd import ...`` still reaches the module, through ``sys.modules``)."""

    def __setattr__(self, name: str, value: object) -> None:
        if name in _API and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
