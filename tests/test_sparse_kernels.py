"""PackedLinear (the packed-bitmask and index layouts and their x @ W.T kernels) against
float64 NumPy.

Tolerance: a float32 product of float32 inputs is within ``2 * n * eps32 * (|x| @ |W|.T)`` of
the exact float64 result, n = in_features / 4 + 8. One row of x at a time (and the passes of a
few rows) each of the 64 accumulator lanes adds at most in_features / 64 + 1 products, then 6
additions of the sets and the tree; a small batch taken at once (the outer path) puts a row's
kept weights into 4 chains of at most in_features / 4 + 1 products each, then 2 additions,
or, from 49 rows of x on, into one chain per group of 16 rows (n = in_features). The GEMM path
(many rows of x, dense enough weights) uses the BLAS's own order and is held to the same bound
with n = in_features.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from typing import Any

import ml_dtypes
import numpy as np
import pytest

import fastprune as fp
from fastprune import _core
from fastprune.sparse import MAX_INDEXED_COLUMNS, PackedLinear, index_layout_density

EPS = float(np.finfo(np.float32).eps)
GEMM = _core.sparse_linear.GEMM_COLUMNS
KS = (1, 2, 3, 5, 8, 9, 16, 17, GEMM - 1, GEMM, GEMM + 17)


def reference(w: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """x @ w.T in float64 and the rounding bound of a float32 kernel."""
    w64, x64 = w.astype(np.float64), x.astype(np.float64)
    n = w.shape[1] if x.shape[0] >= GEMM else w.shape[1] / 4 + 8
    return x64 @ w64.T, 2 * n * EPS * (np.abs(x64) @ np.abs(w64).T)


def check_product(p: PackedLinear, w: np.ndarray, x: np.ndarray) -> None:
    got = p.linear(x)
    assert got.dtype == np.float32 and got.shape == (x.shape[0], w.shape[0])
    exact, bound = reference(w, x)
    assert np.all(np.abs(got - exact) <= bound + 1e-37), np.max(np.abs(got - exact) - bound)


def sparse_weight(rng: np.random.Generator, shape: tuple[int, int], density: float) -> np.ndarray:
    w = rng.standard_normal(shape).astype(np.float32)
    w[rng.random(shape) >= density] = 0
    return w


def two_of_four(rng: np.random.Generator, rows: int, cols: int) -> np.ndarray:
    w = rng.standard_normal((rows, cols)).astype(np.float32).reshape(rows, cols // 4, 4)
    keep = np.zeros(w.shape, bool)
    keep[..., :2] = True
    return np.where(rng.permuted(keep, axis=2), w, 0).reshape(rows, cols)


SHAPES = [(1, 1), (1, 37), (7, 17), (5, 16), (3, 15), (33, 100), (20, 256), (9, 31)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("density", [0.0, 0.1, 0.3, 0.5, 1.0])
def test_float32_matches_float64_reference(shape: tuple[int, int], density: float) -> None:
    rng = np.random.default_rng(hash((shape, density)) % 2**32)
    w = sparse_weight(rng, shape, density)
    p = PackedLinear.from_dense(w, layout="bitmask")
    assert np.array_equal(p.to_dense(), w)
    assert p.nnz == np.count_nonzero(w)
    for k in KS:
        check_product(p, w, rng.standard_normal((k, shape[1])).astype(np.float32))


@pytest.mark.parametrize("shape", [(8, 64), (5, 36), (16, 4096)])
def test_two_of_four(shape: tuple[int, int]) -> None:
    rng = np.random.default_rng(1)
    w = two_of_four(rng, *shape)
    p = PackedLinear.from_dense(w)
    for k in (1, 4, 16, GEMM + 3):
        check_product(p, w, rng.standard_normal((k, shape[1])).astype(np.float32))


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("cols", [16 * 9 + 6, 16 * 7, 16 * 14 + 3, 16 * 16])
def test_rows_keeping_four_of_every_eight_columns(dtype: str, cols: int) -> None:
    """Rows whose every mask byte keeps four columns (2:4, 4:8) are read in windows of 32
    columns (2:4 rows decoded without tables on AVX-512), four windows at a time and then up to
    three alone, an odd block and the tail as in any row; rows that miss it by one column take
    the general path. All agree with float64 and, bit for bit, across levels."""
    rng = np.random.default_rng(9 + cols)
    core = (cols - 2) // 4 * 4
    w = two_of_four(rng, 12, core)
    w = np.concatenate([w, np.zeros((12, cols - core), np.float32)], axis=1)
    w[1] = 0
    g = rng.standard_normal((cols // 8, 8)).astype(np.float32)
    keep = np.zeros((cols // 8, 8), bool)
    keep[:, :4] = True
    w[1, : cols // 8 * 8] = np.where(rng.permuted(keep, axis=1), g, 0).reshape(-1)  # 4:8
    w[2, 37] = 0.0  # one byte with three columns
    w[3, 40:48] = rng.standard_normal(8)  # one byte with eight
    w[4, 100:104] = 0  # one group of 4 empty, its neighbour full
    w[4, 104:108] = rng.standard_normal(4)
    w[5, -6:] = rng.standard_normal(6)  # full tail block
    p = PackedLinear.from_dense(w, dtype=dtype)
    held = p.to_dense()
    if dtype == "float32":
        assert np.array_equal(held, w)
    xs = [rng.standard_normal((k, cols)).astype(np.float32) for k in KS]
    for x in xs:
        check_product(p, held, x)
    assert_levels_agree(p, xs, KS)
    offsets: Any = p.offsets.copy()
    offsets[7:-1] -= 1  # rows 6 and 7 now disagree with their masks; the total still matches
    with pytest.raises(ValueError, match="mask:"):
        _core.sparse_linear.linear(
            p.mask, offsets, p.values, cols, xs[0], np.empty((1, 12), np.float32)
        )


# Windows of 32 columns keeping 0, 1, 16, 17 and 32 of them (a second multiply-add from 17 on),
# a run of ten windows (groups of four and the three after), and the last window ragged.
WINDOW_COLS = [32 * 10, 32 * 10 + 16, 32 * 10 + 5, 32 * 10 + 21, 32 * 7 + 31, 20, 9]


def window_weight(rng: np.random.Generator, cols: int) -> np.ndarray:
    w = sparse_weight(rng, (14, cols), 0.3)
    for row, kept in enumerate((0, 1, 16, 17, 32)):
        w[row] = 0
        for start in range(0, cols, 32):
            width = min(32, cols - start)
            at = rng.choice(width, size=min(kept, width), replace=False)
            w[row, start + at] = rng.standard_normal(at.size)
    w[5] = sparse_weight(rng, (1, cols), 0.6)[0]  # windows keeping more and fewer than 16
    w[6, : cols // 2] = 0  # empty windows, then full ones
    w[6, cols // 2 :] = rng.standard_normal(cols - cols // 2)
    return w


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("cols", WINDOW_COLS)
def test_rows_read_in_windows(dtype: str, cols: int) -> None:
    """Rows that are not N:M-like, read in windows of 32 columns where the CPU lists them by
    vpcompressb (and block by block elsewhere): every count of kept columns in a window, every
    remainder of the columns, 1-5 rows of x (passes of 4, 2 and 1), against float64 and across
    levels; a mask that claims more weights than the offsets hold is caught."""
    rng = np.random.default_rng(cols)
    w = window_weight(rng, cols)
    p = PackedLinear.from_dense(w, dtype=dtype, layout="bitmask")
    held = p.to_dense()
    ks = (1, 2, 3, 4, 5, 17)
    xs = [rng.standard_normal((k, cols)).astype(np.float32) for k in ks]
    for x in xs:
        check_product(p, held, x)
    assert_levels_agree(p, xs, ks)
    offsets: Any = p.offsets.copy()
    offsets[6:-1] -= 1  # row 5 now claims one weight more than its offsets hold
    with pytest.raises(ValueError, match="mask:"):
        _core.sparse_linear.linear(
            p.mask, offsets, p.values, cols, xs[0], np.empty((1, 14), np.float32)
        )


def test_windows_can_be_disabled() -> None:
    """FASTPRUNE_DISABLE_ISA=avx512vbmi2 turns the windows off: every level then reads such rows
    block by block and gives the same bits as every other."""
    code = (
        "import numpy as np, fastprune as fp\n"
        "from fastprune import _core\n"
        "rng = np.random.default_rng(3)\n"
        "w = rng.standard_normal((40, 300)).astype(np.float32)\n"
        "w[rng.random(w.shape) < 0.7] = 0\n"
        "p = fp.PackedLinear.from_dense(w, layout='bitmask')\n"
        "x = rng.standard_normal((3, 300)).astype(np.float32)\n"
        "ys = []\n"
        "for level in _core.supported_levels():\n"
        "    with _core.use(level):\n"
        "        assert not _core.sparse_linear.byte_compress(), level\n"
        "        ys += [p.linear(x), p.linear(x[:1])]\n"
        "assert all(np.array_equal(y, z) for y, z in zip(ys[2:], ys[:-2])), 'levels differ'\n"
        "print('agree')\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("FASTPRUNE_")}
    env["FASTPRUNE_DISABLE_ISA"] = "avx512vbmi2"
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=False
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "agree"


def test_bfloat16_values_are_decoded_exactly() -> None:
    rng = np.random.default_rng(2)
    w = sparse_weight(rng, (19, 73), 0.4).astype(ml_dtypes.bfloat16)
    p = PackedLinear.from_dense(w)
    assert p.dtype == "bfloat16" and p.values.dtype == np.uint16
    w32 = w.astype(np.float32)
    assert np.array_equal(p.to_dense(), w32)
    for k in KS:
        check_product(p, w32, rng.standard_normal((k, 73)).astype(np.float32))
    # float32 input stored as bfloat16 on request: rounded once, then exact
    q = PackedLinear.from_dense(w32, dtype="bfloat16")
    assert np.array_equal(q.values, p.values)


def test_adversarial_rows_and_blocks() -> None:
    rng = np.random.default_rng(3)
    w = sparse_weight(rng, (12, 70), 0.6)
    w[0] = 0  # empty row
    w[3, :32] = 0  # two all-zero blocks
    w[4, 16:48] = 0
    w[5] = rng.standard_normal(70)  # dense row
    w[6, 64:] = 0  # all-zero tail block
    w[7, :] = 0
    w[7, 69] = 1.5  # only the last column
    w[8, :] = 0
    w[8, 0] = -2.0  # only the first
    w[9, 15:17] = [3.0, -3.0]  # across a block boundary
    p = PackedLinear.from_dense(w)
    assert np.array_equal(p.to_dense(), w)
    for k in KS:
        x = rng.standard_normal((k, 70)).astype(np.float32)
        check_product(p, w, x)
        assert np.all(p.linear(x)[:, 0] == 0)


def test_large_magnitudes_and_cancellation() -> None:
    rng = np.random.default_rng(4)
    w = sparse_weight(rng, (6, 130), 0.5) * np.float32(1e20)
    x = np.ones((3, 130), np.float32) * np.float32(1e-20)
    x[:, ::2] *= -1
    check_product(PackedLinear.from_dense(w), w, x)


def test_matmul_and_batch_shapes() -> None:
    rng = np.random.default_rng(5)
    w = sparse_weight(rng, (10, 40), 0.3)
    p = PackedLinear.from_dense(w)
    v = rng.standard_normal(40).astype(np.float32)
    np.testing.assert_allclose(p @ v, w.astype(np.float64) @ v, rtol=1e-5, atol=1e-5)
    cols = rng.standard_normal((40, 6)).astype(np.float32)
    np.testing.assert_allclose(p @ cols, w.astype(np.float64) @ cols, rtol=1e-5, atol=1e-5)
    batch = rng.standard_normal((2, 3, 40)).astype(np.float32)
    got = p.linear(batch)
    assert got.shape == (2, 3, 10)
    assert np.array_equal(got, p.linear(batch.reshape(6, 40)).reshape(2, 3, 10))
    before = batch.copy()
    p.linear(batch[:, :, :])
    assert np.array_equal(batch, before)


def test_from_format_agrees_with_from_dense() -> None:
    rng = np.random.default_rng(6)
    w = two_of_four(rng, 12, 48)
    dense = PackedLinear.from_dense(w)
    for a in (fp.CSR.from_dense(w), fp.Bitmask.from_dense(w), fp.NMCompressed.from_dense(w, 2, 4)):
        p = PackedLinear.from_format(a)
        for name in ("mask", "offsets", "values"):
            assert np.array_equal(getattr(p, name), getattr(dense, name))


def all_products(p: PackedLinear, xs: list[np.ndarray]) -> list[np.ndarray]:
    return [p.linear(x) for x in xs] + [p.to_dense()]


def byte_compress(level: str) -> bool:
    with _core.use(level):
        return _core.sparse_linear.byte_compress()


def assert_levels_agree(p: PackedLinear, xs: list[np.ndarray], ks: Sequence[int]) -> None:
    """Products and decoding on every supported level agree: bit for bit on the streaming
    kernels between levels that read rows alike (sparse_linear.byte_compress: where one level
    reads rows that are not N:M-like in windows and another block by block, the two round
    differently), to rounding otherwise and on the BLAS's own GEMM (from GEMM rows on).
    Decoding agrees bit for bit everywhere."""
    results = {}
    for level in _core.supported_levels():
        with _core.use(level):
            results[level] = all_products(p, xs)
    expected = next(iter(results.values()))
    first: dict[bool, list[np.ndarray]] = {}
    for level, got in results.items():
        alike = first.setdefault(byte_compress(level), got)
        for k, e, a, g in zip([*ks, 0], expected, alike, got, strict=True):
            if k == 0:
                assert np.array_equal(e, g), level
            elif k < GEMM:
                assert np.array_equal(a, g), (level, k)
                np.testing.assert_allclose(g, e, rtol=1e-5, atol=1e-5)
            else:
                np.testing.assert_allclose(g, e, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("layout", ["bitmask", "indices"])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_small_batches_at_once(layout: str, dtype: str) -> None:
    """A sparse enough weight takes every row of a small batch at once (the outer path), up to
    128 rows of x in 8 groups of 16 (four chains per group up to 3 groups, one chain per group
    from 4 on); ragged k, empty rows and a 2:4 row alongside; the same bits on every level."""
    rng = np.random.default_rng(12)
    cols = 16 * 11 + 5
    w = sparse_weight(rng, (23, cols), 0.12)
    w[3] = 0
    w[4, :-1] = two_of_four(rng, 1, cols - 1)[0]
    w[4, -1] = 0
    p = PackedLinear.from_dense(w, layout=layout, dtype=dtype)
    held = p.to_dense()
    ks = (2, 4, 15, 17, 33, 48, 49, 64, 100, 128, 129)
    xs = [rng.standard_normal((k, cols)).astype(np.float32) for k in ks]
    for k, x in zip(ks, xs, strict=True):
        got = p.linear(x)
        exact = x.astype(np.float64) @ held.T.astype(np.float64)
        chain = cols / 4 if k <= 48 else cols
        bound = 2 * (chain + 8) * EPS * (np.abs(x.astype(np.float64)) @ np.abs(held.T))
        assert np.all(np.abs(got - exact) <= bound + 1e-37), x.shape
        assert np.all(got[:, 3] == 0)
    expected = [p.linear(x) for x in xs]
    for level in _core.supported_levels():
        with _core.use(level):
            for k, x, e in zip(ks, xs, expected, strict=True):
                if k <= 128:
                    assert np.array_equal(p.linear(x), e), (level, k)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_every_instruction_set_level_agrees(dtype: str) -> None:
    rng = np.random.default_rng(7)
    w = sparse_weight(rng, (45, 83), 0.35)
    p = PackedLinear.from_dense(w, dtype=dtype)
    xs = [rng.standard_normal((k, 83)).astype(np.float32) for k in KS]
    assert_levels_agree(p, xs, KS)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("layout", ["bitmask", "indices"])
def test_one_and_two_threads_give_identical_results(layout: str, dtype: str) -> None:
    rng = np.random.default_rng(8)
    w = sparse_weight(rng, (900, 1000), 0.1)
    p = PackedLinear.from_dense(w, dtype, layout=layout)
    xs = [rng.standard_normal((k, 1000)).astype(np.float32) for k in (1, 3, 4, 16, 17, 130)]
    previous = fp.get_num_threads()
    try:
        fp.set_num_threads(1)
        one = all_products(p, xs)
        fp.set_num_threads(2)
        two = all_products(p, xs)
    finally:
        fp.set_num_threads(previous)
    for a, b in zip(one, two, strict=True):
        assert np.array_equal(a, b)


def test_bad_arguments() -> None:
    w = np.eye(20, dtype=np.float32)
    p = PackedLinear.from_dense(w, layout="bitmask")
    with pytest.raises(ValueError, match="x:"):
        p.linear(np.ones((2, 19), np.float32))
    with pytest.raises(TypeError, match="x:"):
        p.linear(np.ones((2, 20), np.int32))
    x = np.ones((1, 20), np.float32)
    x[0, 3] = np.nan
    with pytest.raises(ValueError, match="x:"):
        p.linear(x)
    with pytest.raises(ValueError, match="w:"):
        PackedLinear.from_dense(np.ones(5, np.float32))
    with pytest.raises(TypeError, match="w:"):
        PackedLinear.from_dense(np.ones((2, 2), np.int64))
    with pytest.raises(ValueError, match="dtype:"):
        PackedLinear.from_dense(w, dtype="float16")
    with pytest.raises(TypeError, match="a:"):
        PackedLinear.from_format(w)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="offsets:"):
        PackedLinear(p.mask, p.offsets + 1, p.values, p.shape)
    bad_mask = p.mask.copy()
    bad_mask[0, 1] |= np.uint16(1 << 7)  # bit past in_features = 20
    with pytest.raises(ValueError, match="offsets:"):
        PackedLinear(bad_mask, p.offsets, p.values, p.shape)
    with pytest.raises(ValueError, match="values:"):
        PackedLinear(p.mask, p.offsets, p.values[:-1], p.shape)
    with pytest.raises(TypeError, match="mask:"):
        PackedLinear(p.mask.astype(np.int32), p.offsets, p.values, p.shape)
    assert not p.values.flags.writeable


def test_changed_arrays_are_caught_by_the_kernel() -> None:
    """Arrays changed after they were checked make the kernel fail cleanly, not read astray."""
    p = PackedLinear.from_dense(np.eye(40, dtype=np.float32), layout="bitmask")
    offsets: Any = p.offsets.copy()
    offsets[5:-1] += 3  # the total still matches: only the rows can tell
    x = np.ones((1, 40), np.float32)
    for k in (1, 3, GEMM, 200):  # streaming, outer (3, GEMM) and tiles (200)
        with pytest.raises(ValueError, match="mask:"):
            _core.sparse_linear.linear(
                p.mask,
                offsets,
                p.values,
                40,
                np.ones((k, 40), np.float32),
                np.empty((k, 40), np.float32),
            )
    with pytest.raises(ValueError, match="values:"):
        _core.sparse_linear.linear(
            p.mask, p.offsets, p.values[:-2], 40, x, np.empty((1, 40), np.float32)
        )


# --- the index layout ------------------------------------------------------------------------

INDEX_KS = (1, 2, 3, 5, 17, 130)
INDEX_SHAPES = [(1, 1), (4, 1), (1, 37), (7, 17), (5, 16), (3, 15), (6, 8), (9, 31), (33, 100)]


def indexed(w: np.ndarray, dtype: str = "float32") -> tuple[PackedLinear, np.ndarray]:
    """The index layout of w and the float32 weight it holds (w rounded for bfloat16)."""
    p = PackedLinear.from_dense(w, dtype, layout="indices")
    assert p.layout == "indices" and p.dtype == dtype
    held = w.astype(ml_dtypes.bfloat16).astype(np.float32) if dtype == "bfloat16" else w
    assert np.array_equal(p.to_dense(), held)
    return p, held


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("shape", INDEX_SHAPES)
@pytest.mark.parametrize("density", [0.0, 0.05, 0.3, 1.0])
def test_index_layout_matches_float64_reference(
    shape: tuple[int, int], density: float, dtype: str
) -> None:
    rng = np.random.default_rng(hash((shape, density, dtype)) % 2**32)
    w = sparse_weight(rng, shape, density)
    p, held = indexed(w, dtype)
    assert p.nnz == np.count_nonzero(held) and p.indices.dtype == np.uint16
    for k in INDEX_KS:
        check_product(p, held, rng.standard_normal((k, shape[1])).astype(np.float32))


def adversarial_rows(rng: np.random.Generator) -> np.ndarray:
    """Rows whose kept counts straddle the groups of 16 and the four accumulator sets."""
    cols = 203  # neither a multiple of 16 nor of 8
    counts = [0, 1, 15, 16, 17, 63, 64, 65, 80, 127, 128, 129, 200, 203, 0, 2]
    w = np.zeros((len(counts), cols), np.float32)
    for i, n in enumerate(counts):
        where = rng.choice(cols, n, replace=False)
        w[i, where] = rng.standard_normal(n).astype(np.float32)
    w[1, :] = 0
    w[1, cols - 1] = 2.5  # only the last column
    return w


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_index_layout_adversarial_rows(dtype: str) -> None:
    rng = np.random.default_rng(11)
    w = adversarial_rows(rng)
    p, held = indexed(w, dtype)
    one_per_row = np.zeros((9, 50), np.float32)
    one_per_row[np.arange(9), rng.choice(50, 9)] = rng.standard_normal(9).astype(np.float32)
    q, held_q = indexed(one_per_row, dtype)
    empty, _ = indexed(np.zeros((5, 23), np.float32), dtype)
    no_columns, _ = indexed(np.zeros((3, 0), np.float32), dtype)
    no_rows, _ = indexed(np.zeros((0, 7), np.float32), dtype)
    for k in (*INDEX_KS, GEMM):
        x = rng.standard_normal((k, w.shape[1])).astype(np.float32)
        check_product(p, held, x)
        y = p.linear(x)
        assert np.all(y[:, 0] == 0) and np.all(y[:, 14] == 0)
        check_product(q, held_q, rng.standard_normal((k, 50)).astype(np.float32))
        zeros = empty.linear(rng.standard_normal((k, 23)).astype(np.float32))
        assert zeros.shape == (k, 5) and np.all(zeros == 0)
        y0 = np.full((k, 3), np.nan, np.float32)  # no columns: the core writes zeros
        parts = (no_columns.offsets, no_columns.indices, no_columns.values)
        _core.sparse_linear.linear_indices(*parts, 0, np.zeros((k, 0), np.float32), y0)
        assert np.array_equal(y0, np.zeros((k, 3)))
        assert no_rows.linear(np.ones((k, 7), np.float32)).shape == (k, 0)


def test_index_layout_large_magnitudes_and_cancellation() -> None:
    rng = np.random.default_rng(12)
    w = sparse_weight(rng, (6, 130), 0.5) * np.float32(1e20)
    x = np.ones((3, 130), np.float32) * np.float32(1e-20)
    x[:, ::2] *= -1
    check_product(PackedLinear.from_dense(w, layout="indices"), w, x)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_index_layout_every_instruction_set_level_agrees(dtype: str) -> None:
    rng = np.random.default_rng(13)
    w = np.concatenate([sparse_weight(rng, (45, 203), 0.35), adversarial_rows(rng)])
    p, _ = indexed(w, dtype)
    ks = [*INDEX_KS, GEMM - 1, GEMM]
    xs = [rng.standard_normal((k, 203)).astype(np.float32) for k in ks]
    assert "baseline" in _core.supported_levels()
    assert_levels_agree(p, xs, ks)


def test_auto_picks_indices_from_the_machines_density() -> None:
    """The index layout from 30 % kept down where rows are read block by block, from 15 % down
    where they are read in windows."""
    density_here = index_layout_density()
    assert density_here == (0.15 if _core.sparse_linear.byte_compress() else 0.3)
    rng = np.random.default_rng(15)
    for shape in [(40, 64), (17, 203), (8, 1), (3, 16)]:
        rows, cols = shape
        for density in (0.0, 0.03, 0.14, 0.15, 0.16, 0.2, 0.29, 0.3, 0.31, 0.5, 1.0):
            w = sparse_weight(rng, shape, density)
            nnz = np.count_nonzero(w)
            want = "indices" if nnz <= density_here * rows * cols else "bitmask"
            auto = PackedLinear.from_dense(w)
            assert auto.layout == want, (shape, density, nnz)
            other = PackedLinear.from_dense(w, layout="indices" if want == "bitmask" else "bitmask")
            assert np.array_equal(auto.to_dense(), other.to_dense())
    # exactly the density is the index layout, one more weight the bitmask layout
    edge = np.zeros((1, 20), np.float32)
    at = round(density_here * 20)
    edge[0, :at] = 1
    assert PackedLinear.from_dense(edge).layout == "indices"
    edge[0, at] = 1
    assert PackedLinear.from_dense(edge).layout == "bitmask"
    wide = np.zeros((1, MAX_INDEXED_COLUMNS + 1), np.float32)
    wide[0, -1] = 1
    assert PackedLinear.from_dense(wide).layout == "bitmask"
    with pytest.raises(ValueError, match="layout:"):
        PackedLinear.from_dense(wide, layout="indices")
    edge = np.zeros((1, MAX_INDEXED_COLUMNS), np.float32)
    edge[0, [0, MAX_INDEXED_COLUMNS - 1]] = [1.0, 2.0]
    p = PackedLinear.from_dense(edge)
    assert p.layout == "indices" and int(p.indices[-1]) == MAX_INDEXED_COLUMNS - 1
    x = np.ones((1, MAX_INDEXED_COLUMNS), np.float32)
    assert p.linear(x)[0, 0] == 3.0


def test_layouts_convert_and_share_the_interface() -> None:
    rng = np.random.default_rng(16)
    w = sparse_weight(rng, (12, 70), 0.3)
    bitmask = PackedLinear.from_dense(w, layout="bitmask")
    index = bitmask.with_layout("indices")
    assert index.layout == "indices" and bitmask.with_layout("bitmask") is bitmask
    assert np.array_equal(index.with_layout("bitmask").mask, bitmask.mask)
    assert np.array_equal(index.offsets, bitmask.offsets)
    assert set(index.components()) == {"offsets", "indices", "values"}
    assert index.nbytes == index.offsets.nbytes + index.indices.nbytes + index.values.nbytes
    with pytest.raises(AttributeError, match="mask"):
        _ = index.mask
    with pytest.raises(AttributeError, match="indices"):
        _ = bitmask.indices
    v = rng.standard_normal(70).astype(np.float32)
    np.testing.assert_allclose(index @ v, w.astype(np.float64) @ v, rtol=1e-5, atol=1e-5)
    cols = rng.standard_normal((70, 4)).astype(np.float32)
    np.testing.assert_allclose(index @ cols, w.astype(np.float64) @ cols, rtol=1e-5, atol=1e-5)
    assert index.linear(rng.standard_normal((2, 3, 70)).astype(np.float32)).shape == (2, 3, 12)
    assert "indices" in repr(index)
    csr = PackedLinear.from_format(fp.CSR.from_dense(w), layout="indices")
    assert np.array_equal(csr.indices, index.indices)
    assert not index.indices.flags.writeable


def test_index_layout_bad_arrays() -> None:
    p = PackedLinear.from_dense(
        sparse_weight(np.random.default_rng(17), (6, 40), 0.2), layout="indices"
    )
    o, i, v = p.offsets.copy(), p.indices.copy(), p.values.copy()
    assert p.nnz >= 3
    row = int(np.argmax(np.diff(o) >= 2))  # a row with two kept weights

    def build(offsets: Any = o, indices: Any = i, values: Any = v, shape: Any = (6, 40)) -> None:
        PackedLinear.from_indices(offsets, indices, values, shape)

    build()
    out_of_range = i.copy()
    out_of_range[-1] = 40
    with pytest.raises(ValueError, match="indices: column index out of range"):
        build(indices=out_of_range)
    repeated = i.copy()
    repeated[o[row] + 1] = repeated[o[row]]
    with pytest.raises(ValueError, match=r"indices: .*strictly increasing"):
        build(indices=repeated)
    swapped = i.copy()
    swapped[o[row]], swapped[o[row] + 1] = i[o[row] + 1], i[o[row]]
    with pytest.raises(ValueError, match=r"indices: .*strictly increasing"):
        build(indices=swapped)
    with pytest.raises(ValueError, match="offsets: offsets\\[0\\]"):
        build(offsets=o + 1)
    decreasing = o.copy()
    decreasing[2], decreasing[3] = o[3] + 1, o[3]
    with pytest.raises(ValueError, match=r"offsets: .*non-decreasing"):
        build(offsets=decreasing)
    with pytest.raises(ValueError, match="offsets: offsets\\[-1\\]"):
        build(indices=i[:-1], values=v[:-1])
    with pytest.raises(ValueError, match="offsets: expected shape"):
        build(offsets=o[:-1])
    with pytest.raises(ValueError, match="values:"):
        build(values=v[:-1])
    with pytest.raises(ValueError, match="indices:"):
        build(indices=i.reshape(1, -1))
    with pytest.raises(TypeError, match="indices:"):
        build(indices=i.astype(np.int32))
    with pytest.raises(TypeError, match="offsets:"):
        build(offsets=o.astype(np.int32))
    with pytest.raises(TypeError, match="values:"):
        build(values=v.astype(np.float64))
    with pytest.raises(ValueError, match="shape:"):
        build(shape=(6, MAX_INDEXED_COLUMNS + 1))
    with pytest.raises(ValueError, match="mask:"):
        PackedLinear(np.zeros((6, 3), np.uint16), o, v, (6, 40), indices=i)
    with pytest.raises(ValueError, match="layout:"):
        PackedLinear.from_dense(np.eye(3, dtype=np.float32), layout="csr")


def test_index_layout_changed_arrays_are_caught_by_the_kernel() -> None:
    """Indices or offsets changed after they were checked make the kernel fail cleanly."""
    p = PackedLinear.from_dense(np.eye(40, dtype=np.float32), layout="indices")
    far: Any = p.indices.copy()
    far[7] = 60000  # far beyond x's 40 columns
    shifted: Any = p.offsets.copy()
    shifted[5:-1] += 50  # past the end of the values
    for k in (1, 3, GEMM, 200):  # gathers, outer (3, GEMM) and tiles (200)
        x, out = np.ones((k, 40), np.float32), np.empty((k, 40), np.float32)
        for offsets, indices in ((p.offsets, far), (shifted, p.indices)):
            with pytest.raises(ValueError, match="indices:"):
                _core.sparse_linear.linear_indices(offsets, indices, p.values, 40, x, out)
    dense = np.empty((40, 40), np.float32)
    for offsets, indices in ((p.offsets, far), (shifted, p.indices)):
        with pytest.raises(ValueError, match="indices:"):
            _core.sparse_linear.to_dense_indices(offsets, indices, p.values, dense)
    with pytest.raises(ValueError, match="values:"):
        _core.sparse_linear.linear_indices(
            p.offsets,
            p.indices,
            p.values[:-1],
            40,
            np.ones((1, 40), np.float32),
            np.empty((1, 40), np.float32),
        )
