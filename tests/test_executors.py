"""Executors: serial here, or Ray tasks (skipped when Ray is not installed)."""

from __future__ import annotations

import numpy as np
import pytest

import fastprune as fp
from fastprune.executors import RayExecutor, SerialExecutor, executor


def ray_installed() -> bool:
    try:
        import ray
    except ImportError:
        return False
    return hasattr(ray, "remote")  # not a folder named "ray" on the path


ray_needed = pytest.mark.skipif(not ray_installed(), reason="needs ray")


def solve(shared: np.ndarray, w: np.ndarray, sparsity: float) -> fp.PruneResult:
    return fp.sparsegpt(w, shared, sparsity=sparsity)


def items(seed: int = 0) -> tuple[np.ndarray, list[tuple[np.ndarray, float]]]:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((200, 24))
    hessian = 2 / 200 * x.T @ x
    return hessian, [(rng.standard_normal((8, 24)).astype(np.float32), s) for s in (0.3, 0.5, 0.7)]


def test_serial_executor_maps_in_order():
    hessian, work = items()
    results = SerialExecutor().map(solve, work, shared=hessian)
    for (w, s), result in zip(work, results, strict=True):
        expected = fp.sparsegpt(w, hessian, sparsity=s)
        np.testing.assert_array_equal(result.weight, expected.weight)


def test_executor_specs():
    assert isinstance(executor(None), SerialExecutor)
    assert isinstance(executor("serial"), SerialExecutor)
    mine = SerialExecutor()
    assert executor(mine) is mine
    with pytest.raises(ValueError, match="executor"):
        executor("dask")
    with pytest.raises(TypeError, match="executor"):
        executor(3)


@pytest.mark.skipif(ray_installed(), reason="ray is installed")
def test_ray_missing_says_how_to_install():
    with pytest.raises(ImportError, match=r"fastprune\[ray\]"):
        executor("ray")


@ray_needed
@pytest.mark.slow
def test_ray_executor_gives_the_serial_results_bit_for_bit():
    def solve_here(shared: np.ndarray, w: np.ndarray, sparsity: float) -> fp.PruneResult:
        # defined here so that Ray sends the function itself, not a reference to this module
        return fp.sparsegpt(w, shared, sparsity=sparsity)

    hessian, work = items(1)
    ray_results = RayExecutor(num_cpus=2).map(solve_here, work, shared=hessian)
    serial = SerialExecutor().map(solve_here, work, shared=hessian)
    for a, b in zip(ray_results, serial, strict=True):
        np.testing.assert_array_equal(a.weight, b.weight)
        np.testing.assert_array_equal(a.mask, b.mask)
    with pytest.raises(ValueError, match="cpus_per_task"):
        RayExecutor(cpus_per_task=0)
