"""Sparse formats: conversions against scipy.sparse and torch, matmul against numpy and scipy.

LLM-layer shapes: a 4096 x 4096 float32 weight at 50 / 70 / 90 % unstructured sparsity and
2:4, times a dense 4096 x k right-hand side for k = 1, 8, 128. Every result is checked against
its baseline before it is timed.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import scipy.sparse as sp

import fastprune as fp

from ._harness import Row, Table, gbps, gflops, median_time, paired_times, torch_or_none

N = 4096
KS = (1, 8, 128)


def _weights(rng: np.random.Generator, sparsity: float) -> np.ndarray:
    w = rng.standard_normal((N, N), dtype=np.float32)
    w[rng.random((N, N)) < sparsity] = 0
    return w


def _two_of_four(rng: np.random.Generator) -> np.ndarray:
    w = rng.standard_normal((N, N), dtype=np.float32).reshape(N, N // 4, 4)
    keep = np.zeros(w.shape, bool)
    keep[..., :2] = True
    return np.where(rng.permuted(keep, axis=2), w, 0).reshape(N, N)


def _conversions(table: Table, w: np.ndarray, label: str, threads: int) -> None:
    shape = f"{N}x{N} {label}"
    ours = fp.CSR.from_dense(w)
    ref = sp.csr_matrix(w)
    assert np.array_equal(ours.indices, ref.indices) and np.array_equal(ours.data, ref.data)
    t_ours, t_ref, spread = paired_times(lambda: fp.CSR.from_dense(w), lambda: sp.csr_matrix(w))
    rate = gbps(w.nbytes, t_ours)
    table.add(
        Row("dense -> CSR", shape, threads, t_ours, "scipy csr_matrix(dense)", t_ref, rate, spread)
    )
    t_ours, t_ref, spread = paired_times(ours.to_dense, ref.toarray)
    rate = gbps(w.nbytes, t_ours)
    table.add(Row("CSR -> dense", shape, threads, t_ours, "scipy .toarray()", t_ref, rate, spread))
    torch: Any = torch_or_none()
    if torch is not None:
        tw = torch.from_numpy(w)
        with warnings.catch_warnings():  # torch's one-time "sparse CSR is in beta" note
            warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
            assert np.array_equal(tw.to_sparse_csr().col_indices().numpy(), ours.indices)
        t_ours, t_ref, spread = paired_times(lambda: fp.CSR.from_dense(w), tw.to_sparse_csr)
        table.add(
            Row("dense -> CSR", shape, threads, t_ours, "torch .to_sparse_csr()", t_ref, "", spread)
        )
    t_ours, t_ref, spread = paired_times(
        lambda: fp.Bitmask.from_dense(w), lambda: (np.packbits(w != 0, axis=1), w[w != 0])
    )
    baseline = "numpy packbits + w[w!=0]"
    rate = gbps(w.nbytes, t_ours)
    table.add(Row("dense -> Bitmask", shape, threads, t_ours, baseline, t_ref, rate, spread))


def _matmuls(
    table: Table,
    a: fp.SparseMatrix,
    w: np.ndarray,
    label: str,
    threads: int,
    rng: np.random.Generator,
    scipy_too: bool,
) -> None:
    ref = sp.csr_matrix(w) if scipy_too else None
    for k in KS:
        x = rng.standard_normal((N, k), dtype=np.float32)
        if k == 1:
            x = x[:, 0]
        y = a @ x
        expected = w @ x
        assert np.allclose(y, expected, rtol=1e-3, atol=1e-3 * float(np.abs(expected).max()))
        t_ours = median_time(lambda: a @ x)  # noqa: B023 - timed right here
        t_dense = median_time(lambda: w @ x)  # noqa: B023
        shape = f"{N}x{N} {label} @ {N}x{k}"
        useful = 2.0 * a.nnz * k
        rate = f"{gflops(useful, t_ours)}, {gbps(a.nbytes, t_ours)}"
        table.add(
            Row(
                f"{type(a).__name__} @ x",
                shape,
                threads,
                t_ours,
                "numpy dense w @ x",
                t_dense,
                rate,
            )
        )
        if ref is not None:
            t_ref = median_time(lambda: ref @ x)  # noqa: B023
            table.add(
                Row(f"{type(a).__name__} @ x", shape, threads, t_ours, "scipy csr @ x", t_ref, rate)
            )


def run(table: Table) -> None:
    rng = np.random.default_rng(0)
    threads = fp.get_num_threads()
    for sparsity in (0.5, 0.7, 0.9):
        w = _weights(rng, sparsity)
        label = f"{round(sparsity * 100)}%"
        if sparsity != 0.7:
            _conversions(table, w, label, threads)
        _matmuls(table, fp.CSR.from_dense(w), w, label, threads, rng, scipy_too=True)
    w = _two_of_four(rng)
    nm = fp.NMCompressed.from_dense(w, 2, 4)
    t_ours = median_time(lambda: fp.NMCompressed.from_dense(w, 2, 4), repeat=5)
    table.add(
        Row(
            "dense -> 2:4 compressed", f"{N}x{N}", threads, t_ours, "", None, gbps(w.nbytes, t_ours)
        )
    )
    _matmuls(table, nm, w, "2:4", threads, rng, scipy_too=False)
