"""Sparsity masks: which weights to keep, from importance scores.

A mask is a bool array of the scores' shape, **True = kept**. Every selection is exact and
deterministic: scores are ranked by ``(score, index)`` ascending and the lowest ranks are
pruned, so among equal scores the lower index is pruned first (``-0.0`` and ``0.0`` are equal).
``sparsity`` is the fraction pruned, in ``[0, 1)``; the number pruned from ``total`` items is
``int(total * sparsity)``.

Patterns:

- :class:`Unstructured` — any weights; ``scope`` says what is ranked together: ``"row"`` (each
  output row prunes exactly ``int(in_features * sparsity)``), ``"layer"`` (the whole matrix)
  or ``"global"`` (a list of matrices ranked as one, concatenated in order, row-major).
- :class:`NM` — ``NM(n, m)`` keeps **n** of every **m** consecutive weights along the input
  dimension (``"2:4"`` keeps 2 of every 4, NVIDIA's meaning). Careful: the SparseGPT and Wanda
  reference code pass ``prune_n=2, prune_m=4`` counting the *pruned* weights; here ``n`` is
  always the number *kept* and :attr:`NM.pruned` is ``m - n``.
- :class:`Block` — ``Block(h, w)``: h×w tiles ranked by their summed score (summed in float64).
- :class:`Row`, :class:`Column` — whole output rows / input columns by their summed score.

Scores may be float16, bfloat16, float32 or float64; float16 and bfloat16 are converted to
float32 (exactly), float32 and float64 are ranked as they are. NaN or Inf is a ValueError.
The selection runs in C++ (O(n) radix selection per row, rank counting inside N:M groups), on
several threads; the result never depends on the thread count or instruction-set level.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, Union, overload

import numpy as np
import numpy.typing as npt

from . import _core
from ._arrays import (
    BoolArray,
    bool_array,
    check_sparsity,
    count_pruned,
    float_dtype,
    positive_int,
    rows_contiguous,
    to_numpy,
)

Scope = Literal["row", "layer", "global"]
_SCOPES = ("row", "layer", "global")


@dataclass(frozen=True)
class Unstructured:
    """Any weights may be pruned; the ``scope`` of :func:`mask` says what is ranked together."""


@dataclass(frozen=True, repr=False)
class NM:
    """N:M sparsity: **n kept** of every **m** consecutive weights along the input dimension.

    ``NM(2, 4)`` is NVIDIA's 2:4 (2 kept, 2 pruned in every group of 4). This is *not* the
    ``prune_n``/``prune_m`` of the SparseGPT and Wanda reference code, which count the pruned
    weights; :attr:`pruned` gives that number. Requires ``1 <= n <= m``; the implied sparsity
    is ``1 - n/m``.
    """

    n: int
    m: int

    def __post_init__(self) -> None:
        n = positive_int(self.n, "n")
        m = positive_int(self.m, "m")
        if n > m:
            msg = f"n: NM(n, m) keeps n of every m, so n <= m is needed, got n={n} > m={m}"
            raise ValueError(msg)
        object.__setattr__(self, "n", n)
        object.__setattr__(self, "m", m)

    @property
    def pruned(self) -> int:
        """How many of every m consecutive weights are pruned (m - n)."""
        return self.m - self.n

    @property
    def sparsity(self) -> float:
        """The fraction pruned, 1 - n/m."""
        return 1.0 - self.n / self.m

    def __repr__(self) -> str:
        return f"NM(n={self.n}, m={self.m})  # {self.n} kept of every {self.m}"

    def __str__(self) -> str:
        return f"{self.n}:{self.m} ({self.n} kept of every {self.m})"


@dataclass(frozen=True)
class Block:
    """h×w tiles of the (out, in) matrix, each kept or pruned whole, ranked by summed score."""

    h: int
    w: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "h", positive_int(self.h, "h"))
        object.__setattr__(self, "w", positive_int(self.w, "w"))


@dataclass(frozen=True)
class Row:
    """Whole output rows (output channels), ranked by each row's summed score."""


@dataclass(frozen=True)
class Column:
    """Whole input columns (input features), ranked by each column's summed score."""


Pattern = Union[Unstructured, NM, Block, Row, Column]  # noqa: UP007 - a runtime alias on 3.10
_PATTERN_TYPES = (Unstructured, NM, Block, Row, Column)

_NM_SPEC = re.compile(r"(\d+):(\d+)")
_BLOCK_SPEC = re.compile(r"block:(\d+)x(\d+)")
_SPEC_HELP = (
    "expected 'unstructured', 'N:M' (N kept of every M, e.g. '2:4'), 'block:HxW' "
    "(e.g. 'block:16x16'), 'row' or 'column'"
)


def pattern(spec: str | Pattern) -> Pattern:
    """The pattern a spec names: ``"unstructured"``, ``"2:4"`` (2 kept of every 4),
    ``"block:16x16"``, ``"row"`` or ``"column"``. Pattern objects are returned as they are.

    Raises ValueError for an unknown spec or an N:M with n > m or n < 1, TypeError for a
    non-string.
    """
    given: object = spec  # checked at run time too: callers may not be type-checked
    if isinstance(given, _PATTERN_TYPES):
        return given
    if not isinstance(given, str):
        msg = f"pattern: expected a str or a Pattern, got {type(given).__name__}"
        raise TypeError(msg)
    text = given.strip().lower()
    if text == "unstructured":
        return Unstructured()
    if text == "row":
        return Row()
    if text == "column":
        return Column()
    if found := _NM_SPEC.fullmatch(text):
        n, m = int(found[1]), int(found[2])
        if not 1 <= n <= m:
            msg = f"pattern: {spec!r} is N:M with N kept of every M, so 1 <= N <= M is needed"
            raise ValueError(msg)
        return NM(n, m)
    if found := _BLOCK_SPEC.fullmatch(text):
        h, w = int(found[1]), int(found[2])
        if h < 1 or w < 1:
            msg = f"pattern: {spec!r} needs a block shape of at least 1x1"
            raise ValueError(msg)
        return Block(h, w)
    msg = f"pattern: unknown pattern spec {spec!r}; {_SPEC_HELP}"
    raise ValueError(msg)


@overload
def mask(
    scores: Sequence[Any],
    sparsity: float | None = None,
    pattern: str | Pattern = "unstructured",
    *,
    scope: Literal["global"],
) -> list[BoolArray]: ...


@overload
def mask(
    scores: Any,
    sparsity: float | None = None,
    pattern: str | Pattern = "unstructured",
    scope: Literal["row", "layer"] = "row",
) -> BoolArray: ...


def mask(
    scores: Any,
    sparsity: float | None = None,
    pattern: str | Pattern = "unstructured",
    scope: Scope = "row",
) -> BoolArray | list[BoolArray]:
    """A bool mask (True = kept) pruning the lowest scores in the given pattern.

    Args:
        scores: importance scores, 2-D ``(out_features, in_features)``, float16, bfloat16,
            float32 or float64 (higher = more important). For ``scope="global"``, a list or
            tuple of such arrays (shapes may differ); a list of masks is returned.
        sparsity: the fraction pruned, in ``[0, 1)``. Required except for N:M, where it is
            implied (``1 - n/m``) and, if given, must equal that.
        pattern: a :class:`Pattern` or a spec for :func:`pattern` (``"2:4"`` = 2 kept of 4).
        scope: for unstructured masks, what is ranked together: ``"row"`` (exactly
            ``int(in_features * sparsity)`` pruned in every row), ``"layer"`` (exactly
            ``int(size * sparsity)`` over the matrix) or ``"global"`` (exactly
            ``int(total * sparsity)`` over all arrays, ranked as if concatenated in order,
            row-major). N:M, Block, Row and Column work per matrix and need ``"row"``.

    Ties: ranks are ``(score, index)`` ascending and the lowest are pruned, so among equal
    scores the lower index goes first (row-major block index for blocks, concatenated index
    for ``"global"``). Block, Row and Column rank by summed score, summed in float64; N:M
    keeps the n largest of each group of m. The scores are never modified; float16 and
    bfloat16 scores are converted to float32 (exactly), and a ``"global"`` list holding any
    float64 array is ranked in float64.

    Returns:
        A new bool array of the scores' shape, True = kept (for ``"global"``, a list of them).

    Raises:
        ValueError: bad sparsity or scope, a pattern that does not fit the shape (m must
            divide in_features; blocks must tile the matrix), NaN or Inf in the scores.
        TypeError: scores of another dtype or not array-like.
    """
    pat = _as_pattern(pattern)
    if scope not in _SCOPES:
        msg = f"scope: expected one of {', '.join(map(repr, _SCOPES))}, got {scope!r}"
        raise ValueError(msg)
    if not isinstance(pat, Unstructured) and scope != "row":
        msg = f"scope: {pat} selects within each matrix and needs scope='row', got {scope!r}"
        raise ValueError(msg)
    amount = _sparsity_for(pat, sparsity)

    if scope == "global":
        if not isinstance(scores, (list, tuple)):
            msg = "scores: scope='global' takes a list or tuple of score arrays"
            raise TypeError(msg)
        return _global_masks(scores, amount)

    s = _score_matrix(scores, "scores")
    rows, cols = s.shape
    if isinstance(pat, NM) and cols % pat.m != 0:
        msg = f"scores: {pat} needs in_features divisible by m={pat.m}, got shape {s.shape}"
        raise ValueError(msg)
    if isinstance(pat, (Block, Row, Column)):
        h, w = _block_shape(pat, s.shape)
    if s.size == 0:
        return np.ones(s.shape, dtype=bool)
    if isinstance(pat, Unstructured):
        if scope == "layer":
            return _core.masks.per_layer(s, count_pruned(s.size, amount))
        return _core.masks.per_row(s, count_pruned(cols, amount))
    if isinstance(pat, NM):
        return _core.masks.n_of_m(s, pat.n, pat.m)
    return _core.masks.blocks(s, h, w, count_pruned((rows // h) * (cols // w), amount))


@dataclass(frozen=True)
class CheckResult:
    """Whether a mask satisfies a pattern (truthy iff it does) and, if not, why."""

    ok: bool
    reason: str = ""

    def __bool__(self) -> bool:
        return self.ok


def check(mask: Any, pattern: str | Pattern, sparsity: float | None = None) -> CheckResult:
    """Whether a bool mask (True = kept) satisfies a pattern, and why not.

    - NM(n, m): the width is a multiple of m and every group of m has exactly n kept.
    - Block / Row / Column: the blocks tile the matrix and each is all kept or all pruned;
      with ``sparsity``, exactly ``int(nblocks * sparsity)`` blocks (rows, columns) pruned.
    - Unstructured: always satisfied; with ``sparsity``, each row has exactly
      ``int(in_features * sparsity)`` pruned (what ``mask(..., scope="row")`` gives).

    The reason names the first offending row and group. Raises TypeError for a non-bool
    mask, ValueError for a mask that is not 2-D or a bad pattern/sparsity.
    """
    pat = _as_pattern(pattern)
    keep = _bool_matrix(mask, "mask")
    rows, cols = keep.shape
    amount = None if sparsity is None and not isinstance(pat, NM) else _sparsity_for(pat, sparsity)

    if isinstance(pat, Unstructured):
        if amount is None:
            return CheckResult(True)
        expected = count_pruned(cols, amount)
        pruned = cols - np.count_nonzero(keep, axis=1)
        bad = np.flatnonzero(pruned != expected)
        if bad.size:
            r = int(bad[0])
            return CheckResult(
                False, f"row {r}: {int(pruned[r])} pruned, expected {expected} of {cols}"
            )
        return CheckResult(True)

    if isinstance(pat, NM):
        if cols % pat.m != 0:
            return CheckResult(False, f"width {cols} is not a multiple of m={pat.m}")
        kept = np.count_nonzero(keep.reshape(rows, cols // pat.m, pat.m), axis=2)
        wrong = np.argwhere(kept != pat.n)
        if wrong.size:
            r, g = (int(x) for x in wrong[0])
            return CheckResult(
                False,
                f"row {r}, group {g} (columns {g * pat.m}..{(g + 1) * pat.m - 1}): "
                f"{int(kept[r, g])} kept, expected {pat.n} of {pat.m}",
            )
        return CheckResult(True)

    what = {Row: "row", Column: "column"}.get(type(pat), "block")
    try:
        h, w = _block_shape(pat, keep.shape)
    except ValueError as err:
        return CheckResult(False, str(err).removeprefix("scores: "))
    kept = np.count_nonzero(keep.reshape(rows // h, h, cols // w, w), axis=(1, 3))
    mixed = np.argwhere((kept != 0) & (kept != h * w))
    if mixed.size:
        bi, bj = (int(x) for x in mixed[0])
        index = {"row": bi, "column": bj}.get(what, bi * (cols // w) + bj)
        where = "" if what != "block" else f" (rows {bi * h}.., columns {bj * w}..)"
        return CheckResult(
            False, f"{what} {index}{where}: {int(kept[bi, bj])} of {h * w} kept, not all or none"
        )
    if amount is not None:
        expected = count_pruned(kept.size, amount)
        pruned = int(np.count_nonzero(kept == 0))
        if pruned != expected:
            return CheckResult(
                False, f"{pruned} {what}s pruned, expected {expected} of {kept.size}"
            )
    return CheckResult(True)


def apply_mask(w: Any, mask: Any, inplace: bool = False) -> Any:
    """``w`` with the pruned weights (``mask`` False) set to zero, in ``w``'s dtype.

    With ``inplace=True`` the NumPy array ``w`` itself is modified and returned (it must be
    writeable); otherwise ``w`` is left unchanged and a new array is returned.
    Raises TypeError for a non-bool mask, ValueError for shapes that differ or a read-only
    ``w`` with ``inplace=True``.
    """
    keep = bool_array(mask, "mask")
    if inplace:
        if not isinstance(w, np.ndarray):
            msg = f"w: inplace=True needs a NumPy array, got {type(w).__name__}"
            raise TypeError(msg)
        weights = w
    else:
        weights = to_numpy(w, "w")
    if weights.shape != keep.shape:
        msg = f"mask: shape {keep.shape} does not match w shape {weights.shape}"
        raise ValueError(msg)
    zero = np.zeros((), dtype=weights.dtype)
    if not inplace:
        return np.where(keep, weights, zero)
    if not weights.flags.writeable:
        msg = "w: array is read-only; pass inplace=False or a writeable array"
        raise ValueError(msg)
    np.copyto(weights, zero, where=~keep)
    return weights


# --- helpers ----------------------------------------------------------------------------------


def _as_pattern(spec: str | Pattern) -> Pattern:
    return pattern(spec)


def _sparsity_for(pat: Pattern, sparsity: float | None) -> float:
    if isinstance(pat, NM):
        if sparsity is not None:
            given = check_sparsity(sparsity)
            if not math.isclose(given, pat.sparsity, rel_tol=1e-9, abs_tol=1e-12):
                msg = (
                    f"sparsity: {pat} implies sparsity {pat.sparsity:g} (1 - n/m), got "
                    f"{given:g}; omit it or pass {pat.sparsity:g}"
                )
                raise ValueError(msg)
        return pat.sparsity
    if sparsity is None:
        msg = f"sparsity: required for pattern {pat} (the fraction pruned, in [0, 1))"
        raise ValueError(msg)
    return check_sparsity(sparsity)


def _block_shape(pat: Pattern, shape: tuple[int, ...]) -> tuple[int, int]:
    rows, cols = shape
    if isinstance(pat, Row):
        return 1, max(cols, 1)  # max: a (rows, 0) matrix is still tiled by (1, 1)
    if isinstance(pat, Column):
        return max(rows, 1), 1
    assert isinstance(pat, Block)
    if rows % pat.h != 0 or cols % pat.w != 0:
        msg = f"scores: block {pat.h}x{pat.w} does not tile shape {shape}"
        raise ValueError(msg)
    return pat.h, pat.w


def _score_matrix(x: object, name: str, *, dtype: type[np.floating[Any]] | None = None) -> Any:
    """A 2-D float32/float64 array with contiguous rows, converting only what must be."""
    a = to_numpy(x, name)
    original = float_dtype(a, name)
    if a.ndim != 2:
        msg = f"{name}: expected a 2-D array (out_features, in_features), got shape {a.shape}"
        raise ValueError(msg)
    work = dtype or (np.float64 if original == np.float64 else np.float32)
    if a.dtype != work:
        return a.astype(work)
    return a if rows_contiguous(a) else np.ascontiguousarray(a)


def _global_masks(scores: Sequence[object], sparsity: float) -> list[BoolArray]:
    arrays = [to_numpy(s, f"scores[{i}]") for i, s in enumerate(scores)]
    wide = any(a.dtype == np.float64 for a in arrays)
    work = np.float64 if wide else np.float32
    mats = [_score_matrix(a, f"scores[{i}]", dtype=work) for i, a in enumerate(arrays)]
    total = sum(int(a.size) for a in mats)
    # Empty arrays take no part in the ranking (and may have zero strides the core rejects).
    ranked = iter(
        _core.masks.smallest_overall([a for a in mats if a.size], count_pruned(total, sparsity))
    )
    return [next(ranked) if a.size else np.ones(a.shape, dtype=bool) for a in mats]


def _bool_matrix(x: object, name: str) -> npt.NDArray[np.bool_]:
    a = bool_array(x, name)
    if a.ndim != 2:
        msg = f"{name}: expected a 2-D array (out_features, in_features), got shape {a.shape}"
        raise ValueError(msg)
    return a


__all__ = [
    "NM",
    "Block",
    "CheckResult",
    "Column",
    "Pattern",
    "Row",
    "Unstructured",
    "apply_mask",
    "check",
    "mask",
    "pattern",
]
