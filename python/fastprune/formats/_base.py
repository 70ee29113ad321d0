"""What every sparse format shares: argument checks, index dtypes, the helpers that hand component
arrays to the kernels, and the common interface :class:`SparseMatrix` (conversions through CSR or
the dense matrix, ``np.asarray``, ``@``, ``repr``)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar, cast, overload

import numpy as np
import numpy.typing as npt

from .. import _core
from .._arrays import float_dtype, is_bfloat16, rows_contiguous, to_numpy

if TYPE_CHECKING:
    from .bitmask import Bitmask
    from .bsr import BSR
    from .coo import COO
    from .csr import CSR
    from .nm import NMCompressed

Array = npt.NDArray[Any]
_INT32_MAX = 2**31 - 1
_CSR_PROBLEMS = {
    1: "indptr[0] must be 0",
    2: "indptr must be non-decreasing",
    3: "indptr[-1] must equal the number of stored values",
    4: "column index out of range",
    5: "column indices must be sorted and unique within a row",
}

# --- helpers ---------------------------------------------------------------------------------


def _bits(a: Array) -> Array:
    """The array the kernels take: 16-bit floats as their raw bits (a view, no copy)."""
    return a.view(np.uint16) if a.dtype.itemsize == 2 else a


def _index_dtype(*sizes: int) -> type[np.signedinteger[Any]]:
    """int32 when every size fits, else int64."""
    return np.int32 if max(sizes, default=0) <= _INT32_MAX else np.int64


def _bitmask_row_bytes(cols: int) -> int:
    """Bytes per row of a bitmask: one bit per column, each row padded to whole bytes (the
    core's rule, which its kernels check)."""
    return int(_core.formats.bitmask_row_bytes(cols))


def _shape(shape: object) -> tuple[int, int]:
    """A matrix shape: two non-negative ints (NumPy integers accepted, bools refused)."""
    if (
        not isinstance(shape, (tuple, list))
        or len(shape) != 2
        or not all(isinstance(s, (int, np.integer)) and not isinstance(s, bool) for s in shape)
        or min(int(s) for s in shape) < 0
    ):
        msg = f"shape: expected two non-negative integers, got {shape!r}"
        raise ValueError(msg)
    return int(shape[0]), int(shape[1])


def _native(a: Array) -> Array:
    """`a` with NumPy's own instance of its dtype in native byte order (a view when it already
    is native; the kernels' bindings recognise dtypes by identity)."""
    native: np.dtype[Any] = np.dtype(a.dtype.name) if a.dtype.kind in "fiub" else a.dtype
    if a.dtype is native:
        return a
    return a.view(native) if a.dtype.isnative else a.astype(native)


def _contiguous_rows(a: Array) -> Array:
    """`a` if its rows are contiguous, else a C-ordered copy."""
    return a if rows_contiguous(a) else np.ascontiguousarray(a)


def _dense(x: object, name: str = "x") -> Array:
    """A 2-D float array with contiguous rows (copied only if its rows are not contiguous)."""
    a = _native(to_numpy(x, name))
    float_dtype(a, name)
    if a.ndim != 2:
        msg = f"{name}: expected a 2-D array, got shape {a.shape}"
        raise ValueError(msg)
    return _contiguous_rows(a)


def _values(x: object, name: str, ndim: int = 1) -> Array:
    """Stored values: a contiguous float array of `ndim` dimensions."""
    a = _native(to_numpy(x, name))
    float_dtype(a, name)
    if a.ndim != ndim:
        msg = f"{name}: expected a {ndim}-D array, got shape {a.shape}"
        raise ValueError(msg)
    return np.ascontiguousarray(a)


def _uint8_rows(x: object, name: str, shape: tuple[int, int]) -> Array:
    """A packed uint8 component (N:M positions, bitmask bits) of exactly `shape`, rows
    contiguous."""
    a = _native(to_numpy(x, name))
    if a.dtype != np.uint8:
        msg = f"{name}: expected dtype uint8, got {a.dtype}"
        raise TypeError(msg)
    if a.shape != shape:
        msg = f"{name}: expected shape {shape}, got {a.shape}"
        raise ValueError(msg)
    return _contiguous_rows(a)


def _index_arrays(*named: tuple[str, object]) -> list[Array]:
    """1-D integer arrays as one index dtype: int32 if all are int32, else int64."""
    arrays = []
    for name, x in named:
        a = to_numpy(x, name)
        if a.dtype.kind not in "iu":
            msg = f"{name}: expected an integer array, got dtype {a.dtype}"
            raise TypeError(msg)
        if a.ndim != 1:
            msg = f"{name}: expected a 1-D array, got shape {a.shape}"
            raise ValueError(msg)
        arrays.append(a)
    target = np.int32 if all(a.dtype == np.int32 for a in arrays) else np.int64
    out = []
    for (name, _), a in zip(named, arrays, strict=True):
        if a.dtype.kind == "u" and a.size and int(a.max()) > np.iinfo(np.int64).max:
            msg = f"{name}: index too large"
            raise ValueError(msg)
        out.append(np.ascontiguousarray(a, dtype=target))
    return out


def _indptr_from_counts(counts: Array, dtype: type[np.signedinteger[Any]]) -> Array:
    """Row offsets from per-row counts: 0, then their running sum."""
    indptr = np.empty(counts.size + 1, dtype=dtype)
    indptr[0] = 0
    np.cumsum(counts, out=indptr[1:])
    return indptr


def _check_csr_structure(indptr: Array, indices: Array, rows: int, cols: int, what: str) -> None:
    """Refuse an ``indptr``/``indices`` pair that is not canonical CSR over `rows` x `cols`
    (`what` names the rows: "rows" or "block rows"); the core scans the arrays."""
    if indptr.size != rows + 1:
        msg = f"indptr: expected {rows + 1} entries for {rows} {what}, got {indptr.size}"
        raise ValueError(msg)
    row, problem = _core.formats.check_csr(indptr, indices, rows, cols)
    if problem:
        msg = f"indices/indptr: {_CSR_PROBLEMS[problem]} ({what[:-1]} {row})"
        raise ValueError(msg)


def _working(dtype: np.dtype[Any]) -> type[np.floating[Any]]:
    """The dtype products are computed in: float64 for float64 values, else float32."""
    return np.float64 if dtype == np.float64 else np.float32


def _scipy_values(data: Array) -> Array:
    """Values as scipy.sparse takes them: shared, or float32 for 16-bit floats it lacks."""
    return data if data.itemsize > 2 else data.astype(np.float32)


# --- the common interface --------------------------------------------------------------------

_T = TypeVar("_T")


class _Part(Generic[_T]):
    """A read-only attribute of a format (``csr.indptr``, ``nm.n``) backed by the slot of the
    same name with a leading underscore; one definition instead of a property per part."""

    __slots__ = ("_slot",)

    def __set_name__(self, owner: type, name: str) -> None:
        self._slot = f"_{name}"

    @overload
    def __get__(self, obj: None, owner: type) -> _Part[_T]: ...
    @overload
    def __get__(self, obj: object, owner: type) -> _T: ...
    def __get__(self, obj: object | None, owner: type) -> _Part[_T] | _T:
        return self if obj is None else cast(_T, getattr(obj, self._slot))


_Matrix = TypeVar("_Matrix", bound="SparseMatrix")


class SparseMatrix(ABC):
    """What every format offers: shape, dtype, conversions, ``np.asarray`` and ``@``."""

    format: ClassVar[str]
    _components: ClassVar[tuple[str, ...]]  # the names of the component arrays, in order
    __slots__ = ("_dtype", "_shape")

    _shape: tuple[int, int]
    _dtype: np.dtype[Any]

    def __setattr__(self, name: str, value: object) -> None:
        msg = f"{type(self).__name__} is immutable"
        raise AttributeError(msg)

    def _set(self, **fields: object) -> None:
        for name, value in fields.items():
            object.__setattr__(self, name, value)

    @classmethod
    def _trusted(
        cls: type[_Matrix], shape: tuple[int, int], values: Array, **parts: object
    ) -> _Matrix:
        """A matrix from parts that this package's kernels built or that were validated before:
        no checks. `values` are the stored values (they give the dtype); `parts` name the slots."""
        obj = cls.__new__(cls)
        obj._set(_shape=shape, _dtype=values.dtype, **parts)
        return obj

    @property
    def shape(self) -> tuple[int, int]:
        return self._shape

    @property
    def dtype(self) -> np.dtype[Any]:
        return self._dtype

    @property
    @abstractmethod
    def nnz(self) -> int:
        """Number of stored values (explicit zeros included)."""

    def components(self) -> dict[str, Array]:
        """The component arrays by name (shared, not copied)."""
        return {name: getattr(self, f"_{name}") for name in self._components}

    @abstractmethod
    def to_dense(self) -> Array:
        """The dense matrix, in this matrix's dtype."""

    @abstractmethod
    def to_csr(self) -> CSR: ...

    @property
    def density(self) -> float:
        """nnz / (rows · cols); 0.0 for an empty shape."""
        size = self._shape[0] * self._shape[1]
        return self.nnz / size if size else 0.0

    @property
    def nbytes(self) -> int:
        """Bytes held by the component arrays."""
        return sum(a.nbytes for a in self.components().values())

    def to_coo(self) -> COO:
        return self.to_csr().to_coo()

    def to_bsr(self, block: tuple[int, int]) -> BSR:
        from .bsr import BSR

        return BSR.from_dense(self.to_dense(), block=block)

    def to_nm(self, n: int, m: int) -> NMCompressed:
        from .nm import NMCompressed

        return NMCompressed.from_dense(self.to_dense(), n, m)

    def to_bitmask(self) -> Bitmask:
        return self.to_csr().to_bitmask()

    def __array__(self, dtype: npt.DTypeLike | None = None, copy: bool | None = None) -> Array:
        if copy is False:
            msg = f"{type(self).__name__}: a dense array is always a new copy"
            raise ValueError(msg)
        dense = self.to_dense()
        return dense if dtype is None else dense.astype(dtype, copy=False)

    def __matmul__(self, x: object) -> Array:
        """``A @ x`` for a dense x of shape (cols,), (cols, k) or (..., cols, k).

        Computed (and returned) in float64 for a float64 matrix, else in float32; x is converted
        to that dtype when it differs.
        """
        a = to_numpy(x, "x")
        float_dtype(a, "x")
        rows, cols = self._shape
        work = _working(self._dtype)
        if a.ndim == 0 or a.shape[-2 if a.ndim > 1 else 0] != cols:
            msg = f"x: shape {a.shape} does not match the matrix shape {self._shape} for A @ x"
            raise ValueError(msg)
        if a.ndim == 1:
            return self._matmul(_contiguous_rows(a.astype(work).reshape(cols, 1)))[:, 0]
        if a.ndim == 2:
            return self._matmul(_contiguous_rows(a.astype(work, copy=False)))
        # Batched: (..., cols, k) -> (cols, batch * k), one product, then back.
        batch, k = a.shape[:-2], a.shape[-1]
        x2 = np.moveaxis(a, -2, 0).astype(work).reshape(cols, -1)
        y = self._matmul(_contiguous_rows(x2)).reshape((rows, *batch, k))
        return np.ascontiguousarray(np.moveaxis(y, 0, -2))

    @abstractmethod
    def _matmul(self, x: Array) -> Array:
        """A @ x for x of shape (cols, k) in the working dtype with contiguous rows."""

    def _kind(self) -> str:
        return "bfloat16" if is_bfloat16(self._dtype) else str(self._dtype)

    def _out(self, k: int) -> Array:
        return np.empty((self._shape[0], k), dtype=_working(self._dtype))

    def __repr__(self) -> str:
        rows, cols = self._shape
        return (
            f"<{type(self).__name__} {rows}x{cols} {self._kind()}, nnz={self.nnz}, "
            f"density={self.density:.3g}{self._repr_extra()}>"
        )

    def _repr_extra(self) -> str:
        return ""


class _StoredData(SparseMatrix):
    """A format whose stored values (or blocks) are one array, ``data``: all but N:M."""

    __slots__ = ("_data",)

    _data: Array
    data: _Part[Array] = _Part()

    @property
    def nnz(self) -> int:
        return int(self._data.size)
