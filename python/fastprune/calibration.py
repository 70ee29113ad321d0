"""Streaming calibration statistics for SparseGPT and Wanda.

:class:`Calibration` watches the inputs of one layer, batch after batch, and keeps the running
sum ``S = Σ_t x_t x_tᵀ`` over every token ``x_t`` (a vector of ``in_features``) and the token
count ``N``. From them come the Hessian of the layer-wise reconstruction loss ``H = 2 S / N``
(SparseGPT) and the per-feature sum of squares ``act_sq_j = Σ_t x_tj² = S_jj`` (Wanda). Memory
is ``O(in_features²)`` however many tokens stream through; the rank-k update runs in C++ on all
threads without the GIL.
"""

from __future__ import annotations

import functools
import itertools
import math
import threading
from collections.abc import Callable, Iterator
from os import PathLike
from pathlib import Path
from typing import IO, Any

import numpy as np
import numpy.typing as npt
from numpy.lib.stride_tricks import as_strided

from . import _core
from ._arrays import (
    FloatArray,
    all_finite,
    bool_array,
    float_dtype,
    half_bits,
    positive_int,
    rows_contiguous,
    to_numpy,
)
from ._files import atomic_path, atomic_write

__all__ = ["Calibration"]

# Activations that must be converted (another dtype, a layout the kernel cannot read, masked
# tokens) are converted in chunks of about this many bytes, never all at once.
_CHUNK_BYTES = 32 * 2**20
_FORMAT_VERSION = 1
_FILE_FORMAT = "fastprune.Calibration"


class Calibration:
    """Running second-moment statistics of the inputs of one layer.

    Args:
        in_features: the layer's input width (the last dimension of every activation batch).
        dtype: accumulation precision, ``np.float32`` (default) or ``np.float64``. float32
            accumulates ``Σ x xᵀ`` with float32 rounding per product; use float64 for very long
            streams or activations whose squares exceed float32's range (about 1e38).

    The object is safe to share between threads (updates are serialised).
    """

    def __init__(self, in_features: int, dtype: npt.DTypeLike = np.float32) -> None:
        n = positive_int(in_features, "in_features")
        try:
            dt = np.dtype(dtype)
        except TypeError as err:
            msg = f"dtype: expected float32 or float64, got {dtype!r}"
            raise TypeError(msg) from err
        if dt not in (np.float32, np.float64):
            msg = f"dtype: expected float32 or float64, got {dt}"
            raise TypeError(msg)
        # Only the lower triangle is maintained; the strict upper triangle stays zero.
        self._gram: FloatArray = np.zeros((n, n), dt)
        self._count = 0
        self._lock = threading.Lock()

    # --- what it holds --------------------------------------------------------------------

    @property
    def in_features(self) -> int:
        return int(self._gram.shape[0])

    @property
    def dtype(self) -> np.dtype[Any]:
        """The accumulation dtype (float32 or float64); `hessian` and `act_sq` have it too."""
        return self._gram.dtype

    @property
    def count(self) -> int:
        """N, the number of tokens seen (masked-out tokens are not counted)."""
        return self._count

    @property
    def hessian(self) -> FloatArray:
        """``H = 2/N Σ_t x_t x_tᵀ``, a new full symmetric ``(in, in)`` array (zeros while N = 0).

        Each access computes a fresh copy that the caller may modify.
        """
        with self._lock:
            scale = 2.0 / self._count if self._count else 0.0
            return _core.calibration.symmetric_from_lower(self._gram, scale)

    @property
    def act_sq(self) -> FloatArray:
        """``Σ_t x_tj²`` per input feature j, a new ``(in,)`` array: Wanda's statistic.

        It is the sum over tokens, not divided by N, so ``sqrt(act_sq)`` is the column norm
        ``||X_j||_2`` that :func:`fastprune.importance.wanda` expects.
        """
        with self._lock:
            diagonal: FloatArray = np.diagonal(self._gram).copy()
        return diagonal

    def __repr__(self) -> str:
        return (
            f"Calibration(in_features={self.in_features}, dtype={self.dtype}, count={self.count})"
        )

    # --- accumulating -----------------------------------------------------------------------

    def update(self, x: object, mask: object = None) -> None:
        """Add a batch of activations.

        Args:
            x: array of shape ``(..., in_features)``, float16, bfloat16, float32 or float64, in
                any memory layout; every vector along the last axis is one token. float32/
                float64 input of the accumulation dtype whose features (C order) or tokens
                (Fortran order) are contiguous is read in place; anything else is converted in
                chunks of about 32 MiB (float16/bfloat16 with contiguous features on every
                thread, widened exactly, into memory kept for the next batch when unmasked).
            mask: optional bool array of shape ``x.shape[:-1]``; True marks a token that counts,
                False one that is left out (padding). Left-out tokens have no effect at all,
                not even when they hold NaN.

        A batch that would take a feature's sum of squares past half the accumulation
        dtype's range (finite activations of about 1.3e19 and more in float32) is refused
        before anything is added: the statistics stay finite, so every pruning function can use
        them and :meth:`save` can write them. Accumulate in float64 for such activations.

        Raises:
            ValueError: a last dimension other than ``in_features``, a mask of the wrong shape,
                NaN/Inf in a counted token, or sums of squares that would overflow the
                accumulation dtype. Nothing is accumulated then.
            TypeError: a dtype other than the four accepted, a non-bool mask.
        """
        a = to_numpy(x, "x")
        float_dtype(a, "x")
        if a.ndim == 0 or a.shape[-1] != self.in_features:
            msg = f"x: expected shape (..., {self.in_features}) (in_features), got shape {a.shape}"
            raise ValueError(msg)
        m = None if mask is None else _token_mask(mask, a.shape[:-1])
        pieces = list(_token_matrices(a, m))
        if len(pieces) == 1 and m is None and (add := self._checked_add(pieces[0][0])):
            # One batch that one core call adds: it checks the batch for NaN and Inf itself, as
            # a by-product of the update or of widening where it can, and adds nothing if any.
            tokens = pieces[0][0]
            with self._lock:
                self._refuse_overflow(pieces)
                if not add():
                    raise _not_finite_error(_count_not_finite(tokens, None, self._chunk_tokens()))
                self._count += tokens.shape[0]
            return
        for tokens, piece_mask in pieces:
            _check_finite(tokens, piece_mask, self._chunk_tokens())
        counted = sum(t.shape[0] if pm is None else int(np.count_nonzero(pm)) for t, pm in pieces)
        with self._lock:
            self._refuse_overflow(pieces)
            for tokens, piece_mask in pieces:
                self._accumulate(tokens, piece_mask)
            self._count += counted

    def _refuse_overflow(
        self, pieces: list[tuple[np.ndarray[Any, Any], npt.NDArray[np.bool_] | None]]
    ) -> None:
        """ValueError naming ``x`` when adding `pieces` would take a sum of squares (the
        Hessian's diagonal, which bounds every other entry) past half the dtype's range.

        A bound from each piece's extreme values settles it in one cheap pass (min and max, no
        temporary array); only when the bound fails are the counted tokens' sums of squares
        computed exactly, in float64 and in chunks. NaN/Inf in counted tokens is left to the
        finiteness check, which reports it.
        """
        limit = float(np.finfo(self.dtype).max) / 2
        current = np.diagonal(self._gram).astype(np.float64)
        bound = float(current.max(initial=0.0))
        for tokens, _ in pieces:
            if tokens.size:
                peak = max(abs(float(np.max(tokens))), abs(float(np.min(tokens))))
                bound += tokens.shape[0] * peak * peak
        if bound < limit:  # also False for a NaN bound: then look closer
            return
        sums = current.copy()
        step = self._chunk_tokens()
        for tokens, piece_mask in pieces:
            for start in range(0, tokens.shape[0], step):
                chunk = tokens[start : start + step]
                if piece_mask is not None:
                    chunk = chunk[piece_mask[start : start + step]]
                wide = chunk.astype(np.float64)
                if not np.isfinite(wide).all():
                    return  # the finiteness check names the NaN or Inf
                sums += np.einsum("ij,ij->j", wide, wide)
        over = np.flatnonzero(sums >= limit)
        if over.size:
            j = int(over[0])
            msg = (
                f"x: the sum of squares of feature {j} would reach {sums[j]:.3g}, beyond the "
                f"range of {self.dtype} (the accumulation dtype); use "
                "Calibration(in_features, dtype=np.float64) or scale the activations down"
            )
            raise ValueError(msg)

    def merge(self, other: Calibration) -> None:
        """Add another calibration's tokens to this one, in place (data-parallel collection).

        The result equals one calibration that saw both streams. `other` is unchanged; a
        float64 `other` merged into a float32 calibration is rounded to float32.

        Raises:
            TypeError: `other` is not a Calibration.
            ValueError: different in_features, or sums of squares that would overflow this
                calibration's dtype (nothing is merged then).
        """
        given: object = other
        if not isinstance(given, Calibration):
            msg = f"other: expected a Calibration, got {type(given).__name__}"
            raise TypeError(msg)
        if other.in_features != self.in_features:
            msg = (
                f"other: in_features {other.in_features} does not match this calibration's "
                f"in_features {self.in_features}"
            )
            raise ValueError(msg)
        with other._lock:
            wide = np.diagonal(other._gram).astype(np.float64)
            with np.errstate(over="ignore"):  # refused just below
                gram = other._gram.astype(self.dtype, copy=True)
            count = other._count
        with self._lock:
            sums = np.diagonal(self._gram).astype(np.float64) + wide
            over = np.flatnonzero(~(sums < float(np.finfo(self.dtype).max) / 2))
            if over.size:
                j = int(over[0])
                msg = (
                    f"other: merged, the sum of squares of feature {j} would reach "
                    f"{sums[j]:.3g}, beyond the range of {self.dtype} (this calibration's "
                    "dtype); merge into a float64 Calibration"
                )
                raise ValueError(msg)
            self._gram += gram
            self._count += count

    # --- saving and loading -----------------------------------------------------------------

    def save(self, path: str | PathLike[str]) -> None:
        """Write the statistics to `path`: ``.npz`` (NumPy) or ``.safetensors`` by suffix.

        The file holds ``gram`` (the full symmetric ``Σ x xᵀ``, in the accumulation dtype),
        ``count`` (int64, shape ``(1,)``) and the format version; it contains no code. The
        file is replaced atomically (an interrupted save leaves the previous file whole), keeps
        the permissions of the file it replaces (the umask's for a new file), and is written
        through a symbolic link (the link stays, the file it points to is replaced).

        Raises:
            ValueError: a suffix other than ``.npz``/``.safetensors``, or statistics that
                overflowed the accumulation dtype (finite activations whose squares exceed it,
                see :meth:`update`): :meth:`load` would refuse such a file, so none is written.
        """
        p = Path(path)
        kind = _file_kind(p)
        with self._lock:
            gram = _core.calibration.symmetric_from_lower(self._gram, 1.0)
            count = self._count
        counts = np.array([count], np.int64)
        version = np.array([_FORMAT_VERSION], np.int64)
        if not all_finite(gram):
            j = int(np.argmin(np.isfinite(np.diagonal(gram))))
            msg = (
                f"path: not written: the sums of squares overflowed {self.dtype} (feature {j} "
                "is Inf), and such a file could not be loaded; collect the statistics with "
                "Calibration(..., dtype=np.float64) or scale the activations"
            )
            raise ValueError(msg)
        if kind == "npz":

            def write(f: IO[bytes]) -> None:
                np.savez(f, gram=gram, count=counts, format_version=version)

            atomic_write(p, write)
        else:
            from safetensors.numpy import save_file

            tensors = {"gram": gram, "count": counts, "format_version": version}
            with atomic_path(p) as temporary:
                save_file(tensors, str(temporary), metadata={"format": _FILE_FORMAT})

    @classmethod
    def load(cls, path: str | PathLike[str]) -> Calibration:
        """Read a calibration written by :meth:`save` (``.npz`` or ``.safetensors``).

        Loading never executes code from the file (NumPy's ``allow_pickle=False``; safetensors
        holds only tensors). A file that is not a valid calibration is a ValueError saying why.
        """
        p = Path(path)
        if p.is_dir():
            msg = f"path: {p} is a directory, expected a calibration file"
            raise IsADirectoryError(msg)
        kind = _file_kind(p)
        if not p.is_file():
            msg = f"path: no such file: {p}"
            raise FileNotFoundError(msg)
        try:
            tensors = _read_npz(p) if kind == "npz" else _read_safetensors(p)
        except _InvalidFileError:
            raise
        except Exception as err:  # every parser failure of a damaged file
            msg = f"path: {p} is not a readable fastprune calibration file ({err})"
            raise ValueError(msg) from err
        gram, count = _validated(tensors, p)
        cal = cls(gram.shape[0], gram.dtype)
        cal._gram = np.tril(gram)
        cal._count = count
        return cal

    # --- internals --------------------------------------------------------------------------

    def _chunk_tokens(self) -> int:
        return max(1, _CHUNK_BYTES // (self.in_features * self.dtype.itemsize))

    def _reads_in_place(self, tokens: np.ndarray[Any, Any]) -> bool:
        """Whether the kernel adds this (tokens, features) view without a conversion."""
        return tokens.dtype == self.dtype and _kernel_readable(tokens)

    def _checked_add(self, tokens: np.ndarray[Any, Any]) -> Callable[[], bool] | None:
        """The core call that adds this unmasked (tokens, features) view if it is free of NaN
        and Inf and says whether it did, or None when the view needs converting first."""
        if self._reads_in_place(tokens):
            return functools.partial(_core.calibration.add_gram_lower_if_finite, self._gram, tokens)
        bits = half_bits(tokens) if self.dtype == np.float32 else None
        if bits is not None and rows_contiguous(tokens):
            return functools.partial(_core.calibration.add_gram_lower_widened, self._gram, *bits)
        return None

    def _accumulate(self, tokens: np.ndarray[Any, Any], mask: npt.NDArray[np.bool_] | None) -> None:
        if mask is None and self._reads_in_place(tokens):
            _core.calibration.add_gram_lower(self._gram, tokens)
            return
        step = self._chunk_tokens()
        for start in range(0, tokens.shape[0], step):
            chunk = tokens[start : start + step]
            if mask is not None:
                chunk = chunk[mask[start : start + step]]
            if chunk.shape[0]:
                bits = half_bits(chunk) if self.dtype == np.float32 else None
                if bits is not None and rows_contiguous(chunk):
                    chunk, _ = _core.calibration.widen_finite(*bits)  # checked already
                else:
                    chunk = np.ascontiguousarray(chunk, dtype=self.dtype)
                _core.calibration.add_gram_lower(self._gram, chunk)


class _InvalidFileError(ValueError):
    """A readable file that is not a valid calibration (the message says why)."""


def _token_mask(mask: object, shape: tuple[int, ...]) -> npt.NDArray[np.bool_]:
    m = bool_array(mask, "mask")
    if m.shape != shape:
        msg = f"mask: expected shape {shape} (x.shape[:-1]), got {m.shape}"
        raise ValueError(msg)
    return m


def _token_matrices(
    a: np.ndarray[Any, Any], mask: npt.NDArray[np.bool_] | None
) -> Iterator[tuple[np.ndarray[Any, Any], npt.NDArray[np.bool_] | None]]:
    """`a` as (tokens, features) views with the matching masks, without copying `a`.

    One view when the leading axes can be merged into one strided axis (any C-ordered or
    Fortran-ordered batch, most slices); otherwise one view per index of all leading axes but
    the last.
    """
    features = a.shape[-1]
    lead_shape, lead_strides = a.shape[:-1], a.strides[:-1]
    tokens = math.prod(lead_shape)
    if tokens == 0:
        return
    flat_mask = None if mask is None else mask.reshape(-1)
    kept = [(d, s) for d, s in zip(lead_shape, lead_strides, strict=True) if d != 1]
    if all(outer == inner * d for (_, outer), (d, inner) in itertools.pairwise(kept)):
        token_stride = kept[-1][1] if kept else a.itemsize * features
        view = as_strided(a, (tokens, features), (token_stride, a.strides[-1]), writeable=False)
        yield view, flat_mask
        return
    for index in np.ndindex(*lead_shape[:-1]):
        yield a[index], None if mask is None else mask[index]


def _kernel_readable(tokens: np.ndarray[Any, Any]) -> bool:
    """Whether the C++ kernel can read this (tokens, features) view in place."""
    item = tokens.itemsize
    t, f = tokens.shape
    s_token, s_feature = tokens.strides
    if s_token < 0 or s_feature < 0 or s_token % item or s_feature % item:
        return False
    return f <= 1 or s_feature == item or t <= 1 or s_token == item


def _check_finite(
    tokens: np.ndarray[Any, Any], mask: npt.NDArray[np.bool_] | None, step: int
) -> None:
    """ValueError when a counted token holds NaN or Inf; reads in chunks, copies nothing big."""
    # Native-order batches of every accepted dtype are scanned by the core in place.
    if mask is None and tokens.dtype.isnative and _kernel_readable(tokens) and all_finite(tokens):
        return
    bad = _count_not_finite(tokens, mask, step)
    if bad:
        raise _not_finite_error(bad)


def _count_not_finite(
    tokens: np.ndarray[Any, Any], mask: npt.NDArray[np.bool_] | None, step: int
) -> int:
    """How many NaN or Inf values the counted tokens hold; reads in chunks of `step` tokens."""
    bad = 0
    for start in range(0, tokens.shape[0], step):
        chunk_bad = ~np.isfinite(tokens[start : start + step])
        if mask is not None:
            chunk_bad &= mask[start : start + step, None]
        bad += int(np.count_nonzero(chunk_bad))
    return bad


def _not_finite_error(bad: int) -> ValueError:
    return ValueError(f"x: contains {bad} NaN or Inf value{'s' if bad != 1 else ''}")


def _file_kind(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix == ".npz":
        return "npz"
    if suffix == ".safetensors":
        return "safetensors"
    msg = f"path: expected a file name ending in .npz or .safetensors, got {str(path)!r}"
    raise ValueError(msg)


def _read_npz(path: Path) -> dict[str, np.ndarray[Any, Any]]:
    with path.open("rb") as f:
        data = np.load(f, allow_pickle=False)
        if not isinstance(data, np.lib.npyio.NpzFile):
            msg = f"path: {path} is a .npy array, not an .npz fastprune calibration file"
            raise _InvalidFileError(msg)
        with data:
            return {name: data[name] for name in data.files}


def _read_safetensors(path: Path) -> dict[str, np.ndarray[Any, Any]]:
    from safetensors import safe_open

    with safe_open(str(path), framework="numpy") as f:
        metadata = f.metadata() or {}
        if metadata.get("format") != _FILE_FORMAT:
            msg = f"path: {path} is a safetensors file but not a fastprune calibration"
            raise _InvalidFileError(msg)
        return {name: f.get_tensor(name) for name in f.keys()}  # noqa: SIM118


def _validated(tensors: dict[str, np.ndarray[Any, Any]], path: Path) -> tuple[FloatArray, int]:
    """The sum and the count of a loaded file, after checking everything a damaged file breaks."""

    def fail(reason: str) -> None:
        msg = f"path: {path} is not a valid fastprune calibration file: {reason}"
        raise _InvalidFileError(msg)

    expected = {"gram", "count", "format_version"}
    if set(tensors) != expected:
        fail(f"expected arrays {sorted(expected)}, found {sorted(tensors)}")
    version = tensors["format_version"]
    if version.shape != (1,) or version.dtype != np.int64 or int(version[0]) != _FORMAT_VERSION:
        fail(f"unsupported format_version {version!r}")
    count_array = tensors["count"]
    if count_array.shape != (1,) or count_array.dtype != np.int64 or int(count_array[0]) < 0:
        fail(f"count must be one non-negative int64, got {count_array!r}")
    count = int(count_array[0])
    gram = tensors["gram"]
    if gram.dtype not in (np.float32, np.float64):
        fail(f"gram must be float32 or float64, got {gram.dtype}")
    if gram.ndim != 2 or gram.shape[0] != gram.shape[1] or gram.shape[0] < 1:
        fail(f"gram must be a non-empty square matrix, got shape {gram.shape}")
    if not np.isfinite(gram).all():
        fail("gram contains NaN or Inf")
    if not np.array_equal(gram, gram.T):
        fail("gram is not symmetric")
    if (np.diagonal(gram) < 0).any():
        fail("gram has a negative diagonal entry (a sum of squares)")
    if count == 0 and gram.any():
        fail("count is 0 but gram is not zero")
    return np.ascontiguousarray(gram), count
