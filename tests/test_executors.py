"""Executors: serial here, or Ray tasks (skipped when Ray is not installed)."""

from __future__ import annotations

import numpy as np
import pytest

import fastprune as fp
from fastprune.executors import RayExecutor, SerialExecutor, executor
from fastprune.result import PruneResult


def ray_installed() -> bool:
    try:
        import ray
    except ImportError:
        return False
    return hasattr(ray, "remote")  # not a folder named "ray" on the path


ray_needed = pytest.mark.skipif(not ray_installed(), reason="needs ray")


def solve(shared: np.ndarray, w: np.ndarray, sparsity: float) -> PruneResult:
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
    def solve_here(shared: np.ndarray, w: np.ndarray, sparsity: float) -> PruneResult:
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


# --- prune_model with an executor -----------------------------------------------------------


def _tiny_llama_and_batches():
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    config = transformers.LlamaConfig(
        vocab_size=48, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
    )  # fmt: skip
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config).eval()
    generator = torch.Generator().manual_seed(3)
    batches = [{"input_ids": torch.randint(0, 48, (2, 16), generator=generator)} for _ in range(2)]
    return model, batches


def assert_same_weights(model, reference):
    theirs = reference.state_dict()
    for name, value in model.state_dict().items():
        assert (value == theirs[name]).all(), name


class Recording(SerialExecutor):
    """Runs here, and remembers how many solves each call was given."""

    name = "recording"

    def __init__(self) -> None:
        self.calls: list[int] = []

    def map(self, fn, items, shared=None):
        self.calls.append(len(items))
        return super().map(fn, items, shared)


@pytest.mark.parametrize("method", ["sparsegpt", "wanda"])
def test_prune_model_hands_each_group_of_solves_to_the_executor(method):
    model, batches = _tiny_llama_and_batches()  # skips without torch and transformers
    from fastprune.torch import prune_model

    reference, _ = _tiny_llama_and_batches()
    recording = Recording()
    report = prune_model(model, batches, method=method, executor=recording, progress=False)
    prune_model(reference, batches, method=method, progress=False)
    # per block: q/k/v together, then o, then gate/up together, then down
    assert recording.calls == [3, 1, 2, 1] * 2
    assert report.manifest["options"]["executor"] == "recording"
    assert_same_weights(model, reference)


@ray_needed
@pytest.mark.slow
def test_prune_model_on_ray_is_bit_identical_to_serial():
    model, batches = _tiny_llama_and_batches()  # skips without torch and transformers
    from fastprune.torch import prune_model

    reference, _ = _tiny_llama_and_batches()
    prune_model(
        model, batches, method="sparsegpt", executor=RayExecutor(num_cpus=2), progress=False
    )
    prune_model(reference, batches, method="sparsegpt", progress=False)
    assert_same_weights(model, reference)
