"""SparseLinear, sparsify and densify against dense torch layers and a float64 reference."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

import fastprune as fp  # noqa: E402
from fastprune.torch import SparseLinear, densify, sparsify  # noqa: E402

EPS = float(np.finfo(np.float32).eps)


def pruned_linear(rows: int, cols: int, density: float, seed: int, bias: bool = True) -> nn.Linear:
    generator = torch.Generator().manual_seed(seed)
    layer = nn.Linear(cols, rows, bias=bias)
    with torch.no_grad():
        keep = torch.rand(rows, cols, generator=generator) < density
        layer.weight.mul_(keep)
    return layer


def reference(layer: nn.Linear, x: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    w = layer.weight.detach().double().numpy()
    x64 = x.double().numpy()
    y = x64 @ w.T
    bound = 2 * (w.shape[1] / 16 + 9) * EPS * (np.abs(x64) @ np.abs(w).T)
    if layer.bias is not None:
        y = y + layer.bias.detach().double().numpy()
        bound = bound + EPS * np.abs(y)
    return y, bound


LAYOUTS = ("bitmask", "indices")


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("shape", [(17, 33), (64, 128), (1, 5)])
@pytest.mark.parametrize("tokens", [(1,), (3,), (2, 5)])
def test_sparse_linear_matches_float64(
    shape: tuple[int, int], tokens: tuple[int, ...], layout: str
) -> None:
    layer = pruned_linear(*shape, density=0.4, seed=1)
    sparse = SparseLinear.from_linear(layer, layout)
    assert sparse.layout == layout
    x = torch.randn(*tokens, shape[1])
    with torch.inference_mode():
        got = sparse(x)
    assert got.shape == (*tokens, shape[0]) and got.dtype == torch.float32
    exact, bound = reference(layer, x.reshape(-1, shape[1]))
    diff = np.abs(got.reshape(-1, shape[0]).numpy() - exact)
    assert np.all(diff <= bound + 1e-30)


def test_auto_layout_follows_the_density() -> None:
    assert SparseLinear.from_linear(pruned_linear(32, 64, 0.5, seed=11)).layout == "bitmask"
    sparse = SparseLinear.from_linear(pruned_linear(32, 64, 0.1, seed=11))
    assert sparse.layout == "indices"
    assert {n for n, _ in sparse.named_buffers()} == {"indices", "offsets", "values"}
    assert "layout=indices" in repr(sparse)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_no_grad_and_autograd_error(layout: str) -> None:
    layer = pruned_linear(8, 16, 0.5, seed=2)
    sparse = SparseLinear.from_linear(layer, layout)
    x = torch.randn(2, 16)
    with torch.no_grad():
        a = sparse(x)
    with torch.inference_mode():
        b = sparse(x)
    assert torch.equal(a, b)
    xg = x.clone().requires_grad_(True)
    y = sparse(xg)  # through the registered operator (eager inference calls the kernel directly)
    assert torch.equal(y.detach(), a)
    assert torch.equal(OPERATORS[layout](x, *sparse_buffers(sparse)) + layer.bias, a)
    with pytest.raises(RuntimeError, match="no backward"):
        y.sum().backward()


OPERATORS = {
    "bitmask": torch.ops.fastprune.packed_linear,
    "indices": torch.ops.fastprune.indexed_linear,
}


def sparse_buffers(sparse: SparseLinear) -> tuple[object, ...]:
    structure = sparse.mask if sparse.layout == "bitmask" else sparse.indices
    return structure, sparse.offsets, sparse.values, sparse.out_features


@pytest.mark.parametrize("layout", LAYOUTS)
def test_custom_op_schema_and_fake_tensor(layout: str) -> None:
    sparse = SparseLinear.from_linear(pruned_linear(8, 40, 0.5, seed=3), layout)
    torch.library.opcheck(
        OPERATORS[layout].default,
        (torch.randn(3, 40), *sparse_buffers(sparse)),
        test_utils=("test_schema", "test_faketensor"),
    )


@pytest.mark.parametrize("layout", LAYOUTS)
def test_bfloat16_layer_round_trips_exactly(layout: str) -> None:
    layer = pruned_linear(12, 48, 0.3, seed=4).to(torch.bfloat16)
    sparse = SparseLinear.from_linear(layer, layout)
    assert sparse.values.dtype == torch.int16
    x = torch.randn(4, 48).to(torch.bfloat16)
    with torch.inference_mode():
        got = sparse(x)
    assert got.dtype == torch.bfloat16
    expected = (x.float() @ layer.weight.float().T + layer.bias.float()).to(torch.bfloat16)
    torch.testing.assert_close(got, expected, rtol=1e-2, atol=1e-2)
    back = sparse.to_linear()
    assert back.weight.dtype == torch.bfloat16 and torch.equal(back.weight, layer.weight)


def model() -> nn.Module:
    return nn.Sequential(
        pruned_linear(32, 64, 0.5, seed=5),
        nn.ReLU(),
        pruned_linear(64, 32, 0.1, seed=6, bias=False),
        nn.ReLU(),
        pruned_linear(10, 64, 1.0, seed=7),  # not pruned: left alone
    )


def test_sparsify_then_densify_is_exact() -> None:
    net = model()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    x = torch.randn(5, 64)
    with torch.inference_mode():
        dense_out = net(x)
    report = sparsify(net, format="packed")
    assert report.swapped == ["0", "2"]
    assert isinstance(net[0], SparseLinear) and isinstance(net[2], SparseLinear)
    assert type(net[4]) is nn.Linear
    with torch.inference_mode():
        sparse_out = net(x)
    torch.testing.assert_close(sparse_out, dense_out, rtol=1e-5, atol=1e-5)
    assert densify(net) == 2
    after = net.state_dict()
    assert before.keys() == after.keys()
    for k, v in before.items():
        assert torch.equal(v, after[k]), k
    assert all(type(m) is not SparseLinear for m in net.modules())


def test_sparsify_auto_measures_and_obeys_min_speedup() -> None:
    net = model()
    report = sparsify(net, min_speedup=1e9, repeat=2)
    assert report.swapped == [] and len(report.layers) == 2
    assert all(d.dense_seconds > 0 and d.sparse_seconds > 0 for d in report.layers)
    assert "0 of 2" in str(report)
    report = sparsify(net, min_speedup=0.0, repeat=2)
    assert report.swapped == ["0", "2"]


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="format:"):
        sparsify(model(), format="csr")
    with pytest.raises(TypeError, match="model:"):
        sparsify("not a model")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="model:"):
        densify(3)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="linear:"):
        SparseLinear.from_linear(nn.Linear(4, 4).double())
    sparse = SparseLinear.from_linear(pruned_linear(4, 8, 0.5, seed=8))
    x = torch.randn(1, 8)
    x[0, 1] = float("inf")
    with pytest.raises(ValueError, match="x:"):
        sparse(x)


def test_packed_round_trip() -> None:
    layer = pruned_linear(6, 20, 0.5, seed=9)
    sparse = SparseLinear.from_linear(layer)
    packed = sparse.packed()
    assert isinstance(packed, fp.PackedLinear)
    assert np.array_equal(packed.to_dense(), layer.weight.detach().numpy())


def test_replaced_buffers_are_used_and_module_pickles(tmp_path: object) -> None:
    # the forward pass reads NumPy views of the buffers made once; replacing a buffer (as
    # load_state_dict(assign=True) or a manual assignment does) must make new ones
    layer = pruned_linear(12, 40, 0.5, seed=10, bias=False)
    sparse = SparseLinear.from_linear(layer)
    x = torch.randn(3, 40)
    with torch.inference_mode():
        first = sparse(x)
    sparse.values = sparse.values * 2
    with torch.inference_mode():
        doubled = sparse(x)
    torch.testing.assert_close(doubled, 2 * first)
    path = f"{tmp_path}/layer.pt"
    torch.save(sparse, path)
    loaded = torch.load(path, weights_only=False)
    assert loaded._views is None
    with torch.inference_mode():
        assert torch.equal(loaded(x), doubled)


def test_sparsify_times_layers_in_model_order(monkeypatch: pytest.MonkeyPatch) -> None:
    # every layer is measured in each pass over the model, dense ones before sparse ones
    net = model()
    calls: list[str] = []
    dense_linear = torch.nn.functional.linear

    def linear(x: torch.Tensor, weight: torch.Tensor, bias: object = None) -> torch.Tensor:
        calls.append(f"dense{weight.shape[0]}")
        return dense_linear(x, weight, bias)

    sparse_forward = SparseLinear.forward

    def forward(self: SparseLinear, x: torch.Tensor) -> torch.Tensor:
        calls.append(f"sparse{self.out_features}")
        return sparse_forward(self, x)

    monkeypatch.setattr(torch.nn.functional, "linear", linear)
    monkeypatch.setattr(SparseLinear, "forward", forward)
    sparsify(net, min_speedup=1e9, repeat=2)
    assert calls == ["dense32", "dense64", "sparse32", "sparse64"] * 3  # warm-up + 2 timed
