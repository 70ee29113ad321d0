"""SparseGPT against a slow, independent float64 NumPy implementation of the published loop."""

from __future__ import annotations

import contextlib
import sys
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import fastprune
from fastprune import _core
from fastprune.solver import HessianFactor, saliency, sparsegpt, sparsegpt_factor

ml_dtypes = pytest.importorskip("ml_dtypes")


@pytest.fixture(autouse=True, params=["from U", "from T"])
def solver_route(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every test runs on both of the solver's routes, whatever the layer's shape would choose:
    from U (a working copy pruned in place, the route of inplace=True) and from T (the weight
    read where it lies, the triangular inverse never formed)."""
    module = sys.modules["fastprune.solver"]
    monkeypatch.setattr(module, "_ROUTE", "from_t" if request.param == "from T" else "from_u")
    return str(request.param)


# --- the reference: textbook route, per-column loop, float64 ---------------------------------


def textbook_u(hessian: np.ndarray[Any, Any], damp: float) -> tuple[np.ndarray[Any, Any], Any]:
    """U = chol(inv(H_damped)).T with dead columns handled, as the reference code does it."""
    h = (hessian.astype(np.float64) + hessian.astype(np.float64).T) / 2
    dead = np.diag(h) == 0
    h[dead, dead] = 1
    h += damp * np.mean(np.diag(h)) * np.eye(h.shape[0])
    return np.linalg.cholesky(np.linalg.inv(h)).T, dead


def reference_sparsegpt(
    weight: np.ndarray[Any, Any],
    hessian: np.ndarray[Any, Any],
    sparsity: float = 0.5,
    nm: tuple[int, int] = (0, 0),
    blocksize: int = 128,
    damp: float = 0.01,
    keep: np.ndarray[Any, Any] | None = None,
) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any], float]:
    """SparseGPT step by step: per block a mask, then for each column the OBS update of all
    columns to its right (no lazy batching). Exact-count selection, ties to the lower index."""
    u, dead = textbook_u(hessian, damp)
    w = weight.astype(np.float64).copy()
    w[:, dead] = 0
    rows, cols = w.shape
    n, m = nm
    allowed = np.ones_like(w, dtype=bool) if keep is None else keep
    diag = np.diag(u)
    mask = np.ones_like(w, dtype=bool)
    loss = 0.0
    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        if m == 0:
            scores = w[:, i1:i2] ** 2 / diag[i1:i2] ** 2
            scores[~allowed[:, i1:i2]] = -np.inf
            forced = int(np.count_nonzero(~allowed[:, i1:i2]))
            k = max(int(scores.size * sparsity), forced)
            order = np.argsort(scores.ravel(), kind="stable")
            block = np.ones(scores.size, dtype=bool)
            block[order[:k]] = False
            mask[:, i1:i2] = block.reshape(scores.shape)
        for j in range(i1, i2):
            if m and (j - i1) % m == 0:
                scores = w[:, j : j + m] ** 2 / diag[j : j + m] ** 2
                scores[~allowed[:, j : j + m]] = -np.inf
                order = np.argsort(scores, axis=1, kind="stable")
                group = np.ones((rows, m), dtype=bool)
                np.put_along_axis(group, order[:, : m - n], False, axis=1)
                mask[:, j : j + m] = group & allowed[:, j : j + m]
            q = np.where(mask[:, j], w[:, j], 0.0)
            err = (w[:, j] - q) / u[j, j]
            loss += float(np.sum(err**2)) / 2
            w[:, j:] -= np.outer(err, u[j, j:])
            w[:, j] = q
    return w, mask, loss


# --- data ------------------------------------------------------------------------------------


def random_hessian(
    rng: np.random.Generator, cols: int, tokens: int | None = None
) -> np.ndarray[Any, Any]:
    x = rng.standard_normal((tokens or 2 * cols + 8, cols)) * rng.uniform(0.5, 2.0, cols)
    return 2 / x.shape[0] * (x.T @ x)


def llm_like_activations(rng: np.random.Generator, tokens: int, cols: int) -> np.ndarray[Any, Any]:
    """Correlated features with uneven channel scales and a few outlier channels."""
    latent = rng.standard_normal((tokens, cols // 4))
    mixing = rng.standard_normal((cols // 4, cols)) / np.sqrt(cols / 4)
    x = latent @ mixing + 0.3 * rng.standard_normal((tokens, cols))
    x *= np.exp(rng.normal(0.0, 0.8, cols))
    outliers = rng.choice(cols, size=max(cols // 64, 2), replace=False)
    x[:, outliers] *= 20.0
    return x


def relative_error(
    weight: np.ndarray[Any, Any], pruned: np.ndarray[Any, Any], x: np.ndarray[Any, Any]
) -> float:
    dense = x @ weight.astype(np.float64).T
    return float(np.linalg.norm(dense - x @ pruned.astype(np.float64).T) / np.linalg.norm(dense))


def assert_weights_close(
    ours: np.ndarray[Any, Any], ref: np.ndarray[Any, Any], rtol: float
) -> None:
    scale = max(float(np.abs(ref).max()), 1e-300)
    np.testing.assert_allclose(ours, ref, rtol=rtol, atol=rtol * scale)


PATTERNS = [
    ("unstructured", 0.5, (0, 0)),
    ("unstructured", 0.3, (0, 0)),
    ("unstructured", 0.9, (0, 0)),
    ("unstructured", 0.0, (0, 0)),
    ("2:4", 0.5, (2, 4)),
    ("1:4", 0.5, (1, 4)),
    ("4:8", 0.5, (4, 8)),
    ("3:3", 0.5, (3, 3)),
]


# --- U by the reversal trick ------------------------------------------------------------------


@pytest.mark.parametrize("cols", [1, 2, 7, 65, 127, 128, 129, 300, 600, 1100])
def test_reversal_factor_equals_textbook_route(cols: int) -> None:
    rng = np.random.default_rng(cols)
    h = random_hessian(rng, cols)
    expected, _ = textbook_u(h, 0.01)
    factor = sparsegpt_factor(h, damp=0.01, precision="float64")
    assert factor.u.dtype == np.float64
    assert factor.damp_used == 0.01
    assert not factor.dead.any()
    assert np.array_equal(np.tril(factor.u, -1), np.zeros_like(factor.u))
    assert_weights_close(factor.u, expected, 1e-10)
    single = sparsegpt_factor(h.astype(np.float32), damp=0.01)
    assert single.u.dtype == np.float32
    assert_weights_close(single.u, expected, 2e-4)


@pytest.mark.parametrize(("precision", "tolerance"), [("float64", 1e-10), ("float32", 2e-4)])
def test_factor_reads_the_symmetric_part(precision: str, tolerance: float) -> None:
    rng = np.random.default_rng(1)
    h = random_hessian(rng, 40)
    skewed = h + 1e-7 * np.abs(h).max() * rng.standard_normal(h.shape)
    expected, _ = textbook_u((skewed + skewed.T) / 2, 0.01)
    factor = sparsegpt_factor(skewed.astype(precision), precision=precision)
    assert_weights_close(factor.u, expected, tolerance)


@pytest.mark.parametrize("precision", ["float32", "float64"])
@pytest.mark.parametrize("where", [(30, 5), (39, 0), (17, 16), (21, 20), (8, 7), (39, 38)])
def test_asymmetry_is_found_anywhere(precision: str, where: tuple[int, int]) -> None:
    # Squares below the diagonal, on it and at the edges are formed by different code.
    h = random_hessian(np.random.default_rng(2), 40).astype(precision)
    skewed = h.copy()
    skewed[where] += 1e-3 * np.abs(h).max()
    with pytest.raises(ValueError, match="hessian: not symmetric"):
        sparsegpt_factor(skewed, precision=precision)
    with pytest.raises(ValueError, match="hessian: not symmetric"):
        sparsegpt_factor(skewed.T.copy(), precision=precision)


# --- the solver against the reference ---------------------------------------------------------


SHAPES = [(16, 64, 16), (9, 120, 32), (1, 24, 8), (5, 30, 7), (3, 33, 128)]
CASES = [
    (*pattern, *shape)
    for pattern in PATTERNS
    for shape in SHAPES
    if pattern[2][1] == 0 or (shape[1] % pattern[2][1] == 0 and shape[2] % pattern[2][1] == 0)
]


@pytest.mark.parametrize(("pattern", "sparsity", "nm", "rows", "cols", "blocksize"), CASES)
def test_float64_matches_reference(
    pattern: str, sparsity: float, nm: tuple[int, int], rows: int, cols: int, blocksize: int
) -> None:
    rng = np.random.default_rng(rows * cols + blocksize)
    w = rng.standard_normal((rows, cols))
    h = random_hessian(rng, cols)
    ref_w, ref_mask, ref_loss = reference_sparsegpt(w, h, sparsity, nm, blocksize)
    res = sparsegpt(w, h, sparsity, pattern, blocksize=blocksize, precision="float64")
    assert res.weight.dtype == np.float64
    assert np.array_equal(res.mask, ref_mask)
    assert_weights_close(res.weight, ref_w, 1e-9)
    assert res.loss == pytest.approx(ref_loss, rel=1e-9, abs=1e-12)
    assert np.all(res.weight[~res.mask] == 0)
    assert res.damp_used == 0.01


@pytest.mark.parametrize(("pattern", "sparsity", "nm"), [PATTERNS[0], PATTERNS[2], PATTERNS[4]])
def test_float32_reconstruction_matches_reference(
    pattern: str, sparsity: float, nm: tuple[int, int]
) -> None:
    rng = np.random.default_rng(5)
    x = llm_like_activations(rng, 1024, 256)
    h = 2 / x.shape[0] * (x.T @ x)
    w = rng.standard_normal((96, 256))
    ref_w, _, _ = reference_sparsegpt(w, h, sparsity, nm, 64)
    res = sparsegpt(w.astype(np.float32), h.astype(np.float32), sparsity, pattern, blocksize=64)
    assert res.weight.dtype == np.float32
    expected = relative_error(w, ref_w, x)
    assert relative_error(w, res.weight, x) == pytest.approx(expected, rel=1e-4)


@settings(max_examples=40, deadline=None)
@given(
    rows=st.integers(1, 12),
    groups=st.integers(1, 12),
    blocks=st.integers(1, 4),
    nm=st.sampled_from([(0, 0), (1, 2), (2, 4), (1, 4), (3, 4), (4, 4)]),
    sparsity=st.sampled_from([0.0, 0.1, 0.5, 0.75, 0.99]),
    seed=st.integers(0, 2**31),
)
def test_property_float64_matches_reference(
    rows: int, groups: int, blocks: int, nm: tuple[int, int], sparsity: float, seed: int
) -> None:
    m = nm[1] or 3
    cols, blocksize = groups * m, blocks * m
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((rows, cols))
    h = random_hessian(rng, cols)
    pattern = f"{nm[0]}:{nm[1]}" if nm[1] else "unstructured"
    ref_w, ref_mask, ref_loss = reference_sparsegpt(w, h, sparsity, nm, blocksize)
    res = sparsegpt(w, h, sparsity, pattern, blocksize=blocksize, precision="float64")
    assert np.array_equal(res.mask, ref_mask)
    assert_weights_close(res.weight, ref_w, 1e-9)
    assert res.loss == pytest.approx(ref_loss, rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("pattern", ["unstructured", "2:4", "4:8"])
@pytest.mark.parametrize("blocksize", [64, 128])
def test_many_row_tiles_and_superblocks_match_reference(pattern: str, blocksize: int) -> None:
    # 300 rows: row tiles of 128 with a partial last one; 600 columns: superblocks of 256 with a
    # partial last one, whose tiles are loaded, pruned and stored in one pass for N:M.
    rng = np.random.default_rng(31)
    w = rng.standard_normal((300, 600))
    h = random_hessian(rng, 600)
    nm = (0, 0) if pattern == "unstructured" else (int(pattern[0]), int(pattern[2]))
    ref_w, ref_mask, ref_loss = reference_sparsegpt(w, h, 0.5, nm, blocksize)
    res = sparsegpt(w, h, 0.5, pattern, blocksize=blocksize, precision="float64")
    assert np.array_equal(res.mask, ref_mask)
    assert_weights_close(res.weight, ref_w, 1e-9)
    assert res.loss == pytest.approx(ref_loss, rel=1e-9)


def test_ties_go_to_the_lower_index() -> None:
    """Constant weights and an identity Hessian: every saliency equal, so the first k go."""
    w = np.ones((4, 8))
    res = sparsegpt(w, np.eye(8), 0.5, blocksize=8, precision="float64")
    expected = np.ones((4, 8), dtype=bool)
    expected[:2] = False
    assert np.array_equal(res.mask, expected)
    nm = sparsegpt(w, np.eye(8), pattern="2:4", blocksize=8, precision="float64")
    assert np.array_equal(nm.mask, np.tile([False, False, True, True], (4, 2)))


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("sparsity", [0.3, 0.5, 0.8])
def test_many_ties_across_row_tiles_and_threads(threads: int, sparsity: float) -> None:
    """Small integer weights and a diagonal Hessian (no updates between columns): thousands of
    exactly equal saliencies per block, spread over several row tiles, split at the budget."""
    rng = np.random.default_rng(11)
    w = rng.integers(-2, 3, size=(300, 192)).astype(np.float64)
    h = np.diag(np.repeat([1.0, 4.0], 96))
    ref_w, ref_mask, _ = reference_sparsegpt(w, h, sparsity, (0, 0), 64)
    previous = fastprune.get_num_threads()
    fastprune.set_num_threads(threads)
    try:
        res = sparsegpt(w, h, sparsity, blocksize=64, precision="float64")
    finally:
        fastprune.set_num_threads(previous)
    assert np.array_equal(res.mask, ref_mask)
    assert_weights_close(res.weight, ref_w, 1e-12)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("sampled", [1e-3, 1e3])
def test_selection_is_exact_when_its_sample_misleads(threads: int, sampled: float) -> None:
    """The unstructured selection brackets each block's threshold with a fixed sample of the
    scores (in column j of a block, rows r with (r + 37 j) % step == 0, step = rows · cols //
    8192). Give every sampled weight one extreme value and the bracket misses the threshold, below
    it (tiny samples) or above it (huge ones); the mask must still be the exact one."""
    rows, cols = 512, 64
    step = rows * cols // 8192
    rng = np.random.default_rng(5)
    w = rng.uniform(0.5, 2.0, (rows, 2 * cols)) * rng.choice([-1.0, 1.0], (rows, 2 * cols))
    r = np.arange(rows)
    for j in range(2 * cols):
        w[(r + 37 * (j % cols)) % step == 0, j] = sampled
    h = np.eye(2 * cols)
    ref_w, ref_mask, _ = reference_sparsegpt(w, h, 0.5, (0, 0), cols)
    previous = fastprune.get_num_threads()
    fastprune.set_num_threads(threads)
    try:
        res = sparsegpt(w, h, 0.5, blocksize=cols, precision="float64")
    finally:
        fastprune.set_num_threads(previous)
    assert np.array_equal(res.mask, ref_mask)
    assert_weights_close(res.weight, ref_w, 1e-12)


def large_block_weights(kind: str, rng: np.random.Generator, shape: tuple[int, int]) -> Any:
    if kind == "normal":
        return rng.standard_normal(shape)
    if kind == "ties":  # a few distinct magnitudes: tens of thousands of equal scores each
        return rng.integers(-3, 4, size=shape).astype(np.float64)
    # magnitudes over 48 decades (squares that underflow in float32 among them), zeros, and
    # float32 subnormals
    w = 10.0 ** rng.uniform(-30, 18, shape) * rng.choice([-1.0, 1.0], shape)
    w[rng.random(shape) < 0.05] = 0.0
    w[rng.random(shape) < 0.05] = 1e-42
    return w


@pytest.mark.parametrize("precision", ["float32", "float64"])
@pytest.mark.parametrize("kind", ["normal", "ties", "extremes"])
@pytest.mark.parametrize("sparsity", [0.5, 0.9])
def test_large_block_selection_is_exact(precision: str, kind: str, sparsity: float) -> None:
    """Blocks of 2304 x 128 scores, so that the keys gathered around the threshold are many and
    the selection among them runs its histogram passes. A diagonal Hessian leaves the weights
    unchanged between columns, so each block's mask is the exact smallest-k of its scores
    w² / U_jj², computed here in the solve's own precision, ties to the lower row-major index."""
    dtype = np.float32 if precision == "float32" else np.float64
    rows, cols = 2304, 256
    rng = np.random.default_rng(23)
    w = large_block_weights(kind, rng, (rows, cols)).astype(dtype)
    h = np.diag(rng.uniform(0.5, 2.0, cols))
    factor = sparsegpt_factor(h, precision=precision)
    res = sparsegpt(w, factor, sparsity, blocksize=128, precision=precision)
    diag = np.diagonal(factor.u)
    expected = np.ones((rows, cols), dtype=bool)
    for i1 in (0, 128):
        d2 = diag[i1 : i1 + 128] * diag[i1 : i1 + 128]
        scores = w[:, i1 : i1 + 128] * w[:, i1 : i1 + 128] / d2
        assert scores.dtype == dtype
        pruned = np.argsort(scores.ravel(), kind="stable")[: int(scores.size * sparsity)]
        block = np.ones(scores.size, dtype=bool)
        block[pruned] = False
        expected[:, i1 : i1 + 128] = block.reshape(rows, 128)
    assert np.array_equal(res.mask, expected)
    assert np.array_equal(res.weight, np.where(expected, w, 0))


def test_exact_count_per_block() -> None:
    rng = np.random.default_rng(3)
    w = rng.standard_normal((7, 50))
    res = sparsegpt(w, random_hessian(rng, 50), 0.37, blocksize=16)
    for i1 in range(0, 50, 16):
        block = res.mask[:, i1 : i1 + 16]
        assert np.count_nonzero(~block) == int(block.size * 0.37)


def test_one_by_one_and_identity_patterns() -> None:
    res = sparsegpt(np.array([[3.0]]), np.array([[2.0]]), 0.5)
    assert res.weight.tolist() == [[3.0]]
    assert res.mask.tolist() == [[True]]
    rng = np.random.default_rng(4)
    w = rng.standard_normal((5, 12)).astype(np.float32)
    dense = sparsegpt(w, random_hessian(rng, 12), pattern="4:4", blocksize=4)
    assert np.array_equal(dense.weight, w)
    assert dense.mask.all()
    assert dense.loss == 0.0


# --- dead columns and damping ----------------------------------------------------------------


def test_dead_columns() -> None:
    rng = np.random.default_rng(6)
    x = rng.standard_normal((200, 30))
    dead = [0, 7, 29]
    x[:, dead] = 0
    h = 2 / 200 * (x.T @ x)
    w = rng.standard_normal((10, 30))
    factor = sparsegpt_factor(h, precision="float64")
    assert np.flatnonzero(factor.dead).tolist() == dead
    ref_w, ref_mask, _ = reference_sparsegpt(w, h, 0.5, (0, 0), 16)
    res = sparsegpt(w, h, 0.5, blocksize=16, precision="float64")
    assert np.all(res.weight[:, dead] == 0)
    assert np.array_equal(res.mask, ref_mask)
    assert_weights_close(res.weight, ref_w, 1e-9)


def test_all_dead_hessian_is_refused() -> None:
    # Every column dead would zero every weight while the mask kept half and the loss said 0:
    # a silent wrong answer. No input reached the layer, so there is nothing to solve.
    w = np.arange(12, dtype=np.float64).reshape(3, 4) + 1
    with pytest.raises(ValueError, match=r"hessian: .*all zero"):
        sparsegpt(w, np.zeros((4, 4)), 0.5, blocksize=4)
    # a float64 Hessian that underflows to zero in the float32 solve says so
    with pytest.raises(ValueError, match=r"hessian: .*underflows to 0 in float32"):
        sparsegpt(w, 1e-46 * np.eye(4), 0.5, blocksize=4)
    with pytest.raises(ValueError, match=r"hessian: .*all zero"):
        sparsegpt_factor(np.zeros((4, 4)))
    # in float64 the same Hessian is fine
    res = sparsegpt(w, 1e-46 * np.eye(4), 0.5, blocksize=4, precision="float64")
    assert np.count_nonzero(res.weight) == 6


@pytest.mark.parametrize("pattern", ["unstructured", "2:4"])
@pytest.mark.parametrize("sparsity", [0.0, 0.1, 0.5])
def test_dead_columns_agree_in_weight_mask_and_sparsity(pattern: str, sparsity: float) -> None:
    # Dead columns outnumbering the budget: their weights are 0, so the mask marks them pruned
    # and the sparsity counts them, whichever route and precision.
    rng = np.random.default_rng(61)
    x = rng.standard_normal((100, 16))
    x[:, 3:9] = 0
    h = 2 / 100 * (x.T @ x)
    w = rng.standard_normal((8, 16))
    for precision in ("float32", "float64"):
        for source in (h, sparsegpt_factor(h, precision=precision)):
            res = sparsegpt(w, source, sparsity, pattern, blocksize=8, precision=precision)
            assert np.array_equal(res.mask, res.weight != 0)
            assert not res.mask[:, 3:9].any()
            assert res.sparsity == pytest.approx(float(np.mean(res.weight == 0)))


def test_damping_escalates_until_the_factorisation_succeeds() -> None:
    # Indefinite with a positive diagonal: eigenvalues 3.5 and -1.5 per block, mean diagonal 1,
    # so the relative damping must exceed 1.5: 0.01 -> 0.1 -> 1 -> 10.
    h = np.kron(np.eye(3), np.array([[1.0, 2.5], [2.5, 1.0]]))
    factor = sparsegpt_factor(h, damp=0.01, precision="float64")
    assert factor.damp_used == pytest.approx(10.0)
    w = np.random.default_rng(7).standard_normal((4, 6))
    res = sparsegpt(w, h, 0.5, blocksize=4, precision="float64")
    assert res.damp_used == pytest.approx(10.0)
    ref_w, ref_mask, _ = reference_sparsegpt(w, h, 0.5, (0, 0), 4, damp=res.damp_used)
    assert np.array_equal(res.mask, ref_mask)
    assert_weights_close(res.weight, ref_w, 1e-9)


def test_zero_damping_escalates_from_a_small_value() -> None:
    h = np.array([[1.0, 1.0], [1.0, 1.0]])  # singular: exactly one zero pivot
    factor = sparsegpt_factor(h, damp=0.0, precision="float64")
    assert factor.damp_used == pytest.approx(1e-6)


def test_no_damping_rescues_a_negative_diagonal() -> None:
    h = -np.eye(5)
    with pytest.raises(ValueError, match="hessian: not positive definite even with damping"):
        sparsegpt(np.ones((2, 5)), h)
    with pytest.raises(ValueError, match="hessian: not positive definite"):
        sparsegpt_factor(h)


# --- arguments, dtypes, inputs ---------------------------------------------------------------


BAD_ARGUMENTS = [
    ({"calibration_or_hessian": np.ones((6, 5))}, ValueError, "hessian: expected a square"),
    ({"calibration_or_hessian": np.eye(7)}, ValueError, "hessian: shape"),
    ({"calibration_or_hessian": np.ones(6)}, ValueError, "hessian: expected a square"),
    ({"calibration_or_hessian": np.triu(np.ones((6, 6)))}, ValueError, "hessian: not symmetric"),
    ({"calibration_or_hessian": np.full((6, 6), np.nan)}, ValueError, "hessian: contains"),
    (
        {"calibration_or_hessian": np.where(np.eye(6) > 0, np.inf, 0.0)},
        ValueError,
        "hessian: contains",
    ),
    ({"calibration_or_hessian": "eye"}, TypeError, "hessian"),
    ({"weight": np.full((4, 6), np.nan)}, ValueError, "weight: contains"),
    ({"weight": np.ones(6)}, ValueError, "weight: expected a 2-D"),
    ({"weight": np.ones((4, 6), dtype=np.int32)}, TypeError, "weight: expected dtype"),
    ({"sparsity": 1.0}, ValueError, "sparsity"),
    ({"sparsity": -0.1}, ValueError, "sparsity"),
    ({"sparsity": float("nan")}, ValueError, "sparsity"),
    ({"blocksize": 0}, ValueError, "blocksize"),
    ({"blocksize": 2.5}, ValueError, "blocksize"),
    ({"pattern": "2:4", "blocksize": 6}, ValueError, "blocksize: must be a multiple"),
    ({"pattern": "2:4"}, ValueError, "pattern: in_features"),
    ({"pattern": "5:4"}, ValueError, "pattern: '5:4' is N:M"),
    ({"pattern": "0:4"}, ValueError, "pattern: '0:4' is N:M"),
    ({"pattern": "dense"}, ValueError, "pattern: unknown"),
    ({"pattern": "block:2x2"}, ValueError, "pattern: SparseGPT prunes"),
    ({"pattern": 4}, TypeError, "pattern: expected a str"),
    ({"damp": -0.01}, ValueError, "damp"),
    ({"damp": float("inf")}, ValueError, "damp"),
    ({"precision": "float16"}, ValueError, "precision"),
    ({"inplace": 1}, ValueError, "inplace"),
    ({"keep_mask": np.ones((4, 6))}, TypeError, "keep_mask: expected a bool"),
    ({"keep_mask": np.ones((6, 4), dtype=bool)}, ValueError, "keep_mask: shape"),
]


@pytest.mark.parametrize(("change", "error", "message"), BAD_ARGUMENTS)
def test_bad_arguments(change: dict[str, Any], error: type[Exception], message: str) -> None:
    rng = np.random.default_rng(8)
    args: dict[str, Any] = {
        "weight": rng.standard_normal((4, 6)),
        "calibration_or_hessian": random_hessian(rng, 6),
    }
    args.update(change)
    with pytest.raises(error, match=message):
        sparsegpt(**args)


def test_factor_arguments() -> None:
    h = random_hessian(np.random.default_rng(9), 8)
    factor = sparsegpt_factor(h)
    with pytest.raises(ValueError, match="calibration_or_hessian: factor is for 8"):
        sparsegpt(np.ones((2, 6)), factor)
    with pytest.raises(ValueError, match="precision: 'float64' does not match"):
        sparsegpt(np.ones((2, 8)), factor, precision="float64")
    with pytest.raises(ValueError, match="precision"):
        sparsegpt_factor(h, precision="half")
    with pytest.raises(ValueError, match="damp"):
        sparsegpt_factor(h, damp=-1)


@pytest.mark.parametrize("dtype", [np.float16, "bfloat16", np.float32, np.float64])
def test_dtypes_and_inputs_unchanged(dtype: Any) -> None:
    dt = np.dtype(getattr(ml_dtypes, dtype) if isinstance(dtype, str) else dtype)
    rng = np.random.default_rng(10)
    w = rng.standard_normal((8, 32)).astype(dt)
    h = random_hessian(rng, 32).astype(np.float32)
    w_before, h_before = w.copy(), h.copy()
    res = sparsegpt(w, h, 0.5, blocksize=16)
    assert res.weight.dtype == dt
    assert res.mask.dtype == np.bool_
    assert np.array_equal(w.view(np.uint8), w_before.view(np.uint8))
    assert np.array_equal(h, h_before)
    expected = sparsegpt(w.astype(np.float32), h, 0.5, blocksize=16)
    np.testing.assert_array_equal(res.weight, expected.weight.astype(dt))
    assert np.all(res.weight[~res.mask].astype(np.float32) == 0)


def test_strided_and_fortran_inputs() -> None:
    rng = np.random.default_rng(11)
    w = rng.standard_normal((10, 40))
    h = random_hessian(rng, 20)
    expected = sparsegpt(np.ascontiguousarray(w[:, ::2]), h, 0.5, blocksize=8)
    strided = sparsegpt(w[:, ::2], np.asfortranarray(h), 0.5, blocksize=8)
    np.testing.assert_array_equal(strided.weight, expected.weight)
    np.testing.assert_array_equal(strided.mask, expected.mask)


def test_inplace() -> None:
    rng = np.random.default_rng(12)
    w = rng.standard_normal((6, 16)).astype(np.float32)
    h = random_hessian(rng, 16)
    expected = sparsegpt(w, h, 0.5, blocksize=8)
    res = sparsegpt(w, h, 0.5, blocksize=8, inplace=True)
    assert res.weight is w
    np.testing.assert_array_equal(w, expected.weight)
    w64 = rng.standard_normal((6, 16))
    res64 = sparsegpt(w64, h, 0.5, inplace=True, precision="float64")
    assert res64.weight is w64
    readonly = np.ones((6, 16), dtype=np.float32)
    readonly.flags.writeable = False
    for bad in (w64, w.astype(np.float16), readonly, w.tolist(), np.asfortranarray(w)[:, ::2]):
        with pytest.raises(ValueError, match="weight: inplace=True needs"):
            sparsegpt(bad, h if np.shape(bad)[-1] == 16 else h[:8, :8], 0.5, inplace=True)


def test_keep_mask_keeps_pruned_weights_pruned() -> None:
    rng = np.random.default_rng(13)
    w = rng.standard_normal((12, 48))
    h = random_hessian(rng, 48)
    earlier = sparsegpt(w, h, 0.3, blocksize=16, precision="float64")
    keep = earlier.mask
    for pattern, nm in (("unstructured", (0, 0)), ("2:4", (2, 4))):
        res = sparsegpt(
            earlier.weight, h, 0.6, pattern, blocksize=16, precision="float64", keep_mask=keep
        )
        assert not res.mask[~keep].any()
        assert np.all(res.weight[~keep] == 0)
        ref_w, ref_mask, _ = reference_sparsegpt(earlier.weight, h, 0.6, nm, 16, keep=keep)
        assert np.array_equal(res.mask, ref_mask)
        assert_weights_close(res.weight, ref_w, 1e-9)
    # More forced than the budget: all forced go, nothing else.
    few = sparsegpt(w, h, 0.1, blocksize=16, keep_mask=keep)
    assert np.array_equal(few.mask, keep)


def test_pattern_objects_and_calibration() -> None:
    rng = np.random.default_rng(19)
    x = llm_like_activations(rng, 300, 32)
    cal = fastprune.Calibration(32, dtype=np.float64)
    cal.update(x[:100])
    cal.update(x[100:])
    w = rng.standard_normal((6, 32))
    expected = sparsegpt(w, 2 / 300 * (x.T @ x), pattern="2:4", precision="float64")
    res = sparsegpt(w, cal, pattern=fastprune.masks.NM(2, 4), precision="float64")
    assert np.array_equal(res.mask, expected.mask)
    assert_weights_close(res.weight, expected.weight, 1e-9)
    unstructured = sparsegpt(w, cal, 0.5, fastprune.masks.Unstructured(), precision="float64")
    assert np.array_equal(unstructured.mask, sparsegpt(w, cal, 0.5, precision="float64").mask)


def test_factor_and_calibration_objects_give_the_same_result() -> None:
    rng = np.random.default_rng(14)
    w = rng.standard_normal((8, 24)).astype(np.float32)
    h = random_hessian(rng, 24)

    class Calibration:
        hessian = h

    direct = sparsegpt(w, h, 0.5, blocksize=8)
    factor = sparsegpt_factor(Calibration(), damp=0.01)
    assert isinstance(factor, HessianFactor)
    for source in (Calibration(), factor):
        res = sparsegpt(w, source, 0.5, blocksize=8)
        np.testing.assert_array_equal(res.weight, direct.weight)
        np.testing.assert_array_equal(res.mask, direct.mask)
        assert res.loss == direct.loss
        assert res.damp_used == direct.damp_used == factor.damp_used


def _cached_size(nbytes: int) -> int:
    """What the memory cache holds of a freed block: blocks of 2 MB and more, in whole 2 MB
    pages; smaller ones are not kept."""
    page = 2 << 20
    return 0 if nbytes < page else -(-nbytes // page) * page


@pytest.mark.parametrize("pattern", ["unstructured", "2:4"])
def test_working_memory_is_the_factor_and_a_few_column_blocks(
    pattern: str, solver_route: str
) -> None:
    """What a one-off solve allocates for itself, as the memory cache sees it when freed: the
    factor (c x c) and the column blocks of one superblock (weights, errors, mask; rows x 256
    each, rows padded to an odd number of cache lines); from T also the superblock's update from
    the columns before it (rows x 256) and T's strip above the superblock ((c - 256) x 256, too
    small to be kept here). Never a copy of the whole weight (here 1.5 factors)."""
    rng = np.random.default_rng(32)
    rows, cols = 2304, 1536
    w = rng.standard_normal((rows, cols)).astype(np.float32)
    h = random_hessian(rng, cols)
    limit = fastprune.info()["memory_cache_limit"]
    assert isinstance(limit, int)
    try:
        fastprune.release_memory()
        fastprune.set_memory_cache_limit(1 << 30)
        result = sparsegpt(w, h, 0.5, pattern)  # alive: its arrays are not the solver's
        held = fastprune.info()["memory_cache_bytes"]
        del result
    finally:
        fastprune.set_memory_cache_limit(limit)
    padded_rows = 2320  # 2304 rows: 144 lines of 16 floats, even, so 145 lines
    expected = _cached_size(cols * cols * 4) + 3 * _cached_size(padded_rows * 256 * 4)
    if solver_route == "from T":
        expected += _cached_size(rows * 256 * 4) + _cached_size((cols - 256) * 256 * 4)
    assert held == expected


def test_a_freed_result_is_reused_by_the_next_solve() -> None:
    """The pruned weights come back in scratch memory: freed, they return to the memory cache,
    and the next solve of the same shape writes its result there rather than into memory fresh
    from the system."""
    rng = np.random.default_rng(34)
    w = rng.standard_normal((1024, 1024)).astype(np.float32)  # 4 MB; the mask, 1 MB, is not kept
    h = random_hessian(rng, 1024)
    limit = fastprune.info()["memory_cache_limit"]
    try:
        fastprune.release_memory()
        fastprune.set_memory_cache_limit(1 << 30)
        sparsegpt(w, h, 0.5)  # its result is freed at once
        held_after_first = fastprune.info()["memory_cache_bytes"]
        result = sparsegpt(w, h, 0.5)
        held_while_kept = fastprune.info()["memory_cache_bytes"]
        del result
        held_after_second = fastprune.info()["memory_cache_bytes"]
    finally:
        fastprune.set_memory_cache_limit(limit)
    assert isinstance(held_after_first, int)
    assert held_while_kept == held_after_first - _cached_size(w.nbytes)
    assert held_after_second == held_after_first


def test_a_reused_block_is_counted_at_its_full_size() -> None:
    """A narrower solve gets the wider one's factor block back (an 8 MB block for a 6 MB factor):
    what the cache holds afterwards, and counts against its limit, is the whole block again."""
    rng = np.random.default_rng(33)
    rows = 64
    problems = [
        (rng.standard_normal((rows, cols)).astype(np.float32), random_hessian(rng, cols))
        for cols in (1400, 1100)  # factors of 7.8 MB and 4.8 MB: blocks of 8 MB and 6 MB
    ]
    limit = fastprune.info()["memory_cache_limit"]
    assert isinstance(limit, int)
    try:
        fastprune.release_memory()
        fastprune.set_memory_cache_limit(1 << 30)
        sparsegpt(*problems[0], 0.5)
        held_after_wide = fastprune.info()["memory_cache_bytes"]
        sparsegpt(*problems[1], 0.5)
        held_after_narrow = fastprune.info()["memory_cache_bytes"]
    finally:
        fastprune.set_memory_cache_limit(limit)
    assert held_after_wide == 8 << 20  # the column blocks of 64 rows are below 2 MB
    assert held_after_narrow == held_after_wide


@pytest.mark.parametrize("pattern", ["unstructured", "2:4"])
def test_reused_working_memory_does_not_change_results(pattern: str) -> None:
    """The solver's buffers (the factor of a one-off solve, the column blocks) come back from the
    memory cache holding an earlier solve's numbers: every element must be written before it is
    read, so the result equals that of a solve whose buffers were fresh."""
    rng = np.random.default_rng(31)
    rows, cols = 2304, 768  # every buffer above the 2 MB that the cache keeps
    first = (rng.standard_normal((rows, cols)), random_hessian(rng, cols))
    w = rng.standard_normal((rows, cols)).astype(np.float32)
    h = random_hessian(rng, cols)
    h[:, 5] = h[5, :] = 0  # a dead column
    limit = fastprune.info()["memory_cache_limit"]
    assert isinstance(limit, int)
    try:
        fastprune.set_memory_cache_limit(0)
        fresh = sparsegpt(w, h, 0.5, pattern)
        assert fastprune.info()["memory_cache_bytes"] == 0
        fastprune.set_memory_cache_limit(1 << 30)
        sparsegpt(first[0].astype(np.float32), first[1], 0.5, pattern)
        assert fastprune.info()["memory_cache_bytes"] >= cols * cols * 4
        reused = sparsegpt(w, h, 0.5, pattern)
    finally:
        fastprune.set_memory_cache_limit(limit)
    np.testing.assert_array_equal(reused.weight, fresh.weight)
    np.testing.assert_array_equal(reused.mask, fresh.mask)
    assert reused.loss == fresh.loss


def test_saliency() -> None:
    rng = np.random.default_rng(15)
    w = rng.standard_normal((6, 20))
    h = random_hessian(rng, 20)
    h[3, :] = h[:, 3] = 0
    u, dead = textbook_u(h, 0.01)
    expected = w**2 / np.diag(u) ** 2
    expected[:, dead] = 0
    scores = saliency(w, h)
    assert scores.dtype == np.float64
    np.testing.assert_allclose(scores, expected, rtol=1e-10)
    single = saliency(w.astype(np.float32), sparsegpt_factor(h))
    assert single.dtype == np.float32
    np.testing.assert_allclose(single, expected, rtol=1e-4)


# --- instruction sets and threads ------------------------------------------------------------


OPENBLAS = fastprune.info()["blas"] != "eigen"


@pytest.mark.parametrize("level", _core.supported_levels())
@pytest.mark.parametrize("backend", ["openblas", "eigen"])
def test_every_instruction_set_gives_the_same_result(level: str, backend: str) -> None:
    """Against the baseline level, on a layer of several row tiles and superblocks (some
    columns dead, some weights forced out): masks in float64 exactly, weights to rounding."""
    if backend == "openblas" and not OPENBLAS:
        pytest.skip("OpenBLAS is not loaded")
    rng = np.random.default_rng(16)
    w = rng.standard_normal((300, 640))
    h = random_hessian(rng, 640)
    h[:, [5, 300]] = 0
    h[[5, 300], :] = 0
    allowed = rng.random(w.shape) > 0.1
    cases = [(p, keep) for p in ("unstructured", "2:4", "4:8") for keep in (None, allowed)]

    backend_setup = _core.eigen_only if backend == "eigen" else contextlib.nullcontext

    def solve_all(on: str) -> list[tuple[Any, Any]]:
        with _core.use(on), backend_setup():
            return [
                (
                    sparsegpt(w, h, 0.5, p, blocksize=64, precision="float64", keep_mask=keep),
                    sparsegpt(w.astype(np.float32), h, 0.5, p, blocksize=64, keep_mask=keep),
                )
                for p, keep in cases
            ]

    expected, results = solve_all("baseline"), solve_all(level)
    for (exp64, exp32), (res64, res32) in zip(expected, results, strict=True):
        assert np.array_equal(res64.mask, exp64.mask)
        assert_weights_close(res64.weight, exp64.weight, 1e-10)
        assert res64.loss == pytest.approx(exp64.loss, rel=1e-10)
        assert_weights_close(res32.weight, exp32.weight, 1e-3)


# (route, rows, cols, blocksize): shapes that span several tiles of every dense routine.
THREAD_CASES = [
    ("eigen", 600, 384, 128),
    ("eigen", 256, 1100, 100),
    pytest.param(
        "openblas", 600, 384, 128, marks=pytest.mark.skipif(not OPENBLAS, reason="no OpenBLAS")
    ),
    pytest.param(
        "openblas", 64, 1100, 100, marks=pytest.mark.skipif(not OPENBLAS, reason="no OpenBLAS")
    ),
]


@pytest.mark.parametrize(("route", "rows", "cols", "blocksize"), THREAD_CASES)
def test_results_do_not_depend_on_the_thread_count(
    route: str, rows: int, cols: int, blocksize: int
) -> None:
    rng = np.random.default_rng(17)
    w = rng.standard_normal((rows, cols)).astype(np.float32)
    h = random_hessian(rng, cols).astype(np.float32)
    previous = fastprune.get_num_threads()
    results = []
    try:
        with _core.eigen_only() if route == "eigen" else contextlib.nullcontext():
            for threads in (1, 2, 3):
                fastprune.set_num_threads(threads)
                results.append(
                    [sparsegpt(w, h, 0.5, p, blocksize=blocksize) for p in ("unstructured", "2:4")]
                    + [sparsegpt_factor(h)]
                )
    finally:
        fastprune.set_num_threads(previous)
    for other in results[1:]:
        for one, two in zip(results[0][:2], other[:2], strict=True):
            assert isinstance(one, fastprune.result.PruneResult)
            assert isinstance(two, fastprune.result.PruneResult)
            assert np.array_equal(one.weight, two.weight)
            assert np.array_equal(one.mask, two.mask)
            assert one.loss == two.loss
        assert isinstance(results[0][2], HessianFactor)
        assert isinstance(other[2], HessianFactor)
        assert np.array_equal(results[0][2].t, other[2].t)
        assert np.array_equal(results[0][2].u, other[2].u)


def run_both_ways(
    first: contextlib.AbstractContextManager[Any],
    second: contextlib.AbstractContextManager[Any],
) -> list[list[Any]]:
    """The factor (float32 and float64) and float64 results for two set-ups of the backend."""
    rng = np.random.default_rng(23)
    w = rng.standard_normal((300, 1100))
    h = random_hessian(rng, 1100)
    results = []
    for setup in (first, second):
        with setup:
            results.append(
                [sparsegpt_factor(h), sparsegpt_factor(h, precision="float64")]
                + [
                    sparsegpt(w, h, 0.5, p, blocksize=100, precision="float64")
                    for p in ("unstructured", "2:4")
                ]
            )
    return results


def assert_same_up_to_rounding(results: list[list[Any]]) -> None:
    (u32, u64, *pruned), (v32, v64, *other) = results
    assert_weights_close(u32.u, v32.u, 1e-4)
    assert_weights_close(u64.u, v64.u, 1e-12)
    for ours, theirs in zip(pruned, other, strict=True):
        assert np.array_equal(ours.mask, theirs.mask)
        assert_weights_close(ours.weight, theirs.weight, 1e-9)
        assert ours.loss == pytest.approx(theirs.loss, rel=1e-9)


@pytest.mark.skipif(not OPENBLAS, reason="OpenBLAS is not loaded")
def test_openblas_and_eigen_routes_agree() -> None:
    results = run_both_ways(contextlib.nullcontext(), _core.eigen_only())
    assert_same_up_to_rounding(results)


def wanda_or_magnitude(
    weight: np.ndarray[Any, Any], act_norm: np.ndarray[Any, Any], nm: tuple[int, int]
) -> np.ndarray[Any, Any]:
    scores = np.abs(weight) * act_norm
    rows, cols = weight.shape
    n, m = nm
    if m:
        grouped = scores.reshape(rows, cols // m, m)
        order = np.argsort(grouped, axis=2, kind="stable")
        keep = np.ones_like(grouped, dtype=bool)
        np.put_along_axis(keep, order[:, :, : m - n], False, axis=2)
        return weight * keep.reshape(rows, cols)
    order = np.argsort(scores, axis=1, kind="stable")
    keep = np.ones_like(scores, dtype=bool)
    np.put_along_axis(keep, order[:, : cols // 2], False, axis=1)
    return weight * keep


@pytest.mark.parametrize(("pattern", "nm"), [("unstructured", (0, 0)), ("2:4", (2, 4))])
def test_sparsegpt_beats_wanda_beats_magnitude_on_llm_like_data(
    pattern: str, nm: tuple[int, int]
) -> None:
    rng = np.random.default_rng(18)
    x = llm_like_activations(rng, 2048, 256)
    w = rng.standard_normal((128, 256)).astype(np.float32)
    h = (2 / x.shape[0] * (x.T @ x)).astype(np.float32)
    ours = relative_error(w, sparsegpt(w, h, 0.5, pattern).weight, x)
    wanda = relative_error(w, wanda_or_magnitude(w, np.linalg.norm(x, axis=0), nm), x)
    magnitude = relative_error(w, wanda_or_magnitude(w, np.ones(256), nm), x)
    assert ours < wanda < magnitude
