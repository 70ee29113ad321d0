"""fastprune.wanda and fastprune.magnitude_prune against float64 NumPy references written here."""

from __future__ import annotations

from typing import Any

import ml_dtypes
import numpy as np
import pytest

import fastprune
from fastprune.result import PruneResult

DTYPES = [np.float16, ml_dtypes.bfloat16, np.float32, np.float64]


# --- references ----------------------------------------------------------------------------------


def ref_wanda_scores(w: np.ndarray, act_sq: np.ndarray) -> np.ndarray:
    return np.abs(w.astype(np.float64)) * np.sqrt(act_sq.astype(np.float64))[None, :]


def prune_lowest(scores: np.ndarray, k: int) -> np.ndarray:
    """keep-mask of a 1-D vector with its k lowest (score, index) entries pruned."""
    keep = np.ones(scores.shape, bool)
    order = sorted(range(scores.size), key=lambda j: (scores[j], j))
    keep[order[:k]] = False
    return keep


def ref_mask(scores: np.ndarray, sparsity: float, pattern: str, scope: str) -> np.ndarray:
    rows, cols = scores.shape
    if pattern == "unstructured" and scope == "row":
        return np.stack([prune_lowest(r, int(cols * sparsity)) for r in scores])
    if pattern == "unstructured":
        return prune_lowest(scores.ravel(), int(scores.size * sparsity)).reshape(rows, cols)
    n, m = map(int, pattern.split(":"))
    keep = np.ones((rows, cols), bool)
    for i in range(rows):
        for g in range(0, cols, m):
            keep[i, g : g + m] = prune_lowest(scores[i, g : g + m], m - n)
    return keep


def ref_variant_mask(scores: np.ndarray, target: float) -> np.ndarray:
    """The Wanda reference's use_variant, one row at a time (exact counts, ties by index)."""
    s = scores.astype(np.float64)
    rows, cols = s.shape
    orders = [sorted(range(cols), key=lambda j, r=r: (s[r, j], j)) for r in range(rows)]

    def counts_at(alpha: float) -> list[int]:
        counts = []
        for r in range(rows):
            total = s[r].sum()
            running, k = 0.0, 0
            for j in orders[r]:
                running += s[r, j]
                if running <= alpha * total:
                    k += 1
            counts.append(k)
        return counts

    alpha, hist = 0.4, [0.0, 0.8]
    counts = counts_at(alpha)
    current = sum(counts) / s.size
    while abs(current - target) > 0.001 and hist[1] - hist[0] >= 0.001:
        if current > target:
            new = (alpha + hist[0]) / 2.0
            hist[1] = alpha
        else:
            new = (alpha + hist[1]) / 2.0
            hist[0] = alpha
        alpha = new
        counts = counts_at(alpha)
        current = sum(counts) / s.size
    keep = np.ones((rows, cols), bool)
    for r in range(rows):
        keep[r, orders[r][: counts[r]]] = False
    return keep


def check_result(res: PruneResult, w: np.ndarray, keep: np.ndarray, scores: np.ndarray) -> None:
    np.testing.assert_array_equal(res.mask, keep)
    assert res.weight.dtype == w.dtype
    np.testing.assert_array_equal(res.weight, np.where(keep, w, np.zeros((), w.dtype)))
    assert res.damp_used is None
    pruned = scores[~keep]
    np.testing.assert_allclose(res.loss, float(pruned @ pruned), rtol=1e-5)
    assert res.seconds >= 0


def layer_inputs(rng: np.random.Generator, rows: int, cols: int) -> tuple[np.ndarray, np.ndarray]:
    """Weights and calibration tokens with a few outlier input channels."""
    w = rng.standard_normal((rows, cols))
    x = rng.standard_normal((256, cols)) * np.exp(rng.uniform(-1, 1, cols))
    x[:, rng.choice(cols, 2, replace=False)] *= 20
    return w, x


# --- wanda ------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    ("pattern", "scope", "sparsity"),
    [
        ("unstructured", "row", 0.5),
        ("unstructured", "row", 0.0),
        ("unstructured", "row", 0.9),
        ("unstructured", "layer", 0.3),
        ("2:4", "row", 0.5),
        ("1:4", "row", 0.5),  # sparsity is implied by N:M and ignored
        ("3:8", "row", 0.5),
    ],
)
def test_wanda_matches_reference(dtype: Any, pattern: str, scope: str, sparsity: float) -> None:
    rng = np.random.default_rng(0)
    for rows, cols in [(1, 8), (5, 24), (17, 40)]:
        w64, x = layer_inputs(rng, rows, cols)
        w = w64.astype(dtype)
        act_sq = (x * x).sum(axis=0)
        scores = ref_wanda_scores(w, act_sq)
        res = fastprune.wanda(w, act_sq, sparsity, pattern, scope)  # type: ignore[arg-type]
        check_result(res, w, ref_mask(scores, sparsity, pattern, scope), scores)


def test_wanda_takes_a_calibration() -> None:
    rng = np.random.default_rng(1)
    w, x = layer_inputs(rng, 12, 32)
    cal = fastprune.Calibration(32, np.float64)
    cal.update(x)
    from_cal = fastprune.wanda(w, cal)
    from_vector = fastprune.wanda(w, (x * x).sum(axis=0))
    np.testing.assert_array_equal(from_cal.mask, from_vector.mask)
    np.testing.assert_array_equal(from_cal.weight, from_vector.weight)
    assert from_cal.sparsity == 0.5


def test_wanda_global_scope_ranks_all_layers_together() -> None:
    rng = np.random.default_rng(2)
    layers = [layer_inputs(rng, r, c) for r, c in [(6, 16), (3, 40), (9, 8)]]
    weights = [w for w, _ in layers]
    stats = [(x * x).sum(axis=0) for _, x in layers]
    results = fastprune.wanda(weights, stats, 0.6, scope="global")
    scores = [ref_wanda_scores(w, a) for w, a in zip(weights, stats, strict=True)]
    flat = np.concatenate([s.ravel() for s in scores])
    keep = prune_lowest(flat, int(flat.size * 0.6))
    offset = 0
    for res, w, s in zip(results, weights, scores, strict=True):
        check_result(res, w, keep[offset : offset + s.size].reshape(s.shape), s)
        offset += s.size


@pytest.mark.parametrize("sparsity", [0.2, 0.5, 0.7])
def test_wanda_variant_matches_reference(sparsity: float) -> None:
    rng = np.random.default_rng(3)
    for rows, cols in [(4, 16), (20, 64), (7, 33)]:
        w, x = layer_inputs(rng, rows, cols)
        act_sq = (x * x).sum(axis=0)
        scores = ref_wanda_scores(w, act_sq)
        res = fastprune.wanda(w, act_sq, sparsity, variant="wanda")
        keep = ref_variant_mask(scores, sparsity)
        check_result(res, w, keep, scores)
        if rows * cols >= 1000:
            assert abs(res.sparsity - sparsity) <= 0.001
        # Rows prune different counts: the threshold is on each row's running score.
        assert len(set((~keep).sum(axis=1))) > 1 or rows == 1


def test_wanda_variant_of_tied_scores_prunes_exact_counts_by_index() -> None:
    w = np.ones((3, 10))
    res = fastprune.wanda(w, np.ones(10), 0.5, variant="wanda")
    np.testing.assert_array_equal(res.mask, ref_variant_mask(np.ones((3, 10)), 0.5))
    assert res.sparsity == 0.5
    # the lowest indices go first among equal scores
    np.testing.assert_array_equal(res.mask[0], [False] * 5 + [True] * 5)


def test_wanda_beats_magnitude_on_outlier_channels() -> None:
    rng = np.random.default_rng(4)
    w, x = layer_inputs(rng, 64, 128)
    act_sq = (x * x).sum(axis=0)
    dense = x @ w.T

    def error(res: PruneResult) -> float:
        return float(np.linalg.norm(dense - x @ res.weight.T) / np.linalg.norm(dense))

    for pattern in ("unstructured", "2:4"):
        assert error(fastprune.wanda(w, act_sq, 0.5, pattern)) < error(
            fastprune.magnitude_prune(w, 0.5, pattern)
        )


# --- magnitude ---------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    ("pattern", "scope", "sparsity"),
    [
        ("unstructured", "row", 0.5),
        ("unstructured", "layer", 0.75),
        ("unstructured", "row", 0.0),
        ("2:4", "row", 0.5),
        ("4:4", "row", 0.0),
    ],
)
def test_magnitude_prune_matches_reference(
    dtype: Any, pattern: str, scope: str, sparsity: float
) -> None:
    rng = np.random.default_rng(5)
    for rows, cols in [(1, 4), (6, 12), (13, 28)]:
        w = rng.standard_normal((rows, cols)).astype(dtype)
        w[0, :2] = 0.25  # ties
        scores = np.abs(w.astype(np.float64))
        res = fastprune.magnitude_prune(w, sparsity, pattern, scope)  # type: ignore[arg-type]
        check_result(res, w, ref_mask(scores, sparsity, pattern, scope), scores)


def test_magnitude_prune_global_and_blocks() -> None:
    rng = np.random.default_rng(6)
    weights = [rng.standard_normal((4, 8)), rng.standard_normal((2, 12))]
    results = fastprune.magnitude_prune(weights, 0.5, scope="global")
    flat = np.concatenate([np.abs(w).ravel() for w in weights])
    keep = prune_lowest(flat, int(flat.size * 0.5))
    np.testing.assert_array_equal(results[0].mask.ravel(), keep[:32])
    np.testing.assert_array_equal(results[1].mask.ravel(), keep[32:])
    res = fastprune.magnitude_prune(weights[0], 0.5, "block:2x4")
    block_scores = np.abs(weights[0]).reshape(2, 2, 2, 4).sum(axis=(1, 3))
    kept_blocks = prune_lowest(block_scores.ravel(), 2).reshape(2, 2)
    np.testing.assert_array_equal(res.mask, np.kron(kept_blocks, np.ones((2, 4), bool)))


# --- bad inputs, inputs unchanged --------------------------------------------------------------


def test_bad_arguments_raise() -> None:
    w = np.ones((4, 8), np.float32)
    a = np.ones(8, np.float32)
    with pytest.raises(ValueError, match="variant: expected None or 'wanda'"):
        fastprune.wanda(w, a, variant="sparsegpt")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="variant: 'wanda' selects per row"):
        fastprune.wanda(w, a, pattern="2:4", variant="wanda")
    with pytest.raises(ValueError, match="variant: 'wanda' selects per row"):
        fastprune.wanda(w, a, scope="layer", variant="wanda")
    with pytest.raises(ValueError, match=r"act_sq: expected shape \(8,\)"):
        fastprune.wanda(w, np.ones(7))
    with pytest.raises(ValueError, match="act_sq: must be >= 0"):
        fastprune.wanda(w, -a)
    bad = w.copy()
    bad[1, 1] = np.nan
    with pytest.raises(ValueError, match="weight: contains 1 NaN"):
        fastprune.wanda(bad, a)
    with pytest.raises(ValueError, match="weight: contains 1 NaN"):
        fastprune.magnitude_prune(bad)
    for sparsity in (1.0, -0.1):
        with pytest.raises(ValueError, match="sparsity: must be in"):
            fastprune.magnitude_prune(w, sparsity)
        with pytest.raises(ValueError, match="sparsity: must be in"):
            fastprune.wanda(w, a, sparsity, variant="wanda")
    with pytest.raises(ValueError, match="weight: expected an"):
        fastprune.magnitude_prune(np.ones(8))
    with pytest.raises(TypeError, match="weight: expected dtype"):
        fastprune.magnitude_prune(np.ones((2, 2), np.int64))
    with pytest.raises(ValueError, match="m=4"):
        fastprune.wanda(np.ones((2, 6)), np.ones(6), pattern="2:4")
    with pytest.raises(ValueError, match="scope: expected one of"):
        fastprune.magnitude_prune(w, scope="tensor")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="weight: scope='global' takes"):
        fastprune.magnitude_prune(w, scope="global")
    with pytest.raises(ValueError, match="calibration_or_act_sq: scope='global' takes a list"):
        fastprune.wanda([w, w], [a], scope="global")


def test_inputs_are_not_modified() -> None:
    rng = np.random.default_rng(7)
    w = rng.standard_normal((8, 16)).astype(np.float32)
    a = np.abs(rng.standard_normal(16))
    w_copy, a_copy = w.copy(), a.copy()
    fastprune.wanda(w, a)
    fastprune.wanda(w, a, variant="wanda")
    fastprune.magnitude_prune(w, 0.5, "2:4")
    np.testing.assert_array_equal(w, w_copy)
    np.testing.assert_array_equal(a, a_copy)
