"""fastprune.importance against plain float64 NumPy references written here."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import ml_dtypes
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import fastprune
import fastprune.importance as imp
from fastprune import _core

SHAPES = [(1, 1), (1, 7), (7, 1), (3, 5), (16, 33), (64, 127), (130, 260)]
DTYPES = [np.float16, ml_dtypes.bfloat16, np.float32, np.float64]


# --- references ---------------------------------------------------------------------------------


def ref_elementwise(w: np.ndarray, norm: str) -> np.ndarray:
    w = w.astype(np.float64)
    return w * w if norm == "l2" else np.abs(w)


def ref_block_norms(w: np.ndarray, h: int, bw: int, norm: str) -> np.ndarray:
    w = w.astype(np.float64)
    rows, cols = w.shape
    out = np.zeros((rows // h, cols // bw))
    for a in range(rows // h):
        for b in range(cols // bw):
            block = w[a * h : (a + 1) * h, b * bw : (b + 1) * bw]
            if norm == "l1":
                out[a, b] = np.abs(block).sum()
            elif norm == "l2":
                out[a, b] = np.sqrt((block * block).sum())
            else:
                out[a, b] = np.abs(block).max()
    return out


def ref_wanda(w: np.ndarray, act_sq: np.ndarray) -> np.ndarray:
    return np.abs(w.astype(np.float64)) * np.sqrt(act_sq.astype(np.float64))[None, :]


def ref_taylor_channels(w: np.ndarray, g: np.ndarray, multivariable: bool) -> np.ndarray:
    w2 = w.astype(np.float64).reshape(w.shape[0], -1)
    g2 = g.astype(np.float64).reshape(g.shape[0], -1)
    p = w2 * g2
    return np.abs(p.sum(axis=1)) if multivariable else np.abs(p).sum(axis=1)


def ref_reduce(vectors: list[np.ndarray], reduction: str) -> np.ndarray:
    v = [x.astype(np.float64) for x in vectors]
    if reduction == "first":
        return v[0]
    out = v[0].copy()
    for x in v[1:]:
        if reduction in ("sum", "mean"):
            out = out + x
        elif reduction == "max":
            out = np.maximum(out, x)
        else:
            out = out * x
    return out / len(v) if reduction == "mean" else out


def ref_normalize(x: np.ndarray, normalizer: str | None) -> np.ndarray:
    x = x.astype(np.float64)
    n = len(x)
    if normalizer is None:
        return x
    if normalizer == "sum":
        return x / sum(x)
    if normalizer == "mean":
        return x / (sum(x) / n)
    if normalizer == "max":
        return x / max(x)
    if normalizer in ("standardization", "standarization"):
        return (x - min(x)) / (max(x) - min(x) + 1e-8)
    if normalizer == "gaussian":
        mean = sum(x) / n
        std = np.sqrt(sum((x - mean) ** 2) / (n - 1))
        return (x - mean) / (std + 1e-8)
    # LAMP: rank ascending (ties by index); divide by the sum of the scores ranked at or above.
    order = sorted(range(n), key=lambda i: (x[i], i))
    out = np.empty(n)
    for pos, i in enumerate(order):
        out[i] = x[i] / sum(x[j] for j in order[pos:])
    return out


def random_weight(rng: np.random.Generator, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    return rng.standard_normal(shape).astype(dtype)


def result_dtype(*dtypes: Any) -> type:
    return np.float64 if any(np.dtype(d) == np.float64 for d in dtypes) else np.float32


def tolerance(dtype: Any) -> float:
    return 1e-12 if np.dtype(dtype) == np.float64 else 2e-6


@dataclass(frozen=True)
class BlockLike:
    h: int
    w: int


# --- magnitude ----------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("norm", ["l1", "l2", "linf"])
def test_magnitude_elementwise_matches_reference(dtype: Any, norm: str) -> None:
    rng = np.random.default_rng(1)
    for shape in SHAPES:
        w = random_weight(rng, shape, dtype)
        got = imp.magnitude(w, norm)
        assert got.dtype == result_dtype(dtype)
        assert got.shape == shape
        np.testing.assert_allclose(got, ref_elementwise(w, norm), rtol=tolerance(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("norm", ["l1", "l2", "linf"])
def test_magnitude_group_norms_match_reference(dtype: Any, norm: str) -> None:
    rng = np.random.default_rng(2)
    for rows, cols in SHAPES:
        w = random_weight(rng, (rows, cols), dtype)
        tol = tolerance(dtype)
        row = imp.magnitude(w, norm, group="row")
        assert row.shape == (rows,)
        assert row.dtype == result_dtype(dtype)
        np.testing.assert_allclose(row, ref_block_norms(w, 1, cols, norm)[:, 0], rtol=tol)
        column = imp.magnitude(w, norm, group="column")
        assert column.shape == (cols,)
        np.testing.assert_allclose(column, ref_block_norms(w, rows, 1, norm)[0], rtol=tol)
        for h in (d for d in range(1, rows + 1) if rows % d == 0):
            for bw in (d for d in range(1, min(cols, 9) + 1) if cols % d == 0):
                expected = ref_block_norms(w, h, bw, norm)
                np.testing.assert_allclose(
                    imp.magnitude(w, norm, group=(h, bw)), expected, rtol=tol
                )
                got = imp.magnitude(w, norm, group=BlockLike(h, bw))
                np.testing.assert_allclose(got, expected, rtol=tol)


def test_magnitude_of_zeros_and_ties() -> None:
    w = np.zeros((4, 6), np.float32)
    for norm in imp.NORMS:
        assert not imp.magnitude(w, norm).any()
        assert not imp.magnitude(w, norm, group=(2, 3)).any()
    tied = np.full((5, 7), -0.5, np.float32)
    np.testing.assert_array_equal(imp.magnitude(tied, "l1", group="row"), np.full(5, 3.5))
    np.testing.assert_array_equal(imp.magnitude(tied, "linf", group="column"), np.full(7, 0.5))


def test_magnitude_flattens_conv_weights() -> None:
    w = random_weight(np.random.default_rng(3), (8, 3, 3, 3), np.float32)
    flat = w.reshape(8, 27)
    np.testing.assert_array_equal(imp.magnitude(w, "l2"), imp.magnitude(flat, "l2"))
    np.testing.assert_allclose(
        imp.magnitude(w, "l2", group="row"), ref_block_norms(flat, 1, 27, "l2")[:, 0], rtol=2e-6
    )


def test_magnitude_accepts_any_layout() -> None:
    rng = np.random.default_rng(4)
    base = random_weight(rng, (40, 60), np.float32)
    for w in (np.asfortranarray(base), base[::2, ::3], base[:, 5:37], base[::-1]):
        np.testing.assert_allclose(
            imp.magnitude(w, "l2", group=(1, 1)), ref_elementwise(w, "l1"), rtol=2e-6
        )
        np.testing.assert_allclose(imp.magnitude(w, "l2"), ref_elementwise(w, "l2"), rtol=2e-6)
        np.testing.assert_allclose(
            imp.magnitude(w, "l1", group="column"), np.abs(w.astype(np.float64)).sum(0), rtol=2e-6
        )


@settings(max_examples=60, deadline=None)
@given(
    st.integers(1, 4),
    st.integers(1, 4),
    st.integers(1, 5),
    st.integers(1, 6),
    st.sampled_from(["l1", "l2", "linf"]),
    st.data(),
)
def test_magnitude_block_norms_property(
    h: int, bw: int, nbr: int, nbc: int, norm: str, data: st.DataObject
) -> None:
    w = data.draw(
        hnp.arrays(
            np.float64,
            (h * nbr, bw * nbc),
            elements=st.floats(-1e6, 1e6, allow_nan=False, allow_subnormal=False),
        )
    )
    np.testing.assert_allclose(
        imp.magnitude(w, norm, group=(h, bw)), ref_block_norms(w, h, bw, norm), rtol=1e-12, atol=0
    )


# --- wanda --------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
def test_wanda_matches_reference(dtype: Any) -> None:
    rng = np.random.default_rng(5)
    for shape in SHAPES:
        w = random_weight(rng, shape, dtype)
        act_sq = (rng.standard_normal(shape[1]) ** 2 * 10).astype(dtype)
        act_sq[0] = 0
        got = imp.wanda(w, act_sq)
        assert got.dtype == result_dtype(dtype)
        np.testing.assert_allclose(got, ref_wanda(w, act_sq), rtol=tolerance(dtype))


def test_wanda_act_sq_is_the_sum_of_squared_activations() -> None:
    rng = np.random.default_rng(6)
    x = rng.standard_normal((50, 12))
    w = rng.standard_normal((4, 12))
    act_sq = (x * x).sum(axis=0)
    # |W_ij| * ||X_j||_2, the Wanda paper's score.
    expected = np.abs(w) * np.linalg.norm(x, axis=0)
    np.testing.assert_allclose(imp.wanda(w, act_sq), expected, rtol=1e-12)
    # A float64 act_sq makes the scores float64 even for float32 weights.
    assert imp.wanda(w.astype(np.float32), act_sq).dtype == np.float64


def test_wanda_rejects_bad_act_sq() -> None:
    w = np.ones((3, 4), np.float32)
    with pytest.raises(ValueError, match=r"act_sq: expected shape \(4,\)"):
        imp.wanda(w, np.ones(5, np.float32))
    with pytest.raises(ValueError, match="act_sq: expected a 1-D"):
        imp.wanda(w, np.ones((1, 4), np.float32))
    with pytest.raises(ValueError, match="act_sq: must be >= 0"):
        imp.wanda(w, np.array([1, -1, 1, 1], np.float32))
    for bad in (np.nan, np.inf):
        with pytest.raises(ValueError, match="act_sq: contains 1 NaN or Inf"):
            imp.wanda(w, np.array([1, bad, 1, 1], np.float32))
    with pytest.raises(TypeError, match="act_sq: expected dtype"):
        imp.wanda(w, np.ones(4, np.int64))


# --- taylor -------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
def test_taylor_matches_reference(dtype: Any) -> None:
    rng = np.random.default_rng(7)
    for shape in [*SHAPES, (6, 3, 3, 3), (5, 2, 7)]:
        w = random_weight(rng, shape, dtype)
        g = random_weight(rng, shape, dtype)
        flat = (shape[0], int(np.prod(shape[1:])))
        element = imp.taylor(w, g)
        assert element.shape == flat
        assert element.dtype == result_dtype(dtype)
        expected = np.abs(w.astype(np.float64) * g.astype(np.float64)).reshape(flat)
        np.testing.assert_allclose(element, expected, rtol=tolerance(dtype))
        for multivariable in (False, True):
            channel = imp.taylor(w, g, multivariable=multivariable, per="channel")
            assert channel.shape == (shape[0],)
            np.testing.assert_allclose(
                channel,
                ref_taylor_channels(w, g, multivariable),
                rtol=tolerance(dtype),
                atol=1e-12 * np.abs(expected).sum(),
            )


def test_taylor_per_channel_of_a_norm_layer_scale() -> None:
    rng = np.random.default_rng(8)
    gamma, grad = rng.standard_normal(9), rng.standard_normal(9)
    for multivariable in (False, True):
        np.testing.assert_allclose(
            imp.taylor(gamma, grad, multivariable=multivariable, per="channel"),
            np.abs(gamma * grad),
            rtol=1e-15,
        )
    with pytest.raises(ValueError, match="weight: expected an"):
        imp.taylor(gamma, grad)


def test_taylor_multivariable_lets_contributions_cancel() -> None:
    w = np.array([[1.0, 1.0], [2.0, 0.0]])
    g = np.array([[1.0, -1.0], [1.0, 5.0]])
    np.testing.assert_array_equal(imp.taylor(w, g, per="channel"), [2.0, 2.0])
    np.testing.assert_array_equal(imp.taylor(w, g, multivariable=True, per="channel"), [0.0, 2.0])


def test_taylor_rejects_bad_arguments() -> None:
    w = np.ones((3, 4), np.float32)
    with pytest.raises(
        ValueError, match=r"grad: shape \(4, 3\) does not match weight shape \(3, 4\)"
    ):
        imp.taylor(w, np.ones((4, 3), np.float32))
    with pytest.raises(ValueError, match="per: expected 'element' or 'channel'"):
        imp.taylor(w, w, per="row")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="multivariable: expected a bool"):
        imp.taylor(w, w, multivariable="yes", per="channel")  # type: ignore[arg-type]
    bad = w.copy()
    bad[1, 2] = np.inf
    with pytest.raises(ValueError, match="grad: contains 1 NaN or Inf"):
        imp.taylor(w, bad)


# --- reductions and normalizers -----------------------------------------------------------------


@pytest.mark.parametrize("reduction", imp.REDUCTIONS)
def test_reduce_group_matches_reference(reduction: str) -> None:
    rng = np.random.default_rng(9)
    for n, layers in [(1, 1), (5, 1), (7, 3), (16, 4)]:
        vectors = [np.abs(rng.standard_normal(n)).astype(np.float32) for _ in range(layers)]
        got = imp.reduce_group(vectors, reduction)  # type: ignore[arg-type]
        assert got.dtype == np.float32
        np.testing.assert_allclose(got, ref_reduce(vectors, reduction), rtol=2e-6)
    assert imp.reduce_group([np.ones(3), np.ones(3, np.float32)], reduction).dtype == np.float64  # type: ignore[arg-type]


@pytest.mark.parametrize("normalizer", [*imp.NORMALIZERS, "standarization"])
def test_normalize_matches_reference(normalizer: str | None) -> None:
    rng = np.random.default_rng(10)
    for n in (2, 3, 8, 33):
        for x in (np.abs(rng.standard_normal(n)), rng.integers(0, 3, n) + 0.5, rng.random(n) * 7):
            got = imp.normalize(x, normalizer)  # type: ignore[arg-type]
            assert got.dtype == np.float64
            np.testing.assert_allclose(got, ref_normalize(x, normalizer), rtol=1e-12, atol=1e-15)
            got32 = imp.normalize(x.astype(np.float32), normalizer)  # type: ignore[arg-type]
            assert got32.dtype == np.float32
            np.testing.assert_allclose(
                got32, ref_normalize(x.astype(np.float32), normalizer), rtol=2e-6, atol=1e-7
            )


def test_lamp_orders_ties_by_index() -> None:
    got = imp.normalize(np.array([2.0, 1.0, 2.0, 1.0]), "lamp")
    # ascending by (score, index): 1@1, 1@3, 2@0, 2@2 -> 1/6, 1/5, 2/4, 2/2
    np.testing.assert_allclose(got, [0.5, 1 / 6, 1.0, 0.2], rtol=1e-15)


def test_normalize_zero_denominators_follow_torch_pruning() -> None:
    zeros = np.zeros(4)
    for normalizer in ("sum", "mean", "max", "lamp"):
        assert np.isnan(imp.normalize(zeros, normalizer)).all()  # type: ignore[arg-type]
    np.testing.assert_array_equal(imp.normalize(zeros, "standardization"), zeros)
    assert np.isnan(imp.normalize(np.array([3.0]), "gaussian")).all()


def test_invalid_option_names_list_the_valid_ones() -> None:
    w = np.ones((2, 2))
    with pytest.raises(ValueError, match="reduction: expected one of 'mean', 'sum', 'max', 'prod'"):
        imp.reduce_group([np.ones(2)], "median")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"normalizer: expected one of 'mean'.*'lamp', None"):
        imp.normalize(np.ones(2), "softmax")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="norm: expected one of 'l1', 'l2', 'linf'"):
        imp.magnitude(w, "l3")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="normalizer: expected one of"):
        imp.group_taylor([(w, w)], normalizer=3)  # type: ignore[arg-type]


def test_reduce_group_rejects_bad_lists() -> None:
    with pytest.raises(ValueError, match="scores_list: expected a non-empty sequence"):
        imp.reduce_group([], "sum")
    with pytest.raises(ValueError, match=r"scores_list\[1\]: shape \(4,\) does not match"):
        imp.reduce_group([np.ones(3), np.ones(4)], "sum")
    with pytest.raises(ValueError, match=r"scores_list\[0\]: contains 1 NaN"):
        imp.reduce_group([np.array([1.0, np.nan])], "sum")


# --- group_taylor -------------------------------------------------------------------------------


def make_group(rng: np.random.Generator, channels: int, dtype: Any = np.float64) -> list[Any]:
    conv_w = rng.standard_normal((channels, 3, 3, 3)).astype(dtype)
    conv_g = rng.standard_normal((channels, 3, 3, 3)).astype(dtype)
    bn_w, bn_g = (rng.standard_normal(channels).astype(dtype) for _ in range(2))
    # The next layer's input channels: its weight transposed so that channels are on dim 0.
    next_w = rng.standard_normal((5, channels)).astype(dtype)
    next_g = rng.standard_normal((5, channels)).astype(dtype)
    return [(conv_w, conv_g), (bn_w, bn_g), (next_w.T, next_g.T)]


@pytest.mark.parametrize("reduction", imp.REDUCTIONS)
@pytest.mark.parametrize("normalizer", imp.NORMALIZERS)
@pytest.mark.parametrize("multivariable", [False, True])
def test_group_taylor_matches_reference(
    reduction: str, normalizer: str | None, multivariable: bool
) -> None:
    rng = np.random.default_rng(11)
    for channels in (2, 7, 16):
        pairs = make_group(rng, channels)
        local = [ref_taylor_channels(w, g, multivariable) for w, g in pairs]
        expected = ref_normalize(ref_reduce(local, reduction), normalizer)
        got = imp.group_taylor(pairs, reduction, normalizer, multivariable)  # type: ignore[arg-type]
        assert got.dtype == np.float64
        np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-14)
        pairs32 = [(w.astype(np.float32), g.astype(np.float32)) for w, g in pairs]
        got32 = imp.group_taylor(pairs32, reduction, normalizer, multivariable)  # type: ignore[arg-type]
        assert got32.dtype == np.float32


def torch_pruning_group_taylor(
    pairs: list[Any], reduction: str, normalizer: str | None, multivariable: bool
) -> np.ndarray:
    """Torch-Pruning's GroupTaylorImportance formulas (``_reduce``, ``_normalize``, ``_lamp``)
    transcribed in torch, for a group whose channels are dimension 0 of every pair."""
    torch = pytest.importorskip("torch")
    group_imp = []
    for w_np, g_np in pairs:
        w = torch.from_numpy(np.ascontiguousarray(w_np)).flatten(1) if w_np.ndim > 1 else None
        if w is None:
            w1, g1 = torch.from_numpy(w_np), torch.from_numpy(g_np)
            group_imp.append((w1 * g1).abs())
            continue
        dw = torch.from_numpy(np.ascontiguousarray(g_np)).flatten(1)
        local = (w * dw).sum(1).abs() if multivariable else (w * dw).abs().sum(1)
        group_imp.append(local)
    if reduction == "prod":
        reduced = torch.ones_like(group_imp[0])
    elif reduction == "max":
        reduced = torch.ones_like(group_imp[0]) * -99999
    else:
        reduced = torch.zeros_like(group_imp[0])
    for i, local in enumerate(group_imp):
        if reduction in ("sum", "mean"):
            reduced = reduced + local
        elif reduction == "max":
            reduced = torch.maximum(reduced, local)
        elif reduction == "prod":
            reduced = reduced * local
        elif i == 0:
            reduced = local.clone()
    if reduction == "mean":
        reduced = reduced / len(group_imp)
    x = reduced
    if normalizer is None:
        out = x
    elif normalizer == "sum":
        out = x / x.sum()
    elif normalizer == "standardization":
        out = (x - x.min()) / (x.max() - x.min() + 1e-8)
    elif normalizer == "mean":
        out = x / x.mean()
    elif normalizer == "max":
        out = x / x.max()
    elif normalizer == "gaussian":
        out = (x - x.mean()) / (x.std() + 1e-8)
    else:
        sorted_scores, sorted_idx = x.view(-1).sort(descending=False, stable=True)
        cumsum = sorted_scores.cumsum(dim=0)
        before = torch.zeros_like(cumsum)
        before[1:] = cumsum[:-1]
        sorted_scores = sorted_scores / (x.sum() - before)
        out = torch.zeros_like(x)
        out[sorted_idx] = sorted_scores
    return out.numpy()


@pytest.mark.parametrize("reduction", imp.REDUCTIONS)
@pytest.mark.parametrize("normalizer", imp.NORMALIZERS)
@pytest.mark.parametrize("multivariable", [False, True])
def test_group_taylor_matches_torch_pruning(
    reduction: str, normalizer: str | None, multivariable: bool
) -> None:
    rng = np.random.default_rng(12)
    for channels in (3, 16):
        pairs = make_group(rng, channels)
        expected = torch_pruning_group_taylor(pairs, reduction, normalizer, multivariable)
        got = imp.group_taylor(pairs, reduction, normalizer, multivariable)  # type: ignore[arg-type]
        np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-12)


def test_group_taylor_rejects_bad_groups() -> None:
    w = np.ones((4, 3))
    with pytest.raises(ValueError, match="pairs: expected a non-empty sequence"):
        imp.group_taylor([])
    with pytest.raises(ValueError, match=r"pairs\[0\]: expected a \(weight, grad\) pair"):
        imp.group_taylor([w])  # type: ignore[list-item]
    with pytest.raises(ValueError, match=r"scores_list\[1\]: shape \(5,\) does not match"):
        imp.group_taylor([(w, w), (np.ones(5), np.ones(5))])
    with pytest.raises(ValueError, match=r"grad: shape \(4, 2\) does not match weight shape"):
        imp.group_taylor([(w, np.ones((4, 2)))])


# --- bad inputs, inputs unchanged, instruction sets, threads ---------------------------------


def test_bad_weights_raise_naming_the_argument() -> None:
    w = np.ones((4, 6), np.float32)
    for bad_value, count in ((np.nan, 1), (np.inf, 1), (-np.inf, 1)):
        bad = w.copy()
        bad[2, 3] = bad_value
        with pytest.raises(ValueError, match=f"weight: contains {count} NaN or Inf value"):
            imp.magnitude(bad)
        with pytest.raises(ValueError, match="weight: contains 1 NaN"):
            imp.wanda(bad, np.ones(6, np.float32))
        with pytest.raises(ValueError, match="weight: contains 1 NaN"):
            imp.taylor(bad, w, per="channel")
    with pytest.raises(TypeError, match="weight: expected dtype"):
        imp.magnitude(np.ones((2, 2), np.int32))
    with pytest.raises(TypeError, match="weight: expected dtype"):
        imp.magnitude(np.ones((2, 2), np.complex64))
    with pytest.raises(ValueError, match=r"weight: expected an \(out_features, in_features\)"):
        imp.magnitude(np.ones(3))
    with pytest.raises(ValueError, match=r"group: block \(3, 4\) does not divide the weight shape"):
        imp.magnitude(w, group=(3, 4))
    with pytest.raises(ValueError, match=r"group: block \(2, 4\) does not divide"):
        imp.magnitude(w, group=BlockLike(2, 4))
    for group in ("diagonal", (1, 2, 3), (0, 2), (2.0, 2), (True, 1), 5):
        with pytest.raises(ValueError, match="group: "):
            imp.magnitude(w, group=group)


def test_inputs_are_not_modified() -> None:
    rng = np.random.default_rng(13)
    w = rng.standard_normal((9, 12)).astype(np.float32)
    g = rng.standard_normal((9, 12)).astype(np.float32)
    a = np.abs(rng.standard_normal(12)).astype(np.float32)
    s = np.abs(rng.standard_normal(9))
    copies = [x.copy() for x in (w, g, a, s)]
    imp.magnitude(w, "l2")
    imp.magnitude(w, "l1", group=(3, 4))
    imp.wanda(w, a)
    imp.taylor(w, g)
    imp.group_taylor([(w, g), (w, g)], "prod", "lamp")
    for normalizer in imp.NORMALIZERS:
        imp.normalize(s, normalizer)  # type: ignore[arg-type]
    imp.reduce_group([s, s], "max")
    for original, copy in zip((w, g, a, s), copies, strict=True):
        np.testing.assert_array_equal(original, copy)


def all_scores(w: np.ndarray, g: np.ndarray, a: np.ndarray) -> list[np.ndarray]:
    out = [imp.wanda(w, a), imp.taylor(w, g)]
    for multivariable in (False, True):
        out.append(imp.taylor(w, g, multivariable=multivariable, per="channel"))
    for norm in imp.NORMS:
        out.append(imp.magnitude(w, norm))  # type: ignore[arg-type]
        for group in ("row", "column", (2, 8), (4, 3)):
            out.append(imp.magnitude(w, norm, group=group))  # type: ignore[arg-type]
    return out


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_every_instruction_set_level_gives_identical_scores(dtype: Any) -> None:
    rng = np.random.default_rng(14)
    w = rng.standard_normal((36, 120)).astype(dtype)
    g = rng.standard_normal((36, 120)).astype(dtype)
    a = np.abs(rng.standard_normal(120)).astype(dtype)
    expected = all_scores(w, g, a)
    for level in _core.supported_levels():
        with _core.use(level):
            for got, want in zip(all_scores(w, g, a), expected, strict=True):
                np.testing.assert_array_equal(got, want, err_msg=level)


def test_results_do_not_depend_on_the_thread_count() -> None:
    rng = np.random.default_rng(15)
    w = rng.standard_normal((512, 768)).astype(np.float32)
    g = rng.standard_normal((512, 768)).astype(np.float32)
    a = np.abs(rng.standard_normal(768)).astype(np.float32)
    before = fastprune.get_num_threads()
    try:
        fastprune.set_num_threads(1)
        serial = all_scores(w, g, a)
        fastprune.set_num_threads(max(before, 3))
        parallel = all_scores(w, g, a)
    finally:
        fastprune.set_num_threads(before)
    for got, want in zip(parallel, serial, strict=True):
        np.testing.assert_array_equal(got, want)


# --- SparseGPT saliency -------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sparsegpt_saliency_matches_textbook_reference(dtype: Any) -> None:
    rng = np.random.default_rng(11)
    cols, rows, damp = 24, 7, 0.05
    x = rng.standard_normal((200, cols)) * rng.uniform(0.1, 3.0, cols)
    x[:, 5] = 0.0  # a dead column: H_jj == 0
    hessian = 2.0 / len(x) * x.T @ x
    w = rng.standard_normal((rows, cols)).astype(dtype)

    h = hessian.copy()
    dead = np.diag(h) == 0
    h[dead, dead] = 1.0
    h += damp * np.mean(np.diag(h)) * np.eye(cols)
    u = np.linalg.cholesky(np.linalg.inv(h)).T  # upper Cholesky factor of H^-1
    expected = w.astype(np.float64) ** 2 / np.diag(u) ** 2
    expected[:, dead] = 0.0

    got = imp.sparsegpt(w, hessian.astype(dtype), damp=damp)
    assert got.dtype == dtype
    tol = 1e-10 if dtype == np.float64 else 2e-4
    np.testing.assert_allclose(got, expected, rtol=tol, atol=tol * expected.max())


def test_byte_swapped_inputs_keep_their_precision() -> None:
    rng = np.random.default_rng(3)
    w = rng.standard_normal((5, 8))
    got = imp.magnitude(w.astype(">f8"), norm="l2")
    assert got.dtype == np.float64
    np.testing.assert_array_equal(got, imp.magnitude(w, norm="l2"))
    assert imp.magnitude(w.astype(">f4")).dtype == np.float32
