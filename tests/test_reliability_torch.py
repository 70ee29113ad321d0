"""prune_model under failure and between-block transforms: no half-pruned models, no silently
wrong calibration, errors in the user's terms."""

from __future__ import annotations

import copy

import numpy as np
import pytest

torch = pytest.importorskip("torch")
nn = torch.nn

from fastprune.torch import prune_model  # noqa: E402

D = 16
VOCAB = 40


class Block(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.up = nn.Linear(d, 2 * d)
        self.down = nn.Linear(2 * d, d)

    def forward(self, x):
        return x + self.down(torch.relu(self.up(x)))


class Scaled(nn.Module):
    """Four blocks; the model's forward scales and shifts the hidden states between them, so a
    block's raw output is not the next block's input."""

    def __init__(self, between: bool = True) -> None:
        super().__init__()
        self.emb = nn.Embedding(VOCAB, D)
        self.layers = nn.ModuleList([Block(D) for _ in range(4)])
        self.between = between

    def forward(self, input_ids):
        x = self.emb(input_ids)
        for block in self.layers:
            x = block(x)
            if self.between:
                x = 3.0 * x + 1.0
        return x


def model(between: bool = True, seed: int = 0) -> Scaled:
    torch.manual_seed(seed)
    return Scaled(between)


def data(n: int = 3) -> list[tuple[torch.Tensor]]:
    gen = torch.Generator().manual_seed(1)
    return [(torch.randint(0, VOCAB, (4, 10), generator=gen),) for _ in range(n)]


def weights(m: nn.Module) -> dict[str, np.ndarray]:
    return {k: v.detach().numpy().copy() for k, v in m.state_dict().items()}


@pytest.mark.parametrize("sequential", [True, "block"])
@pytest.mark.parametrize("method", ["sparsegpt", "wanda"])
def test_each_block_is_calibrated_on_what_the_models_forward_hands_it(sequential, method):
    # By hand: prune what comes before, then calibrate the next layers (a block, or one layer
    # in true-sequential mode) in one real forward pass of the model, which applies the
    # scaling: sequential mode must give the same weights.
    own = {"method": method, "reconstruct": "layer", "progress": False, "refit": False}
    got = model()
    prune_model(got, data(), sequential=sequential, **own)
    by_hand = model()
    steps = [["up", "down"]] if sequential == "block" else [["up"], ["down"]]
    for k in range(4):
        for step in steps:
            only = {f"layers.{k}.{layer}" for layer in step}
            ignore = [n for n, m in by_hand.named_modules() if isinstance(m, nn.Linear)]
            ignore = [n for n in ignore if n not in only]
            prune_model(by_hand, data(), ignore=ignore, sequential=False, **own)
    for name, value in weights(by_hand).items():
        np.testing.assert_allclose(weights(got)[name], value, rtol=1e-5, atol=1e-6)


def test_chained_blocks_still_replay_outputs():
    # Without the transform, replaying block outputs is exact: the same result as by hand.
    own = {"method": "sparsegpt", "reconstruct": "layer", "progress": False, "refit": False}
    got = model(between=False)
    prune_model(got, data(), sequential="block", **own)
    by_hand = model(between=False)
    for k in range(4):
        ignore = [f"layers.{j}.*" for j in range(4) if j != k]
        prune_model(by_hand, data(), ignore=ignore, sequential=False, **own)
    for name, value in weights(by_hand).items():
        np.testing.assert_allclose(weights(got)[name], value, rtol=1e-5, atol=1e-6)


def test_reconstruct_dense_is_refused_when_blocks_are_not_chained():
    m = model()
    before = weights(m)
    with pytest.raises(ValueError, match=r"reconstruct: 'dense'.*between its blocks"):
        prune_model(m, data(), reconstruct="dense", progress=False)
    assert all(np.array_equal(before[k], v) for k, v in weights(m).items())
    # "auto" falls back to fitting each layer's own output and records it
    report = prune_model(model(), data(), progress=False)
    assert report.manifest["options"]["reconstruct"] == "layer"


class NaNAfter(nn.Module):
    """Makes block 3's input NaN on the calibration data."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = model(between=False)
        self.inner.layers[2].down.bias.data[:] = float("nan")

    def forward(self, input_ids):
        return self.inner(input_ids)


@pytest.mark.parametrize("sequential", [True, "block", False])
def test_a_failure_part_way_leaves_the_model_as_it_was(sequential):
    m = NaNAfter()
    before = weights(m)
    with pytest.raises(ValueError, match="NaN") as info:
        prune_model(m, data(), method="sparsegpt", sequential=sequential, progress=False)
    message = str(info.value)
    assert message.startswith("layer inner.layers.3.up (block 3): its calibration input contains")
    assert "x:" not in message  # not the name of an argument the user never passed
    after = weights(m)
    for name, value in before.items():
        np.testing.assert_array_equal(after[name], value)  # NaN compares equal here
    assert m.training  # the training mode is put back too


def test_an_interrupt_part_way_restores_the_pruned_layers():
    m = model()
    before = weights(m)
    calls = {"n": 0}

    def interrupt(_module, _args):
        calls["n"] += 1
        if calls["n"] > 1:
            raise KeyboardInterrupt

    handle = m.layers[2].up.register_forward_pre_hook(interrupt)
    with pytest.raises(KeyboardInterrupt):
        prune_model(m, data(), method="wanda", progress=False)
    handle.remove()
    for name, value in weights(m).items():
        np.testing.assert_array_equal(value, before[name])


def test_a_layer_that_cannot_be_pruned_is_named_with_its_block():
    m = model(between=False)
    m.layers[1].up.weight.data[0, 0] = float("inf")
    before = weights(m)
    with pytest.raises(ValueError, match=r"layer layers\.1\.up \(block 1\): weight: contains"):
        prune_model(m, data(), method="magnitude", progress=False)
    for name, value in weights(m).items():
        np.testing.assert_array_equal(value, before[name])


@pytest.mark.parametrize("given", ["model", None, 3, copy])
def test_a_model_that_is_not_a_module_is_refused(given):
    with pytest.raises(TypeError, match=r"model: expected a torch\.nn\.Module"):
        prune_model(given, data())
