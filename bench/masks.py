"""Mask selection: a 2:4 mask and a per-row 50 % mask of float32 scores.

Baselines, measured in the same run:
- NumPy: ``np.argpartition`` per group of 4 (2:4) or per row (50 %) and a scatter, the best
  plain NumPy approach (single-threaded, ties broken arbitrarily).
- torch: ``topk`` of each group of 4 + ``scatter_`` (2:4), and Wanda's per-row 50 % mask,
  ``torch.sort(stable=True)`` + ``scatter_`` (ties broken by index, like fastprune).

Every baseline's mask is checked against fastprune's before timing: identical, or (for the
baselines whose tie order is arbitrary) differing only by which of several equal scores was
pruned. The rate is the bytes moved (4-byte scores read + 1-byte mask written) per second.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

import fastprune

from ._harness import Row, Table, gbps, median_time, torch_or_none

SHAPES = [(4096, 4096), (11008, 4096)]


def numpy_2_of_4(s: np.ndarray) -> np.ndarray:
    rows, cols = s.shape
    groups = s.reshape(rows, cols // 4, 4)
    lowest = np.argpartition(groups, 1, axis=2)[:, :, :2]
    keep = np.ones(groups.shape, dtype=bool)
    np.put_along_axis(keep, lowest, False, axis=2)
    return keep.reshape(rows, cols)


def numpy_per_row(s: np.ndarray, pruned: int) -> np.ndarray:
    lowest = np.argpartition(s, pruned - 1, axis=1)[:, :pruned]
    keep = np.ones(s.shape, dtype=bool)
    np.put_along_axis(keep, lowest, False, axis=1)
    return keep


def torch_2_of_4(torch: Any, s: Any) -> Any:
    rows, cols = s.shape
    groups = s.view(rows, cols // 4, 4)
    lowest = torch.topk(groups, 2, dim=-1, largest=False).indices
    pruned = torch.zeros(groups.shape, dtype=torch.bool).scatter_(-1, lowest, True)
    return pruned.view(rows, cols)


def torch_wanda_per_row(torch: Any, s: Any, pruned: int) -> Any:
    """Wanda's unstructured mask: stable sort of each row, the first `pruned` indices."""
    order = torch.sort(s, dim=-1, stable=True)[1]
    mask = torch.zeros_like(s, dtype=torch.bool)
    mask.scatter_(1, order[:, :pruned], True)
    return mask


def same_up_to_ties(scores: np.ndarray, ours: np.ndarray, theirs: np.ndarray, name: str) -> None:
    """Raise unless the masks prune the same multiset of scores in every row."""
    rows = np.flatnonzero((ours != theirs).any(axis=1))
    for r in rows:
        mine = np.sort(scores[r][~ours[r]])
        other = np.sort(scores[r][~theirs[r]])
        if mine.shape != other.shape or not np.array_equal(mine, other):
            msg = f"{name}: mask differs from fastprune's in row {r} beyond tie-breaking"
            raise AssertionError(msg)


def identical(ours: np.ndarray, theirs: np.ndarray, name: str) -> None:
    if not np.array_equal(ours, theirs):
        msg = f"{name}: mask differs from fastprune's"
        raise AssertionError(msg)


def add(
    table: Table,
    operation: str,
    shape: tuple[int, int],
    ours: float,
    name: str,
    fn: Callable[[], object],
    repeat: int,
) -> None:
    baseline = median_time(fn, repeat=repeat, min_time=0.0)
    rate = gbps(5 * shape[0] * shape[1], ours)
    table.add(
        Row(
            operation,
            f"{shape[0]}x{shape[1]}",
            fastprune.get_num_threads(),
            ours,
            name,
            baseline,
            rate,
        )
    )


def run(table: Table) -> None:
    rng = np.random.default_rng(0)
    for shape in SHAPES:
        run_shape(table, np.abs(rng.standard_normal(shape, dtype=np.float32)))


def run_shape(table: Table, scores: np.ndarray) -> None:
    torch = torch_or_none()
    shape = (scores.shape[0], scores.shape[1])
    pruned = shape[1] // 2

    ours_24 = fastprune.mask(scores, pattern="2:4")
    same_up_to_ties(scores, ours_24, numpy_2_of_4(scores), "numpy argpartition 2:4")
    t_24 = median_time(lambda: fastprune.mask(scores, pattern="2:4"), repeat=15)
    add(table, "mask 2:4", shape, t_24, "numpy argpartition", lambda: numpy_2_of_4(scores), 3)
    if torch is not None:
        t = torch.from_numpy(scores)
        same_up_to_ties(scores, ours_24, ~torch_2_of_4(torch, t).numpy(), "torch topk 2:4")
        add(table, "mask 2:4", shape, t_24, "torch topk+scatter", lambda: torch_2_of_4(torch, t), 5)

    ours_row = fastprune.mask(scores, 0.5)
    same_up_to_ties(scores, ours_row, numpy_per_row(scores, pruned), "numpy per-row 50%")
    t_row = median_time(lambda: fastprune.mask(scores, 0.5), repeat=11)
    numpy_row = "numpy argpartition"
    add(
        table, "mask 50% per row", shape, t_row, numpy_row, lambda: numpy_per_row(scores, pruned), 3
    )
    if torch is not None:
        t = torch.from_numpy(scores)
        identical(ours_row, ~torch_wanda_per_row(torch, t, pruned).numpy(), "torch sort")
        wanda = "torch stable sort (Wanda)"
        add(
            table,
            "mask 50% per row",
            shape,
            t_row,
            wanda,
            lambda: torch_wanda_per_row(torch, t, pruned),
            3,
        )
