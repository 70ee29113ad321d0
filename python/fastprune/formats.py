"""Sparse storage formats for pruned weights, their conversions, interop and sparse matmul.

Five formats, each an immutable object holding NumPy component arrays:

- :class:`CSR` — ``indptr`` (rows + 1), ``indices`` (column of each stored value, sorted and
  unique within a row), ``data``. The layout of ``scipy.sparse.csr_array`` and ``torch``'s
  sparse CSR tensors.
- :class:`COO` — ``row``, ``col``, ``data``, in canonical order: sorted by (row, column), no
  duplicates.
- :class:`BSR` — blocks of ``h × w``: ``indptr`` over block rows, ``indices`` (block column of
  each stored block), ``data`` of shape ``(blocks, h, w)``. The layout of ``scipy.sparse.bsr_array``
  and torch's sparse BSR tensors.
- :class:`NMCompressed` — N kept of every M consecutive weights along a row: ``values`` of shape
  ``(rows, cols / m * n)`` and ``indices``, each kept value's position (0 … m-1) within its group
  packed into ``b`` bits (``b`` = 1 for m ≤ 2, 2 for m ≤ 4, 4 for m ≤ 16, 8 for m ≤ 256) of a
  uint8 array of shape ``(rows, ceil(cols / m * n * b / 8))``, least significant bits first:
  the position of kept value ``j`` of a row is ``(indices[i, j*b // 8] >> (j*b % 8)) & (2**b - 1)``.
  Positions are strictly increasing within a group.

  For 2:4 this is the metadata that NVIDIA's sparse tensor cores consume (``mma.sp``, cuSPARSELt):
  2 bits per kept value, the two positions of a group of four in one nibble with the first
  position in the low two bits, so one little-endian uint16 holds the metadata of 8 kept values
  (16 dense columns) and ``values`` is the compressed operand. The hardware additionally wants
  the metadata words of a tile interleaved in the order its thread fragments load them; that
  reordering is specific to the instruction shape and is left to the deployment tool (cuSPARSELt
  ``cusparseLtSpMMACompress`` or CUTLASS's reorder), which takes this row-major form as input.
- :class:`Bitmask` — ``mask``, one bit per element, ``mask[i] == np.packbits(x[i] != 0)`` (most
  significant bit first, rows padded to whole bytes with zero bits), and ``data``, the values at
  set bits in row-major order. The compact checkpoint form.

Values keep their dtype: float16, bfloat16 (ml_dtypes), float32 or float64. Indices are int32,
or int64 when the number of stored values or a dimension needs it. An element is non-zero when
``x != 0`` (so -0.0 is not stored and NaN is). ``nnz`` counts stored values, explicit zeros
included (an N:M group with fewer than N non-zeros is padded with explicit zeros at its lowest
free positions, and its ``nnz`` is always ``rows * cols / m * n``).

Conversions are two-pass O(nnz) kernels in C++ (count per row, prefix sum, fill), multithreaded
over rows, with results independent of the thread count. ``to_csr()`` of every format, and
``CSR.to_coo()``, ``CSR.to_bitmask()``, ``COO.to_csr()`` share or derive arrays without going
through a dense matrix; ``to_bsr()`` and ``to_nm()`` from another format go through the dense
matrix (O(rows · cols) memory) and drop explicit zeros.

Matmul ``A @ x`` takes a dense right-hand side of shape ``(cols,)``, ``(cols, k)`` or batched
``(..., cols, k)``. It is computed in float32 for float16/bfloat16/float32 matrices (16-bit stored
values are decoded one at a time inside the kernel; ``x`` is converted to float32 if it is not)
and in float64 for float64 matrices, and the result has that dtype. Each output row is a sum over
the row's stored values in storage order, register-blocked over the k columns of ``x``.

Performance (``python -m bench formats``; 4096 x 4096 float32 weights times 4096 x k, on a 2-core
Xeon that other jobs were sharing, so absolute times are inflated and noisy; ratios below are
fastprune on one thread, best of 9, against numpy/OpenBLAS dense on both cores and scipy CSR):

====================  ==========  ==========  ==========
vs numpy dense        k = 1       k = 8       k = 128
====================  ==========  ==========  ==========
CSR, 90 % sparse      6.5x        14.8x       1.7x
CSR, 70 % sparse      1.4x        1.9x        0.50x
CSR, 50 % sparse      0.68x       1.0x        0.24x
2:4 compressed        0.71x       1.8x        0.24x
====================  ==========  ==========  ==========

- Where it does not win: at k = 128 the dense product is compute-bound at OpenBLAS's GEMM rate,
  which a gather kernel (one broadcast per stored value, rows of x fetched by index) cannot match
  per stored value, so it wins only at high sparsity. At k = 1 the product streams the weights and
  sparse wins only by reading fewer bytes: CSR at 50 % (a value plus a 4-byte index each) reads
  as much as dense, and 2:4 pays a position decode per row. On a CPU, 2:4 and 50 % pay in memory,
  not in speed, except at small batches (k = 8).
- Against scipy's CSR: 1.3-3.2x faster for k >= 8 (register-blocked over k); the k = 1 gather-dot
  measured 0.6-0.9x of scipy's single-loop matvec.
- dense -> CSR: 24x faster than ``scipy.sparse.csr_matrix(dense)`` at 50 % sparsity, 7x at 90 %.

Interop: ``to_scipy()`` / ``from_scipy()`` for CSR, COO and BSR (``csr_array`` and
``csr_matrix`` alike) share the arrays when the layouts match (float16/bfloat16 values are
converted to float32, which scipy.sparse needs); ``to_torch()`` / ``from_torch()`` for torch's
sparse CSR, COO and BSR tensors (COO indices are int64 in torch, so they are copied). scipy and
torch are imported only inside those methods.
"""

from __future__ import annotations

import contextlib
import warnings
from abc import ABC, abstractmethod
from collections.abc import Iterator
from typing import Any, ClassVar, TypeVar

import numpy as np
import numpy.typing as npt

from . import _core
from ._arrays import (
    bfloat16_dtype,
    float_dtype,
    is_bfloat16,
    positive_int,
    rows_contiguous,
    to_numpy,
)

__all__ = ["BSR", "COO", "CSR", "Bitmask", "NMCompressed", "SparseMatrix"]

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


def _shape(shape: object) -> tuple[int, int]:
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
    a = _native(to_numpy(x, name))
    float_dtype(a, name)
    if a.ndim != ndim:
        msg = f"{name}: expected a {ndim}-D array, got shape {a.shape}"
        raise ValueError(msg)
    return np.ascontiguousarray(a)


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
    indptr = np.empty(counts.size + 1, dtype=dtype)
    indptr[0] = 0
    np.cumsum(counts, out=indptr[1:])
    return indptr


def _check_csr_structure(indptr: Array, indices: Array, rows: int, cols: int, what: str) -> None:
    if indptr.size != rows + 1:
        msg = f"indptr: expected {rows + 1} entries for {rows} {what}, got {indptr.size}"
        raise ValueError(msg)
    row, problem = _core.formats.check_csr(indptr, indices, rows, cols)
    if problem:
        msg = f"indices/indptr: {_CSR_PROBLEMS[problem]} ({what[:-1]} {row})"
        raise ValueError(msg)


def _working(dtype: np.dtype[Any]) -> type[np.floating[Any]]:
    return np.float64 if dtype == np.float64 else np.float32


# --- the common interface --------------------------------------------------------------------


class SparseMatrix(ABC):
    """What every format offers: shape, dtype, conversions, ``np.asarray`` and ``@``."""

    format: ClassVar[str]
    __slots__ = ("_dtype", "_shape")

    _shape: tuple[int, int]
    _dtype: np.dtype[Any]

    def __setattr__(self, name: str, value: object) -> None:
        msg = f"{type(self).__name__} is immutable"
        raise AttributeError(msg)

    def _set(self, **fields: object) -> None:
        for name, value in fields.items():
            object.__setattr__(self, name, value)

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

    @abstractmethod
    def components(self) -> dict[str, Array]:
        """The component arrays by name (shared, not copied)."""

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
        return BSR.from_dense(self.to_dense(), block=block)

    def to_nm(self, n: int, m: int) -> NMCompressed:
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


# --- CSR -------------------------------------------------------------------------------------


class _CompressedRows(SparseMatrix):
    """What CSR and BSR share: rows (block rows for BSR) compressed by ``indptr``, stored in the
    layout scipy.sparse and torch use for the same format, so that interop shares the arrays."""

    __slots__ = ("_data", "_indices", "_indptr")

    _indptr: Array
    _indices: Array
    _data: Array

    @abstractmethod
    def __init__(
        self, indptr: object, indices: object, data: object, shape: tuple[int, int]
    ) -> None: ...  # each format validates its own parts

    @classmethod
    def from_scipy(cls: type[_Compressed], m: Any) -> _Compressed:
        """From a scipy matrix or array of this format, sharing its arrays when canonical."""
        if getattr(m, "format", None) != cls.format:
            name = cls.format.upper()
            msg = f"m: expected a scipy.sparse {name} matrix or array, got {type(m).__name__}"
            raise TypeError(msg)
        if not m.has_canonical_format:
            m = m.copy()
            m.sum_duplicates()
        return cls(m.indptr, m.indices, m.data, m.shape)

    def to_torch(self) -> Any:
        """A ``torch.sparse_csr_tensor`` / ``sparse_bsr_tensor`` sharing the arrays."""
        import torch

        make = getattr(torch, f"sparse_{self.format}_tensor")
        with _quiet_beta_warning():
            return make(
                torch.from_numpy(self._indptr),
                torch.from_numpy(self._indices),
                _torch_values(torch, self._data),
                size=self._shape,
                check_invariants=False,  # validated when this matrix was built
            )

    @classmethod
    def from_torch(cls: type[_Compressed], t: Any) -> _Compressed:
        """From a CPU torch tensor of layout ``sparse_csr`` / ``sparse_bsr``, sharing its arrays."""
        import torch

        layout = f"sparse_{cls.format}"
        _require_layout(t, getattr(torch, layout), layout)
        return cls(
            t.crow_indices().numpy(),
            t.col_indices().numpy(),
            _numpy_values(torch, t.values()),
            tuple(t.shape),
        )


_Compressed = TypeVar("_Compressed", bound=_CompressedRows)


class CSR(_CompressedRows):
    """Compressed sparse rows: ``indptr`` (rows + 1), ``indices`` and ``data`` (nnz)."""

    format = "csr"
    __slots__ = ()

    def __init__(self, indptr: object, indices: object, data: object, shape: tuple[int, int]):
        """A CSR matrix from its parts, validated (canonical: sorted, unique columns per row).

        Arrays are used as they are when they are contiguous and int32/int64 indices of one
        dtype; otherwise they are converted. Raises ValueError on any inconsistency.
        """
        rows, cols = _shape(shape)
        indptr_a, indices_a = _index_arrays(("indptr", indptr), ("indices", indices))
        data_a = _values(data, "data")
        if data_a.size != indices_a.size:
            msg = f"data: has {data_a.size} values but indices has {indices_a.size}"
            raise ValueError(msg)
        _check_csr_structure(indptr_a, indices_a, rows, cols, "rows")
        self._set(_shape=(rows, cols), _dtype=data_a.dtype)
        self._set(_indptr=indptr_a, _indices=indices_a, _data=data_a)

    @classmethod
    def _trusted(cls, indptr: Array, indices: Array, data: Array, shape: tuple[int, int]) -> CSR:
        obj = cls.__new__(cls)
        obj._set(_shape=shape, _dtype=data.dtype, _indptr=indptr, _indices=indices, _data=data)
        return obj

    @classmethod
    def from_dense(cls, x: object) -> CSR:
        """The non-zeros of a 2-D float array (``x != 0``), in its dtype."""
        a = _dense(x)
        rows, cols = a.shape
        counts = _core.formats.row_nonzeros(_bits(a))
        nnz = int(counts.sum())
        index = _index_dtype(nnz, rows, cols)
        indptr = _indptr_from_counts(counts, index)
        indices = np.empty(nnz, dtype=index)
        data = np.empty(nnz, dtype=a.dtype)
        _core.formats.dense_to_csr(_bits(a), indptr, indices, _bits(data))
        return cls._trusted(indptr, indices, data, (rows, cols))

    @property
    def indptr(self) -> Array:
        return self._indptr

    @property
    def indices(self) -> Array:
        return self._indices

    @property
    def data(self) -> Array:
        return self._data

    @property
    def nnz(self) -> int:
        return int(self._data.size)

    def components(self) -> dict[str, Array]:
        return {"indptr": self._indptr, "indices": self._indices, "data": self._data}

    def to_dense(self) -> Array:
        out = np.empty(self._shape, dtype=self._dtype)
        _core.formats.csr_to_dense(self._indptr, self._indices, _bits(self._data), _bits(out))
        return out

    def to_csr(self) -> CSR:
        return self

    def to_coo(self) -> COO:
        """The same entries as COO; ``col`` and ``data`` are shared."""
        row = np.empty_like(self._indices)
        _core.formats.expand_indptr(self._indptr, row)
        return COO._trusted(row, self._indices, self._data, self._shape)

    def to_bitmask(self) -> Bitmask:
        """The same entries as a bitmask; ``data`` is shared."""
        rows, cols = self._shape
        mask = np.empty((rows, (cols + 7) // 8), dtype=np.uint8)
        _core.formats.csr_to_bitmask(self._indptr, self._indices, mask)
        offsets = self._indptr.astype(np.int64)
        return Bitmask._trusted(mask, self._data, offsets, self._shape)

    def _matmul(self, x: Array) -> Array:
        out = self._out(x.shape[1])
        _core.formats.csr_matmul(
            self._indptr, self._indices, _bits(self._data), self._kind(), self._shape[1], x, out
        )
        return out

    def to_scipy(self, *, matrix: bool = False) -> Any:
        """``scipy.sparse.csr_array`` (``csr_matrix`` with ``matrix=True``) sharing the arrays.

        float16/bfloat16 values are converted to float32 (scipy.sparse has no 16-bit floats).
        """
        import scipy.sparse as sp

        kind = sp.csr_matrix if matrix else sp.csr_array
        data = self._data if self._data.itemsize > 2 else self._data.astype(np.float32)
        m = kind((data, self._indices, self._indptr), shape=self._shape, copy=False)
        m.has_canonical_format = True
        return m


# --- COO -------------------------------------------------------------------------------------


class COO(SparseMatrix):
    """Coordinates in canonical order (sorted by row, then column, no duplicates)."""

    format = "coo"
    __slots__ = ("_col", "_data", "_row")

    _row: Array
    _col: Array
    _data: Array

    def __init__(self, row: object, col: object, data: object, shape: tuple[int, int]):
        """A COO matrix from its parts, validated: in range and in canonical order."""
        rows, cols = _shape(shape)
        row_a, col_a = _index_arrays(("row", row), ("col", col))
        data_a = _values(data, "data")
        if not row_a.size == col_a.size == data_a.size:
            msg = f"row, col, data: lengths differ ({row_a.size}, {col_a.size}, {data_a.size})"
            raise ValueError(msg)
        bad = _core.formats.check_coo(row_a, col_a, rows, cols)
        if bad >= 0:
            msg = (
                f"row/col: entry {bad} ({row_a[bad]}, {col_a[bad]}) is out of range for shape "
                f"{(rows, cols)} or not after the previous one in (row, col) order"
            )
            raise ValueError(msg)
        self._set(_shape=(rows, cols), _dtype=data_a.dtype, _row=row_a, _col=col_a, _data=data_a)

    @classmethod
    def _trusted(cls, row: Array, col: Array, data: Array, shape: tuple[int, int]) -> COO:
        obj = cls.__new__(cls)
        obj._set(_shape=shape, _dtype=data.dtype, _row=row, _col=col, _data=data)
        return obj

    @classmethod
    def from_dense(cls, x: object) -> COO:
        """The non-zeros of a 2-D float array (``x != 0``), in its dtype."""
        return CSR.from_dense(x).to_coo()

    @property
    def row(self) -> Array:
        return self._row

    @property
    def col(self) -> Array:
        return self._col

    @property
    def data(self) -> Array:
        return self._data

    @property
    def nnz(self) -> int:
        return int(self._data.size)

    def components(self) -> dict[str, Array]:
        return {"row": self._row, "col": self._col, "data": self._data}

    def to_csr(self) -> CSR:
        """The same entries as CSR; ``indices`` and ``data`` are shared."""
        rows = self._shape[0]
        indptr = np.empty(rows + 1, dtype=self._row.dtype)
        _core.formats.compress_rows(self._row, rows, indptr)
        return CSR._trusted(indptr, self._col, self._data, self._shape)

    def to_coo(self) -> COO:
        return self

    def to_dense(self) -> Array:
        return self.to_csr().to_dense()

    def _matmul(self, x: Array) -> Array:
        return self.to_csr()._matmul(x)

    def to_scipy(self) -> Any:
        """``scipy.sparse.coo_array`` sharing the arrays (16-bit values become float32)."""
        import scipy.sparse as sp

        data = self._data if self._data.itemsize > 2 else self._data.astype(np.float32)
        return sp.coo_array((data, (self._row, self._col)), shape=self._shape, copy=False)

    @classmethod
    def from_scipy(cls, m: Any) -> COO:
        """From a scipy COO matrix or array; a copy is sorted and summed if it is not canonical."""
        if getattr(m, "format", None) != "coo":
            msg = f"m: expected a scipy.sparse COO matrix or array, got {type(m).__name__}"
            raise TypeError(msg)
        try:
            return cls(m.row, m.col, m.data, m.shape)
        except ValueError:
            m = m.copy()
            m.sum_duplicates()
            return cls(m.row, m.col, m.data, m.shape)

    def to_torch(self) -> Any:
        """A coalesced ``torch.sparse_coo_tensor`` (indices copied to int64, as torch needs)."""
        import torch

        indices = torch.from_numpy(np.stack([self._row, self._col]).astype(np.int64))
        return torch.sparse_coo_tensor(
            indices,
            _torch_values(torch, self._data),
            size=self._shape,
            is_coalesced=True,
            check_invariants=False,  # validated when this matrix was built
        )

    @classmethod
    def from_torch(cls, t: Any) -> COO:
        """From a CPU ``torch.sparse_coo`` tensor (coalesced first if it is not)."""
        import torch

        _require_layout(t, torch.sparse_coo, "sparse_coo")
        if not t.is_coalesced():
            t = t.coalesce()
        indices = t.indices().numpy()
        return cls(indices[0], indices[1], _numpy_values(torch, t.values()), tuple(t.shape))


# --- BSR -------------------------------------------------------------------------------------


def _block(block: object, rows: int, cols: int) -> tuple[int, int]:
    if not isinstance(block, (tuple, list)) or len(block) != 2:
        msg = f"block: expected (h, w), got {block!r}"
        raise ValueError(msg)
    h, w = positive_int(block[0], "block"), positive_int(block[1], "block")
    if rows % h or cols % w:
        msg = f"block: ({h}, {w}) does not divide the shape ({rows}, {cols})"
        raise ValueError(msg)
    return h, w


class BSR(_CompressedRows):
    """Block sparse rows: ``indptr`` over block rows, ``indices`` and ``data`` (blocks, h, w)."""

    format = "bsr"
    __slots__ = ()

    def __init__(self, indptr: object, indices: object, data: object, shape: tuple[int, int]):
        """A BSR matrix from its parts, validated; the block shape is ``data.shape[1:]``."""
        rows, cols = _shape(shape)
        indptr_a, indices_a = _index_arrays(("indptr", indptr), ("indices", indices))
        data_a = _values(data, "data", ndim=3)
        h, w = _block(data_a.shape[1:], rows, cols)
        if data_a.shape[0] != indices_a.size:
            msg = f"data: has {data_a.shape[0]} blocks but indices has {indices_a.size}"
            raise ValueError(msg)
        _check_csr_structure(indptr_a, indices_a, rows // h, cols // w, "block rows")
        self._set(_shape=(rows, cols), _dtype=data_a.dtype)
        self._set(_indptr=indptr_a, _indices=indices_a, _data=data_a)

    @classmethod
    def from_dense(cls, x: object, block: tuple[int, int]) -> BSR:
        """The ``h × w`` blocks of x holding a non-zero; h and w must divide the shape."""
        a = _dense(x)
        rows, cols = a.shape
        h, w = _block(block, rows, cols)
        counts = _core.formats.block_row_nonzeros(_bits(a), h, w)
        blocks = int(counts.sum())
        index = _index_dtype(blocks, rows, cols)
        indptr = _indptr_from_counts(counts, index)
        indices = np.empty(blocks, dtype=index)
        data = np.empty((blocks, h, w), dtype=a.dtype)
        _core.formats.dense_to_bsr(_bits(a), h, w, indptr, indices, _bits(data).reshape(-1))
        obj = cls.__new__(cls)
        obj._set(_shape=(rows, cols), _dtype=a.dtype, _indptr=indptr, _indices=indices, _data=data)
        return obj

    @property
    def indptr(self) -> Array:
        return self._indptr

    @property
    def indices(self) -> Array:
        return self._indices

    @property
    def data(self) -> Array:
        return self._data

    @property
    def block(self) -> tuple[int, int]:
        return int(self._data.shape[1]), int(self._data.shape[2])

    @property
    def nnz(self) -> int:
        return int(self._data.size)

    def components(self) -> dict[str, Array]:
        return {"indptr": self._indptr, "indices": self._indices, "data": self._data}

    def _flat(self) -> Array:
        return _bits(self._data).reshape(-1)

    def to_dense(self) -> Array:
        out = np.empty(self._shape, dtype=self._dtype)
        h, w = self.block
        _core.formats.bsr_to_dense(self._indptr, self._indices, self._flat(), h, w, _bits(out))
        return out

    def to_csr(self) -> CSR:
        """The non-zero elements of the stored blocks as CSR (explicit zeros dropped)."""
        h, w = self.block
        rows, cols = self._shape
        counts = _core.formats.bsr_row_nonzeros(self._indptr, self._flat(), h, w)
        nnz = int(counts.sum())
        index = _index_dtype(nnz, rows, cols)
        indptr = _indptr_from_counts(counts, index)
        indices = np.empty(nnz, dtype=index)
        data = np.empty(nnz, dtype=self._dtype)
        _core.formats.bsr_to_csr(
            self._indptr, self._indices, self._flat(), h, w, cols, indptr, indices, _bits(data)
        )
        return CSR._trusted(indptr, indices, data, self._shape)

    def to_bsr(self, block: tuple[int, int]) -> BSR:
        if tuple(block) == self.block:
            return self
        return super().to_bsr(block)

    def _matmul(self, x: Array) -> Array:
        out = self._out(x.shape[1])
        h, w = self.block
        _core.formats.bsr_matmul(
            self._indptr, self._indices, self._flat(), h, w, self._kind(), self._shape[1], x, out
        )
        return out

    def _repr_extra(self) -> str:
        return f", block={self.block}"

    def to_scipy(self) -> Any:
        """``scipy.sparse.bsr_array`` sharing the arrays (16-bit values become float32)."""
        import scipy.sparse as sp

        data = self._data if self._data.itemsize > 2 else self._data.astype(np.float32)
        return sp.bsr_array(
            (data, self._indices, self._indptr), shape=self._shape, blocksize=self.block, copy=False
        )


# --- N:M compressed --------------------------------------------------------------------------


def _nm(n: object, m: object, cols: int) -> tuple[int, int]:
    n_, m_ = positive_int(n, "n"), positive_int(m, "m")
    if m_ > 256:
        msg = f"m: must be at most 256, got {m_}"
        raise ValueError(msg)
    if n_ > m_:
        msg = f"n: must be at most m = {m_}, got {n_}"
        raise ValueError(msg)
    if cols % m_:
        msg = f"m: {m_} does not divide the number of columns {cols}"
        raise ValueError(msg)
    return n_, m_


def _packed_bytes(cols: int, n: int, m: int) -> int:
    return (cols // m * n * int(_core.formats.nm_index_bits(m)) + 7) // 8


class NMCompressed(SparseMatrix):
    """N kept of every M: ``values`` (rows, cols/m·n) and packed in-group ``indices`` (uint8).

    See the module docstring for the bit layout and how it maps onto 2:4 sparse tensor cores.
    """

    format = "nm"
    __slots__ = ("_indices", "_m", "_n", "_values")

    _values: Array
    _indices: Array
    _n: int
    _m: int

    def __init__(self, values: object, indices: object, shape: tuple[int, int], n: int, m: int):
        """An N:M matrix from its parts, validated (positions < m, increasing within groups)."""
        rows, cols = _shape(shape)
        n_, m_ = _nm(n, m, cols)
        values_a = _values(values, "values", ndim=2)
        if values_a.shape != (rows, cols // m_ * n_):
            msg = f"values: expected shape {(rows, cols // m_ * n_)}, got {values_a.shape}"
            raise ValueError(msg)
        indices_a = _native(to_numpy(indices, "indices"))
        if indices_a.dtype != np.uint8:
            msg = f"indices: expected dtype uint8, got {indices_a.dtype}"
            raise TypeError(msg)
        expected = (rows, _packed_bytes(cols, n_, m_))
        if indices_a.shape != expected:
            msg = f"indices: expected shape {expected}, got {indices_a.shape}"
            raise ValueError(msg)
        indices_a = _contiguous_rows(indices_a)
        bad = _core.formats.check_nm(indices_a, cols, n_, m_)
        if bad >= 0:
            msg = (
                f"indices: row {bad} holds a position >= m, positions not strictly increasing "
                "within a group, or non-zero padding bits"
            )
            raise ValueError(msg)
        self._set(_shape=(rows, cols), _dtype=values_a.dtype, _values=values_a)
        self._set(_indices=indices_a, _n=n_, _m=m_)

    @classmethod
    def from_dense(cls, x: object, n: int, m: int) -> NMCompressed:
        """Compress x whose every group of m consecutive elements in a row has at most n non-zeros.

        A group with fewer than n non-zeros is padded with explicit zeros at its lowest free
        positions. ValueError names the first row and group with more than n non-zeros.
        """
        a = _dense(x)
        rows, cols = a.shape
        n_, m_ = _nm(n, m, cols)
        values = np.empty((rows, cols // m_ * n_), dtype=a.dtype)
        indices = np.empty((rows, _packed_bytes(cols, n_, m_)), dtype=np.uint8)
        bad = _core.formats.dense_to_nm(_bits(a), n_, m_, _bits(values), indices)
        if bad >= 0:
            row, group = divmod(int(bad), cols // m_)
            found = int(np.count_nonzero(a[row, group * m_ : (group + 1) * m_]))
            msg = (
                f"x: row {row}, group {group} (columns {group * m_}..{(group + 1) * m_ - 1}) has "
                f"{found} non-zeros, more than n = {n_} of m = {m_}"
            )
            raise ValueError(msg)
        obj = cls.__new__(cls)
        obj._set(_shape=(rows, cols), _dtype=a.dtype, _values=values, _indices=indices)
        obj._set(_n=n_, _m=m_)
        return obj

    @property
    def values(self) -> Array:
        return self._values

    @property
    def indices(self) -> Array:
        return self._indices

    @property
    def n(self) -> int:
        return self._n

    @property
    def m(self) -> int:
        return self._m

    @property
    def nnz(self) -> int:
        return int(self._values.size)

    def components(self) -> dict[str, Array]:
        return {"values": self._values, "indices": self._indices}

    def to_dense(self) -> Array:
        out = np.empty(self._shape, dtype=self._dtype)
        _core.formats.nm_to_dense(_bits(self._values), self._indices, self._n, self._m, _bits(out))
        return out

    def to_csr(self) -> CSR:
        """The non-zeros as CSR (padding zeros dropped)."""
        return CSR.from_dense(self.to_dense())

    def to_nm(self, n: int, m: int) -> NMCompressed:
        if (n, m) == (self._n, self._m):
            return self
        return super().to_nm(n, m)

    def _matmul(self, x: Array) -> Array:
        out = self._out(x.shape[1])
        _core.formats.nm_matmul(
            _bits(self._values),
            self._indices,
            self._n,
            self._m,
            self._kind(),
            self._shape[1],
            x,
            out,
        )
        return out

    def _repr_extra(self) -> str:
        return f", {self._n}:{self._m}"


# --- Bitmask ---------------------------------------------------------------------------------


class Bitmask(SparseMatrix):
    """One bit per element (``mask[i] == np.packbits(x[i] != 0)``) plus the values at set bits."""

    format = "bitmask"
    __slots__ = ("_data", "_mask", "_offsets")

    _mask: Array
    _data: Array
    _offsets: Array

    def __init__(self, mask: object, data: object, shape: tuple[int, int]):
        """A bitmask matrix from its parts, validated (padding bits zero, one value per set bit)."""
        rows, cols = _shape(shape)
        mask_a = _native(to_numpy(mask, "mask"))
        if mask_a.dtype != np.uint8:
            msg = f"mask: expected dtype uint8, got {mask_a.dtype}"
            raise TypeError(msg)
        if mask_a.shape != (rows, (cols + 7) // 8):
            msg = f"mask: expected shape {(rows, (cols + 7) // 8)}, got {mask_a.shape}"
            raise ValueError(msg)
        mask_a = _contiguous_rows(mask_a)
        data_a = _values(data, "data")
        counts, bad = _core.formats.bitmask_row_counts(mask_a, cols)
        if bad >= 0:
            msg = f"mask: row {bad} has padding bits set beyond column {cols}"
            raise ValueError(msg)
        offsets = _indptr_from_counts(counts, np.int64)
        if offsets[-1] != data_a.size:
            msg = f"data: has {data_a.size} values but the mask has {offsets[-1]} set bits"
            raise ValueError(msg)
        self._set(_shape=(rows, cols), _dtype=data_a.dtype)
        self._set(_mask=mask_a, _data=data_a, _offsets=offsets)

    @classmethod
    def _trusted(cls, mask: Array, data: Array, offsets: Array, shape: tuple[int, int]) -> Bitmask:
        obj = cls.__new__(cls)
        obj._set(_shape=shape, _dtype=data.dtype, _mask=mask, _data=data, _offsets=offsets)
        return obj

    @classmethod
    def from_dense(cls, x: object) -> Bitmask:
        """The non-zero pattern (``x != 0``) of x as bits and its non-zeros in row-major order."""
        a = _dense(x)
        rows, cols = a.shape
        offsets = _indptr_from_counts(_core.formats.row_nonzeros(_bits(a)), np.int64)
        mask = np.empty((rows, (cols + 7) // 8), dtype=np.uint8)
        data = np.empty(int(offsets[-1]), dtype=a.dtype)
        _core.formats.dense_to_bitmask(_bits(a), offsets, mask, _bits(data))
        return cls._trusted(mask, data, offsets, (rows, cols))

    @property
    def mask(self) -> Array:
        return self._mask

    @property
    def data(self) -> Array:
        return self._data

    @property
    def nnz(self) -> int:
        return int(self._data.size)

    def components(self) -> dict[str, Array]:
        return {"mask": self._mask, "data": self._data}

    def to_dense(self) -> Array:
        out = np.empty(self._shape, dtype=self._dtype)
        _core.formats.bitmask_to_dense(self._mask, self._offsets, _bits(self._data), _bits(out))
        return out

    def to_csr(self) -> CSR:
        """The same entries as CSR; ``data`` is shared."""
        rows, cols = self._shape
        index = _index_dtype(self.nnz, rows, cols)
        indptr = self._offsets.astype(index)
        indices = np.empty(self.nnz, dtype=index)
        _core.formats.bitmask_to_csr_indices(self._mask, cols, indptr, indices)
        return CSR._trusted(indptr, indices, self._data, self._shape)

    def to_bitmask(self) -> Bitmask:
        return self

    def _matmul(self, x: Array) -> Array:
        return self.to_csr()._matmul(x)


# --- torch helpers ---------------------------------------------------------------------------


@contextlib.contextmanager
def _quiet_beta_warning() -> Iterator[None]:
    """Silence torch's one-time note that its sparse CSR/BSR support is in beta."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse (CSR|BSR) tensor support is in beta")
        yield


def _torch_values(torch: Any, data: Array) -> Any:
    """A torch tensor sharing `data` (bfloat16 through its bits, which torch.from_numpy lacks)."""
    if is_bfloat16(data.dtype):
        return torch.from_numpy(data.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(data)


def _numpy_values(torch: Any, values: Any) -> Array:
    if values.dtype == torch.bfloat16:
        return np.asarray(values.view(torch.int16).numpy()).view(bfloat16_dtype("values"))
    if values.dtype not in (torch.float16, torch.float32, torch.float64):
        msg = f"t: expected float16, bfloat16, float32 or float64 values, got {values.dtype}"
        raise TypeError(msg)
    return np.asarray(values.numpy())


def _require_layout(t: Any, layout: Any, name: str) -> None:
    import torch

    if not isinstance(t, torch.Tensor) or t.layout != layout:
        got = getattr(t, "layout", type(t).__name__)
        msg = f"t: expected a torch.{name} tensor, got {got}"
        raise TypeError(msg)
    if t.device.type != "cpu":
        msg = f"t: expected a CPU tensor, got one on {t.device} (call .cpu() first)"
        raise ValueError(msg)
    if t.dim() != 2 or t.dense_dim() != 0:
        msg = f"t: expected a 2-D sparse matrix, got shape {tuple(t.shape)}"
        raise ValueError(msg)
