"""Sparsity over time: schedules for pruning during training, and per-round sparsity arithmetic.

Pruning while training raises the sparsity in steps instead of all at once. Two families are
described here, without torch, so that :mod:`fastprune.torch.training` only has to apply them:

- :class:`SparsitySchedule` — gradual pruning during training (Zhu & Gupta 2017, "To prune, or
  not to prune"): the sparsity rises from ``initial`` to ``final`` between steps ``start`` and
  ``end``, the mask being updated every ``every`` steps. ``"cubic"`` is the paper's
  ``s_t = s_f + (s_i − s_f)(1 − (t − t0)/(t1 − t0))³`` (fast at first, slow near the end, when
  fewer weights are left to absorb the loss), ``"linear"`` rises at a constant rate, and
  ``"constant"`` prunes to ``final`` at ``start`` and holds it.
- Iterative pruning in rounds (the lottery-ticket procedure, Frankle & Carbin 2019): each round
  prunes a fraction ``rate`` of the weights *still kept*, so after ``r`` rounds the sparsity is
  ``1 − (1 − rate)^r`` (:func:`round_sparsity`, :func:`round_sparsities`,
  :func:`rounds_to_reach`).

Masks only shrink in both: :func:`rank_pruned_first` turns importance scores into scores in
which every weight already pruned ranks below every weight still kept, so that
:func:`fastprune.mask` at a higher sparsity keeps a subset of the previous mask for every
pattern (unstructured, N:M, Block, Row, Column) whose blocks the previous mask respected.
:func:`kept_per_group` gives the K of the K:M step a gradual N:M schedule is at.

Every number of weights follows :func:`fastprune.mask`: a sparsity ``s`` prunes
``int(total * s)`` of ``total`` items.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from ._arrays import FloatArray, bool_array, check_finite, check_sparsity, float_dtype, to_numpy

ScheduleKind = Literal["cubic", "linear", "constant"]
KINDS: tuple[str, ...] = ("cubic", "linear", "constant")

__all__ = [
    "KINDS",
    "SparsitySchedule",
    "kept_per_group",
    "rank_pruned_first",
    "round_sparsities",
    "round_sparsity",
    "rounds_to_reach",
]


@dataclass(frozen=True)
class SparsitySchedule:
    """The target sparsity at every training step of gradual pruning.

    Args:
        final: the sparsity reached at step ``end`` and held afterwards, in ``[0, 1)``.
        initial: the sparsity of the first update, at step ``start`` (cubic and linear).
        start: the first step at which the mask is updated (``t0``); the model is dense before.
        end: the step at which ``final`` is reached (``t1 >= t0``).
        every: the mask is updated at ``start, start + every, ...`` up to ``end``, and at
            ``end`` itself (``Δt``); the sparsity is held between updates.
        kind: ``"cubic"`` (Zhu & Gupta), ``"linear"`` or ``"constant"`` (``final`` from
            ``start`` on; ``initial`` is not used).

    Steps are counted from 0, one per optimizer step.
    """

    final: float
    initial: float = 0.0
    start: int = 0
    end: int = 0
    every: int = 1
    kind: ScheduleKind = "cubic"

    def __post_init__(self) -> None:
        final = check_sparsity(self.final, "final")
        initial = check_sparsity(self.initial, "initial")
        start = _step(self.start, "start")
        end = _step(self.end, "end")
        every = _step(self.every, "every")
        if every < 1:
            msg = f"every: expected a positive number of steps, got {self.every!r}"
            raise ValueError(msg)
        if end < start:
            msg = f"end: must be >= start ({start}), got {end}"
            raise ValueError(msg)
        if self.kind not in KINDS:
            msg = f"kind: expected one of {', '.join(map(repr, KINDS))}, got {self.kind!r}"
            raise ValueError(msg)
        if self.kind != "constant" and initial > final:
            msg = f"initial: must be <= final ({final}) so that sparsity only rises, got {initial}"
            raise ValueError(msg)
        for name, value in (
            ("final", final),
            ("initial", initial),
            ("start", start),
            ("end", end),
            ("every", every),
        ):
            object.__setattr__(self, name, value)

    def is_update(self, step: int) -> bool:
        """Whether the mask is (re)computed at `step`."""
        t = _step(step, "step")
        if t < self.start or t > self.end:
            return False
        return (t - self.start) % self.every == 0 or t == self.end

    def update_steps(self) -> list[int]:
        """Every step at which the mask is updated, in order."""
        steps = list(range(self.start, self.end + 1, self.every))
        if steps[-1] != self.end:
            steps.append(self.end)
        return steps

    def sparsity(self, step: int) -> float:
        """The sparsity the mask has at `step`: 0 before ``start``; the value of the last
        update at or before `step` afterwards (so it changes only at update steps)."""
        t = _step(step, "step")
        if t < self.start:
            return 0.0
        if t >= self.end:
            return self.final
        last_update = self.start + (t - self.start) // self.every * self.every
        return self._curve(last_update)

    def _curve(self, t: int) -> float:
        if self.kind == "constant":
            return self.final
        span = self.end - self.start
        progress = 1.0 if span == 0 else (t - self.start) / span
        if self.kind == "linear":
            return self.initial + (self.final - self.initial) * progress
        return self.final + (self.initial - self.final) * (1.0 - progress) ** 3


def round_sparsity(rate: float, rounds: int) -> float:
    """The sparsity after `rounds` rounds that each prune `rate` of the weights still kept:
    ``1 − (1 − rate)^rounds``."""
    p = check_sparsity(rate, "rate")
    r = _step(rounds, "rounds")
    return 1.0 - (1.0 - p) ** r


def round_sparsities(rate: float, rounds: int) -> list[float]:
    """The sparsity before the first round (0) and after each of `rounds` rounds."""
    r = _step(rounds, "rounds")
    return [round_sparsity(rate, i) for i in range(r + 1)]


def rounds_to_reach(target: float, rate: float) -> int:
    """How many rounds of pruning `rate` of the remaining weights reach at least `target`."""
    s = check_sparsity(target, "target")
    p = check_sparsity(rate, "rate")
    if s == 0.0:
        return 0
    if p == 0.0:
        msg = f"rate: a rate of 0 never reaches sparsity {s}"
        raise ValueError(msg)
    rounds = math.ceil(math.log1p(-s) / math.log1p(-p))
    # log rounding may land one round off either way; settle it with the formula itself
    while rounds > 0 and round_sparsity(p, rounds - 1) >= s:
        rounds -= 1
    while round_sparsity(p, rounds) < s:
        rounds += 1
    return rounds


def rank_pruned_first(scores: Any, keep: Any) -> FloatArray:
    """`scores` in float64, with every pruned weight (`keep` False) ranked below every kept one.

    The pruned entries are set to ``(min − (|min| + 1)) · size``, with min the lowest kept
    score: finite, below every kept score, and low enough that a block holding a pruned entry
    sums below any block of kept ones. So :func:`fastprune.mask` at a sparsity at least that of
    `keep` prunes them first and the new mask keeps a subset of `keep`, for unstructured and N:M
    masks and for Block, Row and Column masks when `keep` prunes whole blocks. Neither argument
    is modified.

    Raises:
        TypeError: non-float scores or a non-bool mask.
        ValueError: shapes that differ, NaN or Inf in the scores.
    """
    s = to_numpy(scores, "scores")
    float_dtype(s, "scores")
    k = bool_array(keep, "keep")
    if s.shape != k.shape:
        msg = f"keep: shape {k.shape} does not match scores shape {s.shape}"
        raise ValueError(msg)
    out = np.array(s, dtype=np.float64)
    check_finite(out, "scores")
    if k.all():
        return out
    kept = out[k]
    lowest = float(kept.min()) if kept.size else 0.0
    floor = (lowest - (abs(lowest) + 1.0)) * max(int(out.size), 1)
    out[~k] = floor
    return out


def kept_per_group(sparsity: float, n: int, m: int) -> int:
    """K of the K:M pattern a gradual N:M schedule uses at `sparsity`: ``m − ⌊m·s⌋``, never
    below `n` (so the schedule's final sparsity ``1 − n/m`` gives N:M itself)."""
    s = check_sparsity(sparsity)
    if isinstance(n, bool) or isinstance(m, bool) or not 1 <= n <= m:
        msg = f"n: expected 1 <= n <= m, got n={n!r}, m={m!r}"
        raise ValueError(msg)
    # 1e-9 absorbs the rounding of s = 1 - n/m (m * s may come out just below an integer)
    return max(n, m - math.floor(m * s + 1e-9))


def _step(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        msg = f"{name}: expected an int, got {value!r}"
        raise TypeError(msg)
    if int(value) < 0:
        msg = f"{name}: expected a non-negative int, got {value!r}"
        raise ValueError(msg)
    return int(value)
