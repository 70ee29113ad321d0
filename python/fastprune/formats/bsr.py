"""Block sparse rows (:class:`BSR`): the ``h × w`` blocks holding a non-zero."""

from __future__ import annotations

from typing import Any

import numpy as np

from .. import _core
from .._arrays import positive_int
from ._base import Array, _bits, _check_csr_structure, _dense, _index_arrays, _shape, _values
from ._compressed import _allocate, _CompressedRows
from .csr import CSR


def _block(block: object, rows: int, cols: int) -> tuple[int, int]:
    """A block shape ``(h, w)`` of positive ints that divides the matrix shape."""
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
        indptr, indices, data = _allocate(counts, (rows, cols), (h, w), a.dtype)
        _core.formats.dense_to_bsr(_bits(a), h, w, indptr, indices, _bits(data).reshape(-1))
        return cls._trusted_parts(indptr, indices, data, (rows, cols))

    @property
    def block(self) -> tuple[int, int]:
        return int(self._data.shape[1]), int(self._data.shape[2])

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
        cols = self._shape[1]
        counts = _core.formats.bsr_row_nonzeros(self._indptr, self._flat(), h, w)
        indptr, indices, data = _allocate(counts, self._shape, (), self._dtype)
        _core.formats.bsr_to_csr(
            self._indptr, self._indices, self._flat(), h, w, cols, indptr, indices, _bits(data)
        )
        return CSR._trusted_parts(indptr, indices, data, self._shape)

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

        return sp.bsr_array(
            self._scipy_parts(), shape=self._shape, blocksize=self.block, copy=False
        )
