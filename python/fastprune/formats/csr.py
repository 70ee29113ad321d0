"""Compressed sparse rows (:class:`CSR`), the format every other one converts through."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from .. import _core
from ._base import (
    Array,
    _bitmask_row_bytes,
    _bits,
    _check_csr_structure,
    _dense,
    _index_arrays,
    _shape,
    _values,
)
from ._compressed import _allocate, _CompressedRows

if TYPE_CHECKING:
    from .bitmask import Bitmask
    from .coo import COO


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
    def from_dense(cls, x: object) -> CSR:
        """The non-zeros of a 2-D float array (``x != 0``), in its dtype."""
        a = _dense(x)
        counts = _core.formats.row_nonzeros(_bits(a))
        indptr, indices, data = _allocate(counts, a.shape, (), a.dtype)
        _core.formats.dense_to_csr(_bits(a), indptr, indices, _bits(data))
        return cls._trusted_parts(indptr, indices, data, a.shape)

    def to_dense(self) -> Array:
        out = np.empty(self._shape, dtype=self._dtype)
        _core.formats.csr_to_dense(self._indptr, self._indices, _bits(self._data), _bits(out))
        return out

    def to_csr(self) -> CSR:
        return self

    def to_coo(self) -> COO:
        """The same entries as COO; ``col`` and ``data`` are shared."""
        from .coo import COO

        row = np.empty_like(self._indices)
        _core.formats.expand_indptr(self._indptr, row)
        return COO._trusted(self._shape, self._data, _row=row, _col=self._indices, _data=self._data)

    def to_bitmask(self) -> Bitmask:
        """The same entries as a bitmask; ``data`` is shared."""
        from .bitmask import Bitmask

        rows, cols = self._shape
        mask = np.empty((rows, _bitmask_row_bytes(cols)), dtype=np.uint8)
        _core.formats.csr_to_bitmask(self._indptr, self._indices, mask)
        offsets = self._indptr.astype(np.int64)
        return Bitmask._trusted(
            self._shape, self._data, _mask=mask, _data=self._data, _offsets=offsets
        )

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
        m = kind(self._scipy_parts(), shape=self._shape, copy=False)
        m.has_canonical_format = True
        return m
