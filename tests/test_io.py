"""fastprune.save / fastprune.load: the safetensors format, sparse tensors, corrupted files."""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np
import pytest

import fastprune as fp

safetensors_numpy = pytest.importorskip("safetensors.numpy")

BF16 = np.dtype(ml_dtypes.bfloat16)


def sample_tensors() -> dict[str, Any]:
    rng = np.random.default_rng(0)
    w = rng.standard_normal((8, 16)).astype(np.float32)
    w[rng.random(w.shape) < 0.6] = 0
    two_four = np.zeros((4, 8), np.float16)
    two_four[:, [0, 3, 5, 6]] = 1.5
    return {
        "dense.f32": rng.standard_normal((3, 5)).astype(np.float32),
        "dense.f64": rng.standard_normal(7),
        "dense.i64": np.arange(6, dtype=np.int64).reshape(2, 3),
        "dense.bool": np.array([True, False]),
        "dense.bf16": rng.standard_normal((2, 2)).astype(BF16),
        "empty": np.zeros((0, 4), np.float32),
        "scalar": np.array(3.5, np.float32),
        "csr": fp.CSR.from_dense(w),
        "coo": fp.COO.from_dense(w.astype(np.float64)),
        "bsr": fp.BSR.from_dense(w.astype(BF16), block=(2, 4)),
        "nm": fp.NMCompressed.from_dense(two_four, 2, 4),
        "bitmask": fp.Bitmask.from_dense(w.astype(np.float16)),
    }


def assert_same(a: object, b: object) -> None:
    assert type(a) is type(b)
    if isinstance(a, fp.SparseMatrix):
        assert isinstance(b, fp.SparseMatrix)
        assert a.shape == b.shape and a.dtype == b.dtype
        ca, cb = a.components(), b.components()
        assert ca.keys() == cb.keys()
        for key in ca:
            assert ca[key].dtype == cb[key].dtype and ca[key].tobytes() == cb[key].tobytes()
        if isinstance(a, fp.NMCompressed):
            assert isinstance(b, fp.NMCompressed) and (a.n, a.m) == (b.n, b.m)
    else:
        assert isinstance(a, np.ndarray) and isinstance(b, np.ndarray)
        assert a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def test_round_trip(tmp_path: Path) -> None:
    tensors = sample_tensors()
    path = tmp_path / "model.safetensors"
    fp.save(path, tensors)
    loaded = fp.load(path)
    assert loaded.keys() == tensors.keys()
    for name, tensor in tensors.items():
        assert_same(tensor, loaded[name])
    assert [p.name for p in tmp_path.iterdir()] == ["model.safetensors"]  # no temporaries left


def test_files_load_with_safetensors_and_back(tmp_path: Path) -> None:
    tensors = sample_tensors()
    path = tmp_path / "a.safetensors"
    fp.save(str(path), tensors)
    raw = safetensors_numpy.load_file(str(path))
    csr = tensors["csr"]
    np.testing.assert_array_equal(raw["csr.indptr"], csr.indptr)
    np.testing.assert_array_equal(raw["csr.data"], csr.data)
    np.testing.assert_array_equal(raw["dense.f32"], tensors["dense.f32"])
    assert raw["dense.bf16"].tobytes() == tensors["dense.bf16"].tobytes()
    dense = {k: v for k, v in tensors.items() if isinstance(v, np.ndarray)}
    other = tmp_path / "b.safetensors"
    safetensors_numpy.save_file(dense, str(other))
    back = fp.load(other)
    for name, array in dense.items():
        assert_same(array, back[name])


def test_big_endian_arrays_are_stored_little_endian(tmp_path: Path) -> None:
    big = np.arange(5, dtype=">f4")
    fp.save(tmp_path / "x", {"big": big})
    loaded = fp.load(tmp_path / "x")["big"]
    assert isinstance(loaded, np.ndarray)
    np.testing.assert_array_equal(loaded, big)
    assert loaded.dtype == np.float32


def test_save_rejects_bad_arguments(tmp_path: Path) -> None:
    path = tmp_path / "x"
    with pytest.raises(TypeError, match="tensors: expected a mapping"):
        fp.save(path, [np.ones(2)])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="tensors\\['a'\\]: expected an ndarray"):
        fp.save(path, {"a": [1, 2]})
    with pytest.raises(TypeError, match="cannot be stored"):
        fp.save(path, {"a": np.ones(2, np.complex64)})
    with pytest.raises(ValueError, match="invalid tensor name"):
        fp.save(path, {"__metadata__": np.ones(2)})
    csr = fp.CSR.from_dense(np.eye(2, dtype=np.float32))
    with pytest.raises(ValueError, match=r"'w\.data' is used twice"):
        fp.save(path, {"w": csr, "w.data": np.ones(1)})
    assert not path.exists()


def test_failed_write_keeps_the_old_file(tmp_path: Path) -> None:
    path = tmp_path / "x"
    fp.save(path, {"a": np.ones(3)})
    with pytest.raises(TypeError):
        fp.save(path, {"a": np.ones(3), "b": np.ones(2, np.complex128)})
    loaded = fp.load(path)["a"]
    assert isinstance(loaded, np.ndarray)
    np.testing.assert_array_equal(loaded, np.ones(3))
    assert len(list(tmp_path.iterdir())) == 1


# --- corrupted files ---------------------------------------------------------------------------


def write_raw(path: Path, header: object, data: bytes, *, length: int | None = None) -> None:
    text = header if isinstance(header, bytes) else json.dumps(header).encode()
    n = len(text) if length is None else length
    path.write_bytes(struct.pack("<Q", n) + text + data)


GOOD = {"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}


@pytest.mark.parametrize(
    ("header", "data", "length", "message"),
    [
        (GOOD, b"\0" * 8, 10**6, "header length"),
        (GOOD, b"\0" * 8, 2**63, "header length"),
        (b"{not json", b"", None, "not valid JSON"),
        (b"\xff\xfe", b"", None, "not valid JSON"),
        (b"[1, 2]", b"", None, "not a JSON object"),
        (b'{"a": 1, "a": 2}', b"", None, "duplicate key"),
        ({"a": {"dtype": "F32", "shape": [2]}}, b"\0" * 8, None, "exactly dtype, shape"),
        (
            {"a": {"dtype": "X9", "shape": [2], "data_offsets": [0, 8]}},
            b"\0" * 8,
            None,
            "unknown dtype",
        ),
        (
            {"a": {"dtype": 5, "shape": [2], "data_offsets": [0, 8]}},
            b"\0" * 8,
            None,
            "unknown dtype",
        ),
        ({"a": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}}, b"\0" * 8, None, "shape"),
        ({"a": {"dtype": "F32", "shape": [2.5], "data_offsets": [0, 8]}}, b"\0" * 8, None, "shape"),
        (
            {"a": {"dtype": "F32", "shape": [True], "data_offsets": [0, 4]}},
            b"\0" * 8,
            None,
            "shape",
        ),
        ({"a": {"dtype": "F32", "shape": "2", "data_offsets": [0, 8]}}, b"\0" * 8, None, "shape"),
        (
            {"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 16]}},
            b"\0" * 8,
            None,
            "outside",
        ),
        ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [8, 0]}}, b"\0" * 8, None, "outside"),
        (
            {"a": {"dtype": "F32", "shape": [2], "data_offsets": [-8, 0]}},
            b"\0" * 8,
            None,
            "outside",
        ),
        ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0]}}, b"\0" * 8, None, "outside"),
        (
            {"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}},
            b"\0" * 8,
            None,
            "needs 12",
        ),
        (
            {"a": {"dtype": "F32", "shape": [2**62, 2**62], "data_offsets": [0, 8]}},
            b"\0" * 8,
            None,
            "needs",
        ),
        (
            {
                "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]},
            },
            b"\0" * 12,
            None,
            "overlap",
        ),
        ({**GOOD, "__metadata__": {"k": 1}}, b"\0" * 8, None, "__metadata__"),
        ({**GOOD, "__metadata__": [1]}, b"\0" * 8, None, "__metadata__"),
    ],
)
def test_corrupted_headers(
    tmp_path: Path, header: object, data: bytes, length: int | None, message: str
) -> None:
    path = tmp_path / "bad.safetensors"
    write_raw(path, header, data, length=length)
    with pytest.raises(ValueError, match=message) as info:
        fp.load(path)
    assert str(path) in str(info.value)


def test_too_short_files(tmp_path: Path) -> None:
    path = tmp_path / "short"
    for content in (b"", b"\x01\x02\x03"):
        path.write_bytes(content)
        with pytest.raises(ValueError, match="too short"):
            fp.load(path)


def test_every_truncation_of_a_real_file_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    fp.save(path, sample_tensors())
    content = path.read_bytes()
    cut = tmp_path / "cut"
    for size in range(0, len(content), max(1, len(content) // 97)):
        cut.write_bytes(content[:size])
        with pytest.raises(ValueError, match=str(cut)):
            fp.load(cut)


def test_bit_flips_never_crash(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    fp.save(path, sample_tensors())
    content = bytearray(path.read_bytes())
    rng = np.random.default_rng(1)
    flipped = tmp_path / "flipped"
    errors: list[str] = []
    for _ in range(150):
        damaged = bytearray(content)
        for position in rng.integers(0, len(content), 3):
            damaged[position] ^= 1 << int(rng.integers(0, 8))
        flipped.write_bytes(bytes(damaged))
        try:
            loaded = fp.load(flipped)
        except ValueError as err:
            errors.append(str(err))
            continue
        for tensor in loaded.values():
            if isinstance(tensor, fp.SparseMatrix):
                tensor.to_dense()
    assert errors and all(str(flipped) in e for e in errors)


def sparse_file(tmp_path: Path, spec: dict[str, Any], arrays: dict[str, np.ndarray]) -> Path:
    header: dict[str, Any] = {}
    offset = 0
    data = b""
    for name, a in arrays.items():
        raw = a.tobytes()
        code = {"int32": "I32", "float32": "F32", "uint8": "U8", "int64": "I64"}[a.dtype.name]
        header[name] = {
            "dtype": code,
            "shape": list(a.shape),
            "data_offsets": [offset, offset + len(raw)],
        }
        offset += len(raw)
        data += raw
    header["__metadata__"] = {"fastprune.sparse": json.dumps(spec)}
    path = tmp_path / "sparse.safetensors"
    write_raw(path, header, data)
    return path


CSR_PARTS = {
    "w.indptr": np.array([0, 1, 2], np.int32),
    "w.indices": np.array([1, 0], np.int32),
    "w.data": np.array([1.0, 2.0], np.float32),
}
CSR_SPEC = {"format": "csr", "shape": [2, 2], "dtype": "float32"}


def test_valid_hand_written_sparse_file(tmp_path: Path) -> None:
    loaded = fp.load(sparse_file(tmp_path, {"w": CSR_SPEC}, CSR_PARTS))["w"]
    assert isinstance(loaded, fp.CSR)
    np.testing.assert_array_equal(loaded.to_dense(), [[0, 1], [2, 0]])


@pytest.mark.parametrize(
    ("spec", "parts", "message"),
    [
        ({"w": {**CSR_SPEC, "format": "dia"}}, CSR_PARTS, "unknown or missing format"),
        ({"w": "csr"}, CSR_PARTS, "unknown or missing format"),
        (
            {"w": CSR_SPEC},
            {k: v for k, v in CSR_PARTS.items() if k != "w.data"},
            "'w.data' is missing",
        ),
        ({"w": {**CSR_SPEC, "shape": [2, 1]}}, CSR_PARTS, "column index out of range"),
        ({"w": {**CSR_SPEC, "shape": [3, 2]}}, CSR_PARTS, "expected 4 entries"),
        ({"w": {**CSR_SPEC, "shape": "2x2"}}, CSR_PARTS, "shape"),
        ({"w": {**CSR_SPEC, "dtype": "float64"}}, CSR_PARTS, "dtype float32 != float64"),
        (
            {"w": CSR_SPEC},
            {**CSR_PARTS, "w.indptr": np.array([0, 3, 2], np.int32)},
            "non-decreasing",
        ),
        ({"w": CSR_SPEC}, {**CSR_PARTS, "w.indices": np.array([1, 5], np.int32)}, "out of range"),
        (
            {"w": {"format": "nm", "shape": [1, 4], "dtype": "float32", "n": 2, "m": 4}},
            {"w.values": np.ones((1, 2), np.float32), "w.indices": np.array([[0b0001]], np.uint8)},
            "indices: row 0",
        ),
        (
            {"w": {"format": "nm", "shape": [1, 4], "dtype": "float32", "n": "2", "m": 4}},
            {"w.values": np.ones((1, 2), np.float32), "w.indices": np.array([[4]], np.uint8)},
            "n and m must be integers",
        ),
        (
            {"w": {"format": "bitmask", "shape": [1, 8], "dtype": "float32"}},
            {"w.mask": np.array([[0b1100_0000]], np.uint8), "w.data": np.ones(3, np.float32)},
            "data: has 3 values but the mask has 2",
        ),
    ],
)
def test_corrupted_sparse_tensors(
    tmp_path: Path, spec: dict[str, Any], parts: dict[str, np.ndarray], message: str
) -> None:
    path = sparse_file(tmp_path, spec, parts)
    with pytest.raises(ValueError, match=message) as info:
        fp.load(path)
    assert str(path) in str(info.value)


def test_sparse_metadata_must_be_json(tmp_path: Path) -> None:
    header = {**GOOD, "__metadata__": {"fastprune.sparse": "{oops"}}
    path = tmp_path / "m"
    write_raw(path, header, b"\0" * 8)
    with pytest.raises(ValueError, match=r"fastprune\.sparse is not valid JSON"):
        fp.load(path)


def test_loading_never_executes_code(tmp_path: Path) -> None:
    # A pickle-looking payload and a header naming Python objects are just data here.
    marker = tmp_path / "executed"
    payload = f"cos\nsystem\n(S'touch {marker}'\ntR.".encode()
    header = {"a": {"dtype": "U8", "shape": [len(payload)], "data_offsets": [0, len(payload)]}}
    path = tmp_path / "p"
    write_raw(path, header, payload)
    loaded = fp.load(path)["a"]
    assert isinstance(loaded, np.ndarray) and loaded.tobytes() == payload
    assert not marker.exists()
    assert not any(name.endswith(".tmp") for name in os.listdir(tmp_path))
