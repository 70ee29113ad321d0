"""PackedLinear (the packed-bitmask layout and its x @ W.T kernels) against float64 NumPy.

Tolerance: a float32 product of float32 inputs is within ``2 * n * eps32 * (|x| @ |W|.T)`` of
the exact float64 result, n = in_features / 16 + 8 (each of 32 accumulator lanes adds at most
in_features / 32 + 1 products, then 5 tree additions); the GEMM path (many rows of x) uses the
BLAS's own order and is held to the same bound with n = in_features.
"""

from __future__ import annotations

from typing import Any

import ml_dtypes
import numpy as np
import pytest

import fastprune as fp
from fastprune import _core
from fastprune.sparse import PackedLinear

EPS = float(np.finfo(np.float32).eps)
GEMM = _core.sparse_linear.GEMM_COLUMNS
KS = (1, 2, 3, 5, 8, 9, 16, 17, GEMM - 1, GEMM, GEMM + 17)


def reference(w: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """x @ w.T in float64 and the rounding bound of a float32 kernel."""
    w64, x64 = w.astype(np.float64), x.astype(np.float64)
    n = w.shape[1] if x.shape[0] >= GEMM else w.shape[1] / 16 + 8
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
    p = PackedLinear.from_dense(w)
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


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_every_instruction_set_level_agrees(dtype: str) -> None:
    rng = np.random.default_rng(7)
    w = sparse_weight(rng, (45, 83), 0.35)
    p = PackedLinear.from_dense(w, dtype=dtype)
    xs = [rng.standard_normal((k, 83)).astype(np.float32) for k in KS]
    expected = all_products(p, xs)
    for level in _core.supported_levels():
        with _core.use(level):
            got = all_products(p, xs)
        for k, e, g in zip([*KS, 0], expected, got, strict=True):
            if k < GEMM:  # the streaming kernel: identical on every level
                assert np.array_equal(e, g), (level, k)
            else:  # the BLAS's own GEMM: may round differently per level
                np.testing.assert_allclose(g, e, rtol=1e-5, atol=1e-4)


def test_one_and_two_threads_give_identical_results() -> None:
    rng = np.random.default_rng(8)
    w = sparse_weight(rng, (700, 300), 0.3)
    p = PackedLinear.from_dense(w)
    xs = [rng.standard_normal((k, 300)).astype(np.float32) for k in (1, 4, 16, 130)]
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
    p = PackedLinear.from_dense(w)
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
    p = PackedLinear.from_dense(np.eye(40, dtype=np.float32))
    offsets: Any = p.offsets.copy()
    offsets[5:-1] += 3  # the total still matches: only the rows can tell
    x = np.ones((1, 40), np.float32)
    for k in (1, GEMM):
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
