"""Sparse weights that multiply faster than dense ones: the packed-bitmask and index layouts.

A linear layer's weight ``W`` (out_features, in_features) is stored as what a product needs to
read once: a ``uint16`` mask word per 16 input features (bit ``l`` set when feature
``16 b + l`` is kept) and the kept values packed row after row. Decoding one token is bound by
the bytes read, so this is what decides the speed: per weight, ``4 * density`` bytes of float32
values (``2 * density`` for bfloat16) plus 1/8 byte of mask. A 2:4 weight thus reads
2.125 B per weight against dense float32's 4 (the same as 2-bit in-group positions would), a
70 % sparse one 1.325 B: no column indices, however unstructured the pattern.

:meth:`PackedLinear.linear` computes ``x @ W.T`` (``x`` of shape ``(..., in_features)``) in
float32. Up to ``_core.sparse_linear.GEMM_COLUMNS - 1`` (15) rows of ``x`` (the tokens of decoding
and small batches) go through the packed weight in passes of up to four rows, each pass
streaming it once; from 16 rows on (larger batches, prefill) the kernel decodes tiles of 64
weight rows into dense scratch and multiplies each with one GEMM, which costs little more than
the dense product. Results are the same on every thread count, and, off the GEMM path, on
every instruction-set level with one exception: on AVX-512 where the CPU has VBMI2
(``_core.sparse_linear.byte_compress()``; ``FASTPRUNE_DISABLE_ISA=avx512vbmi2`` turns it off)
rows that are not N:M-like are read in windows of 32 columns and summed in another order than
elsewhere, with the same bound on the error and different roundings.

The bitmask layout costs the same work for every block of 16 columns however few of them are
kept (every 32 columns where the CPU has AVX-512 VBMI2: ``_core.sparse_linear.byte_compress``),
so at high sparsity its product is bound by that work, not by memory. The index layout
(``layout="indices"``) stores each row's kept columns as ``uint16`` ``indices`` (so
``in_features <= 65536``) beside the values, and its product gathers ``x`` at them: a cost per
kept weight, for 2 more bytes read per kept weight. :meth:`PackedLinear.from_dense` picks by
default (``layout="auto"``, :func:`choose_layout`) the index layout where at most
:func:`index_layout_density` of the weights are kept and the bitmask layout otherwise. That is
30 % (70 % sparsity and more) where rows are read block by block: on AVX2 the two products take
the same time at 70 % sparsity, the index layout is 3x faster at 90 %, and the bitmask layout
1.3x faster at 50 %. Where they are read by 32 columns it is 15 %: at one row of x, 4096 x
4096, the bitmask layout is 1.3x faster at 70 % and 75 %, as fast at 85 %, and 1.3x slower at
90 %.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from . import _core
from ._arrays import bfloat16_dtype, check_finite, float_dtype, is_bfloat16, to_numpy
from .formats import SparseMatrix

Array = npt.NDArray[Any]

_DTYPES = ("float32", "bfloat16")
_LAYOUTS = ("auto", "bitmask", "indices")
MAX_INDEXED_COLUMNS = 1 << 16  # columns the uint16 indices of the index layout can address

# The arrays that define a weight in each layout, by name (fastprune.io stores them so).
COMPONENTS = {"bitmask": ("mask", "offsets", "values"), "indices": ("offsets", "indices", "values")}

# (row, problem) of _core.sparse_linear.check_indices (formats' CSR check): the argument at fault
# and what is wrong.
_INDEX_PROBLEMS = {
    1: ("offsets", "offsets[0] must be 0"),
    2: ("offsets", "offsets must be non-decreasing"),
    3: ("offsets", "offsets[-1] must equal the number of indices"),
    4: ("indices", "column index out of range"),
    5: ("indices", "column indices must be strictly increasing within a row"),
}


# The index layout from this density down (see the module docs), where the bitmask layout's rows
# are read block by block and where they are read in windows of 32 columns.
INDEX_LAYOUT_DENSITY = 0.3
WINDOWS_INDEX_LAYOUT_DENSITY = 0.15


def index_layout_density() -> float:
    """The density from which down choose_layout picks the index layout on this machine."""
    if _core.sparse_linear.byte_compress():
        return WINDOWS_INDEX_LAYOUT_DENSITY
    return INDEX_LAYOUT_DENSITY


def choose_layout(shape: tuple[int, int], nnz: int) -> str:
    """The layout ("bitmask" or "indices") that multiplies faster for a weight of `shape` with
    `nnz` kept values: "indices" where at most index_layout_density() of the weights are kept
    and the columns fit uint16 indices, "bitmask" otherwise."""
    rows, cols = shape
    if 0 < cols <= MAX_INDEXED_COLUMNS and nnz <= index_layout_density() * rows * cols:
        return "indices"
    return "bitmask"


def _read_only(a: Array) -> Array:
    a.flags.writeable = False
    return a


class PackedLinear:
    """A weight (out_features, in_features) in the packed-bitmask or the index layout.

    Build one with :meth:`from_dense`, :meth:`from_format` or :meth:`from_indices`;
    :meth:`linear` is ``x @ W.T``, ``W @ x`` (``@``) the same for a vector or a matrix of
    columns. The arrays are read-only.

    Attributes:
        shape: (out_features, in_features).
        dtype: "float32" or "bfloat16", how the kept values are stored (products are float32).
        layout: "bitmask" or "indices".
        mask: (bitmask layout) uint16 (out_features, ceil(in_features / 16)).
        indices: (index layout) uint16 (nnz,), each row's kept columns in increasing order.
        offsets: int64 (out_features + 1,), where each row's values start.
        values: the kept values in row-major order (float32, or uint16 bfloat16 bits); in the
            bitmask layout followed by ``_core.sparse_linear.SLACK`` zeros that vector loads may
            touch.
    """

    format = "packed"  # its name in fastprune.io's safetensors metadata

    def __init__(
        self,
        mask: object,
        offsets: object,
        values: object,
        shape: object,
        dtype: str = "float32",
        *,
        indices: object = None,
    ) -> None:
        """Wraps existing arrays after checking them: the bitmask layout from `mask`, or the index
        layout from `indices` (then `mask` is None, see :meth:`from_indices`). TypeError for a
        wrong dtype, ValueError if the arrays do not fit together."""
        if dtype not in _DTYPES:
            msg = f"dtype: expected one of {_DTYPES}, got {dtype!r}"
            raise ValueError(msg)
        if (
            not isinstance(shape, tuple)
            or len(shape) != 2
            or not all(isinstance(s, int) and s >= 0 for s in shape)
        ):
            msg = f"shape: expected (rows, cols) of non-negative ints, got {shape!r}"
            raise ValueError(msg)
        rows, cols = shape
        self.shape: tuple[int, int] = (rows, cols)
        self.dtype = dtype
        if (mask is None) == (indices is None):
            msg = "mask: give either mask (bitmask layout) or indices (index layout)"
            raise ValueError(msg)
        first = ("mask", mask) if indices is None else ("indices", indices)
        arrays = (first, ("offsets", offsets), ("values", values))
        a, o, v = (np.ascontiguousarray(to_numpy(x, name)) for name, x in arrays)
        want = np.float32 if dtype == "float32" else np.uint16
        for name, x, dt in (
            (first[0], a, np.uint16),
            ("offsets", o, np.int64),
            ("values", v, want),
        ):
            if x.dtype != dt:
                msg = f"{name}: expected dtype {np.dtype(dt)}, got {x.dtype}"
                raise TypeError(msg)
        if o.shape != (rows + 1,):
            msg = f"offsets: expected shape {(rows + 1,)}, got {o.shape}"
            raise ValueError(msg)
        self._mask: Array | None = None
        self._indices: Array | None = None
        if indices is None:
            self._mask = _read_only(self._check_mask(a, o, v))
        else:
            self._indices = _read_only(self._check_indices(a, o, v))
        self.offsets = _read_only(o)
        self.values = _read_only(v)

    def _check_mask(self, m: Array, o: Array, v: Array) -> Array:
        rows, cols = self.shape
        blocks = -(-cols // _core.sparse_linear.BLOCK)
        if m.shape != (rows, blocks):
            msg = f"mask: expected shape {(rows, blocks)}, got {m.shape}"
            raise ValueError(msg)
        bad = _core.sparse_linear.check(m, o, cols)
        if bad >= 0:
            msg = f"offsets: do not match the mask at row {bad} (or mask bits past in_features)"
            raise ValueError(msg)
        if v.shape != (int(o[-1]) + _core.sparse_linear.SLACK,):
            msg = f"values: expected {int(o[-1])} kept values + {_core.sparse_linear.SLACK} slack"
            raise ValueError(msg)
        return m

    def _check_indices(self, idx: Array, o: Array, v: Array) -> Array:
        cols = self.shape[1]
        if cols > MAX_INDEXED_COLUMNS:
            msg = f"shape: the index layout addresses at most {MAX_INDEXED_COLUMNS} columns"
            raise ValueError(msg)
        if idx.ndim != 1:
            msg = f"indices: expected a 1-D array, got shape {idx.shape}"
            raise ValueError(msg)
        row, problem = _core.sparse_linear.check_indices(o, idx, cols)
        if problem:
            name, what = _INDEX_PROBLEMS[problem]
            msg = f"{name}: {what} (row {row})"
            raise ValueError(msg)
        if v.shape != idx.shape:
            msg = f"values: expected {idx.size} kept values (one per index), got shape {v.shape}"
            raise ValueError(msg)
        return idx

    @classmethod
    def from_indices(
        cls, offsets: object, indices: object, values: object, shape: object, dtype: str = "float32"
    ) -> PackedLinear:
        """Wraps the arrays of the index layout after checking them (as the constructor)."""
        return cls(None, offsets, values, shape, dtype, indices=indices)

    @property
    def layout(self) -> str:
        """ "bitmask" or "indices"."""
        return "bitmask" if self._mask is not None else "indices"

    @property
    def mask(self) -> Array:
        """The bitmask layout's mask; AttributeError in the index layout."""
        if self._mask is None:
            msg = "mask: the index layout has no mask (see .layout and .indices)"
            raise AttributeError(msg)
        return self._mask

    @property
    def indices(self) -> Array:
        """The index layout's column indices; AttributeError in the bitmask layout."""
        if self._indices is None:
            msg = "indices: the bitmask layout has no indices (see .layout and .mask)"
            raise AttributeError(msg)
        return self._indices

    @classmethod
    def from_dense(cls, w: object, dtype: str | None = None, layout: str = "auto") -> PackedLinear:
        """The packed weight of the non-zeros of the 2-D float array `w`.

        `dtype` "float32" or "bfloat16" chooses how values are stored; by default bfloat16
        input stays bfloat16 and everything else becomes float32 (float64 is rounded).
        `layout` "bitmask" or "indices" chooses the layout; "auto" the one that multiplies
        faster (:func:`choose_layout`).
        """
        if layout not in _LAYOUTS:
            msg = f"layout: expected one of {_LAYOUTS}, got {layout!r}"
            raise ValueError(msg)
        a = to_numpy(w, "w")
        if a.ndim != 2:
            msg = f"w: expected a 2-D array, got shape {a.shape}"
            raise ValueError(msg)
        source = float_dtype(a, "w")
        check_finite(a, "w")
        if dtype is None:
            dtype = "bfloat16" if is_bfloat16(source) else "float32"
        if dtype not in _DTYPES:
            msg = f"dtype: expected one of {_DTYPES}, got {dtype!r}"
            raise ValueError(msg)
        stored = a.astype(np.float32 if dtype == "float32" else bfloat16_dtype("dtype"), copy=False)
        kept = stored != 0
        rows, cols = a.shape
        offsets = np.zeros(rows + 1, np.int64)
        np.cumsum(np.count_nonzero(kept, axis=1), out=offsets[1:])
        kept_values = stored[kept]
        if dtype == "bfloat16":
            kept_values = kept_values.view(np.uint16)
        if layout == "auto":
            layout = choose_layout((rows, cols), int(offsets[-1]))
        if layout == "indices":
            if cols > MAX_INDEXED_COLUMNS:
                msg = f"layout: the index layout addresses at most {MAX_INDEXED_COLUMNS} columns"
                raise ValueError(msg)
            indices = np.nonzero(kept)[1].astype(np.uint16)
            return cls.from_indices(offsets, indices, kept_values, (rows, cols), dtype)
        block = _core.sparse_linear.BLOCK
        padded = np.zeros((rows, -(-cols // block) * block), bool)
        padded[:, :cols] = kept
        mask = np.packbits(padded, axis=1, bitorder="little").view("<u2").astype(np.uint16)
        values = np.zeros(len(kept_values) + _core.sparse_linear.SLACK, kept_values.dtype)
        values[: len(kept_values)] = kept_values
        return cls(mask, offsets, values, (rows, cols), dtype)

    @classmethod
    def from_format(cls, a: object, dtype: str | None = None, layout: str = "auto") -> PackedLinear:
        """The packed weight of any fastprune sparse format (CSR, Bitmask, NMCompressed, ...);
        `dtype` and `layout` as for :meth:`from_dense`."""
        if not isinstance(a, SparseMatrix):
            msg = f"a: expected a fastprune SparseMatrix, got {type(a).__name__}"
            raise TypeError(msg)
        return cls.from_dense(a.to_dense(), dtype, layout)

    def with_layout(self, layout: str) -> PackedLinear:
        """The same weight in `layout` ("bitmask", "indices" or "auto"); itself if already so."""
        if layout == self.layout:
            return self
        return PackedLinear.from_dense(self.to_dense(), self.dtype, layout)

    @property
    def nnz(self) -> int:
        """Number of kept weights."""
        return int(self.offsets[-1])

    @property
    def density(self) -> float:
        rows, cols = self.shape
        return self.nnz / (rows * cols) if rows * cols else 0.0

    @property
    def nbytes(self) -> int:
        """Bytes a product reads: mask or indices, offsets and values (slack included)."""
        return sum(int(a.nbytes) for a in self.components().values())

    def components(self) -> dict[str, Array]:
        """The arrays that define the weight, by name (what :func:`fastprune.io.save` stores):
        ``COMPONENTS[self.layout]``."""
        first = {"mask": self._mask} if self._mask is not None else {"indices": self.indices}
        return {**first, "offsets": self.offsets, "values": self.values}

    def to_dense(self) -> npt.NDArray[np.float32]:
        """W as a dense float32 array."""
        out = np.empty(self.shape, np.float32)
        if self._mask is not None:
            _core.sparse_linear.to_dense(self._mask, self.offsets, self.values, out)
        else:
            _core.sparse_linear.to_dense_indices(self.offsets, self.indices, self.values, out)
        return out

    def linear(self, x: object) -> npt.NDArray[np.float32]:
        """``x @ W.T`` in float32 for `x` of shape (..., in_features), finite."""
        a = to_numpy(x, "x")
        float_dtype(a, "x")
        if a.ndim < 1 or a.shape[-1] != self.shape[1]:
            msg = f"x: expected shape (..., {self.shape[1]}), got {a.shape}"
            raise ValueError(msg)
        lead = a.shape[:-1]
        flat = np.ascontiguousarray(a.reshape(-1, self.shape[1]), dtype=np.float32)
        check_finite(flat, "x")
        out = np.empty((flat.shape[0], self.shape[0]), np.float32)
        cols = self.shape[1]
        if self._mask is not None:
            _core.sparse_linear.linear(self._mask, self.offsets, self.values, cols, flat, out)
        else:
            _core.sparse_linear.linear_indices(
                self.offsets, self.indices, self.values, cols, flat, out
            )
        result: npt.NDArray[np.float32] = out.reshape(*lead, self.shape[0])
        return result

    def __matmul__(self, x: object) -> npt.NDArray[np.float32]:
        """``W @ x`` for `x` of shape (in_features,) or (in_features, k)."""
        a = to_numpy(x, "x")
        if a.ndim not in (1, 2):
            msg = f"x: expected a 1-D or 2-D array, got shape {a.shape}"
            raise ValueError(msg)
        if a.ndim == 1:
            return self.linear(a)
        columns: npt.NDArray[np.float32] = self.linear(a.T).T
        return columns

    def __repr__(self) -> str:
        rows, cols = self.shape
        return (
            f"PackedLinear({rows}x{cols}, {self.dtype}, {self.layout}, density {self.density:.3f})"
        )
