"""Streaming calibration: accumulating Σ x xᵀ (and Σ x²) over activation tokens.

What is timed is one more batch streamed into statistics that already exist, the step repeated
for every calibration batch: ``Calibration.update(X)`` against what a user writes with NumPy,
``S += X.T @ X`` (NumPy hands ``X.T @ X`` to BLAS SYRK) and ``sq += np.square(X).sum(0)``.
Rates count the n·k² flops of a symmetric rank-n update of a k x k matrix (half a GEMM's
2·n·k²), and their share of SGEMM is measured as ``_harness.time_against_sgemm`` describes.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable

import numpy as np

import fastprune
from fastprune import _core

from ._harness import Row, Table, gflops, median_time, time_against_sgemm

CASES = [(4096, 8192), (1024, 8192)]


def run(table: Table) -> None:
    rng = np.random.default_rng(0)
    for features, tokens in CASES:
        _run_case(table, rng.standard_normal((tokens, features), dtype=np.float32))


def _numpy_stats(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return x.T @ x, np.square(x).sum(0)


def _update(
    stats: _NumpyStats, convert: Callable[[np.ndarray], np.ndarray], batch: np.ndarray
) -> None:
    stats.update(convert(batch))


class _NumpyStats:
    """The NumPy baseline of a streaming accumulator."""

    def __init__(self, features: int) -> None:
        self.gram = np.zeros((features, features), np.float32)
        self.act_sq = np.zeros(features, np.float32)

    def update(self, x: np.ndarray) -> None:
        self.gram += x.T @ x
        self.act_sq += np.square(x).sum(0)


def _run_case(table: Table, x: np.ndarray) -> None:
    tokens, features = x.shape
    flops = float(tokens) * features * features
    gram, act_sq = _numpy_stats(x)
    scale = float(np.abs(gram).max())
    x16 = x.astype(np.float16)
    rows: list[tuple[str, np.ndarray, bool, str, Callable[[np.ndarray], np.ndarray]]] = [
        ("calibration update, float32", x, False, "numpy S += X.T@X, Σx²", lambda b: b),
        ("  same, Eigen only", x, True, "numpy S += X.T@X, Σx²", lambda b: b),
        (
            "  Fortran-ordered float32",
            np.asfortranarray(x),
            False,
            "numpy S += X.T@X, Σx²",
            lambda b: b,
        ),
        (
            "  float16 input",
            x16,
            False,
            "numpy astype, S += X.T@X, Σx²",
            lambda b: b.astype(np.float32),
        ),
    ]
    for operation, batch, eigen_only, baseline_name, convert in rows:
        reference = _NumpyStats(features)
        t_baseline = median_time(functools.partial(_update, reference, convert, batch), repeat=3)
        with _core.eigen_only() if eigen_only else contextlib.nullcontext():
            cal = fastprune.Calibration(features)
            cal.update(batch)  # checked before it is timed
            tol = 1e-3 if batch.dtype == np.float16 else 1e-5
            np.testing.assert_allclose(cal.hessian * (tokens / 2), gram, atol=tol * scale)
            np.testing.assert_allclose(cal.act_sq, act_sq, rtol=tol)
            t_ours, ours_rate = time_against_sgemm(functools.partial(cal.update, batch), flops)
        rate = f"{ours_rate} vs {gflops(flops, t_baseline)}"
        threads = fastprune.get_num_threads()
        table.add(
            Row(operation, f"{tokens}x{features}", threads, t_ours, baseline_name, t_baseline, rate)
        )
