"""Wanda and magnitude pruning: score the weights, mask the lowest scores, zero them.

Both pruners rank weights by a score (:mod:`fastprune.importance`) and prune with
:func:`fastprune.mask`, so every pattern and scope of the masks module is available and ties
are broken the same way everywhere (among equal scores the lower index is pruned first). They
do not update the remaining weights (SparseGPT does, see :func:`fastprune.sparsegpt`).

- :func:`wanda` (Sun et al. 2023): score ``|W_ij| · ||X_j||_2`` from calibration activations.
  ``variant="wanda"`` is the paper's variant (the reference code's ``use_variant``): each row
  prunes its smallest scores up to a fraction ``alpha`` of the row's total score, with ``alpha``
  found by bisection until the layer's sparsity is within 0.001 of the target.
- :func:`magnitude_prune`: score ``|W_ij|``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any, Literal, overload

import numpy as np

from . import importance
from ._arrays import FloatArray, calibration_statistic, check_sparsity, float_dtype, to_numpy
from .masks import NM, Pattern, Unstructured, apply_mask, mask, pattern
from .result import PruneResult

__all__ = ["magnitude_prune", "wanda"]

Scope = Literal["row", "layer", "global"]

# The Wanda reference's bisection: start at 0.4 inside [0, 0.8]; stop when the sparsity is
# within 0.001 of the target or the interval is narrower than 0.001.
_ALPHA_START, _ALPHA_LOW, _ALPHA_HIGH = 0.4, 0.0, 0.8
_SPARSITY_TOLERANCE = 0.001
_ALPHA_RESOLUTION = 0.001


@overload
def wanda(
    weight: object,
    calibration_or_act_sq: object,
    sparsity: float = 0.5,
    pattern: str | Pattern = "unstructured",
    scope: Literal["row", "layer"] = "row",
    variant: Literal["wanda"] | None = None,
) -> PruneResult: ...


@overload
def wanda(
    weight: Sequence[object],
    calibration_or_act_sq: Sequence[object],
    sparsity: float = 0.5,
    pattern: str | Pattern = "unstructured",
    *,
    scope: Literal["global"],
    variant: None = None,
) -> list[PruneResult]: ...


def wanda(
    weight: object,
    calibration_or_act_sq: object,
    sparsity: float = 0.5,
    pattern: str | Pattern = "unstructured",
    scope: Scope = "row",
    variant: Literal["wanda"] | None = None,
) -> PruneResult | list[PruneResult]:
    """Prune ``weight`` with Wanda: keep the largest ``|W_ij| · ||X_j||_2``.

    Args:
        weight: ``(out_features, in_features)``, float16, bfloat16, float32 or float64; a list
            or tuple of them with ``scope="global"``.
        calibration_or_act_sq: a :class:`fastprune.Calibration` of the layer's inputs (its
            ``act_sq`` is used) or the vector ``act_sq_j = Σ_t x_tj²`` itself (length
            in_features); with ``scope="global"`` a list matching the weights.
        sparsity: fraction of weights pruned, in ``[0, 1)``; ignored for N:M patterns, whose
            sparsity is ``1 - n/m``.
        pattern: a pattern of :func:`fastprune.mask` (``"unstructured"``, ``"2:4"``,
            ``"block:16x16"``, ``"row"``, ``"column"`` or a pattern object).
        scope: for unstructured masks, what is ranked together: ``"row"`` (Wanda's default,
            exactly ``int(in_features · sparsity)`` pruned per row), ``"layer"`` or
            ``"global"`` (all weights of the lists ranked as one).
        variant: ``None``, or ``"wanda"`` for the paper's cumulative-score variant (unstructured,
            per row only). Each row prunes its ``k_i`` smallest scores, ``k_i`` the number of
            leading entries of the row's ascending scores whose running sum is ``<= alpha ·``
            the row's total; ``alpha`` is bisected as in the reference (start 0.4 in
            ``[0, 0.8]``) until the layer's sparsity is within 0.001 of ``sparsity``. Unlike
            the reference, which prunes every score equal to the row's threshold, exactly
            ``k_i`` are pruned (ties by index).

    Returns:
        :class:`fastprune.result.PruneResult` (a list of them for ``scope="global"``) with the
        pruned weight in its own dtype, the mask (True = kept), ``damp_used=None``, and
        ``loss = Σ_pruned W_ij² · act_sq_j``: the squared reconstruction error
        ``||(W − W') Xᵀ||²`` over the calibration tokens if the input features were
        uncorrelated (Wanda's own diagonal estimate; the cross terms are ignored).

    Raises:
        ValueError: a bad sparsity, pattern, scope or variant; act_sq of the wrong length,
            negative or non-finite; NaN/Inf in the weight.
        TypeError: a weight or act_sq that is not a float array.
    """
    start = time.perf_counter()
    if scope == "global":
        weights, stats = _global_lists(weight, calibration_or_act_sq)
        scored = [_wanda_scores(w, a) for w, a in zip(weights, stats, strict=True)]
    else:
        scored = [_wanda_scores(weight, calibration_or_act_sq)]
    chosen: object = variant
    if chosen is not None:
        if chosen != "wanda":
            msg = f"variant: expected None or 'wanda', got {chosen!r}"
            raise ValueError(msg)
        pat = _pattern(pattern)
        if not isinstance(pat, Unstructured) or scope != "row":
            msg = (
                "variant: 'wanda' selects per row among unstructured weights; it needs "
                f"pattern='unstructured' and scope='row', got {pat} and {scope!r}"
            )
            raise ValueError(msg)
        w, scores = scored[0]
        keep = _wanda_variant_mask(scores, check_sparsity(sparsity))
        return _result(w, keep, scores, start)
    return _prune(scored, sparsity, pattern, scope, start)


@overload
def magnitude_prune(
    weight: object,
    sparsity: float = 0.5,
    pattern: str | Pattern = "unstructured",
    scope: Literal["row", "layer"] = "row",
) -> PruneResult: ...


@overload
def magnitude_prune(
    weight: Sequence[object],
    sparsity: float = 0.5,
    pattern: str | Pattern = "unstructured",
    *,
    scope: Literal["global"],
) -> list[PruneResult]: ...


def magnitude_prune(
    weight: object,
    sparsity: float = 0.5,
    pattern: str | Pattern = "unstructured",
    scope: Scope = "row",
) -> PruneResult | list[PruneResult]:
    """Prune ``weight`` by magnitude: keep the largest ``|W_ij|``.

    Arguments as in :func:`wanda` (without calibration data). ``scope="row"`` is the default
    (exactly ``int(in_features · sparsity)`` pruned per row); ``"layer"`` ranks the whole
    matrix, ``"global"`` a list of matrices together.

    Returns:
        :class:`fastprune.result.PruneResult` (a list for ``scope="global"``), weight in its
        own dtype, ``damp_used=None``, ``loss = Σ_pruned W_ij² = ||W − W'||²``.
    """
    start = time.perf_counter()
    if scope == "global":
        weights = _weight_list(weight)
        scored = [_magnitude_scores(w) for w in weights]
    else:
        scored = [_magnitude_scores(weight)]
    return _prune(scored, sparsity, pattern, scope, start)


# --- internals ---------------------------------------------------------------------------------


def _wanda_scores(weight: object, stats: object) -> tuple[np.ndarray[Any, Any], FloatArray]:
    w = _weight_matrix(weight)
    act_sq = calibration_statistic(stats, "act_sq", "calibration_or_act_sq")
    return w, importance.wanda(w, act_sq)


def _magnitude_scores(weight: object) -> tuple[np.ndarray[Any, Any], FloatArray]:
    w = _weight_matrix(weight)
    return w, importance.magnitude(w, "l1")


def _weight_matrix(weight: object) -> np.ndarray[Any, Any]:
    w = to_numpy(weight, "weight")
    float_dtype(w, "weight")
    if w.ndim != 2:
        msg = f"weight: expected an (out_features, in_features) array, got shape {w.shape}"
        raise ValueError(msg)
    return w


def _weight_list(weight: object) -> list[object]:
    if not isinstance(weight, (list, tuple)) or not weight:
        msg = "weight: scope='global' takes a non-empty list or tuple of weight matrices"
        raise TypeError(msg)
    return list(weight)


def _global_lists(weight: object, stats: object) -> tuple[list[object], list[object]]:
    weights = _weight_list(weight)
    if not isinstance(stats, (list, tuple)) or len(stats) != len(weights):
        msg = (
            "calibration_or_act_sq: scope='global' takes a list with one Calibration or act_sq "
            f"per weight ({len(weights)})"
        )
        raise ValueError(msg)
    return weights, list(stats)


def _pattern(spec: str | Pattern) -> Pattern:
    return pattern(spec)


def _prune(
    scored: Sequence[tuple[np.ndarray[Any, Any], FloatArray]],
    sparsity: float,
    pattern_spec: str | Pattern,
    scope: Scope,
    start: float,
) -> PruneResult | list[PruneResult]:
    pat = _pattern(pattern_spec)
    amount: float | None = None if isinstance(pat, NM) else check_sparsity(sparsity)
    if scope == "global":
        keeps = mask([s for _, s in scored], amount, pat, scope="global")
        return [_result(w, k, s, start) for (w, s), k in zip(scored, keeps, strict=True)]
    w, scores = scored[0]
    return _result(w, mask(scores, amount, pat, scope=scope), scores, start)


def _result(
    weight: np.ndarray[Any, Any], keep: np.ndarray[Any, Any], scores: FloatArray, start: float
) -> PruneResult:
    pruned = scores[~keep].astype(np.float64)
    loss = float(np.dot(pruned, pruned))
    return PruneResult(apply_mask(weight, keep), keep, loss, None, time.perf_counter() - start)


def _wanda_variant_mask(scores: FloatArray, sparsity: float) -> np.ndarray[Any, Any]:
    """The Wanda paper's variant: per-row cumulative-score thresholds, alpha by bisection."""
    rows, cols = scores.shape
    order = np.argsort(scores, axis=1, kind="stable")  # ascending by (score, index)
    running = np.cumsum(np.take_along_axis(scores, order, axis=1).astype(np.float64), axis=1)
    totals = scores.astype(np.float64).sum(axis=1)

    def pruned_per_row(alpha: float) -> np.ndarray[Any, Any]:
        counts: np.ndarray[Any, Any] = np.count_nonzero(
            running <= (totals * alpha)[:, None], axis=1
        )
        return counts

    alpha, low, high = _ALPHA_START, _ALPHA_LOW, _ALPHA_HIGH
    counts = pruned_per_row(alpha)
    achieved = counts.sum() / max(scores.size, 1)
    while abs(achieved - sparsity) > _SPARSITY_TOLERANCE and high - low >= _ALPHA_RESOLUTION:
        if achieved > sparsity:
            alpha, high = (alpha + low) / 2.0, alpha
        else:
            alpha, low = (alpha + high) / 2.0, alpha
        counts = pruned_per_row(alpha)
        achieved = counts.sum() / max(scores.size, 1)
    keep_sorted = np.arange(cols)[None, :] >= counts[:, None]
    keep = np.empty((rows, cols), dtype=bool)
    np.put_along_axis(keep, order, keep_sorted, axis=1)
    return keep
