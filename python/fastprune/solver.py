"""SparseGPT (Frantar & Alistarh 2023): one-shot pruning with optimal-brain-surgeon updates.

The weight matrix ``W`` (out_features, in_features) is pruned column block by column block. With
``U`` the upper Cholesky factor of the damped inverse Hessian (``H⁻¹ = Uᵀ U``), a weight's
saliency is ``w² / U_jj²``; every pruned weight's error ``err = (w − q) / U_jj`` is propagated to
the weights to its right, ``W[:, j:] −= err · U[j, j:]``, so that the layer's output on the
calibration inputs changes as little as possible.

Reference semantics (DESIGN.md, "Algorithms"):

- Columns with ``H_jj == 0`` are dead: their weights are set to 0 (and marked pruned in the
  mask) and ``H_jj`` to 1. A Hessian with every column dead (no input reached the layer) is
  refused: every weight would become 0.
- Damping is relative: ``damp · mean(diag H)`` is added to the diagonal. When the Cholesky
  factorisation fails the damping is multiplied by 10 and the factorisation retried (at most
  ``MAX_TRIES`` tries in all); ``damp_used`` reports the value that worked.
- ``U`` is computed without forming ``H⁻¹``: with ``J`` the reversal permutation and ``L`` the
  Cholesky factor of ``J·H·J``, ``T = J·L·J`` is upper triangular with ``H = T·Tᵀ`` and
  ``U = T⁻¹ = J·L⁻¹·J``.
- Two routes give the same result up to rounding; the core chooses (``kFromTRows`` in
  ``cpp/include/fastprune/sparsegpt.hpp``). From ``U`` (``inplace=True``, tall layers,
  weights that need a working copy): the weights are pruned in place and each superblock's
  errors reach the columns after it as ``W[:, s2:] −= Err·U[s1:s2, s2:]``. From ``T`` (layers
  with fewer than about ``c²/2048`` rows, read where they lie): since the pruned weights are
  ``Q = W − Err·U``, the total change ``D = W − Q`` satisfies ``Err = D·T``, and a superblock
  starts from ``W[:, s1:s2] + D[:, :s1]·T[:s1, s1:s2]·U[s1:s2, s1:s2]``; only the diagonal blocks
  of ``U`` are inverted, which saves the ``c³/3`` flops of the triangular inverse for about four
  passes over the weight.
- Unstructured: in every block of ``blocksize`` columns exactly ``int(rows · block_cols ·
  sparsity)`` weights are pruned, chosen jointly over all rows of the block by saliency, ties
  going to the lower row-major index within the block. (The reference code prunes every weight
  ``<= sorted[k]``, that is one more than the count plus any ties; fastprune prunes the exact
  count.)
- N:M (``n`` KEPT of every ``m``): each group of ``m`` columns is chosen per row when the block
  reaches it, on the already-updated weights.

The factor, the column blocks and the other buffers live in the memory cache, which later solves
reuse (see ``fastprune.set_memory_cache_limit``), and so do the returned weights and mask once
they are freed: after a process's first solve, a solve takes no page faults. Small layers choose
their thread count by size. Results are bit-identical for every thread count: every dense routine
splits its output into tiles of a fixed size and computes each tile with one single-threaded call
(OpenBLAS or Eigen), whichever thread runs it. Timings, and where the time goes, are in the
README ("Benchmarks").
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from . import _arrays, _core, masks
from ._arrays import BoolArray, FloatArray
from .result import PruneResult

Precision = Literal["float32", "float64"]

#: How many damping values (each 10x the last) are tried before a Hessian is declared hopeless.
MAX_TRIES = 6


@dataclass(frozen=True)
class HessianFactor:
    """The factorised Hessian of one layer input, shareable by layers reading that input.

    Attributes:
        t: ``T``, upper triangular with ``H = T Tᵀ`` for the damped Hessian ``H``, shape
            ``(in_features, in_features)``, zero below the diagonal. Layers of few rows are
            solved from ``T`` alone; the others (and ``inplace=True``) need ``u``, its inverse,
            formed on first use and kept with the factor.
        dead: bool per input column, True where ``H_jj == 0`` (those weights are set to 0).
        damp_used: the relative damping that made the Hessian factorisable.
        precision: ``"float32"`` or ``"float64"``, the dtype of ``t``.
    """

    t: FloatArray
    dead: BoolArray
    damp_used: float
    precision: Precision

    @property
    def in_features(self) -> int:
        return int(self.t.shape[0])

    @functools.cached_property
    def u(self) -> FloatArray:
        """``U = T⁻¹``, the upper Cholesky factor of the damped ``H⁻¹`` (``H⁻¹ = Uᵀ U``), zero
        below the diagonal: computed (one blocked triangular inverse) on first use."""
        return _core.sparsegpt.invert_factor(self.t)


def sparsegpt_factor(
    calibration_or_hessian: object, damp: float = 0.01, precision: Precision = "float32"
) -> HessianFactor:
    """Factorise a layer's Hessian once for every layer that reads the same input (q/k/v).

    Args:
        calibration_or_hessian: a ``fastprune.Calibration`` (or any object with a ``.hessian``
            attribute) or the Hessian ``H = 2/N Σ x xᵀ`` itself, shape ``(in, in)``, symmetric
            to a relative 1e-4 of its largest entry (it is used as ``(H + Hᵀ)/2``).
        damp: relative damping, a fraction of the mean of the Hessian's diagonal (>= 0).
        precision: ``"float32"`` (the default) or ``"float64"``, the dtype of the factor.

    Returns:
        A :class:`HessianFactor`.

    Raises:
        ValueError: NaN/Inf, a non-square or non-symmetric Hessian, a negative damping, or a
            Hessian that no damping tried makes positive definite.
    """
    dtype = _precision_dtype(precision)
    return _factorise(_hessian(calibration_or_hessian, dtype), damp, precision)


def sparsegpt(
    weight: object,
    calibration_or_hessian: object,
    sparsity: float = 0.5,
    pattern: object = "unstructured",
    blocksize: int = 128,
    damp: float = 0.01,
    inplace: bool = False,
    precision: Precision = "float32",
    keep_mask: object = None,
) -> PruneResult:
    """Prune ``weight`` with SparseGPT (see the module docstring for the exact semantics).

    Args:
        weight: ``(out_features, in_features)`` in float16, bfloat16, float32 or float64.
        calibration_or_hessian: a ``fastprune.Calibration`` (or any object with a ``.hessian``),
            the Hessian ``(in, in)`` as an array, or a :class:`HessianFactor` from
            :func:`sparsegpt_factor` (then ``damp`` is not used: the factor carries its own).
        sparsity: fraction of weights pruned, in ``[0, 1)``; ignored for N:M patterns, whose
            sparsity is ``1 - n/m``.
        pattern: ``"unstructured"``, ``"N:M"`` (N KEPT of every M along the input dimension),
            ``fastprune.masks.Unstructured()`` or ``fastprune.masks.NM(n, m)``.
        blocksize: columns per block, a positive integer (a multiple of ``m`` for N:M).
        damp: relative damping (see :func:`sparsegpt_factor`).
        inplace: write the pruned weights into ``weight`` itself, which must then be a writeable
            NumPy array of the precision's dtype with contiguous rows.
        precision: ``"float32"`` (the default) or ``"float64"``, the dtype of the solve.
        keep_mask: optional bool array shaped like ``weight``; where it is False the weight is
            pruned (re-pruned if an earlier update made it non-zero). Pass ``weight != 0`` to keep
            an existing mask. Such weights rank below every other in each selection and count
            towards the block's budget: a block whose forced weights exceed
            ``int(rows · block_cols · sparsity)`` prunes all of them and nothing else, and an
            N:M group with more than ``m - n`` of them keeps fewer than ``n``.

    Returns:
        ``PruneResult(weight, mask, loss, damp_used, seconds)``; ``weight`` in the input's dtype,
        ``mask`` True where kept, ``loss = Σ (w − q)² / U_jj² / 2`` (the paper's estimate).
        The weights of dead columns (``H_jj == 0``: inputs that were always zero) are set to 0
        and marked pruned (they rank first in the pattern's budget, and are pruned beyond it
        when they outnumber it), so that mask, sparsity and weights agree; they add nothing to
        the loss (no calibration input reaches them).

    Raises:
        TypeError: a weight that is not a float array, a pattern that is neither a str nor a
            pattern object.
        ValueError: NaN/Inf, shape mismatches, a bad ``sparsity``/``pattern``/``blocksize``/
            ``damp``/``precision``/``keep_mask``, an ``inplace`` weight that cannot be written,
            a Hessian that no damping makes positive definite, a Hessian whose diagonal is
            all zero (no input reached the layer, or it underflows the solve's dtype), an
            empty Calibration, or float16 pruned weights beyond float16's range.
    """
    start = time.perf_counter()
    dtype = _precision_dtype(precision)
    sparsity = _arrays.check_sparsity(sparsity)
    n, m = _pattern(pattern)
    blocksize = _arrays.positive_int(blocksize, "blocksize")
    if m and blocksize % m:
        msg = f"blocksize: must be a multiple of m={m} for pattern {n}:{m}, got {blocksize}"
        raise ValueError(msg)
    inplace = _flag(inplace, "inplace")
    work, original, writable = _solver_weight(weight, dtype, inplace)
    cols = work.shape[1]
    if m and cols % m:
        msg = f"pattern: in_features ({cols}) must be a multiple of m={m} for {n}:{m}"
        raise ValueError(msg)
    allowed = _keep_mask(keep_mask, work.shape)
    source: object
    if isinstance(calibration_or_hessian, HessianFactor):
        factor = _factor_for(calibration_or_hessian, cols, damp, precision)
        source = (factor.t, factor.dead, factor.__dict__.get("u"))
        damp_value = 0.0  # the factor carries its own damping
    else:
        factor = None
        source = _layer_hessian(calibration_or_hessian, cols, dtype)
        damp_value = _damping(damp)
    # a weight read where it lies is checked for NaN/Inf by the core, in the pass that reads it
    pruned, mask, loss, damp_used, u, finite = _core.sparsegpt.solve(
        work,
        source,
        damp_value,
        MAX_TRIES,
        sparsity,
        n,
        m,
        blocksize,
        allowed,
        writable,
        not writable,
        _ROUTE,
    )
    if not finite:
        _arrays.check_finite(work, "weight")  # raises, with the count
    if factor is not None:
        damp_used = factor.damp_used
        if u is not None:
            factor.__dict__["u"] = u  # formed by this solve: kept, as the `u` property would
    result = pruned if inplace else _arrays.restore_dtype(pruned, original, "weight")
    return PruneResult(
        weight=result,
        mask=mask,
        loss=float(loss),
        damp_used=float(damp_used),
        seconds=time.perf_counter() - start,
    )


def saliency(
    weight: object, calibration_or_hessian_or_factor: object, damp: float = 0.01
) -> FloatArray:
    """SparseGPT's saliency ``w² / U_jj²`` of every weight, before any update.

    ``U`` is the upper Cholesky factor of the damped inverse Hessian, as in :func:`sparsegpt`
    (which also accepts the same arguments); dead columns (``H_jj == 0``) score 0. Scores come
    back in float32, or float64 for float64 weights.
    """
    w, _ = _arrays.float_matrix(weight, "weight")
    precision: Precision = "float64" if w.dtype == np.float64 else "float32"
    source = calibration_or_hessian_or_factor
    if isinstance(source, HessianFactor):
        _check_factor(source, w.shape[1])
        factor = source
    else:
        factor = _factor_for(source, w.shape[1], damp, precision)
    # U = T⁻¹ is triangular, so U_jj = 1 / T_jj.
    diagonal = np.diagonal(factor.t).astype(w.dtype)
    scores = np.square(w) * np.square(diagonal)
    scores[:, factor.dead] = 0
    return scores


# --- the damped Hessian, the dense-output start and the refit -------------------------------


def damped_hessian(hessian: object, factor: HessianFactor) -> tuple[FloatArray, float]:
    """The matrix that `factor` factorises, in float64, and the shift its damping added.

    ``H`` with the diagonal entries of the factor's dead columns set to 1, plus
    ``λ = damp_used · mean(diag)`` on the diagonal: the core's damping rule (the one the
    factorisation applied), for the steps that need the damped matrix itself, such as
    :func:`refit_kept`.

    Args:
        hessian: the Hessian the factor was computed from, ``(in, in)``.
        factor: its :class:`HessianFactor`.

    Returns:
        ``(damped, λ)``.
    """
    h = _arrays.to_numpy(hessian, "hessian")
    _arrays.float_dtype(h, "hessian")
    if h.shape != factor.t.shape:
        msg = f"hessian: shape {h.shape} does not match the factor's {factor.t.shape}"
        raise ValueError(msg)
    if h.dtype not in (np.float32, np.float64) or not _arrays.rows_contiguous(h):
        h = np.ascontiguousarray(h, dtype=np.float64)
    damped, shift = _core.sparsegpt.damped_hessian(h, factor.dead, factor.damp_used)
    return damped, float(shift)


def dense_target_start(gram_target: object, factor: HessianFactor, dtype: object) -> FloatArray:
    """``W* = (W·C)·H⁻¹``, the unconstrained minimiser of ``(Ŵ − W*) H (Ŵ − W*)ᵀ`` for the
    right-hand side ``W·C`` (`gram_target`, float64), from the factor's ``H⁻¹ = Uᵀ U``; in
    float32 (float64 when `dtype` is float64), the weights that SparseGPT then prunes when it
    reconstructs a dense model's outputs (``C`` the cross-covariance of the dense and the
    pruned model's inputs) rather than the layer's own."""
    work = np.float64 if np.dtype(dtype) == np.float64 else np.float32  # type: ignore[call-overload]
    u64 = factor.u.astype(np.float64)
    target = np.asarray(gram_target, dtype=np.float64)
    return np.ascontiguousarray((target @ u64.T) @ u64, dtype=work)


#: The iterative refit stops when every row's preconditioned residual is below this fraction of
#: its right-hand side's, or after this many steps.
REFIT_TOLERANCE = 1e-6
REFIT_MAX_STEPS = 200
#: The direct refit is chosen where a row's Cholesky factorisation (``|S|³/3`` multiply-adds,
#: averaged over the rows) costs at most this many times ``in²``, the multiply-adds per row of
#: one of the iterative refit's GEMMs (it takes two per step and 19-33 steps on SmolLM2's
#: Hessians). Measured on 2 cores with AVX-512 (float64), random Hessians with four outlier
#: channels, 576 and 1536 inputs: with 30 % of the columns kept the direct refit took 0.32-0.46
#: of the iterative one's time, with 50 % kept the two were level (0.93-1.30). On SmolLM2-135M's
#: Hessians, which take the iterative refit more steps, a 50 % run's solves went from 111 s to
#: 85 s with every layer but the down projections (``|S|³/3 ≈ 64·in²``) on the direct route.
REFIT_DIRECT_WORK = 64.0


def refit_kept(
    mask: object,
    damped: object,
    gram_target: object,
    dead: object,
    start: object,
    route: str = "auto",
) -> FloatArray:
    """Per row r, the kept weights minimising ``(ŵ − w*) H (ŵ − w*)ᵀ`` with ``w* H = g_r``, that
    is ``ŵ_S H_SS = g_S`` over the row's kept, live columns S, zero elsewhere (float64).

    Two routes to the same weights, chosen per layer by their work (`REFIT_DIRECT_WORK`):

    - ``"direct"``: one Cholesky factorisation of ``H_SS`` per row, in the core, rows in
      parallel: exact to rounding, ``|S|³/3`` multiply-adds a row, so cheap where rows keep few
      columns (sparse layers, narrow layers).
    - ``"iterative"``: conjugate gradients on all rows at once from SparseGPT's weights `start`,
      preconditioned by ``(H⁻¹)_SS``: the inverse of the whole Hessian restricted to the row's
      columns, which is exact when a row keeps every column and close to ``(H_SS)⁻¹`` while the
      pruned columns are weakly coupled to the kept ones. Each step is two GEMMs (one with
      ``H``, one with ``H⁻¹``, restricted to each row's columns by the mask); it stops at a
      relative residual of `REFIT_TOLERANCE`. On the Hessians of SmolLM2-135M's first two
      blocks it converged in 19-33 steps where H's diagonal as the preconditioner needed 55 to
      more than 100. Its work grows with ``in²`` rather than ``|S|³``: the route for wide, dense
      layers.

    Args:
        mask: bool ``(out, in)``, True where kept.
        damped: ``H``, the damped Hessian (:func:`damped_hessian`), positive definite.
        gram_target: ``G = W*·H`` ``(out, in)``, the right-hand sides.
        dead: bool ``(in,)``, the factor's dead columns (their weights stay 0).
        start: the first guess of the iterative route, SparseGPT's pruned weights.
        route: ``"auto"`` (by the work, above), ``"direct"`` or ``"iterative"``.
    """
    if route not in ("auto", "direct", "iterative"):
        msg = f"route: expected 'auto', 'direct' or 'iterative', got {route!r}"
        raise ValueError(msg)
    kept = np.asarray(mask, dtype=bool) & ~np.asarray(dead, dtype=bool)[None, :]
    hessian = np.ascontiguousarray(damped, dtype=np.float64)
    target_rhs = np.ascontiguousarray(gram_target, dtype=np.float64)
    if route == "auto":
        sizes = kept.sum(axis=1, dtype=np.float64)
        width = float(hessian.shape[0])
        direct = (
            float(np.mean(sizes**3)) / 3 <= REFIT_DIRECT_WORK * width**2 if sizes.size else True
        )
        route = "direct" if direct else "iterative"
    if route == "direct":
        dead_columns = np.ascontiguousarray(dead, dtype=bool)
        result: FloatArray = _core.sparsegpt.refit_direct(hessian, target_rhs, kept, dead_columns)
        return result
    live = kept.astype(np.float64)
    inverse = np.linalg.inv(hessian)
    inverse = (inverse + inverse.T) / 2  # exactly symmetric, as a preconditioner must be
    weights: FloatArray = np.asarray(start, dtype=np.float64) * live
    residual = (target_rhs - weights @ hessian) * live
    preconditioned = (residual @ inverse) * live
    direction = preconditioned.copy()
    rz = np.einsum("ij,ij->i", residual, preconditioned)
    target = target_rhs * live
    scale = np.einsum("ij,ij->i", (target @ inverse) * live, target)
    for _ in range(REFIT_MAX_STEPS):
        if np.all(rz <= REFIT_TOLERANCE**2 * scale):
            break
        product = (direction @ hessian) * live
        curvature = np.einsum("ij,ij->i", direction, product)
        alpha = np.divide(rz, curvature, out=np.zeros_like(rz), where=curvature > 0)
        weights += alpha[:, None] * direction
        residual -= alpha[:, None] * product
        preconditioned = (residual @ inverse) * live
        rz_next = np.einsum("ij,ij->i", residual, preconditioned)
        beta = np.divide(rz_next, rz, out=np.zeros_like(rz), where=rz > 0)
        direction = preconditioned + beta[:, None] * direction
        rz = rz_next
    return weights


# --- argument checking ----------------------------------------------------------------------


def _precision_dtype(precision: object) -> type[np.floating[Any]]:
    if precision == "float32":
        return np.float32
    if precision == "float64":
        return np.float64
    msg = f"precision: expected 'float32' or 'float64', got {precision!r}"
    raise ValueError(msg)


def _flag(value: object, name: str) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        msg = f"{name}: expected True or False, got {value!r}"
        raise ValueError(msg)
    return bool(value)


def _damping(damp: object) -> float:
    if isinstance(damp, bool) or not isinstance(damp, (int, float, np.integer, np.floating)):
        msg = f"damp: expected a number >= 0, got {damp!r}"
        raise ValueError(msg)
    value = float(damp)
    if not (np.isfinite(value) and value >= 0):
        msg = f"damp: expected a finite number >= 0, got {value}"
        raise ValueError(msg)
    return value


def _pattern(spec: object) -> tuple[int, int]:
    """(n kept, m) of an N:M pattern, or (0, 0) for unstructured."""
    parsed = masks.pattern(spec)  # type: ignore[arg-type]  # checked there at run time
    if isinstance(parsed, masks.Unstructured):
        return 0, 0
    if isinstance(parsed, masks.NM):
        return parsed.n, parsed.m
    msg = f"pattern: SparseGPT prunes 'unstructured' or 'N:M' patterns, got {parsed!r}"
    raise ValueError(msg)


def _solver_weight(
    weight: object, dtype: type[np.floating[Any]], inplace: bool
) -> tuple[FloatArray, np.dtype[Any], bool]:
    """The array the solver reads, the weight's dtype, and whether the solver writes into it.

    With `inplace`, `weight` itself (written). Otherwise `weight` itself when it is already a 2-D
    array of the solve's dtype with contiguous rows (read where it lies: the core then writes the
    pruned weights into a new array, and a short layer is solved from ``T`` without ever copying
    it), else a fresh copy in that dtype (written, no second copy made). Finite, or ValueError,
    except the array read where it lies: the core checks that one in the pass that reads it.
    """
    if inplace:
        ok = (
            isinstance(weight, np.ndarray)
            and weight.ndim == 2
            and weight.dtype == dtype
            and weight.flags.writeable
            and _arrays.rows_contiguous(weight)
        )
        if not ok:
            msg = (
                f"weight: inplace=True needs a writeable 2-D NumPy array of dtype "
                f"{np.dtype(dtype).name} with contiguous rows"
            )
            raise ValueError(msg)
        assert isinstance(weight, np.ndarray)
        _arrays.check_finite(weight, "weight")
        return weight, weight.dtype, True
    a = _arrays.to_numpy(weight, "weight")
    original = _arrays.float_dtype(a, "weight")
    if a.ndim != 2:
        msg = f"weight: expected a 2-D array (out_features, in_features), got shape {a.shape}"
        raise ValueError(msg)
    if a.dtype == dtype and _arrays.rows_contiguous(a):
        return a, original, False  # checked for NaN/Inf by the core as it reads it
    return _arrays.finite_copy(a, dtype, "weight"), original, True


#: Which factor the core prunes from: "automatic" (its own choice by the layer's shape, see the
#: module docstring), or "from_u" / "from_t" to force one (tests run every case on both).
_ROUTE = "automatic"


def _keep_mask(keep_mask: object, shape: tuple[int, ...]) -> BoolArray | None:
    if keep_mask is None:
        return None
    mask = _arrays.bool_array(keep_mask, "keep_mask")
    if mask.shape != shape:
        msg = f"keep_mask: shape {mask.shape} does not match weight shape {shape}"
        raise ValueError(msg)
    return np.ascontiguousarray(mask)


def _hessian(source: object, dtype: type[np.floating[Any]]) -> FloatArray:
    """The Hessian of a calibration object or array, square, finite, in `dtype`, rows contiguous."""
    matrix = _arrays.calibration_statistic(source, "hessian", "calibration_or_hessian")
    h = _arrays.to_numpy(matrix, "hessian")
    _arrays.float_dtype(h, "hessian")
    if h.ndim != 2 or h.shape[0] != h.shape[1]:
        msg = f"hessian: expected a square (in_features, in_features) matrix, got shape {h.shape}"
        raise ValueError(msg)
    if not _arrays.rows_contiguous(h) and _arrays.rows_contiguous(h.T):
        h = h.T  # the solver reads (H + Hᵀ)/2, so Hᵀ serves as well and needs no copy
    if h.dtype != dtype:
        h = np.ascontiguousarray(h, dtype=dtype)
    elif not _arrays.rows_contiguous(h):
        h = np.ascontiguousarray(h)
    _arrays.check_finite(h, "hessian")
    if not np.diagonal(h).any():
        # every column dead: no input ever reached the layer, and every weight would become 0
        underflow = np.diagonal(_arrays.to_numpy(matrix, "hessian")).any()
        reason = (
            f"its diagonal underflows to 0 in {np.dtype(dtype).name} (use precision='float64' "
            "or scale the inputs)"
            if underflow
            else "it is all zero (no calibration input reached this layer)"
        )
        msg = f"hessian: SparseGPT needs a Hessian with a non-zero diagonal, but {reason}"
        raise ValueError(msg)
    return h


def _check_factor(factor: HessianFactor, in_features: int) -> None:
    if factor.in_features != in_features:
        msg = (
            f"calibration_or_hessian: factor is for {factor.in_features} input features, "
            f"the weight has {in_features}"
        )
        raise ValueError(msg)


def _factor_for(
    source: object, in_features: int, damp: float, precision: Precision
) -> HessianFactor:
    if isinstance(source, HessianFactor):
        _check_factor(source, in_features)
        if source.precision != precision:
            msg = (
                f"precision: {precision!r} does not match the factor's {source.precision!r}; "
                f"compute it with sparsegpt_factor(..., precision={precision!r})"
            )
            raise ValueError(msg)
        return source
    hessian = _layer_hessian(source, in_features, _precision_dtype(precision))
    return _factorise(hessian, damp, precision)


def _layer_hessian(source: object, in_features: int, dtype: type[np.floating[Any]]) -> FloatArray:
    hessian = _hessian(source, dtype)
    if hessian.shape[0] != in_features:
        msg = (
            f"hessian: shape {hessian.shape} does not match in_features={in_features} of the weight"
        )
        raise ValueError(msg)
    return hessian


def _factorise(hessian: FloatArray, damp: object, precision: Precision) -> HessianFactor:
    t, dead, used = _core.sparsegpt.hessian_factor(hessian, _damping(damp), MAX_TRIES)
    return HessianFactor(t=t, dead=dead, damp_used=float(used), precision=precision)
