"""fastprune.Calibration against float64 NumPy references (X.T @ X) written here."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import fastprune
import fastprune.calibration as calibration_module
from fastprune import Calibration, _core


def ref_gram(x: np.ndarray, mask: np.ndarray | None = None) -> tuple[np.ndarray, int]:
    """Σ x xᵀ over the counted tokens of x (..., in), in float64, and the token count."""
    tokens = x.astype(np.float64).reshape(-1, x.shape[-1])
    if mask is not None:
        tokens = tokens[mask.reshape(-1)]
    return tokens.T @ tokens, tokens.shape[0]


def assert_matches(cal: Calibration, gram: np.ndarray, count: int) -> None:
    assert cal.count == count
    tol = 1e-12 if cal.dtype == np.float64 else 1e-5
    scale = max(float(np.abs(gram).max()), 1e-300)
    expected_h = 2 * gram / count if count else np.zeros_like(gram)
    h = cal.hessian
    assert h.dtype == cal.dtype
    assert h.shape == gram.shape
    np.testing.assert_array_equal(h, h.T)
    h_scale = 2 * scale / count if count else 1.0
    np.testing.assert_allclose(h, expected_h, rtol=tol, atol=tol * h_scale)
    np.testing.assert_allclose(cal.act_sq, np.diagonal(gram), rtol=tol, atol=tol * scale)


def random_tokens(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Correlated features with uneven scales, like a layer's inputs."""
    features = shape[-1]
    mix = rng.standard_normal((features, features)) / np.sqrt(features) + np.eye(features)
    scales = np.exp(rng.uniform(-1, 1, features))
    return (rng.standard_normal(shape) @ mix) * scales


@pytest.fixture(params=["default", "eigen"])
def backend(request: pytest.FixtureRequest) -> Iterator[str]:
    """Run a test with the package's default dense linear algebra and with Eigen only."""
    if request.param == "eigen":
        with _core.eigen_only():
            yield "eigen"
    else:
        yield "default"


# --- one update, every dtype and layout ---------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.usefixtures("backend")
def test_one_update_matches_reference(dtype: Any) -> None:
    rng = np.random.default_rng(0)
    shapes = [(1, 1), (1, 5), (7, 1), (13, 7), (200, 65), (300, 257), (40, 700)]
    # Long batches of few features: the update is split along the tokens.
    shapes += [(4096, 64), (700, 300)]
    for tokens, features in shapes:
        x = random_tokens(rng, (tokens, features)).astype(dtype)
        cal = Calibration(features, dtype=dtype)
        assert (cal.in_features, cal.dtype, cal.count) == (features, np.dtype(dtype), 0)
        cal.update(x)
        assert_matches(cal, *ref_gram(x))


@pytest.mark.parametrize("input_dtype", [np.float16, ml_dtypes.bfloat16, np.float32, np.float64])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_every_input_dtype_is_accepted(input_dtype: Any, dtype: Any) -> None:
    rng = np.random.default_rng(1)
    x = random_tokens(rng, (4, 25, 33)).astype(input_dtype)
    cal = Calibration(33, dtype=dtype)
    cal.update(x)
    assert_matches(cal, *ref_gram(x))


def layouts(x: np.ndarray) -> list[np.ndarray]:
    """The same kind of (B, T, in) batch in C order, Fortran order, and strided views."""
    return [
        x,
        np.asfortranarray(x),
        x[:, ::2, :],  # merges into one strided token axis
        x[:, :5, :],  # cannot merge: one view per batch entry
        x[:, :, ::3],  # features not contiguous: converted in chunks
        x[::-1, ::-1, :],  # negative strides
        x.transpose(1, 0, 2),
        np.asfortranarray(x[1]),  # 2-D, tokens contiguous: read in place
        np.asfortranarray(x[1])[:, 3:17],
        x[0, 0],  # a single token
        np.broadcast_to(x[0, 0], (4, x.shape[-1])),  # the same token four times (stride 0)
        np.broadcast_to(x[0], (2, *x.shape[1:])),
    ]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("features", [20, 600])  # one tile, several tiles of the rank-k update
@pytest.mark.usefixtures("backend")
def test_any_memory_layout(dtype: Any, features: int) -> None:
    rng = np.random.default_rng(2)
    base = random_tokens(rng, (3, 40, features)).astype(dtype)
    for x in layouts(base):
        cal = Calibration(x.shape[-1], dtype=dtype)
        cal.update(x)
        assert_matches(cal, *ref_gram(x))


def test_conversion_in_small_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    # Chunks of 4 tokens: every converted, masked or strided input spans many chunks.
    monkeypatch.setattr(calibration_module, "_CHUNK_BYTES", 4 * 20 * 4)
    rng = np.random.default_rng(3)
    base = random_tokens(rng, (3, 8, 20))
    mask = rng.random((3, 8)) < 0.6
    for x in (base, base.astype(np.float16), base[:, :, ::2], base.astype(ml_dtypes.bfloat16)):
        cal = Calibration(x.shape[-1])
        cal.update(x)
        assert_matches(cal, *ref_gram(x))
        masked = Calibration(x.shape[-1], dtype=np.float64)
        masked.update(x, mask=mask)
        assert_matches(masked, *ref_gram(x, mask))


# --- streaming, merging, masking ------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(
    st.integers(1, 40),
    st.integers(1, 70),
    st.lists(st.integers(0, 70), max_size=5),
    st.sampled_from([np.float32, np.float64]),
    st.integers(0, 2**32 - 1),
)
def test_streaming_equals_one_update(
    features: int, tokens: int, cuts: list[int], dtype: Any, seed: int
) -> None:
    x = random_tokens(np.random.default_rng(seed), (tokens, features)).astype(dtype)
    bounds = sorted({0, tokens, *(min(c, tokens) for c in cuts)})
    streamed, once = Calibration(features, dtype), Calibration(features, dtype)
    for start, end in itertools.pairwise(bounds):
        streamed.update(x[start:end])
    once.update(x)
    assert streamed.count == once.count == tokens
    tol = 1e-12 if dtype == np.float64 else 2e-5
    scale = float(np.abs(once.hessian).max())
    np.testing.assert_allclose(streamed.hessian, once.hessian, rtol=tol, atol=tol * scale)
    assert_matches(streamed, *ref_gram(x))


def test_merge_equals_concatenation() -> None:
    rng = np.random.default_rng(4)
    a, b = random_tokens(rng, (30, 24)), random_tokens(rng, (2, 9, 24))
    for dtype in (np.float32, np.float64):
        left, right = Calibration(24, dtype), Calibration(24, np.float64)
        left.update(a)
        right.update(b)
        right_before = (right.hessian, right.count)
        left.merge(right)
        both = np.concatenate([a, b.reshape(-1, 24)])
        assert_matches(left, *ref_gram(both))
        np.testing.assert_array_equal(right.hessian, right_before[0])
        assert right.count == right_before[1]
    twice = Calibration(24, np.float64)
    twice.update(a)
    twice.merge(twice)
    assert_matches(twice, *ref_gram(np.concatenate([a, a])))


def test_merge_rejects_mismatches() -> None:
    cal = Calibration(8)
    with pytest.raises(ValueError, match=r"other: in_features 9 does not match .* in_features 8"):
        cal.merge(Calibration(9))
    with pytest.raises(TypeError, match="other: expected a Calibration"):
        cal.merge(np.zeros((8, 8)))  # type: ignore[arg-type]


def test_masked_tokens_have_no_effect() -> None:
    rng = np.random.default_rng(5)
    x = random_tokens(rng, (4, 11, 19))
    mask = rng.random((4, 11)) < 0.5
    padded = x.copy()
    padded[~mask] = np.nan  # padding may hold anything
    padded[~mask][:, :1] = np.inf
    for dtype in (np.float32, np.float64):
        cal = Calibration(19, dtype)
        cal.update(padded, mask=mask)
        assert_matches(cal, *ref_gram(x, mask))
        direct = Calibration(19, dtype)
        direct.update(x[mask])
        np.testing.assert_allclose(cal.hessian, direct.hessian, rtol=1e-5, atol=1e-6)
    for layout in layouts(x):
        m = rng.random(layout.shape[:-1]) < 0.5
        cal = Calibration(layout.shape[-1], np.float64)
        cal.update(layout, mask=m)
        assert_matches(cal, *ref_gram(layout, m))
    nothing = Calibration(19)
    nothing.update(x, mask=np.zeros((4, 11), bool))
    assert nothing.count == 0
    assert not nothing.hessian.any()


def test_mask_rejects_bad_masks() -> None:
    cal = Calibration(5)
    x = np.ones((2, 3, 5), np.float32)
    with pytest.raises(
        ValueError, match=r"mask: expected shape \(2, 3\) \(x.shape\[:-1\]\), got \(3, 2\)"
    ):
        cal.update(x, mask=np.ones((3, 2), bool))
    with pytest.raises(TypeError, match="mask: expected a bool array, got dtype int64"):
        cal.update(x, mask=np.ones((2, 3), np.int64))
    assert cal.count == 0


# --- bad input leaves the object unchanged -------------------------------------------------------


def bad_batches(good: np.ndarray, dtype: Any, bad_value: float) -> list[np.ndarray]:
    """(3, 20, 12) batches in several layouts whose very last token holds one bad value."""
    x = np.stack([good, good, good]).astype(dtype)
    x[2, 19, 11] = bad_value  # the last token: nothing may have been added before it is seen
    wide = np.zeros((3, 20, 24), dtype)
    wide[:, :, ::2] = x
    longer = np.zeros((3, 25, 12), dtype)
    longer[:, :20] = x
    return [x, np.asfortranarray(x), wide[:, :, ::2], longer[:, :20]]


def test_nan_or_inf_raises_before_accumulating_anything() -> None:
    rng = np.random.default_rng(6)
    cal = Calibration(12)
    good = random_tokens(rng, (20, 12)).astype(np.float32)
    cal.update(good)
    before = (cal.hessian, cal.act_sq, cal.count)
    counted = np.ones((3, 20), bool)
    counted[0, 0] = False
    for dtype in (np.float16, ml_dtypes.bfloat16, np.float32, np.float64):
        for bad_value in (np.nan, np.inf, -np.inf):
            for x in bad_batches(good, dtype, bad_value):
                with pytest.raises(ValueError, match="x: contains 1 NaN or Inf value"):
                    cal.update(x)
                with pytest.raises(ValueError, match="x: contains 1 NaN or Inf value"):
                    cal.update(x, mask=counted)
                np.testing.assert_array_equal(cal.hessian, before[0])
                np.testing.assert_array_equal(cal.act_sq, before[1])
                assert cal.count == before[2]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.usefixtures("backend")
def test_nan_or_inf_in_a_long_batch_adds_nothing(dtype: Any) -> None:
    # 4096 tokens of 64 features: with OpenBLAS each half of the tokens is one SYRK into a buffer
    # of its own, and the batch is checked by the diagonal of their sum; with Eigen it is
    # scanned first. Either way a single bad value anywhere must leave everything as it was.
    rng = np.random.default_rng(12)
    good = random_tokens(rng, (4096, 64)).astype(dtype)
    cal = Calibration(64, dtype)
    cal.update(good)
    before = (cal.hessian, cal.count)
    for (token, feature), bad_value in itertools.product(
        [(0, 0), (2047, 63), (2048, 5), (4095, 63)], [np.nan, np.inf, -np.inf]
    ):
        x = good.copy()
        x[token, feature] = bad_value
        for batch in (x, np.asfortranarray(x)):
            with pytest.raises(ValueError, match="x: contains 1 NaN or Inf value"):
                cal.update(batch)
            np.testing.assert_array_equal(cal.hessian, before[0])
            assert cal.count == before[1]
    cal.update(good)
    assert_matches(cal, *ref_gram(np.concatenate([good, good])))


@pytest.mark.parametrize("half", [np.float16, ml_dtypes.bfloat16])
def test_a_16_bit_batch_longer_than_one_widening_chunk(half: Any) -> None:
    # 16-bit batches are widened to float32 32 MiB at a time (2**19 tokens of 16 features): a
    # bad value in the last chunk must stop the first from being added.
    rng = np.random.default_rng(14)
    x = random_tokens(rng, (2**19 + 3, 16)).astype(half)
    cal = Calibration(16)
    for token in (0, 2**19 - 1, 2**19, 2**19 + 2):
        bad = x.copy()
        bad[token, 15] = np.nan
        with pytest.raises(ValueError, match="x: contains 1 NaN or Inf value"):
            cal.update(bad)
        assert cal.count == 0
        np.testing.assert_array_equal(cal.hessian, np.zeros((16, 16), np.float32))
    cal.update(x)
    assert_matches(cal, *ref_gram(x))


@pytest.mark.usefixtures("backend")
def test_finite_values_whose_squares_overflow_are_refused() -> None:
    # A finite batch whose sum of squares would pass float32's range is refused before anything
    # is added, masked or not, long batch or short; float64 accumulation takes it exactly.
    rng = np.random.default_rng(13)
    for tokens in (4096, 30):
        x = random_tokens(rng, (tokens, 64)).astype(np.float32)
        x[tokens // 2, 7] = 3e19  # its square, 9e38, is beyond float32
        for mask in (None, np.ones(tokens, bool)):
            cal = Calibration(64)
            cal.update(x[:3])
            before = cal.hessian
            with pytest.raises(ValueError, match="x: the sum of squares of feature 7 would reach"):
                cal.update(x, mask=mask)
            assert cal.count == 3
            np.testing.assert_array_equal(cal.hessian, before)
        cal64 = Calibration(64, dtype=np.float64)
        cal64.update(x)
        expected = np.square(x.astype(np.float64)).sum(0)
        np.testing.assert_allclose(cal64.act_sq, expected, rtol=1e-12)
    # The same value in a masked-out token is no problem, and a sum that only the bound
    # from the extremes would exceed is added.
    x = np.ones((8, 4), np.float32)
    x[0, 1] = 3e19
    cal = Calibration(4)
    cal.update(x, mask=np.arange(8) > 0)
    assert cal.count == 7
    y = np.ones((4, 4), np.float32)
    y[0, 0] = y[1, 1] = 8e18  # squares 6.4e37 each: 4 tokens x 6.4e37 is past the bound
    cal = Calibration(4)
    cal.update(y)
    np.testing.assert_allclose(cal.act_sq, np.square(y.astype(np.float64)).sum(0), rtol=1e-6)


def test_bad_arguments_name_the_argument() -> None:
    cal = Calibration(6)
    with pytest.raises(
        ValueError, match=r"x: expected shape \(\.\.\., 6\) \(in_features\), got shape \(4, 5\)"
    ):
        cal.update(np.ones((4, 5), np.float32))
    with pytest.raises(ValueError, match=r"x: expected shape \(\.\.\., 6\)"):
        cal.update(np.float32(1.0))
    with pytest.raises(TypeError, match="x: expected dtype"):
        cal.update(np.ones((4, 6), np.int32))
    for bad in (0, -3, True, 2.5, "8"):
        with pytest.raises(ValueError, match="in_features: expected a positive integer"):
            Calibration(bad)  # type: ignore[arg-type]
    for dtype in (np.float16, np.int32, "complex64", "no-such-type"):
        with pytest.raises(TypeError, match="dtype: expected float32 or float64"):
            Calibration(4, dtype=dtype)
    assert cal.count == 0


def test_empty_batches_and_an_empty_calibration() -> None:
    cal = Calibration(3, np.float64)
    cal.update(np.zeros((0, 3)))
    cal.update(np.zeros((2, 0, 3)))
    assert cal.count == 0
    np.testing.assert_array_equal(cal.hessian, np.zeros((3, 3)))
    np.testing.assert_array_equal(cal.act_sq, np.zeros(3))
    assert repr(cal) == "Calibration(in_features=3, dtype=float64, count=0)"


def test_inputs_and_returned_arrays_are_independent() -> None:
    rng = np.random.default_rng(7)
    x = random_tokens(rng, (2, 10, 8)).astype(np.float32)
    mask = rng.random((2, 10)) < 0.5
    x_copy, mask_copy = x.copy(), mask.copy()
    cal = Calibration(8)
    cal.update(x, mask=mask)
    np.testing.assert_array_equal(x, x_copy)
    np.testing.assert_array_equal(mask, mask_copy)
    h = cal.hessian
    h[:] = 0
    a = cal.act_sq
    a[:] = -1
    assert_matches(cal, *ref_gram(x, mask))


def test_act_sq_feeds_wanda() -> None:
    rng = np.random.default_rng(8)
    x = random_tokens(rng, (64, 16))
    w = rng.standard_normal((5, 16))
    cal = Calibration(16, np.float64)
    cal.update(x)
    expected = np.abs(w) * np.linalg.norm(x, axis=0)
    np.testing.assert_allclose(fastprune.importance.wanda(w, cal.act_sq), expected, rtol=1e-12)


# --- instruction sets, threads ---------------------------------------------------------------


def test_instruction_set_levels_agree() -> None:
    rng = np.random.default_rng(9)
    x = random_tokens(rng, (300, 150)).astype(np.float32)
    reference = Calibration(150, np.float64)
    reference.update(x)
    for level in _core.supported_levels():
        with _core.use(level):
            for dtype in (np.float32, np.float64):
                cal = Calibration(150, dtype)
                cal.update(x[:100])
                cal.update(np.asfortranarray(x[100:]))
                tol = 1e-12 if dtype == np.float64 else 1e-5
                scale = float(np.abs(reference.hessian).max())
                np.testing.assert_allclose(
                    cal.hessian, reference.hessian, rtol=tol, atol=tol * scale, err_msg=level
                )


@pytest.mark.usefixtures("backend")
def test_results_do_not_depend_on_the_thread_count() -> None:
    rng = np.random.default_rng(10)
    x = random_tokens(rng, (700, 300)).astype(np.float32)
    before = fastprune.get_num_threads()
    results = []
    try:
        for threads in (1, max(before, 3)):
            fastprune.set_num_threads(threads)
            cal = Calibration(300)
            # Batches of many more tokens than features are split along the tokens, the others
            # into row strips; each in both orders.
            for batch in (x, x[:250]):
                cal.update(batch)
                cal.update(np.asfortranarray(batch))
            results.append(cal.hessian)
    finally:
        fastprune.set_num_threads(before)
    np.testing.assert_array_equal(results[0], results[1])


def test_concurrent_updates_from_threads() -> None:
    rng = np.random.default_rng(11)
    batches = [random_tokens(rng, (50, 40)) for _ in range(8)]
    cal = Calibration(40, np.float64)
    workers = [threading.Thread(target=cal.update, args=(b,)) for b in batches]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert_matches(cal, *ref_gram(np.concatenate(batches)))


# --- saving and loading ------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".npz", ".safetensors"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_save_load_round_trip(tmp_path: Path, suffix: str, dtype: Any) -> None:
    if suffix == ".safetensors":
        pytest.importorskip("safetensors")
    rng = np.random.default_rng(12)
    x, more = random_tokens(rng, (40, 21)), random_tokens(rng, (9, 21))
    cal = Calibration(21, dtype)
    cal.update(x)
    path = tmp_path / f"cal{suffix}"
    cal.save(path)
    loaded = Calibration.load(str(path))
    assert (loaded.in_features, loaded.dtype, loaded.count) == (21, np.dtype(dtype), 40)
    np.testing.assert_array_equal(loaded.hessian, cal.hessian)
    np.testing.assert_array_equal(loaded.act_sq, cal.act_sq)
    # Calibrating on after a reload gives what calibrating on without one gives.
    loaded.update(more)
    cal.update(more)
    np.testing.assert_array_equal(loaded.hessian, cal.hessian)
    empty_path = tmp_path / f"empty{suffix}"
    Calibration(3).save(empty_path)
    assert Calibration.load(empty_path).count == 0


def write_npz(path: Path, **arrays: Any) -> Path:
    with path.open("wb") as f:
        np.savez(f, **arrays)
    return path


def test_damaged_files_are_clear_errors(tmp_path: Path) -> None:
    cal = Calibration(4, np.float64)
    cal.update(np.arange(12.0).reshape(3, 4))
    good = tmp_path / "good.npz"
    cal.save(good)
    data = good.read_bytes()
    gram = 2 * cal.hessian * 3 / 2 / 2  # Σ x xᵀ
    one, v1 = np.array([3], np.int64), np.array([1], np.int64)
    cases = {
        "garbage.npz": b"not a file at all" * 10,
        "truncated.npz": data[: len(data) // 2],
    }
    for name, content in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(ValueError, match=f"path: .*{name}"):
            Calibration.load(tmp_path / name)
    asymmetric = gram.copy()
    asymmetric[0, 1] += 1
    negative = gram.copy()
    negative[2, 2] = -1
    bad = {
        "missing.npz": ({"gram": gram, "count": one}, "expected arrays"),
        "asymmetric.npz": ({"gram": asymmetric, "count": one, "format_version": v1}, "symmetric"),
        "nan.npz": ({"gram": gram * np.nan, "count": one, "format_version": v1}, "NaN"),
        "negative_diag.npz": ({"gram": negative, "count": one, "format_version": v1}, "negative"),
        "count.npz": ({"gram": gram, "count": -one, "format_version": v1}, "count must be"),
        "version.npz": ({"gram": gram, "count": one, "format_version": v1 + 1}, "format_version"),
        "shape.npz": ({"gram": gram[:3], "count": one, "format_version": v1}, "square"),
        "ints.npz": ({"gram": gram.astype(int), "count": one, "format_version": v1}, "float32"),
        "zero_count.npz": ({"gram": gram, "count": 0 * one, "format_version": v1}, "count is 0"),
        "objects.npz": ({"gram": np.array([{}], object), "count": one, "format_version": v1}, ""),
    }
    for name, (arrays, reason) in bad.items():
        write_npz(tmp_path / name, **arrays)
        with pytest.raises(ValueError, match=f"{name}.*{reason}"):
            Calibration.load(tmp_path / name)
    with pytest.raises(
        ValueError, match=r"path: expected a file name ending in \.npz or \.safetensors"
    ):
        Calibration.load(tmp_path / "cal.pt")
    with pytest.raises(
        ValueError, match=r"path: expected a file name ending in \.npz or \.safetensors"
    ):
        cal.save(tmp_path / "cal.pkl")
    with pytest.raises(FileNotFoundError, match="path: no such file"):
        Calibration.load(tmp_path / "absent.npz")


def test_damaged_safetensors_are_clear_errors(tmp_path: Path) -> None:
    safetensors_numpy = pytest.importorskip("safetensors.numpy")
    cal = Calibration(4)
    good = tmp_path / "good.safetensors"
    cal.save(good)
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(good.read_bytes()[:-10])
    with pytest.raises(ValueError, match=r"truncated\.safetensors"):
        Calibration.load(truncated)
    foreign = tmp_path / "foreign.safetensors"
    safetensors_numpy.save_file({"weight": np.ones((2, 2), np.float32)}, str(foreign))
    with pytest.raises(ValueError, match="not a fastprune calibration"):
        Calibration.load(foreign)
