"""fastprune.torch.prune on tiny synthetic models: which layers and blocks, prune_model
(sequential calibration, patterns, bad arguments), reconstructing dense outputs and refitting."""

from __future__ import annotations

import copy

import numpy as np
import pytest

torch = pytest.importorskip("torch")
nn = torch.nn

import fastprune as fp  # noqa: E402
from _torch_toy import BLOCK_LAYERS, VOCAB, D, batches, names, toy, weights  # noqa: E402
from fastprune.torch import prune_model, resolve_blocks, select_layers  # noqa: E402

# --- which layers, which blocks --------------------------------------------------------------


def test_blocks_are_found_named_or_given():
    model = toy()
    found, name = resolve_blocks(model, None)
    assert name == "layers"
    assert found == list(model.layers)
    assert resolve_blocks(model, "layers")[0] == list(model.layers)
    assert resolve_blocks(model, [model.layers[1]])[0] == [model.layers[1]]
    with pytest.raises(ValueError, match="blocks: the model has no submodule 'encoder'"):
        resolve_blocks(model, "encoder")
    with pytest.raises(ValueError, match="blocks: 'head' is a Linear"):
        resolve_blocks(model, "head")
    plain = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    assert resolve_blocks(plain, None) == ([plain], "(whole model)")


def test_only_layers_inside_the_blocks_are_selected_and_ignore_takes_globs():
    model = toy()
    chosen = select_layers(model, list(model.layers), (nn.Linear,), ["*.attn.o", "layers.1.up"])
    assert [(block, name) for block, name, _ in chosen] == [
        *((0, n) for n in names(0) if not n.endswith("attn.o")),
        *((1, n) for n in names(1) if not n.endswith(("attn.o", "up"))),
    ]
    with pytest.raises(TypeError, match="targets"):
        select_layers(model, list(model.layers), (int,), [])


# --- prune_model -----------------------------------------------------------------------------


def _nm_ok(w: np.ndarray, n: int, m: int) -> bool:
    groups = (w != 0).reshape(w.shape[0], -1, m)
    return bool((groups.sum(-1) <= n).all())


@pytest.mark.parametrize("method", ["sparsegpt", "wanda", "magnitude"])
@pytest.mark.parametrize("pattern", ["unstructured", "2:4"])
def test_every_block_layer_is_pruned_and_the_rest_untouched(method, pattern):
    model = toy()
    before = weights(model)
    report = prune_model(model, batches(), method=method, sparsity=0.5, pattern=pattern)
    after = weights(model)
    pruned = names(0) + names(1)
    assert [layer.name for layer in report.layers] == pruned
    np.testing.assert_array_equal(after["head"], before["head"])
    for layer in report.layers:
        w = after[layer.name]
        assert layer.shape == w.shape
        assert layer.pattern == pattern
        assert layer.sparsity == 0.5
        assert np.count_nonzero(w == 0) == w.size // 2
        if pattern == "2:4":
            assert _nm_ok(w, 2, 4)
        if method == "magnitude":  # kept weights keep their values
            np.testing.assert_array_equal(w[w != 0], before[layer.name][w != 0])
    assert report.sparsity == 0.5
    assert report.manifest["method"] == method
    assert report.manifest["options"]["pattern"] == pattern


def test_sparsegpt_beats_magnitude_on_the_calibration_outputs():
    data = batches(n=4)
    dense = toy()
    outputs = {}
    for method in ("magnitude", "sparsegpt"):
        model = toy()
        prune_model(model, data, method=method, sparsity=0.5, progress=False)
        outputs[method] = [model(**b).detach() for b in data]
    reference = [dense(**b).detach() for b in data]

    def error(outs):
        return sum(float(((o - r) ** 2).sum()) for o, r in zip(outs, reference, strict=True))

    assert error(outputs["sparsegpt"]) < error(outputs["magnitude"])


def test_padding_tokens_do_not_change_the_result():
    results = []
    for fill in (0, 7):
        model = toy()
        prune_model(model, batches(pad_fill=fill), method="sparsegpt", progress=False)
        results.append(weights(model))
    for name in names(0) + names(1):
        np.testing.assert_array_equal(results[0][name], results[1][name])


def test_sequential_calibrates_each_block_on_the_pruned_blocks_before_it():
    data = batches()
    own = {"method": "sparsegpt", "reconstruct": "layer", "progress": False}
    sequential = toy()
    report = prune_model(sequential, data, sequential="block", **own)
    one_pass = toy()
    prune_model(one_pass, data, sequential=False, **own)
    # by hand: prune block 0, then calibrate block 1 on that half-pruned model
    by_hand = toy()
    prune_model(by_hand, data, ignore=["layers.1.*"], sequential="block", **own)
    prune_model(by_hand, data, ignore=["layers.0.*"], sequential=False, **own)
    seq, flat, manual = weights(sequential), weights(one_pass), weights(by_hand)
    for name in names(0):
        np.testing.assert_array_equal(seq[name], flat[name])
    for name in names(0) + names(1):
        np.testing.assert_allclose(seq[name], manual[name], rtol=1e-5, atol=1e-6)
    assert any(not np.array_equal(seq[n], flat[n]) for n in names(1))
    groups = {layer.name: layer.group for layer in report.layers}
    assert groups["layers.0.attn.q"] == groups["layers.0.attn.k"] == groups["layers.0.attn.v"]
    assert len({groups[n] for n in names(0)}) == 4
    tokens = sum(int(b["attention_mask"].sum()) for b in data)
    assert report.manifest["calibration"]["tokens"] == tokens
    assert all(layer.tokens == tokens for layer in report.layers)


GROUPS_IN_ORDER = (("attn.q", "attn.k", "attn.v"), ("attn.o",), ("up",), ("down",))


@pytest.mark.parametrize("method", ["sparsegpt", "wanda"])
def test_sequential_calibrates_each_group_on_the_pruned_groups_called_before_it(method):
    data = batches()
    own = {"method": method, "reconstruct": "layer", "progress": False}
    sequential = toy()
    report = prune_model(sequential, data, **own)
    # by hand: one group at a time, in execution order, each calibrated in one pass of the
    # whole model whose earlier groups are already pruned
    by_hand = toy()
    every = [f"layers.{b}.{layer}" for b in (0, 1) for layer in BLOCK_LAYERS]
    for block in (0, 1):
        for group in GROUPS_IN_ORDER:
            chosen = {f"layers.{block}.{layer}" for layer in group}
            rest = [name for name in every if name not in chosen]
            prune_model(by_hand, data, ignore=rest, sequential=False, **own)
    per_block = toy()
    prune_model(per_block, data, sequential="block", **own)
    seq, manual, blockwise = weights(sequential), weights(by_hand), weights(per_block)
    for name in every:
        np.testing.assert_allclose(seq[name], manual[name], rtol=1e-5, atol=1e-6)
    assert not np.array_equal(seq["layers.0.attn.o"], blockwise["layers.0.attn.o"])
    assert [layer.name for layer in report.layers] == every
    assert report.manifest["options"]["sequential"] is True
    groups = [layer.group for layer in report.layers]
    assert groups == [0, 0, 0, 1, 2, 3, 4, 4, 4, 5, 6, 7]


class _ReusedUp(torch.nn.Module):
    """A block that calls one layer twice, on different inputs, with another layer between."""

    def __init__(self) -> None:
        super().__init__()
        self.up = torch.nn.Linear(D, D)
        self.mid = torch.nn.Linear(D, D)
        self.down = torch.nn.Linear(D, D)

    def forward(self, x, attention_mask=None):
        h = torch.tanh(self.mid(torch.tanh(self.up(x))))
        return (x + self.down(self.up(h)),)


class _ReusedUpModel(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.emb = torch.nn.Embedding(VOCAB, D)
        self.layers = torch.nn.ModuleList([_ReusedUp(), _ReusedUp()])

    def forward(self, input_ids, attention_mask):
        x = self.emb(input_ids)
        for block in self.layers:
            x = block(x, attention_mask=attention_mask)[0]
        return x


@pytest.mark.parametrize("make", [toy, _ReusedUpModel], ids=["toy", "layer-called-twice"])
@pytest.mark.parametrize("method", ["sparsegpt", "wanda"])
def test_calibration_passes_stop_once_their_layers_inputs_are_known(monkeypatch, make, method):
    import fastprune.torch._layers as layers_module

    def run(stop_early):
        model = make()
        calls = {}
        for name, module in model.named_modules():
            if name.endswith("down"):
                module.register_forward_hook(  # counts the calls that ran
                    lambda *_, name=name: calls.__setitem__(name, calls.get(name, 0) + 1)
                )
        original = layers_module.Calibrator

        def calibrator(*args, **kwargs):
            return original(*args, **{**kwargs, "stop_early": stop_early and kwargs["stop_early"]})

        monkeypatch.setattr(layers_module, "Calibrator", calibrator)
        report = prune_model(model, batches(), method=method, progress=False)
        monkeypatch.undo()
        return weights(model), calls, report

    stopped, stopped_calls, report = run(True)
    whole, whole_calls, whole_report = run(False)
    for name in whole:
        np.testing.assert_array_equal(stopped[name], whole[name], err_msg=name)
    assert report.work["block_passes"] == whole_report.work["block_passes"]
    assert report.work["passes_stopped_early"] > 0 == whole_report.work["passes_stopped_early"]
    # the passes that calibrate the layers before `down` end before reaching it
    assert whole_calls
    assert all(stopped_calls[name] < whole_calls[name] for name in whole_calls)


def test_the_second_groups_hessian_comes_from_the_pruned_first_group():
    data = batches()
    dense = toy()
    model = toy()
    report = prune_model(model, data, method="sparsegpt", progress=False)
    row = next(layer for layer in report.layers if layer.name == "layers.0.attn.o")
    # float64 reference: the inputs of attn.o in block 0 with only q, k and v pruned
    half = toy()
    pruned = weights(model)
    for layer in ("q", "k", "v"):
        module = half.layers[0].attn.get_submodule(layer)
        module.weight.data.copy_(torch.from_numpy(pruned[f"layers.0.attn.{layer}"]))
    seen: list[np.ndarray] = []
    handle = half.layers[0].attn.o.register_forward_pre_hook(
        lambda _m, args: seen.append(args[0].detach().double().numpy())
    )
    with torch.no_grad():
        for batch in data:
            half(**batch)
    handle.remove()
    rows = np.concatenate(
        [x[b["attention_mask"].numpy() != 0] for x, b in zip(seen, data, strict=True)]
    )
    delta = weights(dense)["layers.0.attn.o"].astype(np.float64) - pruned["layers.0.attn.o"]
    expected = float(np.mean(np.sum((rows @ delta.T) ** 2, axis=1)))
    assert row.error == pytest.approx(expected, rel=1e-4)
    # the dense q, k and v give other inputs, hence another error
    with torch.no_grad():
        dense_seen: list[np.ndarray] = []
        handle = dense.layers[0].attn.o.register_forward_pre_hook(
            lambda _m, args: dense_seen.append(args[0].double().numpy())
        )
        for batch in data:
            dense(**batch)
        handle.remove()
    dense_rows = np.concatenate(
        [x[b["attention_mask"].numpy() != 0] for x, b in zip(dense_seen, data, strict=True)]
    )
    other = float(np.mean(np.sum((dense_rows @ delta.T) ** 2, axis=1)))
    assert row.error != pytest.approx(other, rel=1e-3)


# --- reconstructing the dense outputs, refitting the kept weights ------------------------------


def layer_inputs(model: nn.Module, name: str, data: list[dict]) -> np.ndarray:
    """The real-token rows that layer `name` reads over `data` (every call), in float64."""
    rows: list[np.ndarray] = []
    real: list[np.ndarray] = []
    handle = model.get_submodule(name).register_forward_pre_hook(
        lambda _m, args: rows.append(args[0].detach().double().numpy()[real[-1]])
    )
    with torch.no_grad():
        for batch in data:
            real.append(batch["attention_mask"].numpy() != 0)
            model(**batch)
    handle.remove()
    return np.concatenate(rows)


def damped(hessian: np.ndarray, damp: float = 0.01) -> np.ndarray:
    """SparseGPT's damped Hessian: dead diagonal entries set to 1, then damp * mean diagonal."""
    out = hessian.copy()
    dead = np.diagonal(out) == 0
    out[dead, dead] = 1.0
    return out + damp * np.mean(np.diagonal(out)) * np.eye(len(out))


def refit_reference(mask: np.ndarray, hessian: np.ndarray, gram_target: np.ndarray) -> np.ndarray:
    """Row by row: the kept weights w_S solving w_S H_SS = g_S, zero elsewhere."""
    out = np.zeros(mask.shape)
    for row in range(mask.shape[0]):
        kept = mask[row]
        out[row, kept] = np.linalg.solve(hessian[np.ix_(kept, kept)], gram_target[row, kept])
    return out


@pytest.mark.parametrize("pattern", ["unstructured", "2:4"])
def test_refit_solves_every_rows_kept_weights_exactly(pattern):
    data = batches()
    dense = toy()
    one_pass = {"pattern": pattern, "sequential": False, "progress": False}
    plain = toy()
    prune_model(plain, data, refit=False, **one_pass)
    refitted = toy()
    report = prune_model(refitted, data, **one_pass)
    assert report.manifest["options"]["refit"] is True
    for name in names(0) + names(1):
        x = layer_inputs(dense, name, data)  # in one pass every layer sees the dense inputs
        hessian = damped(2.0 * x.T @ x / len(x))
        w = weights(dense)[name].astype(np.float64)
        mask = weights(plain)[name] != 0
        got = weights(refitted)[name]
        np.testing.assert_array_equal(got != 0, mask)  # the mask is SparseGPT's
        expected = refit_reference(mask, hessian, w @ hessian)
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)

        def loss(v, w=w, hessian=hessian):
            delta = v.astype(np.float64) - w
            return float(np.einsum("ij,jk,ik->", delta, hessian, delta))

        assert loss(got) < loss(weights(plain)[name])


@pytest.mark.parametrize("refit", [False, True])
def test_reconstruct_dense_fits_each_layer_to_the_dense_models_output(refit):
    data = batches()
    dense = toy()
    model = toy()
    report = prune_model(model, data, refit=refit, progress=False)
    assert report.manifest["options"]["reconstruct"] == "dense"
    pruned = weights(model)
    moved = []
    for name in names(0) + names(1):
        # a layer's input depends only on the layers before it, which were pruned before it was
        x = layer_inputs(model, name, data)
        x0 = layer_inputs(dense, name, data)
        hessian = 2.0 * x.T @ x / len(x)
        damped_h = damped(hessian)
        cross = 2.0 * x0.T @ x / len(x) + (damped_h - hessian)  # C = 2/N X0'X + lambda I
        w = weights(dense)[name].astype(np.float64)
        start = w @ cross @ np.linalg.inv(damped_h)  # argmin |W'X - W X0|^2 + lambda |W' - W|^2
        moved.append(not np.allclose(start, w, rtol=1e-3, atol=1e-4))
        expected = fp.sparsegpt(start.astype(np.float32), hessian.astype(np.float32)).weight
        np.testing.assert_array_equal(pruned[name] != 0, expected != 0)
        if refit:
            expected = refit_reference(expected != 0, damped_h, w @ cross)
        np.testing.assert_allclose(pruned[name], expected, rtol=1e-3, atol=1e-4)
    assert not any(moved[:3])  # block 0's q, k and v read the dense model's input itself
    assert all(moved[6:])  # block 1 reads what the pruned block 0 gives


@pytest.mark.parametrize("sequential", ["block", False])
def test_reconstruct_dense_applies_to_true_sequential_mode_only(sequential):
    data = batches()
    default, own = toy(), toy()
    prune_model(default, data, sequential=sequential, progress=False)
    prune_model(own, data, sequential=sequential, reconstruct="layer", progress=False)
    for name in names(0) + names(1):
        np.testing.assert_array_equal(weights(default)[name], weights(own)[name])


class TwiceBlock(nn.Module):
    """One layer called twice per forward pass."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.mix = nn.Linear(d, d)

    def forward(self, x, attention_mask=None):
        return (x + self.mix(torch.tanh(self.mix(x))),)


class TwiceToy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.emb = nn.Embedding(VOCAB, D)
        self.layers = nn.ModuleList([TwiceBlock(D), TwiceBlock(D)])

    def forward(self, input_ids, attention_mask):
        x = self.emb(input_ids)
        for block in self.layers:
            x = block(x, attention_mask=attention_mask)[0]
        return x


def test_a_layer_called_twice_pairs_each_call_with_the_same_call_in_the_dense_model():
    data = batches()
    dense = TwiceToy()
    model = TwiceToy()
    prune_model(model, data, progress=False)
    # while layers.1.mix was calibrated, block 0 was pruned and block 1 still dense
    half = TwiceToy()
    half.layers[0].mix.weight.data.copy_(model.layers[0].mix.weight.data)
    half.layers[0].mix.bias.data.copy_(model.layers[0].mix.bias.data)
    x, x0 = layer_inputs(half, "layers.1.mix", data), layer_inputs(dense, "layers.1.mix", data)
    hessian = 2.0 * x.T @ x / len(x)
    damped_h = damped(hessian)
    cross = 2.0 * x0.T @ x / len(x) + (damped_h - hessian)
    w = dense.layers[1].mix.weight.detach().double().numpy()
    got = model.layers[1].mix.weight.detach().numpy()
    expected = refit_reference(got != 0, damped_h, w @ cross)
    np.testing.assert_allclose(got, expected, rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("method", ["wanda", "magnitude"])
def test_reconstruct_and_refit_leave_wanda_and_magnitude_alone(method):
    data = batches()
    default, plain = toy(), toy()
    prune_model(default, data, method=method, progress=False)
    prune_model(plain, data, method=method, reconstruct="layer", refit=False, progress=False)
    for name in names(0) + names(1):
        np.testing.assert_array_equal(weights(default)[name], weights(plain)[name])


def test_sequential_must_be_a_bool_or_block():
    with pytest.raises(ValueError, match="sequential"):
        prune_model(toy(), batches(), sequential="layer", progress=False)


def test_ignored_layers_stay_dense():
    model = toy()
    before = weights(model)
    report = prune_model(model, batches(), ignore=["*.attn.o", "layers.1.up"], progress=False)
    after = weights(model)
    for name in ("layers.0.attn.o", "layers.1.attn.o", "layers.1.up"):
        np.testing.assert_array_equal(after[name], before[name])
        assert name not in [layer.name for layer in report.layers]
    assert report.manifest["options"]["ignore"] == ["*.attn.o", "layers.1.up"]


def test_per_layer_sparsity_from_a_mapping_or_a_callable():
    model = toy()
    report = prune_model(
        model, batches(), method="wanda", sparsity={"*.up": 0.75, "layers.0.*": 0.25}
    )
    got = {layer.name: layer.sparsity for layer in report.layers}
    assert got == {
        **dict.fromkeys(names(0), 0.25),
        "layers.0.up": 0.75,  # the first matching key wins
        "layers.1.up": 0.75,
    }
    assert sorted(report.skipped) == sorted(n for n in names(1) if not n.endswith("up"))
    after = weights(model)
    assert np.count_nonzero(after["layers.1.down"] == 0) == 0

    def rule(name, module):
        return None if name.endswith("attn.v") else module.out_features / 128

    report = prune_model(toy(), batches(), method="magnitude", sparsity=rule)
    got = {layer.name: layer.target_sparsity for layer in report.layers}
    assert got["layers.0.up"] == 0.25
    assert got["layers.0.attn.q"] == 0.125
    assert "layers.0.attn.v" in report.skipped


@pytest.mark.parametrize(
    ("sparsity", "error", "match"),
    [
        ({"*": 1.0}, ValueError, r"sparsity: must be in \[0, 1\), got 1.0 for layers.0.attn.q"),
        (lambda name, module: "half", TypeError, "sparsity: expected a number"),
        (-0.1, ValueError, "sparsity: must be in"),
    ],
)
def test_bad_sparsity_is_refused_before_anything_changes(sparsity, error, match):
    model = toy()
    before = weights(model)
    with pytest.raises(error, match=match):
        prune_model(model, batches(), sparsity=sparsity)
    for name, w in weights(model).items():
        np.testing.assert_array_equal(w, before[name])


def test_a_pattern_that_does_not_divide_a_width_names_the_layer():
    model = toy()
    before = weights(model)
    with pytest.raises(ValueError, match=r"pattern: 2:3 .* layers.0.attn.q has 16"):
        prune_model(model, batches(), pattern="2:3")
    for name, w in weights(model).items():
        np.testing.assert_array_equal(w, before[name])


def test_bad_arguments_are_named():
    model = toy()
    with pytest.raises(ValueError, match="pattern: prune_model prunes 'unstructured' or 'N:M'"):
        prune_model(model, batches(), pattern="block:4x4")
    with pytest.raises(TypeError, match="pattern: expected"):
        prune_model(model, batches(), pattern=None)
    with pytest.raises(ValueError, match="method: expected one of"):
        prune_model(model, batches(), method="obs")
    with pytest.raises(ValueError, match="calibration_batches: method 'wanda' needs"):
        prune_model(model, None, method="wanda")
    with pytest.raises(ValueError, match="calibration_batches: no batches"):
        prune_model(model, [], method="sparsegpt")
    with pytest.raises(ValueError, match="blocksize"):
        prune_model(model, batches(), blocksize=0)
    with pytest.raises(ValueError, match="damp"):
        prune_model(model, batches(), damp=-1.0)
    with pytest.raises(TypeError, match="ignore"):
        prune_model(model, batches(), ignore=[3])
    with pytest.raises(ValueError, match="reconstruct: expected one of auto, dense, layer"):
        prune_model(model, batches(), reconstruct="model")
    with pytest.raises(TypeError, match="refit: expected True or False"):
        prune_model(model, batches(), refit="yes")


def test_a_layer_the_forward_never_reaches_is_reported():
    model = toy()
    model.layers[1].unused = nn.Linear(D, D)
    with pytest.raises(ValueError, match=r"layers\.1\.unused: the calibration forward passes"):
        prune_model(model, batches(), progress=False)
    report = prune_model(model, batches(), ignore=["*.unused"], progress=False)
    assert len(report.layers) == 12


def test_magnitude_needs_no_calibration_data():
    model = toy()
    report = prune_model(model, method="magnitude", sparsity=0.3)
    assert len(report.layers) == 12
    assert report.manifest["calibration"] == {
        "batches": 0,
        "samples": 0,
        "tokens": 0,
        "sha256": None,
    }


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_dtype_and_training_mode_are_kept(dtype):
    model = toy(dtype=dtype)
    model.train()
    report = prune_model(model, batches(), method="sparsegpt", pattern="2:4", progress=False)
    assert model.training
    for name in names(0) + names(1):
        weight = model.get_submodule(name).weight
        assert weight.dtype == dtype
        assert _nm_ok(weight.detach().float().numpy(), 2, 4)
    assert len(report.layers) == 12


def test_a_model_without_blocks_is_pruned_in_one_pass():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    data = [torch.randn(5, 8) for _ in range(3)]
    report = prune_model(model, data, sparsity=0.5)
    assert [layer.name for layer in report.layers] == ["0", "2"]
    assert [layer.block for layer in report.layers] == [None, None]
    assert report.manifest["options"]["blocks"] == "(whole model)"
    assert report.manifest["calibration"]["tokens"] == 15


@pytest.mark.parametrize("method", ["sparsegpt", "wanda", "magnitude"])
def test_the_output_error_is_measured_on_the_calibration_tokens(method):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 12), nn.ReLU(), nn.Linear(12, 4))
    data = [torch.randn(5, 8, dtype=torch.float32) for _ in range(3)]
    dense = model[0].weight.detach().numpy().astype(np.float64)
    report = prune_model(model, data, method=method, sparsity=0.5)
    delta = dense - model[0].weight.detach().numpy().astype(np.float64)
    x = np.concatenate([d.numpy() for d in data]).astype(np.float64)
    expected = np.mean(np.sum((x @ delta.T) ** 2, axis=1))
    assert report["0"].error == pytest.approx(expected, rel=1e-4)
    assert report.error == pytest.approx(sum(layer.error for layer in report.layers))
    assert report.to_dict()["totals"]["error"] == report.error


def test_without_calibration_there_is_no_output_error():
    report = prune_model(toy(), method="magnitude")
    assert all(layer.error is None for layer in report.layers)
    assert report.error is None
    assert report.table().splitlines()[2].split()[4] == "-"


def test_a_conv_model_is_pruned_as_flattened_matrices():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(4, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3),
        nn.Flatten(),
        nn.Linear(288, 4),
    )
    data = [torch.randn(2, 4, 8, 8) for _ in range(2)]
    report = prune_model(model, data, sparsity=0.5, pattern="2:4")
    shapes = {layer.name: layer.shape for layer in report.layers}
    assert shapes == {"0": (8, 36), "2": (8, 72), "4": (4, 288)}
    assert report["2"].tokens == 2 * 2 * 6 * 6
    assert _nm_ok(model[2].weight.detach().numpy().reshape(8, -1), 2, 4)


def test_the_model_copy_is_independent():
    model = toy()
    twin = copy.deepcopy(model)
    prune_model(model, batches(), method="magnitude")
    assert np.count_nonzero(twin.layers[0].up.weight.detach().numpy() == 0) == 0
