"""Sparse formats: round trips, layouts, conversions, interop, matmul and validation.

References are written here in plain NumPy (float64 products, np.packbits, explicit loops over
N:M groups) or taken from scipy.sparse, never from fastprune itself.
"""

from __future__ import annotations

from typing import Any

import ml_dtypes
import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

import fastprune as fp
from fastprune import _core
from fastprune.formats._base import _index_dtype

BF16 = np.dtype(ml_dtypes.bfloat16)
DTYPES = [np.dtype(np.float16), BF16, np.dtype(np.float32), np.dtype(np.float64)]
DTYPE_IDS = ["f16", "bf16", "f32", "f64"]
FORMATS = ["csr", "coo", "bsr", "nm", "bitmask"]


def random_sparse(
    rng: np.random.Generator, shape: tuple[int, int], density: float, dtype: Any
) -> np.ndarray:
    """Values in ±[0.5, 2) (never -0.0) at random positions."""
    x = rng.uniform(0.5, 2.0, shape) * rng.choice([-1.0, 1.0], shape)
    x[rng.random(shape) >= density] = 0.0
    return x.astype(dtype)


def two_of_four(rng: np.random.Generator, rows: int, cols: int, dtype: Any) -> np.ndarray:
    """At most 2 non-zeros in every group of 4, some groups with fewer."""
    x = random_sparse(rng, (rows, cols), 1.0, np.float64).reshape(rows, cols // 4, 4)
    keep = np.zeros(x.shape, bool)
    keep[..., :2] = True
    keep = rng.permuted(keep, axis=2) & (rng.random(x.shape) < 0.8)
    return np.where(keep, x, 0.0).reshape(rows, cols).astype(dtype)


def build(fmt: str, x: np.ndarray) -> fp.SparseMatrix:
    if fmt == "csr":
        return fp.CSR.from_dense(x)
    if fmt == "coo":
        return fp.COO.from_dense(x)
    if fmt == "bsr":
        return fp.BSR.from_dense(
            x, block=(2, 2) if x.shape[0] % 2 == x.shape[1] % 2 == 0 else (1, 1)
        )
    if fmt == "nm":
        return fp.NMCompressed.from_dense(x, 2, 4)
    return fp.Bitmask.from_dense(x)


def matrix_for(
    fmt: str, rng: np.random.Generator, shape: tuple[int, int], dtype: Any
) -> np.ndarray:
    if fmt == "nm":
        return two_of_four(rng, *shape, dtype)
    return random_sparse(rng, shape, 0.3, dtype)


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


SHAPES = [(8, 12), (1, 16), (16, 4), (0, 8), (6, 0), (1, 4), (33, 20)]


# --- round trips and layouts -------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("shape", SHAPES)
def test_round_trip_is_exact(fmt: str, dtype: Any, shape: tuple[int, int]) -> None:
    rng = np.random.default_rng(hash((fmt, shape)) % 2**32)
    if fmt == "nm" and shape[1] % 4:
        pytest.skip("N:M needs m | cols")
    for x in (matrix_for(fmt, rng, shape, dtype), np.zeros(shape, dtype)):
        before = x.copy()
        a = build(fmt, x)
        assert same_bits(a.to_dense(), x)
        assert same_bits(x, before)
        assert a.shape == shape and a.dtype == dtype
        assert same_bits(np.asarray(a), x)


@pytest.mark.parametrize("fmt", ["csr", "coo", "bsr", "bitmask"])
def test_fully_dense_and_empty_rows_and_columns(fmt: str) -> None:
    rng = np.random.default_rng(1)
    full = rng.uniform(0.5, 2.0, (6, 10)).astype(np.float32)
    a = build(fmt, full)
    assert a.nnz == full.size and a.density == 1.0
    assert same_bits(a.to_dense(), full)
    holes = full.copy()
    holes[[0, 3, 5]] = 0
    holes[:, [0, 4, 9]] = 0
    assert same_bits(build(fmt, holes).to_dense(), holes)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_csr_coo_bsr_components_match_scipy(dtype: Any) -> None:
    rng = np.random.default_rng(2)
    x = random_sparse(rng, (12, 18), 0.3, dtype)
    x64 = x.astype(np.float64)
    ref = sp.csr_array(x64)
    a = fp.CSR.from_dense(x)
    np.testing.assert_array_equal(a.indptr, ref.indptr)
    np.testing.assert_array_equal(a.indices, ref.indices)
    np.testing.assert_array_equal(a.data.astype(np.float64), ref.data)
    assert a.indptr.dtype == a.indices.dtype == np.int32
    coo = fp.COO.from_dense(x)
    ref_coo = sp.coo_array(x64)
    np.testing.assert_array_equal(coo.row, ref_coo.row)
    np.testing.assert_array_equal(coo.col, ref_coo.col)
    b = fp.BSR.from_dense(x, block=(3, 2))
    ref_b = sp.bsr_array(x64, blocksize=(3, 2))
    ref_b.eliminate_zeros()  # scipy keeps all-zero blocks; fastprune stores only occupied ones
    ref_b.sort_indices()
    np.testing.assert_array_equal(b.indptr, ref_b.indptr)
    np.testing.assert_array_equal(b.indices, ref_b.indices)
    np.testing.assert_array_equal(b.data.astype(np.float64), ref_b.data)
    assert b.block == (3, 2)


def test_negative_zero_is_not_stored_and_nan_is() -> None:
    x = np.array([[-0.0, 1.0, np.nan, 0.0]], dtype=np.float32)
    for dtype in DTYPES:
        a = fp.CSR.from_dense(x.astype(dtype))
        assert a.indices.tolist() == [1, 2]
        m = fp.Bitmask.from_dense(x.astype(dtype))
        assert m.nnz == 2


def test_bitmask_layout_is_packbits() -> None:
    rng = np.random.default_rng(3)
    for cols in (1, 7, 8, 9, 23):
        x = random_sparse(rng, (5, cols), 0.4, np.float32)
        m = fp.Bitmask.from_dense(x)
        np.testing.assert_array_equal(m.mask, np.packbits(x != 0, axis=1))
        np.testing.assert_array_equal(m.data, x[x != 0])


def nm_reference(x: np.ndarray, n: int, m: int) -> tuple[np.ndarray, np.ndarray]:
    """Kept values and positions per row: non-zeros plus the lowest free positions."""
    rows, cols = x.shape
    values = np.zeros((rows, cols // m * n), x.dtype)
    positions = np.zeros((rows, cols // m * n), np.int64)
    for i in range(rows):
        j = 0
        for g in range(cols // m):
            group = x[i, g * m : (g + 1) * m]
            nz = [p for p in range(m) if group[p] != 0]
            free = [p for p in range(m) if group[p] == 0][: n - len(nz)]
            for p in sorted(nz + free):
                values[i, j], positions[i, j] = group[p], p
                j += 1
    return values, positions


def unpack(packed: np.ndarray, count: int, bits: int) -> np.ndarray:
    flat = np.unpackbits(packed, axis=1, bitorder="little")[:, : count * bits]
    weights = 1 << np.arange(bits)
    return (flat.reshape(packed.shape[0], count, bits) * weights).sum(axis=2)


@pytest.mark.parametrize(
    ("n", "m", "bits"),
    [(1, 2, 1), (2, 4, 2), (1, 4, 2), (4, 8, 4), (3, 5, 4), (2, 16, 4), (5, 32, 8), (3, 64, 8)],
)
def test_nm_layout(n: int, m: int, bits: int) -> None:
    rng = np.random.default_rng(n * 100 + m)
    rows, cols = 5, m * 13
    x = random_sparse(rng, (rows, cols), 1.0, np.float32).reshape(rows, cols // m, m)
    rank = rng.random(x.shape).argsort(axis=2).argsort(axis=2)
    x = np.where(rank < rng.integers(0, n + 1, x.shape[:2])[..., None], x, 0).reshape(rows, cols)
    a = fp.NMCompressed.from_dense(x, n, m)
    values, positions = nm_reference(x, n, m)
    np.testing.assert_array_equal(a.values, values)
    np.testing.assert_array_equal(unpack(a.indices, cols // m * n, bits), positions)
    assert a.indices.shape == (rows, (cols // m * n * bits + 7) // 8)
    assert same_bits(a.to_dense(), x)
    assert a.nnz == rows * cols // m * n
    rhs = rng.standard_normal((cols, 3)).astype(np.float32)
    check_product(a @ rhs, x, rhs, np.float32)
    check_product((a @ rhs[:, 0])[:, None], x, rhs[:, :1], np.float32)


def test_two_of_four_metadata_nibbles() -> None:
    # Group 0 keeps positions (1, 3), group 1 (0, 2): nibbles 0b1101 and 0b1000, low first.
    x = np.array([[0, 5, 0, 6, 7, 0, 8, 0]], dtype=np.float16)
    a = fp.NMCompressed.from_dense(x, 2, 4)
    assert a.indices.tolist() == [[0b1000_1101]]
    assert a.values.tolist() == [[5, 6, 7, 8]]


def test_nm_errors_name_row_and_group() -> None:
    x = np.zeros((3, 8), np.float32)
    x[2, 4:7] = 1
    with pytest.raises(ValueError, match=r"row 2, group 1 \(columns 4..7\) has 3 non-zeros"):
        fp.NMCompressed.from_dense(x, 2, 4)
    with pytest.raises(ValueError, match="m: 3 does not divide"):
        fp.NMCompressed.from_dense(x, 2, 3)
    with pytest.raises(ValueError, match="n: must be at most m"):
        fp.NMCompressed.from_dense(x, 5, 4)
    with pytest.raises(ValueError, match="m: must be at most 256"):
        fp.NMCompressed.from_dense(np.zeros((1, 512), np.float32), 1, 512)
    with pytest.raises(ValueError, match="n: expected a positive integer"):
        fp.NMCompressed.from_dense(x, 0, 4)


def test_bsr_block_must_divide() -> None:
    x = np.ones((6, 9), np.float32)
    with pytest.raises(ValueError, match=r"block: \(4, 3\) does not divide the shape \(6, 9\)"):
        fp.BSR.from_dense(x, block=(4, 3))
    with pytest.raises(ValueError, match="block"):
        fp.BSR.from_dense(x, block=(0, 3))


def test_index_dtype_widens_when_needed() -> None:
    assert _index_dtype(2**31 - 1, 10) == np.int32
    assert _index_dtype(2**31, 10) == np.int64
    a = fp.CSR(np.array([0, 1], np.int64), np.array([2], np.int64), np.ones(1, np.float32), (1, 3))
    assert a.indices.dtype == np.int64
    assert same_bits(a.to_dense(), np.array([[0, 0, 1]], np.float32))
    assert same_bits(a.to_coo().to_dense(), a.to_dense())
    mixed = fp.CSR(np.array([0, 1], np.int32), np.array([2], np.int64), np.ones(1), (1, 3))
    assert mixed.indptr.dtype == mixed.indices.dtype == np.int64


def test_properties_and_repr() -> None:
    x = np.zeros((4, 8), np.float32)
    x[0, 1] = x[3, 7] = 2
    a = fp.CSR.from_dense(x)
    assert a.nnz == 2 and a.density == 2 / 32
    assert a.nbytes == a.indptr.nbytes + a.indices.nbytes + a.data.nbytes
    assert repr(a) == "<CSR 4x8 float32, nnz=2, density=0.0625>"
    assert "block=(2, 4)" in repr(fp.BSR.from_dense(x, block=(2, 4)))
    assert "2:4" in repr(fp.NMCompressed.from_dense(x, 2, 4))
    assert "bfloat16" in repr(fp.CSR.from_dense(x.astype(BF16)))
    assert fp.CSR.from_dense(np.zeros((0, 3), np.float32)).density == 0.0
    with pytest.raises(AttributeError, match="immutable"):
        a.shape = (1, 1)  # type: ignore[misc]
    with pytest.raises(ValueError, match="always a new copy"):
        np.asarray(a, copy=False)
    assert np.asarray(a, dtype=np.float64).dtype == np.float64


def test_from_dense_rejects_bad_input() -> None:
    with pytest.raises(TypeError, match="x: expected dtype"):
        fp.CSR.from_dense(np.ones((2, 2), np.int32))
    with pytest.raises(ValueError, match="x: expected a 2-D array"):
        fp.CSR.from_dense(np.ones(3, np.float32))
    strided = np.arange(24, dtype=np.float32).reshape(4, 6)[:, ::2]
    assert same_bits(fp.CSR.from_dense(strided).to_dense(), np.ascontiguousarray(strided))


# --- conversions -------------------------------------------------------------------------------


def convert(a: fp.SparseMatrix, fmt: str) -> fp.SparseMatrix:
    if fmt == "csr":
        return a.to_csr()
    if fmt == "coo":
        return a.to_coo()
    if fmt == "bsr":
        return a.to_bsr((2, 2))
    if fmt == "nm":
        return a.to_nm(2, 4)
    return a.to_bitmask()


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("source", FORMATS)
def test_conversions_between_all_formats(source: str, dtype: Any) -> None:
    rng = np.random.default_rng(4)
    x = two_of_four(rng, 10, 16, dtype)
    x[3] = 0
    a = build(source, x)
    for target in FORMATS:
        b = convert(a, target)
        assert b.format == target
        assert same_bits(b.to_dense(), x), (source, target)


def test_conversions_share_arrays_where_layouts_allow() -> None:
    x = random_sparse(np.random.default_rng(5), (9, 11), 0.4, np.float32)
    a = fp.CSR.from_dense(x)
    coo = a.to_coo()
    assert np.shares_memory(coo.col, a.indices) and np.shares_memory(coo.data, a.data)
    assert np.shares_memory(coo.to_csr().indices, a.indices)
    bm = a.to_bitmask()
    assert np.shares_memory(bm.data, a.data)
    assert np.shares_memory(bm.to_csr().data, a.data)
    assert a.to_csr() is a


def test_bsr_to_csr_drops_explicit_zeros_inside_blocks() -> None:
    x = np.zeros((4, 4), np.float32)
    x[0, 0] = 1
    x[3, 2] = 2
    c = fp.BSR.from_dense(x, block=(2, 2)).to_csr()
    np.testing.assert_array_equal(c.indices, sp.csr_array(x).indices)
    np.testing.assert_array_equal(c.indptr, sp.csr_array(x).indptr)


# --- validation of user-supplied parts ---------------------------------------------------------


def test_csr_validation() -> None:
    d = np.ones(3, np.float32)
    ok = (np.array([0, 2, 3]), np.array([0, 2, 1]), d, (2, 3))
    fp.CSR(*ok)
    cases = [
        ((np.array([1, 2, 3]), ok[1], d, (2, 3)), "indptr\\[0\\] must be 0"),
        ((np.array([0, 2, 1]), ok[1], d, (2, 3)), "non-decreasing"),
        ((np.array([0, 2, 2]), ok[1], d, (2, 3)), "must equal the number of stored values"),
        ((ok[0], np.array([0, 3, 1]), d, (2, 3)), "column index out of range \\(row 0\\)"),
        ((ok[0], np.array([0, -1, 1]), d, (2, 3)), "out of range"),
        ((ok[0], np.array([2, 0, 1]), d, (2, 3)), "sorted and unique within a row \\(row 0\\)"),
        ((ok[0], np.array([1, 1, 1]), d, (2, 3)), "sorted and unique"),
        ((np.array([0, 3]), ok[1], d, (2, 3)), "expected 3 entries"),
        ((ok[0], ok[1], d[:2], (2, 3)), "data: has 2 values"),
        ((ok[0], ok[1], d, (2, -3)), "shape: expected two non-negative"),
        ((ok[0], ok[1], d, (2,)), "shape"),
    ]
    for args, message in cases:
        with pytest.raises(ValueError, match=message):
            fp.CSR(*args)
    with pytest.raises(TypeError, match="indices: expected an integer array"):
        fp.CSR(ok[0], ok[1].astype(float), d, (2, 3))
    with pytest.raises(TypeError, match="data: expected dtype"):
        fp.CSR(ok[0], ok[1], d.astype(np.int64), (2, 3))


def test_coo_bsr_nm_bitmask_validation() -> None:
    d = np.ones(2, np.float32)
    with pytest.raises(ValueError, match="entry 1"):
        fp.COO(np.array([1, 0]), np.array([0, 0]), d, (2, 2))
    with pytest.raises(ValueError, match="entry 1"):
        fp.COO(np.array([0, 0]), np.array([1, 1]), d, (2, 2))
    with pytest.raises(ValueError, match="entry 1"):
        fp.COO(np.array([0, 5]), np.array([0, 0]), d, (2, 2))
    with pytest.raises(ValueError, match="lengths differ"):
        fp.COO(np.array([0]), np.array([0, 1]), d, (2, 2))
    blocks = np.ones((1, 2, 2), np.float32)
    with pytest.raises(ValueError, match="does not divide"):
        fp.BSR(np.array([0, 1]), np.array([0]), blocks, (3, 2))
    with pytest.raises(ValueError, match="column index out of range"):
        fp.BSR(np.array([0, 1]), np.array([1]), blocks, (2, 2))
    with pytest.raises(ValueError, match="expected a 3-D array"):
        fp.BSR(np.array([0, 1]), np.array([0]), np.ones(4, np.float32), (2, 2))
    values = np.ones((1, 2), np.float32)
    fp.NMCompressed(values, np.array([[0b0100]], np.uint8), (1, 4), 2, 4)
    for bad in (0b0001, 0b0101, 0b0100_0100):  # decreasing, repeated, padding bits set
        with pytest.raises(ValueError, match="indices: row 0"):
            fp.NMCompressed(values, np.array([[bad]], np.uint8), (1, 4), 2, 4)
    with pytest.raises(ValueError, match="indices: row 0"):  # position 3 >= m = 3
        fp.NMCompressed(np.ones((1, 1), np.float32), np.array([[3]], np.uint8), (1, 3), 1, 3)
    with pytest.raises(ValueError, match="values: expected shape"):
        fp.NMCompressed(np.ones((1, 3), np.float32), np.array([[4]], np.uint8), (1, 4), 2, 4)
    with pytest.raises(TypeError, match="indices: expected dtype uint8"):
        fp.NMCompressed(values, np.array([[4]], np.int8), (1, 4), 2, 4)
    with pytest.raises(ValueError, match="mask: row 0 has padding bits"):
        fp.Bitmask(np.array([[0b1000_0001]], np.uint8), d, (1, 7))
    with pytest.raises(ValueError, match="data: has 2 values but the mask has 1"):
        fp.Bitmask(np.array([[0b1000_0000]], np.uint8), d, (1, 7))
    with pytest.raises(ValueError, match="mask: expected shape"):
        fp.Bitmask(np.zeros((1, 2), np.uint8), d, (1, 7))


def test_mutated_components_cannot_crash_a_kernel() -> None:
    x = random_sparse(np.random.default_rng(6), (8, 8), 0.5, np.float32)
    a = fp.CSR.from_dense(x)
    a.indices[0] = 1000
    with pytest.raises(ValueError, match="out of range"):
        a.to_dense()
    with pytest.raises(ValueError, match="out of range"):
        a @ np.ones((8, 2), np.float32)
    b = fp.CSR.from_dense(x)
    b.indptr[3] = 10**6
    with pytest.raises(ValueError, match="indptr"):
        b.to_dense()


# --- matmul ------------------------------------------------------------------------------------


def check_product(y: np.ndarray, dense: np.ndarray, x: np.ndarray, compute: Any) -> None:
    a64, x64 = dense.astype(np.float64), x.astype(compute).astype(np.float64)
    ref = a64 @ x64
    scale = np.abs(a64) @ np.abs(x64)
    eps = np.finfo(compute).eps
    assert y.dtype == compute and y.shape == ref.shape
    assert np.all(np.abs(y - ref) <= 4 * eps * (a64.shape[-1] + 1) * scale + 1e-300)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("fmt", FORMATS)
def test_matmul_matches_float64_reference(fmt: str, dtype: Any) -> None:
    rng = np.random.default_rng(7)
    compute = np.float64 if dtype == np.float64 else np.float32
    dense = matrix_for(fmt, rng, (18, 24), dtype)
    dense[4] = 0
    a = build(fmt, dense)
    for k in (1, 2, 3, 5, 8, 13, 16, 31, 37, 64, 77):
        x = rng.standard_normal((24, k)).astype(compute)
        check_product(a @ x, dense, x, compute)
    v = rng.standard_normal(24).astype(compute)
    y = a @ v
    assert y.shape == (18,)
    check_product(y[:, None], dense, v[:, None], compute)
    batch = rng.standard_normal((2, 3, 24, 5)).astype(compute)
    yb = a @ batch
    assert yb.shape == (2, 3, 18, 5)
    for i in range(2):
        for j in range(3):
            check_product(yb[i, j], dense, batch[i, j], compute)


def test_matmul_converts_x_and_keeps_inputs() -> None:
    rng = np.random.default_rng(8)
    dense = random_sparse(rng, (5, 6), 0.5, np.float16)
    a = fp.CSR.from_dense(dense)
    x = rng.standard_normal((6, 3))  # float64 x, float16 matrix: computed in float32
    before = x.copy()
    y = a @ x
    check_product(y, dense, x, np.float32)
    assert same_bits(x, before)
    x_t = np.asfortranarray(rng.standard_normal((6, 4)).astype(np.float32))
    check_product(a @ x_t, dense, x_t, np.float32)


def test_matmul_rejects_bad_x() -> None:
    a = fp.CSR.from_dense(np.eye(3, dtype=np.float32))
    with pytest.raises(ValueError, match="x: shape \\(4, 2\\) does not match"):
        a @ np.ones((4, 2), np.float32)
    with pytest.raises(ValueError, match="does not match"):
        a @ np.float32(1)
    with pytest.raises(TypeError, match="x: expected dtype"):
        a @ np.ones((3, 2), np.int64)


def test_matmul_empty_shapes() -> None:
    a = fp.CSR.from_dense(np.zeros((0, 4), np.float32))
    assert (a @ np.ones((4, 3), np.float32)).shape == (0, 3)
    b = fp.CSR.from_dense(np.zeros((3, 0), np.float32))
    np.testing.assert_array_equal(b @ np.ones((0, 2), np.float32), np.zeros((3, 2)))
    c = fp.CSR.from_dense(np.ones((3, 4), np.float32))
    assert (c @ np.ones((4, 0), np.float32)).shape == (3, 0)


# --- instruction-set levels and threads --------------------------------------------------------


def all_results(fmt: str, x: np.ndarray, rhs: np.ndarray) -> tuple[list[np.ndarray], ...]:
    """(conversion results, products) of one format."""
    a = build(fmt, x)
    exact = [*a.components().values(), a.to_dense(), *a.to_csr().components().values()]
    return exact, [a @ rhs, a @ rhs[:, 0]]


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_instruction_set_level_agrees(fmt: str) -> None:
    rng = np.random.default_rng(9)
    x = matrix_for(fmt, rng, (40, 64), np.float32)
    rhs = rng.standard_normal((64, 45)).astype(np.float32)
    reference = all_results(fmt, x, rhs)
    for level in _core.supported_levels():
        with _core.use(level):
            got = all_results(fmt, x, rhs)
        for r, g in zip(reference[0], got[0], strict=True):
            assert same_bits(r, g), level
        for r, g in zip(reference[1], got[1], strict=True):  # FMA contraction may differ
            np.testing.assert_allclose(g, r, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("fmt", FORMATS)
def test_one_and_two_threads_give_identical_results(fmt: str) -> None:
    rng = np.random.default_rng(10)
    x = matrix_for(fmt, rng, (512, 512), np.float32)
    rhs = rng.standard_normal((512, 24)).astype(np.float32)
    previous = fp.get_num_threads()
    try:
        fp.set_num_threads(1)
        one = all_results(fmt, x, rhs)
        fp.set_num_threads(2)
        two = all_results(fmt, x, rhs)
    finally:
        fp.set_num_threads(previous)
    for r, g in zip(one[0] + one[1], two[0] + two[1], strict=True):
        assert same_bits(r, g)


# --- scipy interop -----------------------------------------------------------------------------


def test_scipy_round_trips_share_memory() -> None:
    x = random_sparse(np.random.default_rng(11), (10, 12), 0.4, np.float32)
    a = fp.CSR.from_dense(x)
    for matrix in (False, True):
        s = a.to_scipy(matrix=matrix)
        assert isinstance(s, sp.csr_matrix if matrix else sp.csr_array)
        assert np.shares_memory(s.data, a.data) and np.shares_memory(s.indices, a.indices)
        assert np.shares_memory(s.indptr, a.indptr)
        np.testing.assert_array_equal(s.toarray(), x)
        back = fp.CSR.from_scipy(s)
        assert np.shares_memory(back.data, s.data) and np.shares_memory(back.indices, s.indices)
    coo = fp.COO.from_dense(x)
    sc = coo.to_scipy()
    assert isinstance(sc, sp.coo_array) and np.shares_memory(sc.row, coo.row)
    np.testing.assert_array_equal(sc.toarray(), x)
    assert np.shares_memory(fp.COO.from_scipy(sc).col, coo.col)
    b = fp.BSR.from_dense(x, block=(2, 3))
    sb = b.to_scipy()
    assert isinstance(sb, sp.bsr_array) and np.shares_memory(sb.data, b.data)
    np.testing.assert_array_equal(sb.toarray(), x)
    assert np.shares_memory(fp.BSR.from_scipy(sb).data, b.data)


def test_from_scipy_canonicalizes_a_copy() -> None:
    s = sp.csr_array(
        (np.array([1.0, 2.0, 3.0]), np.array([2, 0, 2]), np.array([0, 3])), shape=(1, 3)
    )
    before = s.indices.copy()
    a = fp.CSR.from_scipy(s)
    np.testing.assert_array_equal(a.to_dense(), [[2.0, 0.0, 4.0]])
    np.testing.assert_array_equal(s.indices, before)
    c = sp.coo_array(
        (np.array([1.0, 2.0, 5.0]), (np.array([1, 0, 1]), np.array([0, 1, 0]))), shape=(2, 2)
    )
    np.testing.assert_array_equal(fp.COO.from_scipy(c).to_dense(), [[0, 2], [6, 0]])
    with pytest.raises(TypeError, match=r"m: expected a scipy\.sparse CSR"):
        fp.CSR.from_scipy(c)
    with pytest.raises(TypeError, match=r"m: expected a scipy\.sparse BSR"):
        fp.BSR.from_scipy(c)
    with pytest.raises(TypeError, match=r"m: expected a scipy\.sparse COO"):
        fp.COO.from_scipy(s)


def test_to_scipy_of_16_bit_values_is_float32() -> None:
    x = random_sparse(np.random.default_rng(12), (4, 4), 0.5, BF16)
    for a in (fp.CSR.from_dense(x), fp.COO.from_dense(x), fp.BSR.from_dense(x, block=(2, 2))):
        s = a.to_scipy()
        assert s.dtype == np.float32
        np.testing.assert_array_equal(s.toarray(), x.astype(np.float32))


# --- torch interop -----------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_torch_round_trips(dtype: Any) -> None:
    torch = pytest.importorskip("torch")
    x = random_sparse(np.random.default_rng(13), (6, 8), 0.4, dtype)
    x32 = torch.from_numpy(x.astype(np.float32))
    for a, layout in (
        (fp.CSR.from_dense(x), torch.sparse_csr),
        (fp.COO.from_dense(x), torch.sparse_coo),
        (fp.BSR.from_dense(x, block=(2, 4)), torch.sparse_bsr),
    ):
        t = a.to_torch()
        assert t.layout == layout
        assert torch.equal(t.to_dense().float(), x32)
        back = type(a).from_torch(t)
        assert same_bits(back.to_dense(), x)
    csr = fp.CSR.from_dense(x)
    t = csr.to_torch()
    assert np.shares_memory(t.col_indices().numpy(), csr.indices)
    assert np.shares_memory(fp.CSR.from_torch(t).indices, csr.indices)


def test_torch_uncoalesced_and_wrong_inputs() -> None:
    torch = pytest.importorskip("torch")
    t = torch.sparse_coo_tensor(
        torch.tensor([[1, 0, 1], [0, 1, 0]]),
        torch.tensor([1.0, 2.0, 5.0]),
        (2, 2),
        check_invariants=True,
    )
    np.testing.assert_array_equal(fp.COO.from_torch(t).to_dense(), [[0, 2], [6, 0]])
    with pytest.raises(TypeError, match=r"t: expected a torch\.sparse_csr tensor"):
        fp.CSR.from_torch(t)
    with pytest.raises(TypeError, match=r"t: expected a torch\.sparse_bsr"):
        fp.BSR.from_torch(torch.ones(2, 2))
    with pytest.raises(TypeError, match="values"):
        fp.COO.from_torch(t.to(torch.int32))


# --- properties --------------------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(
    rows=st.integers(0, 9),
    groups=st.integers(0, 5),
    density=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**32 - 1),
    k=st.integers(1, 20),
)
def test_property_every_format_round_trips_and_multiplies(
    rows: int, groups: int, density: float, seed: int, k: int
) -> None:
    rng = np.random.default_rng(seed)
    cols = 4 * groups
    x = random_sparse(rng, (rows, cols), density, np.float64)
    rhs = rng.standard_normal((cols, k))
    nm_x = two_of_four(rng, rows, cols, np.float64)
    for fmt in FORMATS:
        dense = nm_x if fmt == "nm" else x
        a = build(fmt, dense)
        assert same_bits(a.to_dense(), dense)
        assert same_bits(a.to_csr().to_dense(), dense)
        check_product(a @ rhs, dense, rhs, np.float64)
