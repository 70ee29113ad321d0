"""Sparsity schedules and per-round sparsity arithmetic (fastprune.schedules), against the
formulas written out here."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import fastprune as fp
from fastprune.schedules import (
    SparsitySchedule,
    kept_per_group,
    rank_pruned_first,
    round_sparsities,
    round_sparsity,
    rounds_to_reach,
)


def zhu_gupta(t: int, s_i: float, s_f: float, t0: int, n: int, dt: int) -> float:
    """The paper's formula for t in {t0, t0 + dt, ..., t0 + n dt}."""
    return s_f + (s_i - s_f) * (1 - (t - t0) / (n * dt)) ** 3


def test_cubic_schedule_matches_zhu_and_gupta_at_every_update() -> None:
    sched = SparsitySchedule(final=0.9, initial=0.1, start=100, end=1100, every=100)
    assert sched.update_steps() == list(range(100, 1101, 100))
    for t in sched.update_steps():
        assert sched.sparsity(t) == pytest.approx(zhu_gupta(t, 0.1, 0.9, 100, 10, 100))
    assert sched.sparsity(0) == 0.0
    assert sched.sparsity(99) == 0.0
    assert sched.sparsity(100) == pytest.approx(0.1)
    assert sched.sparsity(5000) == 0.9


def test_sparsity_is_held_between_updates() -> None:
    sched = SparsitySchedule(final=0.8, start=10, end=50, every=10)
    for t in range(10, 60):
        last = max(u for u in sched.update_steps() if u <= t)
        assert sched.sparsity(t) == sched.sparsity(last)
        assert sched.is_update(t) == (t in sched.update_steps())


def test_end_is_an_update_even_off_the_grid() -> None:
    sched = SparsitySchedule(final=0.5, start=0, end=25, every=10, kind="linear")
    assert sched.update_steps() == [0, 10, 20, 25]
    assert sched.sparsity(24) == pytest.approx(0.5 * 20 / 25)
    assert sched.sparsity(25) == 0.5


def test_linear_and_constant() -> None:
    lin = SparsitySchedule(final=0.6, initial=0.2, start=0, end=4, kind="linear")
    assert [lin.sparsity(t) for t in range(5)] == pytest.approx([0.2, 0.3, 0.4, 0.5, 0.6])
    const = SparsitySchedule(final=0.7, start=3, end=9, every=3, kind="constant")
    assert [const.sparsity(t) for t in range(10)] == [0.0] * 3 + [0.7] * 7


@given(
    st.floats(0, 0.99),
    st.floats(0, 0.99),
    st.integers(0, 50),
    st.integers(0, 200),
    st.integers(1, 30),
    st.sampled_from(["cubic", "linear"]),
)
def test_schedules_only_rise(
    a: float, b: float, start: int, span: int, every: int, kind: str
) -> None:
    initial, final = min(a, b), max(a, b)
    sched = SparsitySchedule(final, initial, start, start + span, every, kind)  # type: ignore[arg-type]
    values = [sched.sparsity(t) for t in range(start + span + 3)]
    assert all(x <= y + 1e-12 for x, y in itertools.pairwise(values))
    assert values[-1] == final


@pytest.mark.parametrize(
    ("kwargs", "error", "needle"),
    [
        ({"final": 1.0}, ValueError, "final"),
        ({"final": 0.5, "initial": 0.6}, ValueError, "initial"),
        ({"final": 0.5, "start": 5, "end": 4}, ValueError, "end"),
        ({"final": 0.5, "every": 0}, ValueError, "every"),
        ({"final": 0.5, "kind": "exp"}, ValueError, "kind"),
        ({"final": 0.5, "start": 1.5}, TypeError, "start"),
        ({"final": "0.5"}, TypeError, "final"),
    ],
)
def test_bad_schedules(kwargs: dict[str, object], error: type[Exception], needle: str) -> None:
    with pytest.raises(error, match=needle):
        SparsitySchedule(**kwargs)  # type: ignore[arg-type]


def test_step_must_be_a_non_negative_int() -> None:
    sched = SparsitySchedule(0.5)
    with pytest.raises(ValueError, match="step"):
        sched.sparsity(-1)
    with pytest.raises(TypeError, match="step"):
        sched.is_update(1.0)  # type: ignore[arg-type]


def test_round_sparsities_compound() -> None:
    assert round_sparsities(0.2, 3) == pytest.approx([0.0, 0.2, 0.36, 0.488])
    assert round_sparsity(0.5, 4) == pytest.approx(0.9375)
    # pruning 20 % of what is left, round after round, by hand
    kept = 1.0
    for r in range(1, 20):
        kept *= 0.8
        assert round_sparsity(0.2, r) == pytest.approx(1 - kept)


@given(st.floats(0.0, 0.99), st.floats(0.01, 0.99))
def test_rounds_to_reach_is_the_least_enough(target: float, rate: float) -> None:
    r = rounds_to_reach(target, rate)
    assert round_sparsity(rate, r) >= target
    assert r == 0 or round_sparsity(rate, r - 1) < target


def test_rounds_to_reach_examples_and_errors() -> None:
    assert rounds_to_reach(0.95, 0.2) == 14  # 0.8**13 = 0.055, 0.8**14 = 0.044
    assert rounds_to_reach(0.0, 0.0) == 0
    with pytest.raises(ValueError, match="rate"):
        rounds_to_reach(0.5, 0.0)


def test_rank_pruned_first_keeps_masks_nested() -> None:
    rng = np.random.default_rng(0)
    w = rng.standard_normal((16, 32)).astype(np.float32)
    scores = np.abs(w)
    first = fp.mask(scores, 0.5, scope="layer")
    # new scores that would prefer some of the pruned weights
    fresh = rng.random((16, 32)).astype(np.float32)
    ranked = rank_pruned_first(fresh, first)
    assert ranked.dtype == np.float64
    assert np.array_equal(ranked[first], fresh[first].astype(np.float64))
    assert ranked[~first].max() < ranked[first].min()
    second = fp.mask(ranked, 0.75, scope="layer")
    assert not (second & ~first).any()  # a subset
    assert int((~second).sum()) == int(16 * 32 * 0.75)
    # without the ranking, the fresh scores revive pruned weights
    assert (fp.mask(fresh, 0.75, scope="layer") & ~first).any()


@pytest.mark.parametrize("pattern", ["3:4", "block:4x4", "row", "column"])
def test_rank_pruned_first_nests_structured_masks(pattern: str) -> None:
    rng = np.random.default_rng(1)
    first_pattern = "3:4" if pattern == "3:4" else pattern
    first = fp.mask(rng.random((16, 32)), 0.25 if pattern != "3:4" else None, first_pattern)
    ranked = rank_pruned_first(rng.random((16, 32)) * 100, first)
    second_pattern = "2:4" if pattern == "3:4" else pattern
    second = fp.mask(ranked, 0.5 if pattern != "3:4" else None, second_pattern)
    assert not (second & ~first).any()
    assert fp.masks.check(second, second_pattern)


def test_rank_pruned_first_with_negative_scores_and_inputs_unchanged() -> None:
    scores = np.array([[-5.0, -1.0, 2.0, -3.0]])
    keep = np.array([[True, False, True, True]])
    before = scores.copy(), keep.copy()
    ranked = rank_pruned_first(scores, keep)
    assert ranked[0, 1] < -5.0
    assert np.array_equal(scores, before[0])
    assert np.array_equal(keep, before[1])
    assert np.array_equal(rank_pruned_first(scores, np.ones_like(keep)), scores)


def test_rank_pruned_first_errors() -> None:
    with pytest.raises(ValueError, match="keep"):
        rank_pruned_first(np.zeros((2, 2)), np.ones((2, 3), dtype=bool))
    with pytest.raises(TypeError, match="keep"):
        rank_pruned_first(np.zeros((2, 2)), np.ones((2, 2)))
    with pytest.raises(TypeError, match="scores"):
        rank_pruned_first(np.zeros((2, 2), dtype=np.int32), np.ones((2, 2), dtype=bool))
    with pytest.raises(ValueError, match="scores"):
        rank_pruned_first(np.array([[np.nan]]), np.ones((1, 1), dtype=bool))


def test_kept_per_group_steps_from_m_to_n() -> None:
    final = 1 - 2 / 4
    assert [kept_per_group(s, 2, 4) for s in (0.0, 0.1, 0.25, 0.3, 0.49, final)] == [
        4,
        4,
        3,
        3,
        3,
        2,
    ]
    for n, m in [(1, 4), (2, 8), (4, 8), (1, 3), (5, 7)]:
        assert kept_per_group(1 - n / m, n, m) == n
        assert kept_per_group(0.99, n, m) == n
        assert kept_per_group(0.0, n, m) == m
    assert math.isclose(1 - kept_per_group(0.5, 2, 4) / 4, 0.5)
    with pytest.raises(ValueError, match="n"):
        kept_per_group(0.5, 5, 4)


def test_schedules_is_exported_without_torch() -> None:
    assert fp.schedules.SparsitySchedule is SparsitySchedule
