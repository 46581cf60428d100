"""funclens: is the compressed model still the same function as the original?

RFD, its interval and verdict: :func:`funclens.rfd.rfd`. ``compare_predictions`` (arrays of predictions) and
``compare_models`` (models run on test tensors) are imported on first use, so that ``import funclens`` (and the
command's start) does not wait for torch.

Example:
    >>> import numpy as np, funclens
    >>> res = funclens.compare_predictions(np.eye(2), {"copy": np.eye(2)}, independents={"s1": np.eye(2)[::-1]})
    >>> res["rows"][0]["verdict"]
    'preserves'
"""

__version__ = "0.1.0"

# public name -> the module that defines it
_API = {"compare_predictions": "funclens.compare", "compare_models": "funclens.modelcompare"}


def __getattr__(name: str):
    if name in _API:
        import importlib

        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'funclens' has no attribute {name!r}")
