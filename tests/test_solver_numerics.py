"""The solver's numerics around SparseGPT (fastprune.solver): the damped Hessian a factor is of,
the dense-output start and the refit of the kept weights, each against a float64 NumPy
reference written here."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from fastprune import _core
from fastprune.solver import (
    HessianFactor,
    damped_hessian,
    dense_target_start,
    refit_kept,
    sparsegpt,
    sparsegpt_factor,
)

Array = np.ndarray[Any, Any]


def hessian_with_dead(rng: np.random.Generator, cols: int, dead: list[int], tokens: int) -> Array:
    """2/N Σ x xᵀ of uneven channels, the `dead` inputs always zero."""
    x = rng.standard_normal((tokens, cols)) * rng.uniform(0.5, 2.0, cols)
    x[:, dead] = 0
    return 2 / tokens * (x.T @ x)


def reference_damped(hessian: Array, dead: Array, damp: float) -> tuple[Array, float]:
    """The damping rule written out: dead diagonal entries 1, then damp · mean(diag) added."""
    h = hessian.astype(np.float64)
    h[dead, dead] = 1.0
    shift = damp * float(np.mean(np.diagonal(h)))
    return h + shift * np.eye(h.shape[0]), shift


@pytest.mark.parametrize("precision", ["float32", "float64"])
@pytest.mark.parametrize("dead", [[], [0], [3, 17, 39]])
def test_damped_hessian_is_the_matrix_the_factor_factorises(
    precision: str, dead: list[int]
) -> None:
    rng = np.random.default_rng(len(dead))
    dtype = np.float32 if precision == "float32" else np.float64
    h = hessian_with_dead(rng, 40, dead, tokens=90).astype(dtype)
    before = h.copy()
    factor = sparsegpt_factor(h, damp=0.01, precision=precision)
    damped, shift = damped_hessian(h, factor)
    expected, expected_shift = reference_damped(h, factor.dead, factor.damp_used)
    assert damped.dtype == np.float64
    np.testing.assert_array_equal(factor.dead, np.isin(np.arange(40), dead))
    np.testing.assert_allclose(damped, expected, rtol=1e-13, atol=0)
    assert shift == pytest.approx(expected_shift, rel=1e-13)
    # the core's factor is of this very matrix: H_damped = T Tᵀ
    t = factor.t.astype(np.float64)
    tolerance = 1e-5 if precision == "float32" else 1e-12
    scale = np.abs(expected).max()
    np.testing.assert_allclose(t @ t.T, expected, rtol=0, atol=tolerance * scale)
    np.testing.assert_array_equal(h, before)


def test_damped_hessian_follows_an_escalated_damping() -> None:
    """A rank-deficient Hessian with no damping asked for: the factorisation escalates, and the
    damped matrix is the one it finally factorised."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((6, 24))
    h = 2 / 6 * (x.T @ x)
    factor = sparsegpt_factor(h, damp=0.0, precision="float64")
    assert factor.damp_used > 0
    damped, shift = damped_hessian(h, factor)
    expected, expected_shift = reference_damped(h, factor.dead, factor.damp_used)
    np.testing.assert_allclose(damped, expected, rtol=1e-13, atol=0)
    assert shift == pytest.approx(expected_shift, rel=1e-13)
    t = factor.t
    np.testing.assert_allclose(t @ t.T, expected, rtol=0, atol=1e-12 * np.abs(expected).max())


def test_damped_hessian_accepts_other_dtypes_and_a_transposed_view() -> None:
    rng = np.random.default_rng(2)
    h = hessian_with_dead(rng, 12, [4], tokens=40)
    factor = sparsegpt_factor(h, precision="float64")
    expected, _ = reference_damped(h, factor.dead, factor.damp_used)
    for variant in (h.T, np.asfortranarray(h), h.astype(np.float16).astype(np.float64), h.tolist()):
        damped, _ = damped_hessian(variant, factor)
        np.testing.assert_allclose(
            damped,
            reference_damped(np.asarray(variant), factor.dead, factor.damp_used)[0],
            rtol=1e-13,
        )
    np.testing.assert_allclose(damped_hessian(h, factor)[0], expected, rtol=1e-13)


def test_damped_hessian_checks_its_arguments() -> None:
    rng = np.random.default_rng(3)
    factor = sparsegpt_factor(hessian_with_dead(rng, 8, [], tokens=30))
    with pytest.raises(ValueError, match="hessian: shape"):
        damped_hessian(np.eye(9), factor)
    with pytest.raises(TypeError, match="hessian"):
        damped_hessian(np.eye(8, dtype=np.int32), factor)


@pytest.mark.parametrize("level", _core.supported_levels())
def test_damped_hessian_is_the_same_on_every_instruction_set(level: str) -> None:
    rng = np.random.default_rng(4)
    h = hessian_with_dead(rng, 300, [7, 150], tokens=700).astype(np.float32)
    factor = sparsegpt_factor(h)
    with _core.use("baseline"):
        expected = damped_hessian(h, factor)
    with _core.use(level):
        damped, shift = damped_hessian(h, factor)
    np.testing.assert_array_equal(damped, expected[0])
    assert shift == expected[1]


# --- the dense-output start -------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dense_target_start_solves_against_the_damped_hessian(dtype: Any) -> None:
    """W* = (W·C)·H⁻¹ for the damped H, computed here with a float64 solve."""
    rng = np.random.default_rng(6)
    cols = 32
    h = hessian_with_dead(rng, cols, [9], tokens=80)
    factor = sparsegpt_factor(h, precision="float64")
    damped, _ = reference_damped(h, factor.dead, factor.damp_used)
    w = rng.standard_normal((10, cols)).astype(dtype)
    cross = hessian_with_dead(rng, cols, [], tokens=80)
    gram_target = w.astype(np.float64) @ cross
    before = gram_target.copy()
    start = dense_target_start(gram_target, factor, w.dtype)
    expected = np.linalg.solve(damped, gram_target.T).T  # H symmetric
    assert start.dtype == dtype
    tolerance = 1e-5 if dtype == np.float32 else 1e-10
    np.testing.assert_allclose(start, expected, rtol=0, atol=tolerance * np.abs(expected).max())
    np.testing.assert_array_equal(gram_target, before)


def test_dense_target_start_of_the_layers_own_output_is_its_weight() -> None:
    """With C = H (the layer's own inputs), W·H·H⁻¹ is W again."""
    rng = np.random.default_rng(7)
    h = hessian_with_dead(rng, 20, [], tokens=60)
    factor = sparsegpt_factor(h, precision="float64")
    damped, _ = reference_damped(h, factor.dead, factor.damp_used)
    w = rng.standard_normal((5, 20))
    start = dense_target_start(w @ damped, factor, np.float64)
    np.testing.assert_allclose(start, w, rtol=0, atol=1e-10)


# --- the refit of the kept weights -------------------------------------------------------------


def reference_refit(mask: Array, damped: Array, gram_target: Array, dead: Array) -> Array:
    """Row by row: ŵ_S H_SS = g_S over the kept, live columns S, zero elsewhere."""
    out = np.zeros(mask.shape)
    for r in range(mask.shape[0]):
        s = np.flatnonzero(mask[r] & ~dead)
        if s.size:
            out[r, s] = np.linalg.solve(damped[np.ix_(s, s)], gram_target[r, s])
    return out


def refit_case(seed: int, rows: int, cols: int, dead: list[int]) -> tuple[Any, ...]:
    rng = np.random.default_rng(seed)
    h = hessian_with_dead(rng, cols, dead, tokens=3 * cols)
    factor = sparsegpt_factor(h, precision="float64")
    damped, _ = damped_hessian(h, factor)
    w = rng.standard_normal((rows, cols))
    return rng, factor, damped, w


ROUTES = ("direct", "iterative")
#: How close each route must come to the reference, relative to the largest weight: the direct
#: route factorises each row's system, the iterative one stops at a residual of 1e-6.
ROUTE_ATOL = {"direct": 1e-10, "iterative": 1e-5}


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize(("rows", "cols", "dead"), [(1, 1, []), (6, 24, []), (9, 40, [2, 31])])
def test_refit_solves_each_rows_kept_system(
    rows: int, cols: int, dead: list[int], route: str
) -> None:
    _, factor, damped, w = refit_case(rows + cols, rows, cols, dead)
    result = sparsegpt(w, factor, 0.5, precision="float64")
    gram_target = w @ damped
    inputs = (result.mask.copy(), damped.copy(), gram_target.copy(), result.weight.copy())
    refitted = refit_kept(result.mask, damped, gram_target, factor.dead, result.weight, route)
    expected = reference_refit(result.mask, damped, gram_target, factor.dead)
    assert refitted.dtype == np.float64
    atol = ROUTE_ATOL[route] * np.abs(expected).max()
    np.testing.assert_allclose(refitted, expected, rtol=0, atol=atol)
    assert np.all(refitted[~result.mask] == 0)
    for before, after in zip(
        inputs, (result.mask, damped, gram_target, result.weight), strict=True
    ):
        np.testing.assert_array_equal(before, after)


@pytest.mark.parametrize("route", ROUTES)
def test_refit_handles_empty_and_full_rows_and_any_start(route: str) -> None:
    """A row with nothing kept stays zero, a row with everything kept recovers w* itself, and
    the answer does not depend on the first guess."""
    rng, factor, damped, w = refit_case(11, 4, 16, [5])
    mask = rng.random(w.shape) > 0.5
    mask[0] = False
    mask[1] = True
    gram_target = w @ damped
    expected = reference_refit(mask, damped, gram_target, factor.dead)
    atol = ROUTE_ATOL[route] * np.abs(expected).max()
    for start in (np.zeros_like(w), w, rng.standard_normal(w.shape) * 100):
        refitted = refit_kept(mask, damped, gram_target, factor.dead, start, route)
        np.testing.assert_allclose(refitted, expected, rtol=0, atol=atol)
    refitted = refit_kept(mask, damped, gram_target, factor.dead, w, route)
    assert np.all(refitted[0] == 0)
    live = ~factor.dead
    np.testing.assert_allclose(refitted[1, live], expected[1, live], atol=1e-6)


@pytest.mark.parametrize("route", ROUTES)
def test_refit_is_exact_when_the_target_is_reachable(route: str) -> None:
    """When w* already lies on the mask, the refit returns it (to the solver's tolerance)."""
    rng, factor, damped, w = refit_case(12, 5, 20, [])
    mask = rng.random(w.shape) > 0.4
    target = np.where(mask, w, 0.0)
    refitted = refit_kept(mask, damped, target @ damped, factor.dead, np.zeros_like(w), route)
    atol = ROUTE_ATOL[route] * np.abs(target).max()
    np.testing.assert_allclose(refitted, target, rtol=0, atol=atol)


def test_a_factor_keeps_the_u_a_solve_formed() -> None:
    """A solve that needs U forms it from T once and the factor keeps it for the next layer."""
    rng = np.random.default_rng(13)
    h = hessian_with_dead(rng, 16, [], tokens=50)
    factor: HessianFactor = sparsegpt_factor(h)
    assert "u" not in factor.__dict__
    w = rng.standard_normal((4, 16)).astype(np.float32)
    sparsegpt(w, factor, 0.5, inplace=True)
    kept = factor.__dict__["u"]
    np.testing.assert_allclose(kept @ factor.t, np.eye(16), rtol=0, atol=1e-4)
    assert factor.u is kept


def test_the_direct_refit_does_not_depend_on_the_thread_count() -> None:
    """Each row is factorised by one thread: the weights are the same bits on 1 and 2 threads.
    Rows keep different numbers of columns, so the work per row differs."""
    rng, factor, damped, w = refit_case(14, 300, 96, [7])
    mask = rng.random(w.shape) < rng.random((w.shape[0], 1))
    gram_target = w @ damped
    found = []
    before = _core.get_num_threads()
    try:
        for threads in (1, 2):
            _core.set_num_threads(threads)
            found.append(refit_kept(mask, damped, gram_target, factor.dead, w, "direct"))
    finally:
        _core.set_num_threads(before)
    np.testing.assert_array_equal(found[0], found[1])
    expected = reference_refit(mask, damped, gram_target, factor.dead)
    np.testing.assert_allclose(found[0], expected, rtol=0, atol=1e-10 * np.abs(expected).max())


def test_refit_chooses_its_route_by_the_work_and_rejects_others(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``route="auto"`` takes the direct route where rows keep few columns and the iterative one
    where each row's factorisation would cost more than the iterative steps (every column of 256
    kept: 256³/3 > 64·256²): both reach the reference. An unknown route is refused by name."""
    rng, factor, damped, w = refit_case(15, 8, 256, [])
    gram_target = w @ damped
    direct = _core.sparsegpt.refit_direct
    calls: list[int] = []

    def counted(*args: Any) -> Any:
        calls.append(1)
        return direct(*args)

    monkeypatch.setattr(_core.sparsegpt, "refit_direct", counted)
    for density, directly in ((0.3, True), (1.0, False)):
        calls.clear()
        mask = rng.random(w.shape) < density
        expected = reference_refit(mask, damped, gram_target, factor.dead)
        refitted = refit_kept(mask, damped, gram_target, factor.dead, w)
        assert bool(calls) == directly
        np.testing.assert_allclose(refitted, expected, rtol=0, atol=1e-5 * np.abs(expected).max())
    with pytest.raises(ValueError, match="route"):
        refit_kept(mask, damped, gram_target, factor.dead, w, "cholesky")


@pytest.mark.parametrize("level", _core.supported_levels())
def test_the_direct_refit_solves_on_every_instruction_set(level: str) -> None:
    """Rows of 150-300 kept columns, so that the factorisation runs its blocked, vectorised
    steps on each level; each level reaches the reference to rounding."""
    rng, factor, damped, w = refit_case(16, 12, 300, [3])
    mask = rng.random(w.shape) < np.linspace(0.5, 1.0, w.shape[0])[:, None]
    gram_target = w @ damped
    expected = reference_refit(mask, damped, gram_target, factor.dead)
    with _core.use(level):
        refitted = refit_kept(mask, damped, gram_target, factor.dead, w, "direct")
    np.testing.assert_allclose(refitted, expected, rtol=0, atol=1e-10 * np.abs(expected).max())


def test_the_direct_refit_checks_its_arguments() -> None:
    _, _, damped, w = refit_case(17, 3, 8, [])
    mask = np.ones(w.shape, dtype=bool)
    dead = np.zeros(8, dtype=bool)
    with pytest.raises(ValueError, match="gram_target"):
        _core.sparsegpt.refit_direct(damped, w[:, :7].copy(), mask, dead)
    with pytest.raises(ValueError, match="dead"):
        _core.sparsegpt.refit_direct(damped, w, mask, dead[:7].copy())
    indefinite = damped.copy()
    indefinite[2, 2] = -1.0
    with pytest.raises(ValueError, match="not positive definite"):
        _core.sparsegpt.refit_direct(indefinite, w, mask, dead)


@pytest.mark.parametrize("route", ROUTES)
def test_refit_converges_on_an_ill_conditioned_hessian(route: str) -> None:
    """Inputs like a language model's: a few directions carry most of the variance and four
    channels are outliers 30x the others, so the damped Hessian's condition number is about 1e4.
    The refit still reaches the exact solution of every row's system."""
    rng = np.random.default_rng(5)
    cols, rows, tokens = 256, 48, 1024
    x = rng.standard_normal((tokens, 12)) @ rng.standard_normal((12, cols))
    x += 0.02 * rng.standard_normal((tokens, cols))
    x[:, :4] *= 30
    h = 2 / tokens * x.T @ x
    factor = sparsegpt_factor(h, precision="float64")
    damped, _ = damped_hessian(h, factor)
    eigenvalues = np.linalg.eigvalsh(damped)
    assert eigenvalues[-1] / eigenvalues[0] > 5e3
    w = rng.standard_normal((rows, cols))
    result = sparsegpt(w, factor, 0.5, precision="float64")
    gram_target = w @ damped
    expected = reference_refit(result.mask, damped, gram_target, factor.dead)
    refitted = refit_kept(result.mask, damped, gram_target, factor.dead, result.weight, route)
    atol = ROUTE_ATOL[route] * np.abs(expected).max()
    np.testing.assert_allclose(refitted, expected, rtol=0, atol=atol)
