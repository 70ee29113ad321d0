"""Sparse linear layers: PackedLinear.linear (x @ W.T) against dense torch F.linear and NumPy.

LLM-layer shapes 4096 x 4096 and 11008 x 4096 at 2:4 and at 70 % and 90 % unstructured
sparsity: float32 weights for k = 1, 4, 16 and 128 rows of x (decoding, small batches,
prefill), and bfloat16 weights (float32 products) for k = 1, 4 and 16 against torch's bfloat16
``F.linear`` (NumPy has no bfloat16 product).
The three products are timed in turns (ours, torch, NumPy, ours, ...) and each time is the
median of its own calls: the machine may be shared, and interleaving gives every contender the
same stretches of load. The rate column gives our bandwidth (bytes of the packed weight over
time) and our speed-up as a share of the bytes-read limit, dense weight bytes / packed weight
bytes (x and y are negligible beside the weights at these k). Every weight is packed with
``layout="auto"`` (`fastprune.sparse.choose_layout`), named in the operation column.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np

import fastprune as fp

from ._harness import Row, Table, gbps, torch_or_none

SHAPES = ((4096, 4096), (11008, 4096))
KS = (1, 4, 16, 128)
BF16_KS = (1, 4, 16)
PATTERNS = ("2:4", "70%", "90%")


def weight(rng: np.random.Generator, shape: tuple[int, int], pattern: str) -> np.ndarray:
    rows, cols = shape
    w = rng.standard_normal(shape, dtype=np.float32)
    if pattern == "2:4":
        keep = np.zeros((rows, cols // 4, 4), bool)
        keep[..., :2] = True
        return np.where(rng.permuted(keep, axis=2).reshape(shape), w, 0)
    w[rng.random(shape) < int(pattern[:-1]) / 100] = 0
    return w


def interleaved(fns: list[Callable[[], object]], *, rounds: int, min_time: float) -> list[float]:
    """Median seconds of each function, called in turns after one warm-up call each."""
    for fn in fns:
        fn()
    times: list[list[float]] = [[] for _ in fns]
    start = time.perf_counter()
    while len(times[0]) < rounds or (
        time.perf_counter() - start < min_time and len(times[0]) < 200
    ):
        for fn, bucket in zip(fns, times, strict=True):
            t0 = time.perf_counter()
            fn()
            bucket.append(time.perf_counter() - t0)
    return [statistics.median(t) for t in times]


def run(table: Table) -> None:
    torch: Any = torch_or_none()
    rng = np.random.default_rng(0)
    threads = fp.get_num_threads()
    if torch is not None:
        torch.set_num_threads(threads)
    for shape in SHAPES:
        for pattern in PATTERNS:
            w = weight(rng, shape, pattern)
            _float32_rows(table, torch, rng, w, f"{shape[0]}x{shape[1]} {pattern}", threads)
            if torch is not None:
                _bfloat16_rows(table, torch, rng, w, f"{shape[0]}x{shape[1]} {pattern}", threads)


def _float32_rows(
    table: Table, torch: Any, rng: np.random.Generator, w: np.ndarray, label: str, threads: int
) -> None:
    packed = fp.PackedLinear.from_dense(w, layout="auto")
    limit = w.nbytes / packed.nbytes
    tw = None if torch is None else torch.from_numpy(w)
    for k in KS:
        x = rng.standard_normal((k, w.shape[1]), dtype=np.float32)
        _check(packed.linear(x), x, w)
        fns: list[Callable[[], object]] = [lambda: packed.linear(x), lambda: x @ w.T]  # noqa: B023
        if tw is not None:
            tx = torch.from_numpy(x)
            fns.append(lambda: torch.nn.functional.linear(tx, tw))  # noqa: B023
        with _inference(torch):
            t = interleaved(fns, rounds=9, min_time=1.0)
        for name, base in zip(("torch F.linear", "numpy x @ W.T"), t[2:] + t[1:2], strict=False):
            _add(table, f"{label} x {k}", threads, t[0], f"{name} dense", base, packed, limit)


def _bfloat16_rows(
    table: Table, torch: Any, rng: np.random.Generator, w: np.ndarray, label: str, threads: int
) -> None:
    packed = fp.PackedLinear.from_dense(w, "bfloat16", layout="auto")
    tw = torch.from_numpy(w).to(torch.bfloat16)
    limit = w.size * 2 / packed.nbytes
    rounded = tw.float().numpy()
    for k in BF16_KS:
        x = rng.standard_normal((k, w.shape[1]), dtype=np.float32)
        _check(packed.linear(x), x, rounded)
        tx = torch.from_numpy(x).to(torch.bfloat16)
        fns: list[Callable[[], object]] = [
            lambda: packed.linear(x),  # noqa: B023
            lambda: torch.nn.functional.linear(tx, tw),  # noqa: B023
        ]
        with _inference(torch):
            t = interleaved(fns, rounds=9, min_time=1.0)
        row_label = f"{label} bf16 x {k}"
        _add(table, row_label, threads, t[0], "torch F.linear bf16 dense", t[1], packed, limit)


def _check(y: np.ndarray, x: np.ndarray, w: np.ndarray) -> None:
    expected = x.astype(np.float64) @ w.T.astype(np.float64)
    assert np.allclose(y, expected, rtol=1e-4, atol=1e-4 * float(np.abs(expected).max()))


def _add(
    table: Table,
    label: str,
    threads: int,
    ours: float,
    baseline: str,
    base: float,
    packed: fp.PackedLinear,
    limit: float,
) -> None:
    share = base / ours / limit
    rate = f"{gbps(packed.nbytes, ours)}, limit {limit:.2f}x, {100 * share:.0f} % of it"
    operation = f"PackedLinear.linear ({packed.layout})"
    table.add(Row(operation, label, threads, ours, baseline, base, rate))


class _inference:
    """torch.inference_mode when torch is there, else nothing."""

    def __init__(self, torch: Any) -> None:
        self.mode = None if torch is None else torch.inference_mode()

    def __enter__(self) -> None:
        if self.mode is not None:
            self.mode.__enter__()

    def __exit__(self, *exc: object) -> None:
        if self.mode is not None:
            self.mode.__exit__(*exc)
