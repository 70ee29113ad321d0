"""Saving and loading named dense and sparse tensors in the safetensors format.

A safetensors file is an 8-byte little-endian header length, a JSON header mapping each tensor
name to ``{"dtype", "shape", "data_offsets": [begin, end]}`` (offsets into the data that follows,
in bytes) plus an optional ``"__metadata__"`` map of strings, then the raw little-endian bytes.
fastprune writes this format with NumPy alone (the ``safetensors`` package is not needed), and
its files load with ``safetensors.numpy.load_file``; dense tensors written by safetensors load
here.

A sparse matrix is stored as its component arrays, named ``<name>.<component>`` (``indptr``,
``indices``, ``data`` for CSR and BSR; ``row``, ``col``, ``data`` for COO; ``values``,
``indices`` for N:M; ``mask``, ``data`` for bitmasks; ``mask``, ``offsets``, ``values`` or
``offsets``, ``indices``, ``values`` for a :class:`~fastprune.PackedLinear`, format ``packed``),
and the metadata entry ``"fastprune.sparse"`` holds a JSON map from each sparse name to its
``format``, ``shape``, ``dtype``, for N:M ``n`` and ``m``, and for ``packed`` its ``layout``
(``"bitmask"`` when absent, as in files written before the index layout). Other tools see plain
arrays. Other metadata entries (strings) may be written alongside and are returned by
:func:`read_header`.

Loading never executes code: the header is parsed as JSON and every field is checked (header
length, JSON, dtypes, shapes, offsets inside the data and not overlapping, sizes matching), and
sparse components are validated like any user-supplied parts. Any problem is a ValueError naming
the file. Writes are atomic: a temporary file in the same directory is written, flushed to disk
and renamed over the target.
"""

from __future__ import annotations

import io
import itertools
import json
import math
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, NoReturn

import numpy as np
import numpy.typing as npt

from ._files import atomic_write
from .formats import BSR, COO, CSR, Bitmask, NMCompressed, SparseMatrix
from .sparse import COMPONENTS as PACKED_COMPONENTS
from .sparse import PackedLinear

__all__ = ["load", "save"]

Array = npt.NDArray[Any]
Tensor = Array | SparseMatrix | PackedLinear

_SPARSE_KEY = "fastprune.sparse"
_MAX_HEADER = 100 * 2**20  # the limit safetensors itself enforces
_DTYPES = {
    "F64": "float64",
    "F32": "float32",
    "F16": "float16",
    "BF16": "bfloat16",
    "F8_E4M3": "float8_e4m3fn",
    "F8_E5M2": "float8_e5m2",
    "I64": "int64",
    "I32": "int32",
    "I16": "int16",
    "I8": "int8",
    "U64": "uint64",
    "U32": "uint32",
    "U16": "uint16",
    "U8": "uint8",
    "BOOL": "bool",
}
_CODES = {name: code for code, name in _DTYPES.items()}
# bytes per element of each code: known without the ml_dtypes package that bfloat16 needs
_ITEMSIZE = {
    code: np.dtype(name).itemsize
    for code, name in _DTYPES.items()
    if "float8" not in name and name != "bfloat16"
}
_ITEMSIZE.update(BF16=2, F8_E4M3=1, F8_E5M2=1)
_ML_DTYPES = ("BF16", "F8_E4M3", "F8_E5M2")  # NumPy dtypes that the ml_dtypes package provides
# NumPy's own limits on an array's rank and on its size in bytes
_MAX_DIMS = 64
_MAX_BYTES = 2**63 - 1
_FORMATS: dict[str, type[SparseMatrix] | type[PackedLinear]] = {
    cls.format: cls for cls in (CSR, COO, BSR, NMCompressed, Bitmask, PackedLinear)
}


def save(
    path: str | os.PathLike[str], tensors: object, metadata: Mapping[str, str] | None = None
) -> None:
    """Write a mapping of names to dense arrays and sparse matrices to a safetensors file.

    `tensors` maps names to ndarrays, fastprune sparse matrices and :class:`PackedLinear`
    weights. `metadata` adds string entries to the header's ``__metadata__`` (the key
    ``"fastprune.sparse"`` is fastprune's own and may not be given).

    The file is replaced atomically: a temporary file beside it is written, flushed to disk and
    renamed over it, so a crash never leaves a half-written file under `path`. The new file keeps
    the permissions of the one it replaces (a new file gets those of the umask). A `path` that is
    a symbolic link is written through: the file it points to is replaced, the link is kept.
    """
    target = Path(path)
    if not isinstance(tensors, Mapping):
        msg = f"tensors: expected a mapping of names to arrays, got {type(tensors).__name__}"
        raise TypeError(msg)
    extra = _user_metadata(metadata)
    arrays: dict[str, Array] = {}
    sparse: dict[str, dict[str, object]] = {}

    def add(name: str, array: Array) -> None:
        if name in arrays:
            msg = f"tensors: name {name!r} is used twice (a sparse component has that name)"
            raise ValueError(msg)
        arrays[name] = array

    for name, tensor in tensors.items():
        if not isinstance(name, str) or not name or name == "__metadata__":
            msg = f"tensors: invalid tensor name {name!r}"
            raise ValueError(msg)
        if isinstance(tensor, SparseMatrix | PackedLinear):
            spec: dict[str, object] = {
                "format": tensor.format,
                "shape": list(tensor.shape),
                "dtype": tensor.dtype if isinstance(tensor, PackedLinear) else tensor.dtype.name,
            }
            if isinstance(tensor, NMCompressed):
                spec.update(n=tensor.n, m=tensor.m)
            if isinstance(tensor, PackedLinear):
                spec.update(layout=tensor.layout)
            sparse[name] = spec
            for component, array in tensor.components().items():
                add(f"{name}.{component}", array)
        elif isinstance(tensor, np.ndarray):
            add(name, tensor)
        else:
            msg = f"tensors[{name!r}]: expected an ndarray or a sparse matrix, got {type(tensor)}"
            raise TypeError(msg)

    header: dict[str, object] = {}
    offset = 0
    payload: list[Array] = []
    for name, array in arrays.items():
        code = _CODES.get(array.dtype.name)
        if code is None:
            msg = f"tensors[{name!r}]: dtype {array.dtype} cannot be stored in safetensors"
            raise TypeError(msg)
        raw = _little_endian_bytes(array)
        header[name] = {
            "dtype": code,
            "shape": list(array.shape),
            "data_offsets": [offset, offset + raw.size],
        }
        offset += raw.size
        payload.append(raw)
    if sparse:
        extra[_SPARSE_KEY] = json.dumps(sparse, sort_keys=True)
    if extra:
        header["__metadata__"] = extra
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    chunks: list[Any] = [len(text).to_bytes(8, "little"), text, *payload]

    def write(f: IO[bytes]) -> None:
        for chunk in chunks:
            f.write(chunk)

    atomic_write(target, write)


def _user_metadata(metadata: Mapping[str, str] | None) -> dict[str, str]:
    if metadata is None:
        return {}
    if not isinstance(metadata, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
    ):
        msg = "metadata: expected a mapping of strings to strings"
        raise TypeError(msg)
    if _SPARSE_KEY in metadata:
        msg = f"metadata: the key {_SPARSE_KEY!r} is written by fastprune itself"
        raise ValueError(msg)
    return dict(metadata)


def _little_endian_bytes(array: Array) -> Array:
    a = array
    if a.dtype.byteorder == ">":
        a = a.astype(a.dtype.newbyteorder("<"))
    return np.ascontiguousarray(a).reshape(-1).view(np.uint8)


def load(path: str | os.PathLike[str]) -> dict[str, Tensor]:
    """Read a safetensors file: dense tensors as ndarrays, fastprune sparse tensors as objects.

    Raises ValueError naming the file when it is truncated or corrupted in any way, and
    IsADirectoryError / FileNotFoundError naming it when it is a directory or missing.
    """
    source = Path(path)
    with _open(source) as f:
        size = os.fstat(f.fileno()).st_size
        text = _read_header_text(source, f, size)
        data = bytearray(size - 8 - len(text))
        if f.readinto(data) != len(data):
            _corrupt(source, "file changed while reading")
    entries, metadata = _parse_header(source, text, len(data))
    dense = {
        name: _array(data, _dtype(source, name, code), shape, begin, end)
        for name, (code, shape, begin, end) in entries.items()
    }
    return _assemble_sparse(source, dense, metadata)


@dataclass(frozen=True)
class Entry:
    """One tensor of a safetensors header, checked against the file: where its bytes lie."""

    code: str  # the safetensors dtype code, "F32", "BF16", ...
    shape: tuple[int, ...]
    begin: int  # byte offsets of the tensor's data from the start of the file
    end: int


def read_header(path: str | os.PathLike[str]) -> tuple[dict[str, Entry], dict[str, str]]:
    """The validated header of a safetensors file without reading its data: each tensor's
    :class:`Entry` (offsets from the start of the file) and the ``__metadata__`` map.

    The same checks as :func:`load` (header length, JSON, dtypes, shapes, offsets inside the
    file and not overlapping, sizes matching), so a tool that memory-maps the data, as
    ``fastprune inspect`` does, reads only what is there. Raises ValueError naming the file.
    """
    source = Path(path)
    with _open(source) as f:
        size = os.fstat(f.fileno()).st_size
        text = _read_header_text(source, f, size)
    start = 8 + len(text)
    entries, metadata = _parse_header(source, text, size - start)
    return {
        name: Entry(code, shape, start + begin, start + end)
        for name, (code, shape, begin, end) in entries.items()
    }, metadata


def _open(source: Path) -> io.BufferedReader:
    if source.is_dir():
        msg = f"{source}: is a directory, expected a safetensors file"
        raise IsADirectoryError(msg)
    if not source.exists():
        msg = f"{source}: no such file"
        raise FileNotFoundError(msg)
    return source.open("rb")


def _read_header_text(source: Path, f: IO[bytes], size: int) -> bytes:
    head = f.read(8)
    if len(head) < 8:
        _corrupt(source, f"{size} bytes is too short for a safetensors file")
    length = int.from_bytes(head, "little")
    if length > min(size - 8, _MAX_HEADER):
        _corrupt(source, f"header length {length} exceeds the file ({size} bytes)")
    return f.read(length)


def _corrupt(source: Path, reason: str) -> NoReturn:
    msg = f"{source}: not a valid safetensors file: {reason}"
    raise ValueError(msg)


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            msg = f"duplicate key {key!r}"
            raise ValueError(msg)
        out[key] = value
    return out


def _is_int(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _parse_header(
    source: Path, text: bytes, data_size: int
) -> tuple[dict[str, tuple[str, tuple[int, ...], int, int]], dict[str, str]]:
    try:
        header = json.loads(text.decode("utf-8"), object_pairs_hook=_no_duplicates)
    except (UnicodeDecodeError, ValueError, RecursionError) as err:
        _corrupt(source, f"header is not valid JSON ({err})")
    if not isinstance(header, dict):
        _corrupt(source, "header is not a JSON object")
    metadata = header.pop("__metadata__", {})
    if not isinstance(metadata, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
    ):
        _corrupt(source, "__metadata__ must map strings to strings")
    entries = {}
    for name, entry in header.items():
        where = f"tensor {name!r}"
        if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
            _corrupt(source, f"{where}: expected exactly dtype, shape and data_offsets")
        code, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
        if not isinstance(code, str) or code not in _DTYPES:
            _corrupt(source, f"{where}: unknown dtype {code!r}")
        if not isinstance(shape, list) or not all(_is_int(s) and s >= 0 for s in shape):
            _corrupt(source, f"{where}: shape must be a list of non-negative integers")
        if (
            not isinstance(offsets, list)
            or len(offsets) != 2
            or not all(_is_int(o) for o in offsets)
            or not 0 <= offsets[0] <= offsets[1] <= data_size
        ):
            _corrupt(source, f"{where}: data_offsets {offsets!r} outside the data ({data_size} B)")
        expected = math.prod(shape) * _ITEMSIZE[code]
        if offsets[1] - offsets[0] != expected:
            _corrupt(
                source,
                f"{where}: {offsets[1] - offsets[0]} bytes for shape {shape} of {code} "
                f"(needs {expected})",
            )
        if len(shape) > _MAX_DIMS or math.prod(max(s, 1) for s in shape) > _MAX_BYTES:
            # an empty tensor may claim any dimensions, but NumPy cannot shape one this way
            _corrupt(source, f"{where}: shape {shape} is larger than any array can be")
        entries[name] = (code, tuple(shape), offsets[0], offsets[1])
    spans = sorted((begin, end, name) for name, (_, _, begin, end) in entries.items())
    for (_, end, before), (begin, _, after) in itertools.pairwise(spans):
        if begin < end:
            _corrupt(source, f"tensors {before!r} and {after!r} overlap")
    return entries, metadata


def _dtype(source: Path, name: str, code: str) -> np.dtype[Any]:
    if code in _ML_DTYPES:
        try:
            import ml_dtypes
        except ImportError:
            msg = f"{source}: tensor {name!r} is {code}, which needs the ml_dtypes package"
            raise ValueError(msg) from None
        special: np.dtype[Any] = np.dtype(getattr(ml_dtypes, _DTYPES[code]))
        return special
    little: np.dtype[Any] = np.dtype(_DTYPES[code]).newbyteorder("<")
    return little


def _array(
    data: bytearray,
    dtype: np.dtype[Any],
    shape: tuple[int, ...],
    begin: int,
    end: int,
) -> Array:
    count = (end - begin) // dtype.itemsize
    a = np.frombuffer(data, dtype=dtype, count=count, offset=begin).reshape(shape)
    if a.ctypes.data % dtype.alignment:
        a = a.copy()
    # NumPy's own dtype instance in native order (compiled code recognises dtypes by identity).
    native: np.dtype[Any] = np.dtype(dtype.name) if dtype.kind in "fiub" else dtype
    return a.view(native) if sys.byteorder == "little" else a.astype(native)


def _assemble_sparse(
    source: Path, dense: dict[str, Array], metadata: dict[str, str]
) -> dict[str, Tensor]:
    if _SPARSE_KEY not in metadata:
        return dict(dense)
    try:
        specs = json.loads(metadata[_SPARSE_KEY], object_pairs_hook=_no_duplicates)
    except (ValueError, RecursionError) as err:
        _corrupt(source, f"{_SPARSE_KEY} is not valid JSON ({err})")
    if not isinstance(specs, dict):
        _corrupt(source, f"{_SPARSE_KEY} must be a JSON object")
    out: dict[str, Tensor] = {}
    used: set[str] = set()
    for name, spec in specs.items():
        if not isinstance(spec, dict) or spec.get("format") not in _FORMATS:
            _corrupt(source, f"sparse tensor {name!r}: unknown or missing format")
        cls = _FORMATS[spec["format"]]
        parts = {}
        names = _COMPONENTS.get(cls.format)
        if names is None:
            layout = spec.get("layout", "bitmask")
            if layout not in PACKED_COMPONENTS:
                _corrupt(source, f"sparse tensor {name!r}: unknown layout {layout!r}")
            names = PACKED_COMPONENTS[layout]
        for component in names:
            key = f"{name}.{component}"
            if key not in dense:
                _corrupt(source, f"sparse tensor {name!r}: component {key!r} is missing")
            parts[component] = dense[key]
            used.add(key)
        try:
            matrix = _build(cls, parts, spec)
        except (ValueError, TypeError) as err:
            _corrupt(source, f"sparse tensor {name!r}: {err}")
        dtype = matrix.dtype if isinstance(matrix, PackedLinear) else matrix.dtype.name
        if dtype != spec.get("dtype"):
            _corrupt(source, f"sparse tensor {name!r}: dtype {dtype} != {spec.get('dtype')}")
        out[name] = matrix
    for name, array in dense.items():
        if name not in used:
            out[name] = array
    return out


_COMPONENTS = {
    "csr": ("indptr", "indices", "data"),
    "coo": ("row", "col", "data"),
    "bsr": ("indptr", "indices", "data"),
    "nm": ("values", "indices"),
    "bitmask": ("mask", "data"),
}  # and "packed": PACKED_COMPONENTS of its layout


def _build(
    cls: type[SparseMatrix] | type[PackedLinear], parts: dict[str, Array], spec: dict[str, Any]
) -> SparseMatrix | PackedLinear:
    shape = spec.get("shape")
    if not isinstance(shape, list) or len(shape) != 2 or not all(_is_int(s) for s in shape):
        msg = f"shape {shape!r} is not two integers"
        raise ValueError(msg)
    rows, cols = shape
    if cls is PackedLinear:
        dtype = spec.get("dtype")
        if not isinstance(dtype, str):
            msg = f"dtype {dtype!r} is not a string"
            raise ValueError(msg)
        if "indices" in parts:
            return PackedLinear.from_indices(
                parts["offsets"], parts["indices"], parts["values"], (rows, cols), dtype
            )
        return PackedLinear(parts["mask"], parts["offsets"], parts["values"], (rows, cols), dtype)
    if cls is NMCompressed:
        n, m = spec.get("n"), spec.get("m")
        if not (isinstance(n, int) and isinstance(m, int) and _is_int(n) and _is_int(m)):
            msg = "n and m must be integers"
            raise ValueError(msg)
        return NMCompressed(parts["values"], parts["indices"], (rows, cols), n, m)
    if cls is Bitmask:
        return Bitmask(parts["mask"], parts["data"], (rows, cols))
    if cls is COO:
        return COO(parts["row"], parts["col"], parts["data"], (rows, cols))
    if cls is BSR:
        return BSR(parts["indptr"], parts["indices"], parts["data"], (rows, cols))
    return CSR(parts["indptr"], parts["indices"], parts["data"], (rows, cols))
