"""Non-uniform sparsity: how a model-wide sparsity budget is shared out among its blocks.

OWL (outlier-weighted layer-wise sparsity, Yin et al. 2024) observes that the blocks of a large
language model differ in how many "outlier" weights they hold, weights whose Wanda score
``|W_ij| * ||X_j||`` is far above their block's mean, and that pruning such blocks less keeps
more of the model. Per block ``l`` it measures the outlier ratio ``r_l`` (the fraction of the
block's scores above ``m`` times their mean, :func:`outlier_ratio`), scales the ratios linearly
onto ``[0, 2 * lam]`` and gives block ``l`` the sparsity ``target - d_l + mean(d)``: at most
``lam`` above or below the target, lower where outliers are more frequent, the mean exactly the
target (:func:`owl`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from ._arrays import check_sparsity, to_numpy

__all__ = ["outlier_ratio", "owl"]

FloatArray = npt.NDArray[np.float64]


def outlier_ratio(scores: object, m: float = 5.0) -> float:
    """The fraction of `scores` (non-negative, any shape) greater than `m` times their mean."""
    if not isinstance(m, int | float) or isinstance(m, bool) or not np.isfinite(m) or m <= 0:
        msg = f"m: expected a positive number, got {m!r}"
        raise ValueError(msg)
    s = to_numpy(scores, "scores")
    if s.size == 0:
        msg = "scores: is empty"
        raise ValueError(msg)
    if s.dtype.kind not in "fiu":
        msg = f"scores: expected a numeric array, got dtype {s.dtype}"
        raise TypeError(msg)
    s = s.astype(np.float64, copy=False)
    if not np.isfinite(s).all() or (s < 0).any():
        msg = "scores: must be finite and non-negative"
        raise ValueError(msg)
    return float(np.count_nonzero(s > m * s.mean()) / s.size)


def owl(
    outlier_ratios: object, sparsity: float, lam: float = 0.08, sizes: object = None
) -> FloatArray:
    """OWL's per-block sparsities from the blocks' outlier ratios.

    Args:
        outlier_ratios: one value per block (:func:`outlier_ratio` of its Wanda scores).
        sparsity: the target in ``[0, 1)``; the mean of the result, weighted by `sizes`.
        lam: how far a block may move from the target (OWL's lambda), in ``[0, 1)``.
        sizes: the number of weights of each block (default: all equal), so that the fraction
            of all weights pruned is exactly `sparsity` even when blocks differ in size.

    Blocks are moved by ``(r_l - min r) / (max r - min r) * 2 * lam`` below a common level; a
    block pushed outside ``[0, 1)`` is held at the bound and the level is re-solved so that the
    weighted mean stays the target. Equal ratios give the uniform allocation.
    """
    target = check_sparsity(sparsity, "sparsity")
    if not isinstance(lam, int | float) or isinstance(lam, bool) or not 0.0 <= lam < 1.0:
        msg = f"lam: expected a number in [0, 1), got {lam!r}"
        raise ValueError(msg)
    ratios = _vector(outlier_ratios, "outlier_ratios")
    weights = np.ones_like(ratios) if sizes is None else _vector(sizes, "sizes")
    if weights.shape != ratios.shape:
        msg = f"sizes: expected {ratios.size} values (one per block), got {weights.size}"
        raise ValueError(msg)
    if (weights <= 0).any():
        msg = "sizes: every block needs a positive number of weights"
        raise ValueError(msg)
    spread = float(ratios.max() - ratios.min())
    shift = (ratios - ratios.min()) / spread * 2 * lam if spread > 0 else np.zeros_like(ratios)
    return _level(shift, weights / weights.sum(), target)


def _level(shift: FloatArray, share: FloatArray, target: float) -> FloatArray:
    """``clip(c - shift, 0, top)`` with ``c`` such that the `share`-weighted mean is `target`."""
    top = float(np.nextafter(1.0, 0.0))

    def at(c: float) -> FloatArray:
        clipped: FloatArray = np.clip(c - shift, 0.0, top)
        return clipped

    c = target + float(share @ shift)
    result = at(c)
    if result.min() > 0.0 and result.max() < top:
        return result
    low, high = float(shift.min()), float(shift.max()) + 1.0  # the mean is 0 at low, ~1 at high
    for _ in range(200):  # bisection on a monotone function: 2^-200 of the bracket
        mid = 0.5 * (low + high)
        if float(share @ at(mid)) < target:
            low = mid
        else:
            high = mid
    return at(0.5 * (low + high))


def _vector(x: object, name: str) -> FloatArray:
    a: Any = to_numpy(x, name)
    if a.ndim != 1 or a.size == 0:
        msg = f"{name}: expected a non-empty 1-D array, got shape {a.shape}"
        raise ValueError(msg)
    if a.dtype.kind not in "fiu":
        msg = f"{name}: expected numbers, got dtype {a.dtype}"
        raise TypeError(msg)
    v: FloatArray = a.astype(np.float64)
    if not np.isfinite(v).all():
        msg = f"{name}: contains NaN or Inf values"
        raise ValueError(msg)
    return v
