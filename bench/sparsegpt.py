"""SparseGPT against a faithful PyTorch implementation of the published loop.

The baseline follows the paper's reference code step by step: dead columns, relative damping,
``torch.linalg.cholesky`` + ``torch.cholesky_inverse`` + an upper Cholesky for ``U``, per block a
``torch.sort`` threshold (unstructured) or a ``torch.topk`` per group of m (N:M), per-column
rank-1 OBS updates inside the block and one matmul for the columns after it. Rates count
``r·c² + ⅔c³`` flops. 4096×4096 and 11008×4096 run by default; ``BENCH_QUICK=1`` leaves out
11008×4096.
Small layers (1024×1024 and 384×384) are also timed on every thread against one thread, the two
in alternation: the thread count is chosen per size, so more threads must never make them slower.
"""

from __future__ import annotations

import functools
import os
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np

import fastprune

from ._harness import Row, Table, gflops, median_time, time_against_sgemm, torch_or_none


def torch_sparsegpt(
    torch: Any, weight: Any, hessian: Any, sparsity: float, pruned_of_m: tuple[int, int]
) -> tuple[Any, Any]:
    """The reference SparseGPT loop in PyTorch, its loss bookkeeping included; returns (weight,
    pruned mask). `pruned_of_m` is (weights PRUNED per group, m) as in the reference code, (0, 0)
    for unstructured."""
    prunen, prunem = pruned_of_m
    blocksize, percdamp = 128, 0.01
    w = weight.clone().float()
    h = hessian.clone()
    columns = w.shape[1]
    dead = torch.diag(h) == 0
    h[dead, dead] = 1
    w[:, dead] = 0
    damp = percdamp * torch.mean(torch.diag(h))
    diag = torch.arange(columns)
    h[diag, diag] += damp
    h = torch.linalg.cholesky(h)
    h = torch.cholesky_inverse(h)
    hinv = torch.linalg.cholesky(h, upper=True)
    pruned = torch.zeros_like(w, dtype=torch.bool)
    losses = torch.zeros(w.shape[0])
    for i1 in range(0, columns, blocksize):
        i2 = min(i1 + blocksize, columns)
        count = i2 - i1
        w1 = w[:, i1:i2].clone()
        q1 = torch.zeros_like(w1)
        err1 = torch.zeros_like(w1)
        losses1 = torch.zeros_like(w1)
        hinv1 = hinv[i1:i2, i1:i2]
        if prunen == 0:
            tmp = w1**2 / (torch.diag(hinv1).reshape((1, -1))) ** 2
            thresh = torch.sort(tmp.flatten())[0][int(tmp.numel() * sparsity)]
            mask1 = tmp <= thresh
        else:
            mask1 = torch.zeros_like(w1, dtype=torch.bool)
        for i in range(count):
            col = w1[:, i]
            d = hinv1[i, i]
            if prunen != 0 and i % prunem == 0:
                tmp = (
                    w1[:, i : i + prunem] ** 2
                    / (torch.diag(hinv1)[i : i + prunem].reshape((1, -1))) ** 2
                )
                mask1.scatter_(1, i + torch.topk(tmp, prunen, dim=1, largest=False)[1], True)
            q = col.clone()
            q[mask1[:, i]] = 0
            q1[:, i] = q
            losses1[:, i] = (col - q) ** 2 / d**2
            err = (col - q) / d
            w1[:, i:] -= err.unsqueeze(1).matmul(hinv1[i, i:].unsqueeze(0))
            err1[:, i] = err
        w[:, i1:i2] = q1
        losses += torch.sum(losses1, 1) / 2
        pruned[:, i1:i2] = mask1
        w[:, i2:] -= err1.matmul(hinv[i1:i2, i2:])
    return w, pruned


def calibration_hessian(rng: np.random.Generator, columns: int) -> np.ndarray[Any, Any]:
    """H = 2/N XᵀX of correlated, unevenly scaled activations (N = columns + 512 tokens)."""
    tokens = columns + 512
    latent = rng.standard_normal((tokens, columns // 8), dtype=np.float32)
    mixing = rng.standard_normal((columns // 8, columns), dtype=np.float32) / np.float32(8.0)
    x = latent @ mixing + rng.standard_normal((tokens, columns), dtype=np.float32)
    x *= np.exp(rng.normal(0.0, 0.5, columns)).astype(np.float32)
    hessian: np.ndarray[Any, Any] = (np.float32(2.0 / tokens) * (x.T @ x)).astype(np.float32)
    return hessian


def run(table: Table) -> None:
    torch = torch_or_none()
    threads = fastprune.get_num_threads()
    shapes = [(4096, 4096)]
    if os.environ.get("BENCH_QUICK") != "1":
        shapes.append((11008, 4096))
    rng = np.random.default_rng(0)
    hessians: dict[int, np.ndarray[Any, Any]] = {}
    for rows, cols in shapes:
        if cols not in hessians:
            hessians[cols] = calibration_hessian(rng, cols)
        h = hessians[cols]
        w = rng.standard_normal((rows, cols), dtype=np.float32)
        flops = rows * cols**2 + 2 / 3 * cols**3
        for pattern, pruned_of_m in (("unstructured", (0, 0)), ("2:4", (2, 4))):
            label = "50 %" if pattern == "unstructured" else pattern
            ours = fastprune.sparsegpt(w, h, 0.5, pattern)
            baseline_time = None
            if torch is not None:
                torch.set_num_threads(threads)
                tw, th = torch.from_numpy(w), torch.from_numpy(h)
                ref_w, ref_pruned = torch_sparsegpt(torch, tw, th, 0.5, pruned_of_m)
                _check_agreement(w, h, ours, ref_w.numpy(), ~ref_pruned.numpy(), pattern)
                baseline_time = median_time(
                    functools.partial(torch_sparsegpt, torch, tw, th, 0.5, pruned_of_m), repeat=3
                )
            ours_time, rate = time_against_sgemm(
                functools.partial(fastprune.sparsegpt, w, h, 0.5, pattern), flops
            )
            table.add(
                Row(
                    f"sparsegpt {label}",
                    f"{rows}x{cols}",
                    threads,
                    ours_time,
                    "torch SparseGPT loop",
                    baseline_time,
                    rate,
                )
            )
    if threads > 1:
        _thread_scaling(table, rng, threads)


def _thread_scaling(table: Table, rng: np.random.Generator, threads: int) -> None:
    for size in (1024, 384):
        h = calibration_hessian(rng, size)
        w = rng.standard_normal((size, size), dtype=np.float32)
        flops = size**3 + 2 / 3 * size**3
        for pattern in ("unstructured", "2:4"):
            label = "50 %" if pattern == "unstructured" else pattern
            solve = functools.partial(fastprune.sparsegpt, w, h, 0.5, pattern)
            one, ours = _alternating_medians(solve, threads)
            table.add(
                Row(
                    f"sparsegpt {label}",
                    f"{size}x{size}",
                    threads,
                    ours,
                    "fastprune on 1 thread",
                    one,
                    gflops(flops, ours),
                )
            )


def _alternating_medians(
    solve: Callable[[], object], threads: int, *, rounds: int = 15, seconds: float = 2.0
) -> tuple[float, float]:
    """Median seconds of `solve` on one thread and on `threads`, the two timed in alternation
    (a call each per round, after a warm-up of each) so that the machine's drift reaches both.
    At least `rounds` rounds, and more until `seconds` have passed (at most 1000): a few rounds
    of a call of a few milliseconds would catch the machine's bursts rather than the medians."""
    times: dict[int, list[float]] = {1: [], threads: []}
    start = time.perf_counter()
    try:
        round_ = 0
        while round_ <= rounds or (time.perf_counter() - start < seconds and round_ <= 1000):
            for count in (1, threads):
                fastprune.set_num_threads(count)
                t0 = time.perf_counter()
                solve()
                if round_ > 0:
                    times[count].append(time.perf_counter() - t0)
            round_ += 1
    finally:
        fastprune.set_num_threads(threads)
    return statistics.median(times[1]), statistics.median(times[threads])


def _check_agreement(
    weight: np.ndarray[Any, Any],
    hessian: np.ndarray[Any, Any],
    ours: fastprune.result.PruneResult,
    ref_weight: np.ndarray[Any, Any],
    ref_kept: np.ndarray[Any, Any],
    pattern: str,
) -> None:
    """Our result must agree with the baseline's before either is timed: nearly the same mask
    (the reference prunes `<= sorted[k]`, a few more than the exact count, and float32 rounding
    flips near-ties) and the same reconstruction error on the calibration data to within 1 %."""
    agreement = float(np.mean(ours.mask == ref_kept))
    if agreement < 0.99:
        msg = f"sparsegpt {pattern}: masks agree on only {agreement:.4f} of the weights"
        raise AssertionError(msg)
    ours_error = output_error(weight, ours.weight, hessian)
    ref_error = output_error(weight, ref_weight, hessian)
    if abs(ours_error - ref_error) > 0.01 * ref_error:
        msg = f"sparsegpt {pattern}: output error {ours_error:.5f} vs baseline {ref_error:.5f}"
        raise AssertionError(msg)


def output_error(
    weight: np.ndarray[Any, Any], pruned: np.ndarray[Any, Any], hessian: np.ndarray[Any, Any]
) -> float:
    """||W X - W' X|| / ||W X|| on the calibration tokens, from H = 2/N XᵀX."""
    change = weight - pruned
    return float(np.sqrt(np.sum((change @ hessian) * change) / np.sum((weight @ hessian) * weight)))
