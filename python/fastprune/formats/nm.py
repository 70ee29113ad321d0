"""N:M compressed rows (:class:`NMCompressed`): the kept values of every group of M and their
packed in-group positions; the bit layout is described in :mod:`fastprune.formats`."""

from __future__ import annotations

import numpy as np

from .. import _core
from .._arrays import positive_int
from ._base import Array, SparseMatrix, _bits, _dense, _Part, _shape, _uint8_rows, _values
from .csr import CSR


def _nm(n: object, m: object, cols: int) -> tuple[int, int]:
    """``n`` and ``m`` of an N:M pattern: 1 <= n <= m <= 256, m dividing the columns."""
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
    """Bytes per row of packed in-group positions (the core's rule)."""
    return int(_core.formats.nm_row_bytes(cols, n, m))


class NMCompressed(SparseMatrix):
    """N kept of every M: ``values`` (rows, cols/m·n) and packed in-group ``indices`` (uint8).

    See :mod:`fastprune.formats` for the bit layout and how it maps onto 2:4 sparse tensor cores.
    """

    format = "nm"
    _components = ("values", "indices")
    __slots__ = ("_indices", "_m", "_n", "_values")

    _values: Array
    _indices: Array
    _n: int
    _m: int
    values: _Part[Array] = _Part()
    indices: _Part[Array] = _Part()
    n: _Part[int] = _Part()
    m: _Part[int] = _Part()

    def __init__(self, values: object, indices: object, shape: tuple[int, int], n: int, m: int):
        """An N:M matrix from its parts, validated (positions < m, increasing within groups)."""
        rows, cols = _shape(shape)
        n_, m_ = _nm(n, m, cols)
        values_a = _values(values, "values", ndim=2)
        if values_a.shape != (rows, cols // m_ * n_):
            msg = f"values: expected shape {(rows, cols // m_ * n_)}, got {values_a.shape}"
            raise ValueError(msg)
        indices_a = _uint8_rows(indices, "indices", (rows, _packed_bytes(cols, n_, m_)))
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
        return cls._trusted((rows, cols), values, _values=values, _indices=indices, _n=n_, _m=m_)

    @property
    def nnz(self) -> int:
        return int(self._values.size)

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
