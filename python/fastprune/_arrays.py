"""Argument checking and array conversion shared by the public modules.

Every public function funnels its array arguments through here, so that a bad argument gets
the same clear exception everywhere: TypeError for a wrong kind of object or dtype, ValueError
for a wrong shape or value, each naming the argument. Nothing here modifies its input; a copy
is made only where a dtype or layout conversion is unavoidable, and the docstrings of the
public functions say when that happens.
"""

from __future__ import annotations

import math
import sys
from typing import Any

import numpy as np
import numpy.typing as npt

from . import _core

FloatArray = npt.NDArray[np.floating[Any]]
BoolArray = npt.NDArray[np.bool_]

_ACCEPTED = "float16, bfloat16, float32 or float64"


def to_numpy(x: object, name: str) -> np.ndarray[Any, Any]:
    """A NumPy view of `x` (an ndarray, a buffer, or a DLPack-exporting tensor) without copying.

    A torch bfloat16 tensor, which DLPack cannot hand to NumPy (NumPy has no bfloat16), is
    viewed through its bits as int16 and then as ml_dtypes' bfloat16: still no copy.
    """
    if isinstance(x, np.ndarray):
        return x
    if hasattr(x, "__dlpack__"):
        try:
            bits = _torch_bfloat16_bits(x)
            if bits is not None:
                return np.from_dlpack(bits).view(bfloat16_dtype(name))
            return np.from_dlpack(x)
        except (BufferError, RuntimeError, TypeError) as err:
            msg = f"{name}: cannot view this tensor as a NumPy array ({err})"
            raise TypeError(msg) from err
    try:
        return np.asarray(x)
    except (TypeError, ValueError) as err:
        msg = f"{name}: expected an array, got {type(x).__name__}"
        raise TypeError(msg) from err


def _torch_bfloat16_bits(x: object) -> Any:
    """The int16 view of a torch bfloat16 tensor (same memory), or None for anything else."""
    torch = sys.modules.get("torch")  # a torch tensor means torch is imported already
    if torch is None or not isinstance(x, torch.Tensor) or x.dtype != torch.bfloat16:
        return None
    return x.detach().view(torch.int16)


def bfloat16_dtype(name: str) -> np.dtype[Any]:
    """NumPy's bfloat16 dtype (from ml_dtypes); a TypeError naming `name` without ml_dtypes."""
    try:
        import ml_dtypes
    except ImportError as err:
        msg = f"{name}: bfloat16 needs the ml_dtypes package (pip install ml_dtypes)"
        raise TypeError(msg) from err
    bfloat16: np.dtype[Any] = np.dtype(ml_dtypes.bfloat16)
    return bfloat16


def bool_array(x: object, name: str) -> BoolArray:
    """A NumPy view of `x` that must hold bools (a mask), else TypeError naming the argument."""
    a = to_numpy(x, name)
    if a.dtype != np.bool_:
        msg = f"{name}: expected a bool array, got dtype {a.dtype}"
        raise TypeError(msg)
    return a


def is_bfloat16(dtype: np.dtype[Any]) -> bool:
    return str(dtype.name) == "bfloat16"


def float_dtype(a: np.ndarray[Any, Any], name: str) -> np.dtype[Any]:
    """The array's dtype if it is one fastprune accepts as floating point, else TypeError.

    A byte-swapped dtype is reported as its native-order twin: the data is converted like any
    other dtype the kernels cannot read directly.
    """
    dt: np.dtype[Any] = a.dtype if a.dtype.isnative else a.dtype.newbyteorder("=")
    if dt in (np.float16, np.float32, np.float64) or is_bfloat16(dt):
        return dt
    msg = f"{name}: expected dtype {_ACCEPTED}, got {dt}"
    raise TypeError(msg)


def working_dtype(dtype: np.dtype[Any]) -> type[np.floating[Any]]:
    """float64 stays float64; every narrower float is computed in float32."""
    return np.float64 if dtype == np.float64 else np.float32


def check_finite(a: np.ndarray[Any, Any], name: str) -> None:
    """ValueError naming `name` when `a` holds a NaN or an Inf."""
    if not all_finite(a):
        bad = int(np.count_nonzero(~np.isfinite(a)))
        msg = f"{name}: contains {bad} NaN or Inf value{'s' if bad != 1 else ''}"
        raise ValueError(msg)


def half_bits(a: np.ndarray[Any, Any]) -> tuple[npt.NDArray[np.uint16], bool] | None:
    """The bits of a native float16 or bfloat16 array as a uint16 view (no copy) and whether
    it is bfloat16, or None for any other dtype."""
    if not a.dtype.isnative or a.dtype.itemsize != 2:
        return None
    if a.dtype == np.float16:
        return a.view(np.uint16), False
    if is_bfloat16(a.dtype):
        return a.view(np.uint16), True
    return None


def finite_copy(
    a: np.ndarray[Any, Any], dtype: type[np.floating[Any]], name: str
) -> np.ndarray[Any, Any]:
    """A new C-ordered copy of the 2-D float array `a` in `dtype`, finite (else ValueError)."""
    # One pass on every thread copies (or widens float16/bfloat16 exactly) and checks: NumPy's
    # copies and casts are single-threaded, and a separate check would read `a` a second time.
    bits = half_bits(a) if dtype == np.float32 else None
    if bits is not None and rows_contiguous(a):
        copy, finite = _core.calibration.widen_finite(*bits)
    elif a.dtype == dtype and rows_contiguous(a):
        copy, finite = _core.calibration.copy_finite(a)
    else:
        check_finite(a, name)
        return np.array(a, dtype=dtype, order="C", copy=True)
    if not finite:
        check_finite(a, name)  # raises, with the count
    return copy


def all_finite(a: np.ndarray[Any, Any]) -> bool:
    """Whether the float array `a` is free of NaN and Inf."""
    # The core scans float matrices with a contiguous axis on every thread, without the
    # temporary bool array of np.isfinite (which costs as much again as the scan).
    item = a.itemsize
    if (
        a.ndim == 2
        and all(s >= 0 and s % item == 0 for s in a.strides)
        and (item in a.strides or min(a.shape) <= 1)
    ):
        if a.dtype in (np.float32, np.float64) and a.dtype.isnative:
            return bool(_core.calibration.all_finite(a))
        bits = half_bits(a)
        if bits is not None:
            return _core.calibration.halves_finite(*bits)
    return bool(np.isfinite(a).all())


def float_matrix(
    x: object, name: str, *, dtype: type[np.floating[Any]] | None = None
) -> tuple[FloatArray, np.dtype[Any]]:
    """A finite 2-D float array with contiguous rows, in the working dtype, and the input dtype.

    float32/float64 arrays whose rows are contiguous are returned as they are (no copy);
    float16/bfloat16 are converted to float32, and other layouts are copied to C order.
    `dtype` forces the working dtype (float32 or float64).
    """
    a = to_numpy(x, name)
    original = float_dtype(a, name)
    if a.ndim != 2:
        msg = f"{name}: expected a 2-D array (out_features, in_features), got shape {a.shape}"
        raise ValueError(msg)
    work = dtype if dtype is not None else working_dtype(original)
    if work == np.float32 and half_bits(a) is not None:
        return finite_copy(a, work, name), original  # widening cannot overflow
    if a.dtype != work:
        a = a.astype(work)
    elif not rows_contiguous(a):
        a = np.ascontiguousarray(a)
    check_finite(a, name)
    return a, original


def rows_contiguous(a: np.ndarray[Any, Any]) -> bool:
    """Whether elements are contiguous within each row and rows are evenly spaced forward."""
    item = a.itemsize
    return (
        (a.shape[1] <= 1 or a.strides[1] == item)
        and a.strides[0] >= 0
        and (a.strides[0] % item == 0)
    )


def same_shape(a: np.ndarray[Any, Any], b: np.ndarray[Any, Any], name_a: str, name_b: str) -> None:
    if a.shape != b.shape:
        msg = f"{name_b}: shape {b.shape} does not match {name_a} shape {a.shape}"
        raise ValueError(msg)


def check_sparsity(sparsity: object, name: str = "sparsity", where: str = "") -> float:
    """A sparsity (fraction of weights set to zero) in [0, 1): the one check of that range,
    used by the array functions, the torch layer (`where` names the layer) and the CLI."""
    suffix = f" for {where}" if where else ""
    if isinstance(sparsity, bool) or not isinstance(
        sparsity, (int, float, np.floating, np.integer)
    ):
        msg = f"{name}: expected a number in [0, 1){suffix}, got {sparsity!r}"
        raise TypeError(msg)
    s = float(sparsity)
    if not (0.0 <= s < 1.0) or math.isnan(s):
        msg = f"{name}: must be in [0, 1), got {s}{suffix}"
        raise ValueError(msg)
    return s


def count_pruned(total: int, sparsity: float) -> int:
    """How many of `total` items a sparsity prunes: int(total * sparsity), as documented."""
    return int(total * sparsity)


def positive_int(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or int(value) < 1:
        msg = f"{name}: expected a positive integer, got {value!r}"
        raise ValueError(msg)
    return int(value)


def restore_dtype(a: FloatArray, dtype: np.dtype[Any], name: str) -> np.ndarray[Any, Any]:
    """`a` converted back to the caller's dtype (no copy when it already is).

    A value beyond the range of a narrower dtype (float16 above 65504) would become Inf: that is
    a ValueError naming `name`, the argument whose result it is, never a silent Inf.
    """
    if a.dtype == dtype:
        return a
    with np.errstate(over="ignore"):
        out = a.astype(dtype)
    if not all_finite(out):
        largest = float(np.max(np.abs(a)))
        msg = (
            f"{name}: the result reaches {largest:.4g}, beyond the range of {dtype.name}; "
            f"pass {name} as float32 to get it"
        )
        raise ValueError(msg)
    return out


def calibration_statistic(source: object, attribute: str, name: str) -> object:
    """`source.<attribute>` of a calibration object (or `source` itself when it has no such
    attribute: an array given directly).

    A calibration that has seen no token (``count == 0``) has no statistics, only zeros that
    would prune arbitrary weights while reporting no error, and one whose sums overflowed its
    dtype holds Inf: either is a ValueError naming `name`, the argument the user passed.
    """
    if not hasattr(source, attribute):
        return source
    count = getattr(source, "count", None)
    if count is not None and int(count) == 0:
        msg = (
            f"{name}: the calibration has seen no tokens (count=0); update it with the layer's "
            "inputs before pruning"
        )
        raise ValueError(msg)
    value = getattr(source, attribute)
    if isinstance(value, np.ndarray) and value.dtype.kind == "f" and not all_finite(value):
        msg = (
            f"{name}: the calibration's sums of squares overflowed {value.dtype} (its "
            f"{attribute} holds Inf); collect it with Calibration(..., dtype=np.float64) or "
            "scale the activations"
        )
        raise ValueError(msg)
    return value
