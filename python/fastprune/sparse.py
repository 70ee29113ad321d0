"""Sparse weights that multiply faster than dense ones: the packed-bitmask layout.

A linear layer's weight ``W`` (out_features, in_features) is stored as what a product needs to
read once: a ``uint16`` mask word per 16 input features (bit ``l`` set when feature
``16 b + l`` is kept) and the kept values packed row after row. Decoding one token is bound by
the bytes read, so this is what decides the speed: per weight, ``4 * density`` bytes of float32
values (``2 * density`` for bfloat16) plus 1/8 byte of mask. A 2:4 weight thus reads
2.125 B per weight against dense float32's 4 (the same as 2-bit in-group positions would), a
70 % sparse one 1.325 B: no column indices, however unstructured the pattern.

:meth:`PackedLinear.linear` computes ``x @ W.T`` (``x`` of shape ``(..., in_features)``) in
float32. Up to ``_core.sparse_linear.GEMM_COLUMNS - 1`` (63) rows of ``x`` (the tokens of decoding
and small batches) stream the weight once through vector expand instructions; more rows (prefill)
are compute bound, and the kernel then decodes tiles of 64 weight rows into dense scratch and
multiplies each with one GEMM, which costs little more than the dense product. Results are the
same on every instruction-set level and thread count (on the GEMM path: every thread count).
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


def _read_only(a: Array) -> Array:
    a.flags.writeable = False
    return a


class PackedLinear:
    """A weight (out_features, in_features) in the packed-bitmask layout.

    Build one with :meth:`from_dense` or :meth:`from_format`; :meth:`linear` is ``x @ W.T``,
    ``W @ x`` (``@``) the same for a vector or a matrix of columns. The arrays are read-only.

    Attributes:
        shape: (out_features, in_features).
        dtype: "float32" or "bfloat16", how the kept values are stored (products are float32).
        mask: uint16 (out_features, ceil(in_features / 16)).
        offsets: int64 (out_features + 1,), where each row's values start.
        values: the kept values in row-major order (float32, or uint16 bfloat16 bits), followed
            by ``_core.sparse_linear.SLACK`` zeros that vector loads may touch.
    """

    format = "packed"  # its name in fastprune.io's safetensors metadata

    def __init__(
        self, mask: object, offsets: object, values: object, shape: object, dtype: str = "float32"
    ) -> None:
        """Wraps existing arrays after checking them; ValueError if they do not fit together."""
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
        m = np.ascontiguousarray(to_numpy(mask, "mask"))
        o = np.ascontiguousarray(to_numpy(offsets, "offsets"))
        v = np.ascontiguousarray(to_numpy(values, "values"))
        want = np.float32 if dtype == "float32" else np.uint16
        for name, a, dt in (("mask", m, np.uint16), ("offsets", o, np.int64), ("values", v, want)):
            if a.dtype != dt:
                msg = f"{name}: expected dtype {np.dtype(dt)}, got {a.dtype}"
                raise TypeError(msg)
        blocks = -(-cols // _core.sparse_linear.BLOCK)
        if m.shape != (rows, blocks):
            msg = f"mask: expected shape {(rows, blocks)}, got {m.shape}"
            raise ValueError(msg)
        if o.shape != (rows + 1,):
            msg = f"offsets: expected shape {(rows + 1,)}, got {o.shape}"
            raise ValueError(msg)
        bad = _core.sparse_linear.check(m, o, cols)
        if bad >= 0:
            msg = f"offsets: do not match the mask at row {bad} (or mask bits past in_features)"
            raise ValueError(msg)
        if v.shape != (int(o[-1]) + _core.sparse_linear.SLACK,):
            msg = f"values: expected {int(o[-1])} kept values + {_core.sparse_linear.SLACK} slack"
            raise ValueError(msg)
        self.shape: tuple[int, int] = (rows, cols)
        self.dtype = dtype
        self.mask = _read_only(m)
        self.offsets = _read_only(o)
        self.values = _read_only(v)

    @classmethod
    def from_dense(cls, w: object, dtype: str | None = None) -> PackedLinear:
        """The packed layout of the non-zeros of the 2-D float array `w`.

        `dtype` "float32" or "bfloat16" chooses how values are stored; by default bfloat16
        input stays bfloat16 and everything else becomes float32 (float64 is rounded).
        """
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
        block = _core.sparse_linear.BLOCK
        padded = np.zeros((rows, -(-cols // block) * block), bool)
        padded[:, :cols] = kept
        mask = np.packbits(padded, axis=1, bitorder="little").view("<u2").astype(np.uint16)
        offsets = np.zeros(rows + 1, np.int64)
        np.cumsum(np.count_nonzero(kept, axis=1), out=offsets[1:])
        kept_values = stored[kept]
        if dtype == "bfloat16":
            kept_values = kept_values.view(np.uint16)
        values = np.zeros(len(kept_values) + _core.sparse_linear.SLACK, kept_values.dtype)
        values[: len(kept_values)] = kept_values
        return cls(mask, offsets, values, (rows, cols), dtype)

    @classmethod
    def from_format(cls, a: object, dtype: str | None = None) -> PackedLinear:
        """The packed layout of any fastprune sparse format (CSR, Bitmask, NMCompressed, ...)."""
        if not isinstance(a, SparseMatrix):
            msg = f"a: expected a fastprune SparseMatrix, got {type(a).__name__}"
            raise TypeError(msg)
        return cls.from_dense(a.to_dense(), dtype)

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
        """Bytes a product reads: mask, offsets and values (slack included)."""
        return int(self.mask.nbytes + self.offsets.nbytes + self.values.nbytes)

    def components(self) -> dict[str, Array]:
        """The arrays that define the weight, by name (what :func:`fastprune.io.save` stores)."""
        return {"mask": self.mask, "offsets": self.offsets, "values": self.values}

    def to_dense(self) -> npt.NDArray[np.float32]:
        """W as a dense float32 array."""
        out = np.empty(self.shape, np.float32)
        _core.sparse_linear.to_dense(self.mask, self.offsets, self.values, out)
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
        _core.sparse_linear.linear(self.mask, self.offsets, self.values, self.shape[1], flat, out)
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
        return f"PackedLinear({rows}x{cols}, {self.dtype}, density {self.density:.3f})"
