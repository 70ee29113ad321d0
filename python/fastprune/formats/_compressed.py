"""What CSR and BSR share: rows (block rows for BSR) compressed by ``indptr``, in the layout
scipy.sparse and torch use for the same format, so that interop shares the arrays."""

from __future__ import annotations

from abc import abstractmethod
from typing import Any, TypeVar

import numpy as np

from ._base import Array, _index_dtype, _indptr_from_counts, _Part, _scipy_values, _StoredData
from ._torch import _numpy_values, _quiet_beta_warning, _require_layout, _torch_values


def _allocate(
    counts: Array, shape: tuple[int, int], block: tuple[int, ...], dtype: np.dtype[Any]
) -> tuple[Array, Array, Array]:
    """``indptr``, ``indices`` and ``data`` for a kernel to fill, from the stored entries per
    (block) row: indices int32 unless the entries or the shape need int64, data of shape
    ``(entries, *block)``."""
    stored = int(counts.sum())
    index = _index_dtype(stored, *shape)
    indptr = _indptr_from_counts(counts, index)
    return indptr, np.empty(stored, dtype=index), np.empty((stored, *block), dtype=dtype)


class _CompressedRows(_StoredData):
    """Rows compressed by ``indptr``: ``indices`` (the column, or block column, of each stored
    entry) and ``data`` (the entries: values for CSR, blocks for BSR)."""

    _components = ("indptr", "indices", "data")
    __slots__ = ("_indices", "_indptr")

    _indptr: Array
    _indices: Array
    indptr: _Part[Array] = _Part()
    indices: _Part[Array] = _Part()

    @abstractmethod
    def __init__(
        self, indptr: object, indices: object, data: object, shape: tuple[int, int]
    ) -> None: ...  # each format validates its own parts

    @classmethod
    def _trusted_parts(
        cls: type[_Compressed], indptr: Array, indices: Array, data: Array, shape: tuple[int, int]
    ) -> _Compressed:
        """A matrix of this format from parts a kernel built or that were checked before."""
        return cls._trusted(shape, data, _indptr=indptr, _indices=indices, _data=data)

    def _scipy_parts(self) -> tuple[Array, Array, Array]:
        """``(data, indices, indptr)`` as scipy.sparse's constructors take them."""
        return _scipy_values(self._data), self._indices, self._indptr

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
