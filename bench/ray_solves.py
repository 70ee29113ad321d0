"""Independent SparseGPT solves fanned out with Ray: 2 workers against 1, and against serial.

    python -m bench.ray_solves [--layers 8] [--rows 1536] [--cols 1536] [--json FILE]

The solves of one calibrated group (a shared Hessian, several weights) through
``fastprune.executors``: serial in this process on one thread, then a local Ray with one and
with two workers of one CPU each (Ray sets each task's thread count to its CPUs). Each timing is
the median of three maps after one untimed map, which also starts Ray's workers. Results are
checked bit-identical to the serial ones. Needs the ``ray`` extra.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

import fastprune as fp
from fastprune.executors import RayExecutor, SerialExecutor


def solve(hessian: np.ndarray[Any, Any], w: np.ndarray[Any, Any], sparsity: float) -> Any:
    return fp.sparsegpt(w, hessian, sparsity=sparsity)


def timed(executor: Any, items: list[tuple[Any, ...]], hessian: np.ndarray[Any, Any]) -> Any:
    results = executor.map(solve, items, shared=hessian)
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        executor.map(solve, items, shared=hessian)
        times.append(time.perf_counter() - t0)
    return statistics.median(times), results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.ray_solves", description=__doc__)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--rows", type=int, default=1536)
    parser.add_argument("--cols", type=int, default=1536)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    try:
        import ray
    except ImportError:
        print('skipped: needs the ray extra (pip install "fastprune[ray]")')
        return 0
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4 * args.cols, args.cols)).astype(np.float32)
    hessian = (2 / x.shape[0]) * (x.T @ x)
    items = [
        (rng.standard_normal((args.rows, args.cols)).astype(np.float32), 0.5)
        for _ in range(args.layers)
    ]
    fp.set_num_threads(1)
    serial_s, reference = timed(SerialExecutor(), items, hessian)
    rows = {"serial, 1 thread": serial_s}
    for workers in (1, 2):
        ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False)
        seconds, results = timed(RayExecutor(), items, hessian)
        ray.shutdown()
        for a, b in zip(results, reference, strict=True):
            assert np.array_equal(a.weight, b.weight) and np.array_equal(a.mask, b.mask)
        rows[f"ray, {workers} worker{'s' if workers > 1 else ''}"] = seconds
    print(f"{args.layers} solves of {args.rows}x{args.cols} at 50 %, one shared Hessian")
    print("| executor | seconds | vs serial | vs 1 worker |")
    print("|---|---:|---:|---:|")
    one = rows["ray, 1 worker"]
    for name, seconds in rows.items():
        print(f"| {name} | {seconds:.2f} | {serial_s / seconds:.2f}x | {one / seconds:.2f}x |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
