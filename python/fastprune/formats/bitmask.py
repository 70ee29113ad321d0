"""One bit per element plus the values at set bits (:class:`Bitmask`), the compact checkpoint
form."""

from __future__ import annotations

import numpy as np

from .. import _core
from ._base import (
    Array,
    _bitmask_row_bytes,
    _bits,
    _dense,
    _index_dtype,
    _indptr_from_counts,
    _Part,
    _shape,
    _StoredData,
    _uint8_rows,
    _values,
)
from .csr import CSR


class Bitmask(_StoredData):
    """One bit per element (``mask[i] == np.packbits(x[i] != 0)``) plus the values at set bits."""

    format = "bitmask"
    _components = ("mask", "data")
    __slots__ = ("_mask", "_offsets")

    _mask: Array
    _offsets: Array  # row offsets into data (not a component: derived from the mask)
    mask: _Part[Array] = _Part()

    def __init__(self, mask: object, data: object, shape: tuple[int, int]):
        """A bitmask matrix from its parts, validated (padding bits zero, one value per set bit)."""
        rows, cols = _shape(shape)
        mask_a = _uint8_rows(mask, "mask", (rows, _bitmask_row_bytes(cols)))
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
    def from_dense(cls, x: object) -> Bitmask:
        """The non-zero pattern (``x != 0``) of x as bits and its non-zeros in row-major order."""
        a = _dense(x)
        rows, cols = a.shape
        offsets = _indptr_from_counts(_core.formats.row_nonzeros(_bits(a)), np.int64)
        mask = np.empty((rows, _bitmask_row_bytes(cols)), dtype=np.uint8)
        data = np.empty(int(offsets[-1]), dtype=a.dtype)
        _core.formats.dense_to_bitmask(_bits(a), offsets, mask, _bits(data))
        return cls._trusted((rows, cols), data, _mask=mask, _data=data, _offsets=offsets)

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
        return CSR._trusted_parts(indptr, indices, self._data, self._shape)

    def to_bitmask(self) -> Bitmask:
        return self

    def _matmul(self, x: Array) -> Array:
        return self.to_csr()._matmul(x)
