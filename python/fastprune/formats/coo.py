"""Coordinates (:class:`COO`) in canonical order, converted through CSR."""

from __future__ import annotations

from typing import Any

import numpy as np

from .. import _core
from ._base import Array, _index_arrays, _Part, _scipy_values, _shape, _StoredData, _values
from ._torch import _numpy_values, _require_layout, _torch_values
from .csr import CSR


class COO(_StoredData):
    """Coordinates in canonical order (sorted by row, then column, no duplicates)."""

    format = "coo"
    _components = ("row", "col", "data")
    __slots__ = ("_col", "_row")

    _row: Array
    _col: Array
    row: _Part[Array] = _Part()
    col: _Part[Array] = _Part()

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
    def from_dense(cls, x: object) -> COO:
        """The non-zeros of a 2-D float array (``x != 0``), in its dtype."""
        return CSR.from_dense(x).to_coo()

    def to_csr(self) -> CSR:
        """The same entries as CSR; ``indices`` and ``data`` are shared."""
        rows = self._shape[0]
        indptr = np.empty(rows + 1, dtype=self._row.dtype)
        _core.formats.compress_rows(self._row, rows, indptr)
        return CSR._trusted_parts(indptr, self._col, self._data, self._shape)

    def to_coo(self) -> COO:
        return self

    def to_dense(self) -> Array:
        return self.to_csr().to_dense()

    def _matmul(self, x: Array) -> Array:
        return self.to_csr()._matmul(x)

    def to_scipy(self) -> Any:
        """``scipy.sparse.coo_array`` sharing the arrays (16-bit values become float32)."""
        import scipy.sparse as sp

        data = _scipy_values(self._data)
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
