"""Timing and reporting shared by the benchmarks.

Each benchmark module exposes ``run(table: Table) -> None`` and adds rows: an operation, a
shape, fastprune's median time, the strongest baseline's median time measured in the same run,
and a throughput. Every row is checked for equality with its baseline before it is timed.
"""

from __future__ import annotations

import functools
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np


def median_time(fn: Callable[[], object], *, repeat: int = 7, min_time: float = 0.2) -> float:
    """Median seconds of one call of `fn`, after a warm-up call."""
    fn()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < repeat or (time.perf_counter() - start < min_time and len(times) < 100):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
        if time.perf_counter() - start > 20 * min_time and len(times) >= 3:
            break
    return statistics.median(times)


def paired_times(
    ours: Callable[[], object], baseline: Callable[[], object], *, pairs: int = 9
) -> tuple[float, float, tuple[float, float]]:
    """Median times of `ours` and `baseline` timed in alternation, and the spread of the ratio.

    Each pair times one call of each, back to back, so both see the same state of a shared
    machine: on 2 cores a busy neighbour halves a threaded kernel but barely slows a
    single-threaded baseline, which moved the ratio of separately timed medians by 5x between
    runs. The spread is the (min, max) of the per-pair ratios baseline / ours.
    """
    ours()
    baseline()
    t_ours: list[float] = []
    t_base: list[float] = []
    for _ in range(pairs):
        t0 = time.perf_counter()
        ours()
        t1 = time.perf_counter()
        baseline()
        t2 = time.perf_counter()
        t_ours.append(t1 - t0)
        t_base.append(t2 - t1)
    ratios = [b / o for o, b in zip(t_ours, t_base, strict=True)]
    return statistics.median(t_ours), statistics.median(t_base), (min(ratios), max(ratios))


@dataclass
class Row:
    operation: str
    shape: str
    threads: int
    ours: float
    baseline_name: str
    baseline: float | None
    rate: str = ""
    spread: tuple[float, float] | None = None  # (min, max) of paired ratios, when paired

    @property
    def ratio(self) -> str:
        if self.baseline is None:
            return ""
        text = f"{self.baseline / self.ours:.2f}x"
        if self.spread is not None:
            text += f" ({self.spread[0]:.1f}-{self.spread[1]:.1f})"
        return text


@dataclass
class Table:
    rows: list[Row] = field(default_factory=list)

    def add(self, row: Row) -> None:
        self.rows.append(row)
        print(_format_row(row), flush=True)

    def markdown(self) -> str:
        head = (
            "| operation | shape | threads | fastprune | baseline | baseline time | speed-up "
            "| rate |"
        )
        sep = "|---|---|---:|---:|---|---:|---:|---|"
        lines = [head, sep]
        for r in self.rows:
            base = "" if r.baseline is None else fmt_time(r.baseline)
            lines.append(
                f"| {r.operation} | {r.shape} | {r.threads} | {fmt_time(r.ours)} | "
                f"{r.baseline_name} | {base} | {r.ratio} | {r.rate} |"
            )
        return "\n".join(lines)


def _format_row(r: Row) -> str:
    base = "" if r.baseline is None else fmt_time(r.baseline)
    return (
        f"{r.operation:<34} {r.shape:<22} {r.threads:>2}  {fmt_time(r.ours):>9}  "
        f"{r.baseline_name:<24} {base:>9}  {r.ratio:>8}  {r.rate}"
    )


def fmt_time(seconds: float) -> str:
    if seconds < 1e-3:
        return f"{seconds * 1e6:.0f} us"
    if seconds < 1:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds:.2f} s"


def gflops(flops: float, seconds: float) -> str:
    return f"{flops / seconds / 1e9:.0f} GFLOP/s"


def time_against_sgemm(
    fn: Callable[[], object], flops: float, *, repeat: int = 5
) -> tuple[float, str]:
    """Median seconds of one call of `fn`, and its rate as a share of NumPy's SGEMM rate.

    Every call of `fn` is followed at once by an SGEMM timing; the rate shown is `flops` over
    the median time (the time the table shows), as a share of the median of those SGEMM rates:
    on a shared machine the rate drifts by 10-20 % within seconds, so an SGEMM rate measured
    once, or well before or after, would flatter or wrong the calls timed in a slower or a
    faster stretch. Each SGEMM is followed by a pause: NumPy's OpenBLAS threads keep spinning
    for about 0.1 s after a call, and a call timed inside that window shares its cores with
    them (25-50 % slower here). The machine is slow for a while after such a pause (in medians
    over 15 pauses, a first call took 1.4 times as long as the next for a calibration update and
    1.4-1.7 times for NumPy's SGEMM), so each timed call of `fn` follows an untimed one, as each
    SGEMM timing does.
    """
    times: list[float] = []
    sgemm_rates: list[float] = []
    for _ in range(repeat):
        fn()
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
        sgemm_rates.append(sgemm_gflops(repeat=3))
        time.sleep(_OPENBLAS_SPIN)
    seconds, sgemm = statistics.median(times), statistics.median(sgemm_rates)
    share = flops / seconds / 1e9 / sgemm
    text = f"{gflops(flops, seconds)} ({100 * share:.0f} % of SGEMM at {sgemm:.0f} beside it)"
    return seconds, text


def gbps(nbytes: float, seconds: float) -> str:
    return f"{nbytes / seconds / 1e9:.1f} GB/s"


_SGEMM_SIDE = 2048
_OPENBLAS_SPIN = 0.3  # seconds, more than NumPy's OpenBLAS threads spin after a call


@functools.cache
def _sgemm_operands() -> list[np.ndarray[Any, Any]]:
    rng = np.random.default_rng(0)
    shape = (_SGEMM_SIDE, _SGEMM_SIDE)
    return [rng.standard_normal(shape, dtype=np.float32) for _ in range(2)]


def sgemm_gflops(repeat: int = 5) -> float:
    """NumPy's float32 matmul rate (2048-square operands) measured now, in GFLOP/s."""
    a, b = _sgemm_operands()
    return 2 * _SGEMM_SIDE**3 / median_time(lambda: a @ b, repeat=repeat, min_time=0.0) / 1e9


@functools.cache
def machine_limits() -> dict[str, float]:
    """The machine's limits at the start of the run: NumPy SGEMM rate and copy bandwidth."""
    rng = np.random.default_rng(0)
    big = rng.standard_normal(64 * 2**20 // 4, dtype=np.float32)
    out = np.empty_like(big)
    t_copy = median_time(lambda: np.copyto(out, big), repeat=7)
    return {"sgemm_gflops": sgemm_gflops(), "copy_gbps": 2 * big.nbytes / t_copy / 1e9}


def torch_or_none() -> Any:
    """The torch module when it is installed, else None (baselines that need it are skipped)."""
    try:
        import torch
    except ImportError:
        return None
    return torch
