"""The package's public API: ``__all__``, lazy loading, and the checks it shares with the command."""

import subprocess
import sys

import numpy as np
import pytest

import funclens
from funclens.errors import FunclensError, MetricsError


def test_every_name_in_all_resolves():
    for name in funclens.__all__:
        assert getattr(funclens, name) is not None, name
    assert {"compare_predictions", "create_model", "list_models", "rfd"} <= set(funclens.__all__)
    assert set(funclens.__all__) <= set(dir(funclens))


def test_import_is_lazy():
    # the command starts from `import funclens`: it must not pay for torch (seconds) before it knows the command
    code = "import sys, funclens; print('torch' in sys.modules, 'numpy' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


def test_functions_win_over_their_modules():
    import funclens.pairwise  # noqa: F401  (binds the module on the package, unless the function wins)
    import funclens.rfd  # noqa: F401

    assert callable(funclens.rfd) and callable(funclens.pairwise)
    eye = np.eye(4)
    r = funclens.rfd(eye, eye[[0, 1, 2, 0]], [eye[[1, 0, 3, 2]]], n_boot=50)
    assert r.rfd == pytest.approx(0.25)


def test_api_refuses_logits_and_converts_them_on_request():
    rng = np.random.default_rng(1)
    logits = rng.normal(0.0, 30.0, (50, 10))
    base = funclens.check_predictions(rng.normal(0.0, 30.0, (50, 10)), "base")
    with pytest.raises(MetricsError, match="check_predictions"):
        funclens.distance(base, logits, "tv")
    assert issubclass(MetricsError, funclens.FunclensError) and funclens.FunclensError is FunclensError
    tv = funclens.distance(base, funclens.check_predictions(logits, "logits"), "tv")
    assert 0.0 <= tv <= 1.0
    # compare_predictions takes logits too: it converts them as `funclens compare` does, into plain data
    res = funclens.compare_predictions(base, {"m": logits}, independents={"i": logits})
    assert isinstance(res, dict) and res["rows"][0]["tv"] == pytest.approx(tv)
