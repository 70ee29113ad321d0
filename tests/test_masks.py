"""fastprune.masks against a plain float64 NumPy reference (stable argsort on (score, index))."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import fastprune
from fastprune import _core
from fastprune.masks import (
    NM,
    Block,
    CheckResult,
    Column,
    Row,
    Unstructured,
    apply_mask,
    check,
    mask,
    pattern,
)

CASES = 1000


# --- the reference ------------------------------------------------------------------------


def prune_lowest(scores: np.ndarray, k: int) -> np.ndarray:
    """keep of a 1-D float64 array: the k lowest by (score, index) pruned."""
    keep = np.ones(scores.shape, dtype=bool)
    keep[np.argsort(scores, kind="stable")[:k]] = False
    return keep


def ref_row(s: np.ndarray, sparsity: float) -> np.ndarray:
    s = s.astype(np.float64)
    k = int(s.shape[1] * sparsity)
    keep = np.ones(s.shape, dtype=bool)
    np.put_along_axis(keep, np.argsort(s, axis=1, kind="stable")[:, :k], False, axis=1)
    return keep


def ref_layer(s: np.ndarray, sparsity: float) -> np.ndarray:
    return prune_lowest(s.astype(np.float64).ravel(), int(s.size * sparsity)).reshape(s.shape)


def ref_global(arrays: list[np.ndarray], sparsity: float) -> list[np.ndarray]:
    flat = np.concatenate([a.astype(np.float64).ravel() for a in arrays])
    keep = prune_lowest(flat, int(flat.size * sparsity))
    out, start = [], 0
    for a in arrays:
        out.append(keep[start : start + a.size].reshape(a.shape))
        start += a.size
    return out


def ref_nm(s: np.ndarray, n: int, m: int) -> np.ndarray:
    rows, cols = s.shape
    groups = s.astype(np.float64).reshape(rows, cols // m, m)
    keep = np.ones(groups.shape, dtype=bool)
    order = np.argsort(groups, axis=2, kind="stable")[:, :, : m - n]
    np.put_along_axis(keep, order, False, axis=2)
    return keep.reshape(rows, cols)


def ref_block(s: np.ndarray, h: int, w: int, sparsity: float) -> np.ndarray:
    rows, cols = s.shape
    sums = s.astype(np.float64).reshape(rows // h, h, cols // w, w).sum(axis=(1, 3))
    keep = prune_lowest(sums.ravel(), int(sums.size * sparsity)).reshape(sums.shape)
    return np.repeat(np.repeat(keep, h, axis=0), w, axis=1).reshape(rows, cols)


# --- random cases ---------------------------------------------------------------------------

SPARSITIES = np.array([0.0, 0.1, 0.25, 0.5, 0.7, 0.9, 0.99, 0.999])


def random_scores(rng: np.random.Generator, rows: int, cols: int) -> np.ndarray:
    """float32 scores of one of several kinds; block sums of them are exact in float64."""
    kind = int(rng.integers(6))
    if kind == 0:  # continuous, on a grid of 2^-10 so float64 sums are exact
        s = np.round(rng.standard_normal((rows, cols)) * 1024) / 1024
    elif kind == 1:  # heavy ties
        s = rng.integers(-2, 3, (rows, cols)).astype(np.float64)
    elif kind == 2:  # constant rows
        s = np.repeat(rng.integers(-3, 4, (rows, 1)), cols, axis=1).astype(np.float64)
    elif kind == 3:  # signed zeros among few values
        s = rng.choice(np.array([-0.0, 0.0, 1.0, -1.0]), size=(rows, cols))
    elif kind == 4:  # wide dynamic range, positive (like |W| * sqrt(act))
        s = np.ldexp(rng.integers(1, 1024, (rows, cols)), rng.integers(-40, 20, (rows, cols)))
    else:  # all equal
        s = np.zeros((rows, cols))
    return s.astype(np.float32)


def cases(seed: int, count: int = CASES) -> Iterator[tuple[np.random.Generator, np.ndarray]]:
    rng = np.random.default_rng(seed)
    shapes = rng.integers(1, [14, 40], size=(count, 2))
    shapes[:20] = 1  # 1x1
    for rows, cols in shapes:
        yield rng, random_scores(rng, int(rows), int(cols))


def pick_sparsity(rng: np.random.Generator) -> float:
    return float(SPARSITIES[rng.integers(len(SPARSITIES))]) if rng.random() < 0.5 else rng.random()


# --- exact agreement, pattern by pattern ------------------------------------------------------


def test_unstructured_row_matches_reference() -> None:
    for rng, s in cases(1):
        sp = pick_sparsity(rng)
        np.testing.assert_array_equal(mask(s, sp), ref_row(s, sp))


def test_unstructured_layer_matches_reference() -> None:
    for rng, s in cases(2):
        sp = pick_sparsity(rng)
        np.testing.assert_array_equal(mask(s, sp, scope="layer"), ref_layer(s, sp))


def test_unstructured_global_matches_reference() -> None:
    rng = np.random.default_rng(3)
    for _ in range(CASES):
        shapes = rng.integers(1, [8, 20], size=(int(rng.integers(1, 5)), 2))
        arrays = [random_scores(rng, int(r), int(c)) for r, c in shapes]
        if rng.random() < 0.3:
            arrays[0] = arrays[0].astype(np.float64) + rng.random() * 2.0**-30
        sp = pick_sparsity(rng)
        got = mask(arrays, sp, scope="global")
        assert isinstance(got, list)
        for g, r in zip(got, ref_global(arrays, sp), strict=True):
            np.testing.assert_array_equal(g, r)


def test_nm_matches_reference() -> None:
    ms = np.array([1, 2, 3, 4, 4, 4, 5, 8, 8, 8, 16])
    for rng, s in cases(4):
        m = int(ms[rng.integers(len(ms))])
        n = int(rng.integers(1, m + 1))
        groups = max(1, s.shape[1] // m) * (1 if rng.random() < 0.7 else 5)
        wide = np.ascontiguousarray(np.tile(s, (1, groups * m // s.shape[1] + 1))[:, : groups * m])
        np.testing.assert_array_equal(mask(wide, pattern=NM(n, m)), ref_nm(wide, n, m))


@pytest.mark.parametrize("level", _core.supported_levels())
@pytest.mark.parametrize("spec", ["2:4", "4:8", "1:4", "3:4", "1:8", "7:8"])
def test_simd_nm_widths_match_reference(spec: str, level: str) -> None:
    """m = 4 and 8 have SIMD paths per level: widths around the vector length exercise the
    vector part and the scalar remainder."""
    pat = pattern(spec)
    assert isinstance(pat, NM)
    rng = np.random.default_rng(5)
    with _core.use(level):
        for cols in range(pat.m, 64 + pat.m, pat.m):
            s = random_scores(rng, 7, cols)
            np.testing.assert_array_equal(mask(s, pattern=pat), ref_nm(s, pat.n, pat.m))
            d = s.astype(np.float64) + rng.standard_normal(s.shape) * 1e-12
            np.testing.assert_array_equal(mask(d, pattern=pat), ref_nm(d, pat.n, pat.m))


def test_block_matches_reference() -> None:
    for rng, s in cases(6):
        rows, cols = s.shape
        hs = [d for d in range(1, rows + 1) if rows % d == 0]
        ws = [d for d in range(1, cols + 1) if cols % d == 0]
        h, w = int(rng.choice(hs)), int(rng.choice(ws))
        sp = pick_sparsity(rng)
        np.testing.assert_array_equal(mask(s, sp, Block(h, w)), ref_block(s, h, w, sp))


def test_row_and_column_match_reference() -> None:
    for rng, s in cases(7):
        rows, cols = s.shape
        sp = pick_sparsity(rng)
        np.testing.assert_array_equal(mask(s, sp, "row"), ref_block(s, 1, cols, sp))
        np.testing.assert_array_equal(mask(s, sp, "column"), ref_block(s, rows, 1, sp))


def test_float64_is_ranked_without_precision_loss() -> None:
    rng = np.random.default_rng(8)
    base = rng.standard_normal((9, 24))
    # Pairs that are equal in float32 but differ in float64.
    s = np.stack([base, base + 1e-12]).reshape(18, 24)[:, ::-1].copy()
    sp = 0.5
    np.testing.assert_array_equal(mask(s, sp), ref_row(s, sp))
    np.testing.assert_array_equal(mask(s, sp, scope="layer"), ref_layer(s, sp))
    np.testing.assert_array_equal(mask(s, pattern="2:4"), ref_nm(s, 2, 4))
    np.testing.assert_array_equal(mask(s, sp, Block(3, 4)), ref_block(s, 3, 4, sp))


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32", "float64"])
def test_dtypes_accepted(dtype: str) -> None:
    ml_dtypes = pytest.importorskip("ml_dtypes") if dtype == "bfloat16" else None
    dt = np.dtype(ml_dtypes.bfloat16) if ml_dtypes else np.dtype(dtype)
    rng = np.random.default_rng(9)
    s = (rng.standard_normal((12, 32)) * 4).astype(dt)
    exact = s.astype(np.float64)  # every one of these dtypes converts exactly
    for sp, pat, scope in [(0.5, "unstructured", "row"), (0.3, "unstructured", "layer")]:
        got = mask(s, sp, pat, scope)  # type: ignore[call-overload]
        assert got.dtype == np.bool_
        want = ref_row(exact, sp) if scope == "row" else ref_layer(exact, sp)
        np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(mask(s, pattern="2:4"), ref_nm(exact, 2, 4))
    np.testing.assert_array_equal(mask(s, 0.5, "block:4x8"), ref_block(exact, 4, 8, 0.5))
    np.testing.assert_array_equal(
        mask([s, s[:3]], 0.4, scope="global")[1], ref_global([exact, exact[:3]], 0.4)[1]
    )


def test_non_contiguous_and_torch_inputs() -> None:
    rng = np.random.default_rng(10)
    s = rng.standard_normal((16, 40)).astype(np.float32)
    for view in (s[:, ::2], np.asfortranarray(s), s[::3], s.T):
        np.testing.assert_array_equal(mask(view, 0.5), ref_row(view, 0.5))
    torch = pytest.importorskip("torch")
    np.testing.assert_array_equal(mask(torch.from_numpy(s), pattern="2:4"), ref_nm(s, 2, 4))


def test_empty_shapes() -> None:
    for shape in [(0, 8), (5, 0), (0, 0)]:
        s = np.zeros(shape, dtype=np.float32)
        assert mask(s, 0.5).shape == shape
        assert mask(s, 0.5, scope="layer").shape == shape
        assert mask(s, 0.5, "row").shape == shape
        assert mask(s, 0.5, "column").shape == shape
    assert mask(np.zeros((3, 0), np.float32), pattern="2:4").shape == (3, 0)
    assert mask([], 0.5, scope="global") == []


def test_sparsity_zero_keeps_everything_and_n_equal_m() -> None:
    s = np.random.default_rng(11).standard_normal((6, 16)).astype(np.float32)
    for pat in ["unstructured", "block:2x4", "row", "column"]:
        assert mask(s, 0.0, pat).all()
    assert mask(s, pattern=NM(4, 4)).all()
    assert mask(s, 0.0, pattern="8:8").all()


def test_close_to_one_prunes_all_but_the_rounding() -> None:
    s = np.arange(40, dtype=np.float32).reshape(4, 10)
    keep = mask(s, 0.999)
    assert keep.sum() == 4  # int(10 * 0.999) = 9 pruned per row
    assert keep[:, -1].all()


# --- every instruction-set level and thread count gives the same masks ------------------------


def some_masks(rng: np.random.Generator) -> list[np.ndarray]:
    out = []
    for cols in (4, 8, 24, 64, 136):
        s = random_scores(rng, 9, cols)
        out += [mask(s, 0.5), mask(s, 0.3, scope="layer"), mask(s, pattern="2:4")]
        out += [mask(s, pattern="4:8") if cols % 8 == 0 else mask(s, pattern="1:4")]
        out += [mask(s, 0.5, "block:3x4"), mask(s.astype(np.float64), pattern="2:4")]
        out += [mask(s.astype(np.float64), 0.6), *mask([s, s[:2]], 0.5, scope="global")]
    return out


def test_every_instruction_set_level_gives_the_same_masks() -> None:
    levels = _core.supported_levels()
    results = {}
    for level in levels:
        with _core.use(level):
            results[level] = some_masks(np.random.default_rng(12))
    for level in levels:
        for got, want in zip(results[level], results[levels[0]], strict=True):
            np.testing.assert_array_equal(got, want, err_msg=level)


def test_thread_count_does_not_change_results() -> None:
    rng = np.random.default_rng(13)
    s = rng.integers(0, 50, (300, 512)).astype(np.float32)
    d = rng.standard_normal((300, 512))
    calls: list[Callable[[], Any]] = [
        lambda: mask(s, 0.5),
        lambda: mask(d, 0.7),
        lambda: mask(s, 0.5, scope="layer"),
        lambda: mask([s, d[:7]], 0.4, scope="global"),
        lambda: mask(s, pattern="2:4"),
        lambda: mask(d, pattern="4:8"),
        lambda: mask(s, 0.5, "block:4x16"),
        lambda: mask(s, 0.5, "row"),
        lambda: mask(s, 0.25, "column"),
    ]
    before = fastprune.get_num_threads()
    try:
        fastprune.set_num_threads(1)
        one = [f() for f in calls]
        fastprune.set_num_threads(2)
        two = [f() for f in calls]
    finally:
        fastprune.set_num_threads(before)
    for a, b in zip(one, two, strict=True):
        for x, y in zip(
            a if isinstance(a, list) else [a], b if isinstance(b, list) else [b], strict=True
        ):
            np.testing.assert_array_equal(x, y)
    np.testing.assert_array_equal(one[0], ref_row(s, 0.5))
    np.testing.assert_array_equal(one[2], ref_layer(s, 0.5))


# --- inputs are never modified -----------------------------------------------------------------


def test_inputs_are_not_modified() -> None:
    rng = np.random.default_rng(14)
    s = random_scores(rng, 8, 16)
    s[0, :4] = [-0.0, 0.0, -0.0, 0.0]
    d = s.astype(np.float64)
    before = s.tobytes(), d.tobytes()
    mask(s, 0.5)
    mask(s, 0.5, scope="layer")
    mask([s, d], 0.5, scope="global")
    mask(s, pattern="2:4")
    mask(d, 0.5, "block:2x4")
    mask(s, 0.5, "column")
    keep = mask(s, 0.5)
    keep_before = keep.copy()
    check(keep, "2:4")
    apply_mask(s, keep)
    apply_mask(d, keep)
    assert (s.tobytes(), d.tobytes()) == before
    np.testing.assert_array_equal(keep, keep_before)


# --- check ---------------------------------------------------------------------------------------


def test_check_accepts_what_mask_makes() -> None:
    for rng, s in cases(15, 200):
        rows = s.shape[0]
        sp = pick_sparsity(rng)
        assert check(mask(s, sp), "unstructured", sp)
        assert check(mask(s, sp, "row"), Row(), sp)
        assert check(mask(s, sp, "column"), Column(), sp)
        h = int(rng.choice([d for d in range(1, rows + 1) if rows % d == 0]))
        assert check(mask(s, sp, Block(h, 1)), Block(h, 1), sp)
        wide = np.tile(s, (1, 4))
        assert check(mask(wide, pattern="2:4"), "2:4", 0.5)


def test_check_names_the_first_offence() -> None:
    keep = np.ones((3, 8), dtype=bool)
    keep[:, [0, 1, 4, 5]] = False
    assert check(keep, "2:4") == CheckResult(True, "")
    keep[2, 5] = True
    result = check(keep, "2:4")
    assert not result
    assert not result.ok
    assert "row 2, group 1" in result.reason
    assert "3 kept, expected 2" in result.reason
    assert "not a multiple of m=8" in check(np.ones((2, 12), bool), "4:8").reason
    blocks = np.ones((4, 4), dtype=bool)
    blocks[2:, :2] = False
    assert check(blocks, "block:2x2", 0.25)
    assert "1 blocks pruned, expected 2" in check(blocks, "block:2x2", 0.5).reason
    blocks[3, 1] = True
    assert "block 2 (rows 2.., columns 0..): 1 of 4 kept" in check(blocks, "block:2x2").reason
    assert "does not tile" in check(blocks, "block:3x3").reason
    assert "column 0" in check(blocks, "column").reason
    assert "row 2" in check(blocks, "row").reason
    assert check(blocks, "unstructured")
    assert "row 0: 0 pruned, expected 2 of 4" in check(blocks, "unstructured", 0.5).reason


# --- apply_mask ------------------------------------------------------------------------------


def test_apply_mask() -> None:
    rng = np.random.default_rng(16)
    w = rng.standard_normal((5, 8)).astype(np.float16)
    keep = rng.random((5, 8)) < 0.5
    out = apply_mask(w, keep)
    assert out.dtype == np.float16
    assert out is not w
    np.testing.assert_array_equal(out, np.where(keep, w.astype(np.float64), 0.0))
    same = apply_mask(w, keep, inplace=True)
    assert same is w
    np.testing.assert_array_equal(w, out)
    ml_dtypes = pytest.importorskip("ml_dtypes")
    b = rng.standard_normal((5, 8)).astype(ml_dtypes.bfloat16)
    got = apply_mask(b, keep)
    assert got.dtype == b.dtype
    np.testing.assert_array_equal(got.astype(np.float64), np.where(keep, b.astype(np.float64), 0))


# --- documented exceptions --------------------------------------------------------------------


@pytest.mark.parametrize("spec", ["3:2", "0:4", "2:0", "2:4:8", "block:0x4", "block:4", "foo", ""])
def test_bad_pattern_specs(spec: str) -> None:
    with pytest.raises(ValueError, match="pattern") as err:
        pattern(spec)
    assert repr(spec) in str(err.value)


def test_pattern_parsing_and_nm_convention() -> None:
    assert pattern("2:4") == NM(2, 4)
    assert pattern(" 4:8 ") == NM(4, 8)
    assert pattern("block:16x8") == Block(16, 8)
    assert pattern("unstructured") == Unstructured()
    assert pattern("row") == Row()
    assert pattern("Column") == Column()
    assert pattern(Block(2, 2)) == Block(2, 2)
    assert NM(2, 4).pruned == 2
    assert NM(1, 4).pruned == 3
    assert NM(3, 4).sparsity == 0.25
    assert repr(NM(2, 4)) == "NM(n=2, m=4)  # 2 kept of every 4"
    assert str(NM(2, 4)) == "2:4 (2 kept of every 4)"
    assert "KEPT" in (NM.__doc__ or "").upper()
    with pytest.raises(TypeError, match="pattern"):
        pattern(4)  # type: ignore[arg-type]
    for bad in [(3, 2), (0, 4), (2, 0)]:
        with pytest.raises(ValueError, match=r"n|m"):
            NM(*bad)
    with pytest.raises(ValueError, match="h"):
        Block(0, 2)
    with pytest.raises(ValueError, match="w"):
        Block(2, -1)
    # 1 kept of 4 keeps exactly the largest of each group.
    s = np.array([[1.0, 4.0, 3.0, 2.0]], dtype=np.float32)
    np.testing.assert_array_equal(mask(s, pattern="1:4"), [[False, True, False, False]])


def test_bad_mask_arguments() -> None:
    s = np.ones((4, 8), dtype=np.float32)
    with pytest.raises(ValueError, match="sparsity: required"):
        mask(s)
    for sp in [1.0, -0.1, float("nan"), 1.5]:
        with pytest.raises(ValueError, match="sparsity"):
            mask(s, sp)
    with pytest.raises(TypeError, match="sparsity"):
        mask(s, "0.5")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"sparsity: .*implies sparsity 0\.5"):
        mask(s, 0.25, "2:4")
    assert mask(s, 0.5, "2:4").sum() == 16
    assert mask(np.ones((2, 6), np.float32), 2 / 3, "1:3").sum() == 4
    with pytest.raises(ValueError, match=r"m=3.*\(4, 8\)"):
        mask(s, pattern="2:3")
    with pytest.raises(ValueError, match="scope"):
        mask(s, 0.5, scope="matrix")  # type: ignore[call-overload]
    with pytest.raises(ValueError, match="scope"):
        mask(s, pattern="2:4", scope="layer")
    with pytest.raises(ValueError, match="scope"):
        mask([s], 0.5, "row", scope="global")
    with pytest.raises(ValueError, match=r"3x3.*\(4, 8\)"):
        mask(s, 0.5, "block:3x3")
    with pytest.raises(TypeError, match="scores"):
        mask(s.astype(np.int32), 0.5)
    with pytest.raises(TypeError, match="scores"):
        mask(s, 0.5, scope="global")  # type: ignore[call-overload]
    with pytest.raises(TypeError, match=r"scores\[1\]"):
        mask([s, s.astype(np.int64)], 0.5, scope="global")
    for shape in [(8,), (2, 2, 2)]:
        with pytest.raises(ValueError, match="scores: expected a 2-D"):
            mask(np.ones(shape, np.float32), 0.5)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_nan_and_inf_are_rejected(bad: float, dtype: type) -> None:
    s = np.ones((5, 48), dtype=dtype)
    for where in [(0, 0), (4, 47), (2, 17)]:
        t = s.copy()
        t[where] = bad
        for sp, pat in [(0.5, "unstructured"), (None, "2:4"), (None, "4:8"), (None, "1:3")]:
            with pytest.raises(ValueError, match="scores: contains NaN or Inf"):
                mask(t, sp, pat)
        for sp, pat in [(0.5, "block:1x4"), (0.5, "row"), (0.5, "column")]:
            with pytest.raises(ValueError, match="scores: contains NaN or Inf"):
                mask(t, sp, pat)
        with pytest.raises(ValueError, match="scores: contains NaN or Inf"):
            mask(t, 0.5, scope="layer")
        with pytest.raises(ValueError, match=r"scores\[1\]: contains NaN or Inf"):
            mask([s, t], 0.5, scope="global")


def test_bad_check_and_apply_mask_arguments() -> None:
    w = np.ones((3, 4), dtype=np.float32)
    keep = np.ones((3, 4), dtype=bool)
    with pytest.raises(TypeError, match="mask"):
        check(keep.astype(np.uint8), "2:4")
    with pytest.raises(ValueError, match="mask"):
        check(keep.ravel(), "2:4")
    with pytest.raises(ValueError, match="pattern"):
        check(keep, "5:4")
    with pytest.raises(TypeError, match="mask"):
        apply_mask(w, keep.astype(np.float32))
    with pytest.raises(ValueError, match=r"\(4, 3\).*\(3, 4\)"):
        apply_mask(w, keep.T)
    w.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        apply_mask(w, keep, inplace=True)
    apply_mask(w, keep)  # not in place: fine on a read-only array


def test_public_names() -> None:
    import fastprune.masks as module

    for name in ["mask", "pattern", "apply_mask", "Unstructured", "NM", "Block", "Row", "Column"]:
        assert getattr(fastprune, name) is getattr(module, name)
    assert fastprune.Pattern is module.Pattern


# --- properties --------------------------------------------------------------------------------

score_arrays = hnp.arrays(
    np.float32,
    st.tuples(st.integers(1, 6), st.integers(1, 12)),
    elements=st.floats(-4, 4, width=32, allow_subnormal=False) | st.sampled_from([0.0, -0.0, 1.0]),
)


@settings(max_examples=150, deadline=None)
@given(score_arrays, st.floats(0, 0.99))
def test_row_mask_properties(s: np.ndarray, sparsity: float) -> None:
    keep = mask(s, sparsity)
    k = int(s.shape[1] * sparsity)
    assert (np.count_nonzero(~keep, axis=1) == k).all()
    for row, kr in zip(s.astype(np.float64), keep, strict=True):
        if 0 < k < row.size:
            assert row[~kr].max() <= row[kr].min()
            tie = row[~kr].max()
            equal = np.flatnonzero(row == tie)
            # among equal scores, every pruned one has a lower index than every kept one
            assert (np.flatnonzero(~kr[equal]) < np.flatnonzero(kr[equal]).min(initial=99)).all()
    # ranking is invariant under exact order-preserving maps (doubling is exact here)
    np.testing.assert_array_equal(mask(s * 2, sparsity), keep)


@settings(max_examples=150, deadline=None)
@given(score_arrays, st.integers(1, 4), st.floats(0, 0.99))
def test_structured_mask_properties(s: np.ndarray, n: int, sparsity: float) -> None:
    wide = np.tile(s, (1, 4))
    nm = NM(n, 4)
    keep = mask(wide, pattern=nm)
    assert check(keep, nm)
    groups = wide.reshape(wide.shape[0], -1, 4).astype(np.float64)
    g_keep = keep.reshape(groups.shape)
    highest_pruned = np.where(g_keep, -np.inf, groups).max(axis=2)
    lowest_kept = np.where(g_keep, groups, np.inf).min(axis=2)
    assert (highest_pruned <= lowest_kept).all()
    for pat in [Row(), Column(), Block(1, s.shape[1])]:
        assert check(mask(s, sparsity, pat), pat, sparsity)
    np.testing.assert_array_equal(mask(s, sparsity, "row"), mask(s, sparsity, Block(1, s.shape[1])))


@settings(max_examples=100, deadline=None)
@given(score_arrays, st.floats(0, 0.99))
def test_layer_and_apply_properties(s: np.ndarray, sparsity: float) -> None:
    keep = mask(s, sparsity, scope="layer")
    assert np.count_nonzero(~keep) == int(s.size * sparsity)
    np.testing.assert_array_equal(keep, mask([s], sparsity, scope="global")[0])
    pruned = apply_mask(s, keep)
    assert (pruned[~keep] == 0).all()
    np.testing.assert_array_equal(pruned[keep], s[keep])
