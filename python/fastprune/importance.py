"""Importance scores: how much each weight, group of weights or channel matters.

A larger score means a more important weight; masks keep the largest scores. Weights are
``(out_features, in_features)`` matrices; conv weights ``(out, in, kh, kw)`` (any N-D array) are
flattened to ``(out, in*kh*kw)``. Every weight-sized computation runs in fastprune's C++ core on
all threads without the GIL; :func:`sparsegpt` (SparseGPT's saliency ``w² / U_jj²``) is the
solver module's own, reusing its factorisation of the inverse Hessian; only the short
per-channel vectors of :func:`reduce_group` and
:func:`normalize` are handled in NumPy.

dtypes: float16, bfloat16, float32 and float64 are accepted. Scores are float64 when any array
argument is float64, else float32, except that scores a float32 result cannot hold (``w²`` of
``|w| > 1.8e19``) come back in float64 rather than as Inf; scores beyond even float64 are a
ValueError naming the arguments. Every score is identical on every instruction-set level and
thread count (sums run in double in a fixed order).

Errors: a wrong kind of object or dtype is a TypeError; a wrong shape, a NaN/Inf value or an
unknown option is a ValueError naming the argument.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal

import numpy as np

from . import _core
from ._arrays import FloatArray, check_finite, float_dtype, rows_contiguous, to_numpy
from .solver import saliency as sparsegpt

__all__ = [
    "NORMALIZERS",
    "NORMS",
    "REDUCTIONS",
    "group_taylor",
    "magnitude",
    "normalize",
    "reduce_group",
    "sparsegpt",
    "taylor",
    "wanda",
]

Norm = Literal["l1", "l2", "linf"]
Reduction = Literal["mean", "sum", "max", "prod", "first"]
Normalizer = Literal["mean", "sum", "max", "standardization", "gaussian", "lamp"]

NORMS: tuple[str, ...] = ("l1", "l2", "linf")
REDUCTIONS: tuple[str, ...] = ("mean", "sum", "max", "prod", "first")
NORMALIZERS: tuple[str | None, ...] = (
    "mean",
    "sum",
    "max",
    "standardization",
    "gaussian",
    "lamp",
    None,
)
# Torch-Pruning spells min-max scaling "standarization"; both spellings are accepted.
_NORMALIZER_ALIASES = {"standarization": "standardization"}


# --- per-weight and per-group scores ---------------------------------------------------------


def magnitude(weight: object, norm: Norm = "l1", group: object = None) -> FloatArray:
    """Magnitude scores of `weight`, per weight or per group of weights.

    Args:
        weight: ``(out, in)`` weights (an N-D conv weight is flattened to ``(out, rest)``).
        norm: ``"l1"``, ``"l2"`` or ``"linf"``.
        group: None scores every weight: ``|w|`` for l1 and linf, ``w²`` for l2 (the shape of
            the flattened weight). ``"row"`` gives one score per output row (length out),
            ``"column"`` one per input column (length in), and a block shape — an ``(h, w)``
            tuple or an object with integer attributes ``h`` and ``w`` such as
            ``fastprune.masks.Block`` — one per block, shape ``(out // h, in // w)``. Group
            scores are the group's norm: l1 ``Σ|w|``, l2 ``sqrt(Σ w²)``, linf ``max |w|``.

    Raises:
        ValueError: unknown `norm` or `group`, a block shape that does not divide the weight
            shape, or NaN/Inf in `weight`.
    """
    norm_name = _choice(norm, NORMS, "norm")
    w_in = to_numpy(weight, "weight")
    w = _matrix(w_in, "weight", _work_dtype(w_in))
    if group is None:
        return _scores(lambda a: _core.importance.magnitude(a, norm_name), ("weight",), w)
    block_rows, block_cols = _group_shape(group, w.shape)
    scores = _scores(
        lambda a: _core.importance.block_norms(a, block_rows, block_cols, norm_name),
        ("weight",),
        w,
    )
    return scores.reshape(_group_result_shape(group, w.shape, block_rows, block_cols))


def wanda(weight: object, act_sq: object) -> FloatArray:
    """Wanda scores ``|W_ij| * sqrt(act_sq_j)`` (Sun et al. 2023), shape of `weight`.

    Args:
        weight: ``(out, in)`` weights (an N-D weight is flattened to ``(out, rest)``).
        act_sq: length-``in`` vector ``act_sq_j = Σ x_j²``, the sum over all calibration
            tokens of the squared j-th input feature (not divided by the token count), so that
            ``sqrt(act_sq_j) = ||X_j||_2``. :attr:`fastprune.Calibration.act_sq` is exactly
            this vector. Must be finite and ``>= 0``.
    """
    w_in, a_in = to_numpy(weight, "weight"), to_numpy(act_sq, "act_sq")
    work = _work_dtype(w_in, a_in)
    w = _matrix(w_in, "weight", work)
    a = _vector(a_in, "act_sq", work)
    if a.shape != (w.shape[1],):
        msg = f"act_sq: expected shape ({w.shape[1]},) (in_features of weight), got {a.shape}"
        raise ValueError(msg)
    if (a < 0).any():
        msg = f"act_sq: must be >= 0 (a sum of squares), got minimum {a.min()}"
        raise ValueError(msg)
    return _scores(_core.importance.wanda, ("weight", "act_sq"), w, a)


def taylor(
    weight: object,
    grad: object,
    multivariable: bool = False,
    per: Literal["element", "channel"] = "element",
) -> FloatArray:
    """First-order Taylor scores from a weight and the loss gradient with respect to it.

    Args:
        weight: ``(out, in)`` weights, or any N-D weight flattened to ``(out, rest)``; with
            ``per="channel"`` a 1-D weight (a norm layer's scale) is also accepted and scored
            per entry.
        grad: the gradient, same shape as `weight`.
        multivariable: per channel, score ``|Σ w·g|`` (contributions may cancel) instead of
            ``Σ |w·g|``. Has no effect per element.
        per: ``"element"``: ``|w·g|`` per weight, shape ``(out, rest)``. ``"channel"``: one score
            per output channel (row), length out.
    """
    if per not in ("element", "channel"):
        msg = f"per: expected 'element' or 'channel', got {per!r}"
        raise ValueError(msg)
    w_in, g_in = to_numpy(weight, "weight"), to_numpy(grad, "grad")
    if w_in.shape != g_in.shape:
        msg = f"grad: shape {g_in.shape} does not match weight shape {w_in.shape}"
        raise ValueError(msg)
    work = _work_dtype(w_in, g_in)
    allow_vector = per == "channel"
    w = _matrix(w_in, "weight", work, allow_vector=allow_vector)
    g = _matrix(g_in, "grad", work, allow_vector=allow_vector)
    if per == "element":
        return _scores(_core.importance.taylor, ("weight", "grad"), w, g)
    flag: object = multivariable
    if not isinstance(flag, (bool, np.bool_)):
        msg = f"multivariable: expected a bool, got {flag!r}"
        raise TypeError(msg)
    return _scores(
        lambda a, b: _core.importance.taylor_channels(a, b, bool(multivariable)),
        ("weight", "grad"),
        w,
        g,
    )


# --- combining the channel scores of a dependency group (Torch-Pruning) ---------------------


def group_taylor(
    pairs: Sequence[tuple[object, object]],
    reduction: Reduction = "mean",
    normalizer: Normalizer | Literal["standarization"] | None = "mean",
    multivariable: bool = False,
) -> FloatArray:
    """Torch-Pruning's GroupTaylorImportance for one dependency group of coupled channels.

    Each ``(weight, grad)`` pair is one layer of the group with the coupled channels on
    dimension 0 (a conv or linear weight sliced or transposed so that its rows are the group's
    channels, or a 1-D norm-layer scale); all pairs have the same channel count. Each layer is
    scored per channel with :func:`taylor` (``per="channel"``), the layers are combined with
    :func:`reduce_group` and the result is normalized with :func:`normalize`.

    Returns:
        one score per channel, float64 when any array is float64, else float32.
    """
    given: object = pairs
    if isinstance(given, (str, bytes)) or not isinstance(given, Sequence) or len(given) == 0:
        msg = "pairs: expected a non-empty sequence of (weight, grad) pairs"
        raise ValueError(msg)
    scores = []
    for i, pair in enumerate(given):
        if not isinstance(pair, (tuple, list)) or len(pair) != 2:
            msg = f"pairs[{i}]: expected a (weight, grad) pair, got {type(pair).__name__}"
            raise ValueError(msg)
        scores.append(taylor(pair[0], pair[1], multivariable=multivariable, per="channel"))
    return normalize(reduce_group(scores, reduction), normalizer)


def reduce_group(scores_list: Sequence[object], reduction: Reduction = "mean") -> FloatArray:
    """Combine the per-channel scores of the layers of one group (Torch-Pruning's ``_reduce``).

    ``"mean"`` and ``"sum"``: the mean / sum over layers; ``"max"``: the largest; ``"prod"``:
    the product; ``"first"``: the first layer's scores. (Torch-Pruning's ``max`` starts from
    −99999; this is the true maximum, the same for every score above that.)

    Args:
        scores_list: non-empty sequence of 1-D score vectors of one common length.
    """
    name = _choice(reduction, REDUCTIONS, "reduction")
    if (
        isinstance(scores_list, (str, bytes))
        or not isinstance(scores_list, Sequence)
        or len(scores_list) == 0
    ):
        msg = "scores_list: expected a non-empty sequence of 1-D score arrays"
        raise ValueError(msg)
    arrays = [to_numpy(s, f"scores_list[{i}]") for i, s in enumerate(scores_list)]
    out_dtype = _work_dtype(*arrays)
    vectors = [_vector(a, f"scores_list[{i}]", np.float64) for i, a in enumerate(arrays)]
    for i, v in enumerate(vectors[1:], start=1):
        if v.shape != vectors[0].shape:
            msg = (
                f"scores_list[{i}]: shape {v.shape} does not match scores_list[0] shape "
                f"{vectors[0].shape}"
            )
            raise ValueError(msg)
    stacked = np.stack(vectors)
    reduced: FloatArray = {
        "mean": lambda: stacked.mean(axis=0),
        "sum": lambda: stacked.sum(axis=0),
        "max": lambda: stacked.max(axis=0),
        "prod": lambda: stacked.prod(axis=0),
        "first": lambda: stacked[0].copy(),
    }[name]()
    return reduced.astype(out_dtype)


def normalize(
    scores: object,
    normalizer: Normalizer | Literal["standarization"] | None = "mean",
) -> FloatArray:
    """Normalize one group's channel scores as Torch-Pruning's ``_normalize`` does.

    - ``"sum"``: ``x / Σx``; ``"mean"``: ``x / mean(x)``; ``"max"``: ``x / max(x)``.
    - ``"standardization"`` (Torch-Pruning spells it ``"standarization"``; both accepted): min-max
      scaling ``(x − min) / (max − min + 1e-8)`` — not a z-score, despite the name.
    - ``"gaussian"``: ``(x − mean) / (std + 1e-8)``, std with Bessel's correction (ddof=1, as
      torch's ``std``).
    - ``"lamp"`` (LAMP, Lee et al. 2021): sort ascending; each score is divided by the sum of
      itself and every score after it in that order; results are put back in the original
      order. Equal scores are ordered by index (Torch-Pruning's unstable sort may order ties
      differently).
    - ``None``: unchanged (a copy).

    As in Torch-Pruning, a zero denominator (all-zero scores for sum/mean/max/lamp, a single
    score for gaussian) gives NaN or Inf rather than an error.

    Returns:
        float64 for float64 `scores`, else float32.
    """
    if isinstance(normalizer, str):
        normalizer = _NORMALIZER_ALIASES.get(normalizer, normalizer)  # type: ignore[assignment]
    name = _choice(normalizer, NORMALIZERS, "normalizer")
    s_in = to_numpy(scores, "scores")
    out_dtype = _work_dtype(s_in)
    x = _vector(s_in, "scores", np.float64)
    result: FloatArray
    with np.errstate(divide="ignore", invalid="ignore"):
        if name is None:
            result = x.copy()
        elif name == "sum":
            result = x / x.sum()
        elif name == "mean":
            result = x / x.mean()
        elif name == "max":
            result = x / x.max()
        elif name == "standardization":
            result = (x - x.min()) / (x.max() - x.min() + 1e-8)
        elif name == "gaussian":
            std = x.std(ddof=1) if x.size > 1 else np.nan
            result = (x - x.mean()) / (std + 1e-8)
        else:
            result = _lamp(x)
    return result.astype(out_dtype)


def _lamp(x: FloatArray) -> FloatArray:
    order = np.argsort(x, kind="stable")
    ascending = x[order]
    # Sum of each score and every larger one: a cumulative sum from the largest down.
    from_here_up = np.cumsum(ascending[::-1])[::-1]
    result: FloatArray = np.empty_like(x)
    result[order] = ascending / from_here_up
    return result


# --- argument handling -------------------------------------------------------------------------


def _choice(value: Any, options: Sequence[object], name: str) -> Any:
    if value is not None and not isinstance(value, str):
        msg = f"{name}: expected one of {_listing(options)}, got {value!r}"
        raise ValueError(msg)
    if value not in options:
        msg = f"{name}: expected one of {_listing(options)}, got {value!r}"
        raise ValueError(msg)
    return value


def _listing(options: Sequence[object]) -> str:
    return ", ".join(repr(o) for o in options)


def _scores(
    kernel: Callable[..., FloatArray], names: Sequence[str], *arrays: FloatArray
) -> FloatArray:
    """`kernel(*arrays)`, recomputed in float64 when a float32 score overflows to Inf.

    The arguments are finite, so a score that overflows float32 is finite in float64 (every
    score is at most a product of two finite float32 values, or a norm of them): the float64
    scores are returned then, rather than an Inf that would rank wrongly. Scores that overflow
    even float64 are a ValueError naming the arguments.
    """
    scores = kernel(*arrays)
    if _finite_scores(scores):
        return scores
    if arrays[0].dtype == np.float32:
        scores = kernel(*(a.astype(np.float64) for a in arrays))
        if _finite_scores(scores):
            return scores
    largest = max(float(np.max(np.abs(a))) for a in arrays)
    msg = (
        f"{' and '.join(names)}: the scores overflow float64 (values up to {largest:.4g}); "
        f"scale {' and '.join(names)} down"
    )
    raise ValueError(msg)


def _finite_scores(scores: FloatArray) -> bool:
    # Scores of finite arguments are >= 0 and never NaN, so an overflow shows in the maximum,
    # which NumPy finds several times faster than a full finiteness scan.
    return scores.size == 0 or bool(np.isfinite(np.max(scores)))


def _work_dtype(*arrays: np.ndarray[Any, Any]) -> type[np.floating[Any]]:
    """float64 when any argument is a float64 array, else float32 (dtypes are checked later)."""
    wide = any(a.dtype.kind == "f" and a.dtype.itemsize == 8 for a in arrays)  # any byte order
    return np.float64 if wide else np.float32


def _matrix(
    x: object, name: str, work: type[np.floating[Any]], *, allow_vector: bool = False
) -> FloatArray:
    """`x` as a finite 2-D array of dtype `work` with contiguous rows.

    N-D arrays are flattened to ``(shape[0], rest)`` (a view when the layout allows);
    1-D arrays become one column when `allow_vector`. A copy is made only to change the dtype
    or to make rows contiguous.
    """
    a = to_numpy(x, name)
    float_dtype(a, name)
    if a.ndim == 1 and allow_vector:
        a = a.reshape(-1, 1)
    elif a.ndim < 2:
        expected = "a 1-D or N-D array" if allow_vector else "an (out_features, in_features) array"
        msg = f"{name}: expected {expected}, got shape {a.shape}"
        raise ValueError(msg)
    elif a.ndim > 2:
        a = a.reshape(a.shape[0], -1)
    if a.dtype != work:
        a = a.astype(work)
    elif not rows_contiguous(a):
        a = np.ascontiguousarray(a)
    check_finite(a, name)
    return a


def _vector(x: object, name: str, work: type[np.floating[Any]]) -> FloatArray:
    a = to_numpy(x, name)
    float_dtype(a, name)
    if a.ndim != 1:
        msg = f"{name}: expected a 1-D array, got shape {a.shape}"
        raise ValueError(msg)
    a = np.ascontiguousarray(a, dtype=work)
    check_finite(a, name)
    return a


def _group_shape(group: object, shape: tuple[int, ...]) -> tuple[int, int]:
    """(block_rows, block_cols) of a group specification, checked against the weight shape."""
    rows, cols = shape
    if isinstance(group, str):
        if group == "row":
            return 1, cols
        if group == "column":
            return rows, 1
        msg = f"group: expected None, 'row', 'column', an (h, w) tuple or a Block, got {group!r}"
        raise ValueError(msg)
    if isinstance(group, tuple):
        if len(group) != 2:
            msg = f"group: a block shape is a (h, w) pair, got {group!r}"
            raise ValueError(msg)
        h, w = group
    elif hasattr(group, "h") and hasattr(group, "w"):
        h, w = group.h, group.w
    else:
        msg = f"group: expected None, 'row', 'column', an (h, w) tuple or a Block, got {group!r}"
        raise ValueError(msg)
    for value, what in ((h, "h"), (w, "w")):
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
            msg = f"group: block {what} must be a positive integer, got {value!r}"
            raise ValueError(msg)
        if value < 1:
            msg = f"group: block {what} must be a positive integer, got {value!r}"
            raise ValueError(msg)
    h, w = int(h), int(w)
    if rows % h != 0 or cols % w != 0:
        msg = f"group: block ({h}, {w}) does not divide the weight shape {shape}"
        raise ValueError(msg)
    return h, w


def _group_result_shape(
    group: object, shape: tuple[int, ...], block_rows: int, block_cols: int
) -> tuple[int, ...]:
    if isinstance(group, str):
        return (shape[0],) if group == "row" else (shape[1],)
    return (shape[0] // block_rows, shape[1] // block_cols)
