"""Relative functional distance (RFD): how far a model's function moved from the base, in units of how far
independently trained models are from it; its bootstrap interval, one-sided p-value and verdict.

This is the one place RFD is computed: the report, ``funclens compare`` and the Python API all call :func:`rfd`.
Predictions must be probabilities; logits are refused (see :func:`funclens.metrics.require_probabilities`).

``RFD = d(base, model) / mean_i d(base, independent_i)`` with ``d`` one of :data:`funclens.metrics.METRICS`.
About 0: the base's own function; about 1: as different as a model trained from scratch with another seed.
Several models (students over seeds) enter as the mean of their distances to the base.

The interval is a percentile bootstrap over test inputs: each replicate resamples the N inputs once and
recomputes numerator and denominator on the *same* inputs, so input difficulty cancels in the ratio. The
resampled inputs depend only on N and ``seed``, never on which model is measured: every model of a study is
resampled with the same inputs (common random numbers), so adding a model to a study leaves every other
model's interval unchanged. :func:`rfd_hierarchical` resamples the models too (students over seeds, the
independent models), then the same inputs: the spread over seeds beside the spread over inputs.

Example:
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> base, other = rng.dirichlet(np.ones(5), 200), rng.dirichlet(np.ones(5), 200)
    >>> r = rfd(base, base, [other], n_boot=99)
    >>> r.rfd, r.ci, r.verdict
    (0.0, (0.0, 0.0), 'preserves')
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Union

import numpy as np

from funclens.errors import MetricsError
from funclens.metrics import _finish, _terms, check_metric, distance
from funclens.pairwise import pairwise

# Verdict thresholds on the RFD bootstrap interval (RFD 0: the same function; 1: as different as a model trained
# from scratch with another seed). "preserves" needs the whole interval below 0.5: the model sits at most half
# as far from the base as independent retraining does, even at the pessimistic end. "independent-like" needs the
# whole interval above 0.8: even at the optimistic end it kept little more of the base's function than a fresh
# seed would. Anything between, or an interval too wide to decide, is "partial".
PRESERVE_BELOW = 0.5
INDEPENDENT_ABOVE = 0.8
# "undetermined": the yardstick is 0 (the independent models agree with the base on every test input), so RFD
# is 0/0 or x/0 and says nothing.
VERDICTS = ("preserves", "partial", "independent-like", "undetermined")

N_BOOT = 1000     # bootstrap replicates: p-values down to 1/1001, interval ends stable to about 0.01 RFD
SEED = 0          # one seed for every model of a study: the same resampled inputs for all (see above)
CI = 0.95         # coverage of the two-sided interval

_BOOT_ELEMS = 1 << 21       # one [b, N] block of bootstrap counts: 16 MiB in float64

Preds = Union[np.ndarray, Sequence[np.ndarray]]


@dataclass(frozen=True)
class RFD:
    """RFD of one model (or the mean of several seeds) against the base, with its interval and verdict.

    ``rfd`` and the ends of ``ci`` may be ``inf`` (the model differs, the yardstick is 0) or ``nan`` (0/0);
    :meth:`to_json` writes those as ``None``, and ``verdict`` is then ``"undetermined"`` with ``reason`` saying
    why. ``p_closer`` is the one-sided bootstrap p-value for H0 "the model is no closer to the base than the
    independent models are"; it never goes below ``1 / (n_boot + 1)``.
    """

    rfd: float
    ci: tuple[float, float]
    p_closer: float
    verdict: str
    distance: float     # mean over the models of d(base, model), in the metric's units
    reference: float    # mean over the independents of d(base, independent_i): the yardstick
    n_boot: int
    reason: str = ""

    def to_json(self) -> dict:
        """The fields of a ``summary.json`` row: ``rfd``, ``rfd_ci``, ``p_closer``, ``verdict`` (and
        ``verdict_reason`` when undetermined), non-finite numbers as ``None``.

        Example:
            >>> RFD(float("nan"), (float("nan"), float("nan")), 1.0, "undetermined", 0.0, 0.0, 9, "why").to_json()
            {'rfd': None, 'rfd_ci': [None, None], 'p_closer': 1.0, 'verdict': 'undetermined', 'verdict_reason': 'why'}
        """
        out = {"rfd": _finite(self.rfd), "rfd_ci": [_finite(v) for v in self.ci], "p_closer": _finite(self.p_closer),
               "verdict": self.verdict}
        if self.reason:
            out["verdict_reason"] = self.reason
        return out


def _finite(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


def _as_list(preds: Preds, what: str) -> list[np.ndarray]:
    """One ``[N, C]`` array, a stack ``[M, N, C]`` or a sequence of ``[N, C]`` -> a list of ``[N, C]`` arrays."""
    if isinstance(preds, np.ndarray) and preds.ndim == 2:
        return [preds]
    items = [np.asarray(p) for p in preds]
    if not items:
        raise MetricsError(f"RFD needs at least one {what} model")
    return items


def _boot_means(terms: np.ndarray, n_boot: int, seed: int) -> np.ndarray:
    """Bootstrap means ``[n_boot, k]`` of the k rows of ``terms`` [k, N], all rows resampled with the same inputs.

    Each replicate is a multinomial count vector over inputs (bincount of N uniform draws); a block of counts
    [b, N] times terms.T [N, k] gives b replicates of every row at once. The draws depend on N and ``seed`` only.
    """
    k, n = terms.shape
    rng = np.random.default_rng(seed)
    out = np.empty((n_boot, k), dtype=np.float64)
    block = max(1, _BOOT_ELEMS // n)
    for b0 in range(0, n_boot, block):
        b = min(block, n_boot - b0)
        draws = rng.integers(0, n, size=(b, n)) + (np.arange(b) * n)[:, None]   # offset: one bincount for all
        counts = np.bincount(draws.ravel(), minlength=b * n).reshape(b, n).astype(np.float64)
        out[b0:b0 + b] = counts @ terms.T / n
    return out


def _ratio(num: np.ndarray | float, den: np.ndarray | float) -> np.ndarray:
    """num / den where 0/0 -> nan and x/0 -> inf, without warnings."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.divide(num, den)


def _percentile_ci(ratios: np.ndarray, ci: float) -> tuple[float, float]:
    """Percentile interval of replicate ratios, nan replicates dropped. Its ends are order statistics (the lower
    one rounded down, the upper one up): never narrower than interpolating, and defined when replicates are inf."""
    ratios = ratios[~np.isnan(ratios)]
    if not len(ratios):
        return (math.nan, math.nan)
    return (float(np.quantile(ratios, (1.0 - ci) / 2, method="lower")),
            float(np.quantile(ratios, 1.0 - (1.0 - ci) / 2, method="higher")))


def _check_args(n_boot: int, ci: float) -> None:
    if int(n_boot) < 1:
        raise MetricsError(f"n_boot must be >= 1, got {n_boot}")
    if not 0.0 < ci < 1.0:
        raise MetricsError(f"ci must be in (0, 1), got {ci}")


def rfd(base: np.ndarray, models: Preds, independents: Preds, *, metric: str = "disagreement",
        n_boot: int = N_BOOT, seed: int = SEED, ci: float = CI) -> RFD:
    """RFD of ``models`` against ``base``, with its bootstrap interval, p-value and verdict.

    Args:
        base: ``[N, C]`` probabilities of the base model.
        models: the model measured, ``[N, C]``, or several (students over seeds: a sequence or ``[S, N, C]``),
            which then enter as the mean of their distances to the base.
        independents: independently trained models (other seeds), at least one: the yardstick.
        metric: one of :data:`funclens.metrics.METRICS`.
        n_boot: bootstrap replicates.
        seed: seeds the resampling of inputs; keep the default to get the numbers of a study's report.
        ci: coverage of the two-sided interval.

    Returns:
        an :class:`RFD`.

    Example:
        >>> eye = np.eye(4)
        >>> r = rfd(eye, eye[[0, 1, 2, 0]], [eye[[1, 0, 3, 2]]], n_boot=200)
        >>> r.rfd, r.distance, r.reference, r.verdict     # 1 of 4 inputs moved; the independent moved all 4
        (0.25, 0.25, 1.0, 'partial')
    """
    check_metric(metric)
    _check_args(n_boot, ci)
    ms, inds = _as_list(models, "compared"), _as_list(independents, "independent")
    terms = np.stack([_terms(base, m, metric) for m in ms] + [_terms(base, i, metric) for i in inds])
    # per model: finish (root mean square for hellinger) first, then average over models and over independents
    point = _finish(metric, terms.mean(axis=1))
    boot = _finish(metric, _boot_means(terms, int(n_boot), seed))
    k = len(ms)
    dist, ref = float(point[:k].mean()), float(point[k:].mean())
    boot_d, boot_r = boot[:, :k].mean(axis=1), boot[:, k:].mean(axis=1)
    value = float(_ratio(dist, ref))
    interval = _percentile_ci(_ratio(boot_d, boot_r), ci)
    p = float((np.count_nonzero(boot_d >= boot_r) + 1) / (int(n_boot) + 1))
    reason = ""
    if ref == 0.0:
        reason = (f"the independent models agree with the base on every one of the {terms.shape[1]} test inputs "
                  f"({metric} 0), so there is no yardstick to divide by")
    elif math.isnan(interval[0]):
        reason = "every bootstrap resample of the test inputs had a yardstick of 0"
    return RFD(value, interval, p, "undetermined" if reason else verdict(interval), dist, ref, int(n_boot), reason)


# Streams of model draws, apart from the inputs' generator and from each other: a row's models and the
# independent models are drawn independently even when they are as many.
_ROW_MODELS, _INDEPENDENTS, _MEMBERS = 1, 2, 3


def _model_draws(seed: int, stream: int, n_boot: int, k: int) -> np.ndarray:
    """``[n_boot, k]`` indices of k models drawn with replacement, from their own generator: the inputs each
    replicate resamples stay those of :func:`rfd`'s interval, and rows with as many models draw alike."""
    return np.random.default_rng([seed, stream, k]).integers(0, k, size=(n_boot, k))


def _resampled_mean(boot: np.ndarray, seed: int, stream: int) -> np.ndarray:
    """Per replicate, the mean over k models drawn with replacement of their bootstrapped distances ``[B, k]``."""
    draws = _model_draws(seed, stream, len(boot), boot.shape[1])
    return np.take_along_axis(boot, draws, axis=1).mean(axis=1)


def rfd_hierarchical(base: np.ndarray, models: Preds, independents: Preds, *, metric: str = "disagreement",
                     n_boot: int = N_BOOT, seed: int = SEED, ci: float = CI) -> tuple[float, float]:
    """RFD's interval resampling models, then inputs: the spread over seeds (students, independent models)
    that :func:`rfd`'s interval over test inputs leaves out.

    Each replicate draws the row's models with replacement and, apart, the independent models with replacement,
    then uses the very inputs :func:`rfd`'s replicate of the same number resamples (the same ``seed``: common
    random numbers across rows). With one model and one independent it is :func:`rfd`'s interval; with two
    independents each replicate's yardstick is one of them twice or both, a rough spread over models.

    Args:
        base: ``[N, C]`` probabilities of the base model.
        models: the row's models, ``[N, C]`` or several (``[S, N, C]`` or a sequence).
        independents: the yardstick's models, at least one.
        metric: one of :data:`funclens.metrics.METRICS`.
        n_boot: bootstrap replicates.
        seed: seeds both resamplings; keep the default to get a study's numbers.
        ci: coverage of the two-sided interval.

    Returns:
        ``(lo, hi)``, like :attr:`RFD.ci` (``inf``/``nan`` where the yardstick is 0).

    Example:
        >>> eye = np.eye(4)
        >>> students = [eye[[0, 1, 2, 0]], eye[[0, 1, 2, 3]]]          # one moved 1 input of 4, one none
        >>> rfd(eye, students, [eye[[1, 0, 3, 2]]], n_boot=200).ci        # the mean of the two, inputs resampled
        (0.0, 0.375)
        >>> rfd_hierarchical(eye, students, [eye[[1, 0, 3, 2]]], n_boot=200)  # some draws take the moved one twice
        (0.0, 0.5)
    """
    check_metric(metric)
    _check_args(n_boot, ci)
    ms, inds = _as_list(models, "compared"), _as_list(independents, "independent")
    terms = np.stack([_terms(base, m, metric) for m in ms] + [_terms(base, i, metric) for i in inds])
    boot = _finish(metric, _boot_means(terms, int(n_boot), seed))
    k = len(ms)
    return _percentile_ci(_ratio(_resampled_mean(boot[:, :k], seed, _ROW_MODELS),
                                 _resampled_mean(boot[:, k:], seed, _INDEPENDENTS)), ci)


def population_rfd_hierarchical(members: Sequence[tuple[np.ndarray, np.ndarray, Sequence[np.ndarray]]], *,
                                metric: str = "disagreement", n_boot: int = N_BOOT, seed: int = SEED,
                                ci: float = CI) -> tuple[float, tuple[float, float]]:
    """RFD of a setting over a population of compressed models, each against its own uncompressed parent, with
    the interval of resampling members (each with its own yardstick), then inputs.

    The point is the ratio of means: the mean over members of ``d(parent, compressed)`` over the mean of each
    member's yardstick (``d(parent, other)`` averaged over its others). Inputs are resampled as :func:`rfd`'s.

    Args:
        members: ``(parent, compressed, others)`` per compressed model: ``[N, C]`` probabilities, and the other
            uncompressed models (base and independents) as that member's yardstick.
        metric: one of :data:`funclens.metrics.METRICS`.
        n_boot: bootstrap replicates.
        seed: seeds both resamplings.
        ci: coverage of the two-sided interval.

    Returns:
        ``(rfd, (lo, hi))``.

    Example:
        >>> eye = np.eye(4)
        >>> a, b = eye, eye[[1, 0, 3, 2]]                               # two models that disagree everywhere
        >>> population_rfd_hierarchical([(a, eye[[0, 1, 2, 0]], [b]), (b, b, [a])], n_boot=200)
        (0.125, (0.0, 0.5))
    """
    check_metric(metric)
    _check_args(n_boot, ci)
    if not members:
        raise MetricsError("a population needs at least one compressed model")
    num, den, nums, dens = [], [], [], []
    for parent, model, others in members:
        terms = np.stack([_terms(parent, model, metric)] + [_terms(parent, o, metric)
                                                            for o in _as_list(others, "independent")])
        point = _finish(metric, terms.mean(axis=1))
        boot = _finish(metric, _boot_means(terms, int(n_boot), seed))
        nums.append(point[0]), dens.append(point[1:].mean())
        num.append(boot[:, 0]), den.append(boot[:, 1:].mean(axis=1))
    draws = _model_draws(seed, _MEMBERS, int(n_boot), len(members))   # a member comes with its own yardstick
    boot_num = np.take_along_axis(np.stack(num, axis=1), draws, axis=1).mean(axis=1)
    boot_den = np.take_along_axis(np.stack(den, axis=1), draws, axis=1).mean(axis=1)
    return float(_ratio(np.mean(nums), np.mean(dens))), _percentile_ci(_ratio(boot_num, boot_den), ci)


@dataclass(frozen=True)
class RFDDifference:
    """``RFD(a) - RFD(b)`` of two sets of models against one base and yardstick, with its bootstrap interval."""

    difference: float
    ci: tuple[float, float]
    rfd_a: float
    rfd_b: float
    paired: bool   # both RFDs of a replicate on the same resampled inputs (common random numbers)
    n_boot: int


def _rfd_replicates(terms: np.ndarray, k: int, metric: str, n_boot: int, seed: int) -> tuple[float, np.ndarray]:
    """(point RFD, its ``[n_boot]`` replicates) of ``terms`` [models..., independents...] (k models first)."""
    point = _finish(metric, terms.mean(axis=1))
    boot = _finish(metric, _boot_means(terms, n_boot, seed))
    return float(_ratio(point[:k].mean(), point[k:].mean())), _ratio(boot[:, :k].mean(axis=1),
                                                                     boot[:, k:].mean(axis=1))


def rfd_difference(base: np.ndarray, models_a: Preds, models_b: Preds, independents: Preds, *,
                   metric: str = "disagreement", n_boot: int = N_BOOT, seed: int = SEED, ci: float = CI,
                   paired: bool = True) -> RFDDifference:
    """How much nearer to the base ``models_b`` are than ``models_a``, as ``RFD(a) - RFD(b)``, with a percentile
    bootstrap interval over test inputs.

    Paired (the default), each replicate computes both RFDs on the same resampled inputs, the very inputs of
    :func:`rfd`'s replicate of that number: what the inputs make hard for both cancels in the difference, so
    the interval is that of the difference, not of two independent measurements. ``paired=False`` resamples
    the two apart (another seed for ``b``), the interval one would get from two separate studies.

    Args:
        base: ``[N, C]`` probabilities of the base model.
        models_a: one model ``[N, C]`` or several (their mean distance enters), e.g. a no-teacher control.
        models_b: likewise, e.g. the students taught by the base.
        independents: the yardstick, shared by both.
        metric: one of :data:`funclens.metrics.METRICS`.
        n_boot: bootstrap replicates.
        seed: seeds the resampling of inputs.
        ci: coverage of the two-sided interval.
        paired: resample both with the same inputs.

    Returns:
        an :class:`RFDDifference`.

    Example:
        >>> eye = np.eye(4)
        >>> d = rfd_difference(eye, eye[[0, 1, 0, 0]], eye[[0, 1, 2, 0]], [eye[[1, 0, 3, 2]]], n_boot=200)
        >>> d.rfd_a, d.rfd_b, d.difference, d.ci      # a and b differ on input 2 alone: its share of a resample
        (0.5, 0.25, 0.25, (0.0, 0.75))
    """
    check_metric(metric)
    _check_args(n_boot, ci)
    a, b = _as_list(models_a, "compared"), _as_list(models_b, "compared")
    inds = [_terms(base, i, metric) for i in _as_list(independents, "independent")]
    ra, boot_a = _rfd_replicates(np.stack([_terms(base, m, metric) for m in a] + inds), len(a), metric,
                                 int(n_boot), seed)
    rb, boot_b = _rfd_replicates(np.stack([_terms(base, m, metric) for m in b] + inds), len(b), metric,
                                 int(n_boot), seed if paired else seed + 1)
    with np.errstate(invalid="ignore"):   # inf - inf where a replicate's yardstick is 0: dropped as nan
        diffs = boot_a - boot_b
    return RFDDifference(float(ra - rb), _percentile_ci(diffs, ci), ra, rb, paired, int(n_boot))


def verdict(rfd_ci: Sequence[float], preserve_below: float = PRESERVE_BELOW,
            independent_above: float = INDEPENDENT_ABOVE) -> str:
    """Classify a model from its RFD interval: one of :data:`VERDICTS`.

    "preserves" when the upper end is below ``preserve_below``; "independent-like" when the lower end is above
    ``independent_above``; "undetermined" when an end is nan or missing; otherwise "partial". See
    ``PRESERVE_BELOW`` and ``INDEPENDENT_ABOVE`` for why these thresholds.

    Args:
        rfd_ci: ``[lo, hi]``, e.g. :attr:`RFD.ci`.
        preserve_below: threshold on the upper end.
        independent_above: threshold on the lower end.

    Example:
        >>> verdict([0.1, 0.3]), verdict([0.85, 1.1]), verdict([0.4, 0.9]), verdict([None, None])
        ('preserves', 'independent-like', 'partial', 'undetermined')
    """
    lo, hi = (math.nan if v is None else float(v) for v in rfd_ci)
    if math.isnan(lo) or math.isnan(hi):
        return "undetermined"
    if hi < preserve_below:
        return "preserves"
    if lo > independent_above:
        return "independent-like"
    return "partial"


def independent_reference(base: np.ndarray, independents: Sequence[np.ndarray],
                          metric: str = "disagreement") -> dict:
    """The yardstick: how far independently trained models are from the base, and from each other.

    Args:
        base: ``[N, C]`` probabilities of the base model.
        independents: other seeds' ``[N, C]`` probabilities, at least one.
        metric: one of :data:`funclens.metrics.METRICS`.

    Returns:
        ``{"mean", "std", "pairs", "between"}``: mean and standard deviation (ddof=1; 0 with one independent) of
        ``d(base, indep_i)``, the number of such pairs, and the mean distance over all ordered pairs of distinct
        models among base and independents.

    Example:
        >>> independent_reference(np.eye(2), [np.eye(2)[::-1]])
        {'mean': 1.0, 'std': 0.0, 'pairs': 1, 'between': 1.0}
    """
    check_metric(metric)
    if len(independents) == 0:
        raise MetricsError("the independent reference needs at least one independent model")
    d = np.array([distance(base, ind, metric) for ind in independents])
    mat = pairwise([np.asarray(base)] + [np.asarray(i) for i in independents], metric)
    off = ~np.eye(len(mat), dtype=bool)
    return {"mean": float(d.mean()), "std": float(d.std(ddof=1 if len(d) > 1 else 0)), "pairs": len(d),
            "between": float(mat[off].mean())}
