"""Seeded percentile bootstrap, single and paired, vectorised over resamples for the common metrics."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

from pipeline.metrics.calibration import (
    _calibration_in_the_large,
    _calibration_slope,
    _observed_minus_expected,
    calibration_in_the_large,
    calibration_slope,
    observed_minus_expected,
)
from pipeline.metrics.discrimination import (
    _auprc,
    _auroc,
    _brier,
    _scaled_brier,
    auprc,
    auroc,
    brier_score,
    scaled_brier_score,
)
from pipeline.metrics.inputs import (
    FloatArray,
    Metric,
    _check_level,
    _check_positive_int,
    _check_probability,
    _check_same_length,
    _ratio,
    _validate,
)

# Bootstrap index matrices are built in chunks of at most this many cells, so memory stays bounded (~32 MB of
# int64) whatever n_boot × n is.
_BOOT_CHUNK_CELLS = 4_000_000


# --------------------------------------------------------------------------------------------------------------
# Bootstrap
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BootstrapCI:
    """A point estimate with a bootstrap percentile interval.

    Attributes:
        estimate: the metric on the full data (not the bootstrap mean).
        lower, upper: the (1 − level)/2 and (1 + level)/2 quantiles of the bootstrap replicates (NaN when no
            replicate was usable).
        n_boot_used: replicates where the metric was defined (finite); the others were skipped.
        n_boot: replicates drawn.
        level: nominal coverage, e.g. 0.95.
    """

    estimate: float
    lower: float
    upper: float
    n_boot_used: int
    n_boot: int
    level: float


@dataclass(frozen=True)
class PairedBootstrapCI(BootstrapCI):
    """A difference metric(p1) − metric(p2) on the same patients, with its paired percentile interval.

    Attributes:
        share_positive: share of usable bootstrap differences that are > 0 (a difference of exactly 0 counts as
            not positive), e.g. how often the model beat the comparator across resamples.
    """

    share_positive: float


def _auroc_batch(y: FloatArray, p: FloatArray, counts: FloatArray) -> FloatArray:
    """AUROC for each row of resampling counts (weights): weighted Mann-Whitney, ties counting 1/2.

    AUROC = Σ_i Σ_j w_i w_j [1(p_i > p_j) + ½·1(p_i = p_j)] / (W_events · W_non-events) over events i and
    non-events j. After one sort, each tie group g contributes W_events(g)·(W_non-events below g +
    ½·W_non-events(g)), so a whole chunk of resamples costs a few vectorised passes over the (chunk, n) matrix.
    All terms are sums of integers and halves, so the result equals ``roc_auc_score`` on the resample exactly up
    to floating-point rounding of the final division.
    """
    order = np.argsort(p, kind="stable")
    p_sorted = p[order]
    is_event = y[order] == 1
    starts = np.flatnonzero(np.r_[True, p_sorted[1:] != p_sorted[:-1]])
    w = counts[:, order]
    w_event = np.where(is_event, w, 0.0)
    w_nonevent = np.where(is_event, 0.0, w)
    if starts.size < p.size:  # tie groups: pool their weights (skipped for untied scores, the common case)
        w_event = np.add.reduceat(w_event, starts, axis=1)
        w_nonevent = np.add.reduceat(w_nonevent, starts, axis=1)
    below = np.cumsum(w_nonevent, axis=1) - w_nonevent
    num = np.sum(w_event * (below + 0.5 * w_nonevent), axis=1)
    return _ratio(num, w_event.sum(axis=1) * w_nonevent.sum(axis=1))


def _auprc_batch(y: FloatArray, p: FloatArray, counts: FloatArray) -> FloatArray:
    """Average precision for each row of resampling counts, as ``average_precision_score`` defines it.

    AP = Σ_t (R_t − R_{t−1}) · P_t over the distinct score thresholds t (highest first), where a tie group
    enters as a whole. With weights w (resample counts), cumulative weighted TP and FP at the end of each tie
    group give P_t and R_t for all resamples at once. NaN where a resample has no events.
    """
    order = np.argsort(-p, kind="stable")
    p_sorted, y_sorted = p[order], y[order]
    weights = counts[:, order]
    tp = np.cumsum(weights * y_sorted, axis=1)
    fp = np.cumsum(weights * (1.0 - y_sorted), axis=1)
    ends = np.flatnonzero(np.r_[p_sorted[1:] != p_sorted[:-1], True])
    tp_end, fp_end = tp[:, ends], fp[:, ends]
    total_pos = tp_end[:, -1]
    gained = np.diff(tp_end, axis=1, prepend=0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(tp_end + fp_end > 0, tp_end / (tp_end + fp_end), 0.0)
        ap = (gained * precision).sum(axis=1) / total_pos
    return np.where(total_pos > 0, ap, np.nan)


def _brier_batch(y: FloatArray, p: FloatArray, counts: FloatArray) -> FloatArray:
    return counts @ ((p - y) ** 2) / y.size


def _scaled_brier_batch(y: FloatArray, p: FloatArray, counts: FloatArray) -> FloatArray:
    prevalence = counts @ y / y.size
    return 1.0 - _ratio(_brier_batch(y, p, counts), prevalence * (1.0 - prevalence))


def _oe_batch(y: FloatArray, p: FloatArray, counts: FloatArray) -> FloatArray:
    return counts @ (y - p) / y.size


# Public metric -> the same computation without re-validating its (already checked) input: used inside loops.
_UNCHECKED: dict[Callable[..., float], Metric] = {
    auroc: _auroc,
    auprc: _auprc,
    brier_score: _brier,
    scaled_brier_score: _scaled_brier,
    observed_minus_expected: _observed_minus_expected,
    calibration_in_the_large: _calibration_in_the_large,
    calibration_slope: _calibration_slope,
}
# Public metric -> vectorised version over a (replicates, n) matrix of resampling counts.
_BATCHED: dict[Callable[..., float], Callable[[FloatArray, FloatArray, FloatArray], FloatArray]] = {
    auroc: _auroc_batch,
    auprc: _auprc_batch,
    brier_score: _brier_batch,
    scaled_brier_score: _scaled_brier_batch,
    observed_minus_expected: _oe_batch,
}


def _resample_chunks(y: FloatArray, n_boot: int, seed: int, stratify: bool) -> Iterator[NDArray[np.intp]]:
    """Yield (chunk, n) matrices of row indices, n_boot rows in total, from one seeded generator."""
    rng = np.random.default_rng(seed)
    n = y.size
    strata = [np.flatnonzero(y == 1), np.flatnonzero(y == 0)] if stratify else [np.arange(n)]
    strata = [s for s in strata if s.size > 0]
    chunk = max(1, _BOOT_CHUNK_CELLS // n)
    done = 0
    while done < n_boot:
        rows = min(chunk, n_boot - done)
        yield np.concatenate([s[rng.integers(0, s.size, size=(rows, s.size))] for s in strata], axis=1)
        done += rows


def _replicates(
    metric: Callable[..., float], y: FloatArray, scores: Sequence[FloatArray], *, n_boot: int, seed: int, stratify: bool
) -> list[FloatArray]:
    """Metric values on n_boot resamples, for each score vector on the *same* resamples (NaN = undefined)."""
    batched = _BATCHED.get(metric)
    scalar = _UNCHECKED.get(metric, metric)
    out: list[list[FloatArray]] = [[] for _ in scores]
    n = y.size
    for idx in _resample_chunks(y, n_boot, seed, stratify):
        if batched is not None:
            rows = idx.shape[0]
            flat = (idx + (np.arange(rows) * n)[:, None]).ravel()
            counts = np.bincount(flat, minlength=rows * n).reshape(rows, n).astype(np.float64)
            for k, s in enumerate(scores):
                out[k].append(np.asarray(batched(y, s, counts), dtype=np.float64))
        else:
            for k, s in enumerate(scores):
                out[k].append(np.array([scalar(y[row], s[row]) for row in idx], dtype=np.float64))
    return [np.concatenate(parts) for parts in out]


def _check_boot_args(n_boot: int, level: float, seed: int) -> None:
    _check_positive_int(n_boot, "n_boot")
    _check_level(level)
    _check_positive_int(seed, "seed", minimum=0)


def _percentiles(values: FloatArray, level: float) -> tuple[float, float, FloatArray]:
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return math.nan, math.nan, finite
    lower, upper = np.quantile(finite, [(1.0 - level) / 2.0, (1.0 + level) / 2.0])
    return float(lower), float(upper), finite


def bootstrap_ci(
    y: ArrayLike,
    p: ArrayLike,
    metric: Callable[..., float] = auroc,
    *,
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
    stratify: bool = True,
) -> BootstrapCI:
    """Seeded nonparametric bootstrap percentile interval for ``metric(y, p)``.

    Patients are resampled with replacement. With ``stratify=True`` (default) events and non-events are resampled
    separately, each to its observed count, so every resample has both classes and the observed prevalence: the
    interval is then conditional on the prevalence, which slightly narrows it for prevalence-dependent metrics
    (Brier, O − E) and avoids resamples where discrimination is undefined. Replicates where the metric is NaN
    (undefined) are skipped and counted in ``n_boot_used``.

    ``metric`` is any ``f(y, p) -> float``; this module's AUROC, Brier, scaled Brier and O − E are computed for
    all resamples at once (vectorised); other metrics are called once per resample. The same seed gives the same
    resamples for every metric and for :func:`paired_bootstrap_difference`.
    """
    _check_boot_args(n_boot, level, seed)
    y_arr, p_arr = _validate(y, p)
    scalar = _UNCHECKED.get(metric, metric)
    (values,) = _replicates(metric, y_arr, [p_arr], n_boot=n_boot, seed=seed, stratify=stratify)
    lower, upper, finite = _percentiles(values, level)
    return BootstrapCI(float(scalar(y_arr, p_arr)), lower, upper, int(finite.size), n_boot, level)


def paired_bootstrap_difference(
    y: ArrayLike,
    p1: ArrayLike,
    p2: ArrayLike,
    metric: Callable[..., float] = auroc,
    *,
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
    stratify: bool = True,
) -> PairedBootstrapCI:
    """Paired bootstrap for ``metric(y, p1) − metric(y, p2)`` with both scores on the same patients.

    Each resample of patients is scored with both ``p1`` and ``p2``, so the interval accounts for the correlation
    between the two (e.g. model AUROC − oracle AUROC). Same resampling scheme as :func:`bootstrap_ci`; a
    replicate is skipped when either metric is undefined. ``share_positive`` is the share of differences > 0.
    """
    _check_boot_args(n_boot, level, seed)
    y_arr, p1_arr = _validate(y, p1, p_name="p1")
    p2_arr = _check_probability(p2, "p2")
    _check_same_length(("y", y_arr), ("p2", p2_arr))
    scalar = _UNCHECKED.get(metric, metric)
    first, second = _replicates(metric, y_arr, [p1_arr, p2_arr], n_boot=n_boot, seed=seed, stratify=stratify)
    lower, upper, finite = _percentiles(first - second, level)
    share = float(np.mean(finite > 0)) if finite.size else math.nan
    estimate = float(scalar(y_arr, p1_arr) - scalar(y_arr, p2_arr))
    return PairedBootstrapCI(estimate, lower, upper, int(finite.size), n_boot, level, share)
