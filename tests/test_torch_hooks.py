"""fastprune.torch.hooks on tiny synthetic models: capturing block inputs, calibrating layers,
the rows a layer reads (linear and convolution)."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
nn = torch.nn

import fastprune as fp  # noqa: E402
from _torch_toy import D, batches, names, toy  # noqa: E402
from fastprune.torch.hooks import (  # noqa: E402
    CalibrationDigest,
    Calibrator,
    capture_block_inputs,
    layer_rows,
)

# --- hooks -----------------------------------------------------------------------------------


def test_capture_records_the_first_blocks_arguments_and_stops():
    model = toy()
    calls = []
    model.head.register_forward_hook(lambda *a: calls.append(1))
    data = batches()
    digest = CalibrationDigest()
    captured = capture_block_inputs(model, model.layers[0], data, digest)
    assert len(captured) == 3
    assert not calls  # the forward stopped at the first block
    for item, batch in zip(captured, data, strict=True):
        np.testing.assert_array_equal(item.args[0], model.emb(batch["input_ids"]).detach())
        assert torch.equal(item.kwargs["attention_mask"], batch["attention_mask"].bool())
        np.testing.assert_array_equal(item.token_mask, batch["attention_mask"].numpy() == 1)
    assert digest.batches == 3
    assert digest.samples == 12


def test_calibrator_leaves_padding_out():
    layer = nn.Linear(D, 4)
    x = torch.randn(3, 5, D)
    mask = np.ones((3, 5), dtype=bool)
    mask[0, 3:] = False
    mask[2, 1:] = False
    with Calibrator({"layer": layer}) as calibrator:
        calibrator.new_batch(mask)
        layer(x)
    reference = fp.Calibration(D)
    reference.update(x.numpy()[mask])
    (group,) = calibrator.groups
    assert group.members == ["layer"]
    assert group.calibration.count == mask.sum() == reference.count
    np.testing.assert_allclose(group.calibration.hessian, reference.hessian, rtol=1e-6)
    np.testing.assert_allclose(group.calibration.act_sq, reference.act_sq, rtol=1e-6)


def test_calibrator_shares_one_calibration_between_layers_reading_one_tensor():
    model = toy()
    layers = {name: model.get_submodule(name) for name in names(0)}
    data = batches()
    captured = capture_block_inputs(model, model.layers[0], data, CalibrationDigest())
    with Calibrator(layers) as calibrator:
        for item in captured:
            calibrator.new_batch(item.token_mask)
            model.layers[0](*item.args, **item.kwargs)
    members = [group.members for group in calibrator.groups]
    assert members == [names(0)[:3], [names(0)[3]], [names(0)[4]], [names(0)[5]]]
    tokens = sum(int(b["attention_mask"].sum()) for b in data)
    assert all(group.calibration.count == tokens for group in calibrator.groups)
    # the shared statistics are exactly those of the block input's real tokens
    reference = fp.Calibration(D)
    for item in captured:
        reference.update(item.args[0].numpy(), mask=item.token_mask)
    np.testing.assert_allclose(calibrator.groups[0].calibration.hessian, reference.hessian)


def test_layer_rows_rejects_an_input_that_does_not_line_up_with_the_mask():
    layer = nn.Linear(D, 2)
    with pytest.raises(ValueError, match="lin: its input of shape"):
        layer_rows("lin", layer, torch.zeros(7, D), np.ones((2, 5), dtype=bool))
    rows, mask = layer_rows("lin", layer, torch.zeros(10, D), np.ones((2, 5), dtype=bool))
    assert rows.shape == (10, D)
    assert mask is not None
    assert mask.shape == (10,)


def test_float32_inputs_reach_numpy_without_a_copy():
    layer = nn.Linear(D, 2)
    x = torch.randn(2, 3, D)
    rows, _ = layer_rows("lin", layer, x, None)
    assert np.shares_memory(rows, x.numpy())


def _reference_patches(x: np.ndarray, kernel, stride, dilation, padding, mode) -> np.ndarray:
    """Receptive fields of a 2-D convolution by explicit loops, channel-major like the weight."""
    kh, kw = kernel
    pad_mode = "constant" if mode == "zeros" else {"reflect": "reflect", "circular": "wrap"}[mode]
    xp = np.pad(x, ((0, 0), (0, 0), (padding[0],) * 2, (padding[1],) * 2), mode=pad_mode)
    n, _c, h, w = xp.shape
    oh = (h - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    ow = (w - dilation[1] * (kw - 1) - 1) // stride[1] + 1
    rows = []
    for b in range(n):
        for i in range(oh):
            for j in range(ow):
                patch = xp[
                    b,
                    :,
                    i * stride[0] : i * stride[0] + dilation[0] * (kh - 1) + 1 : dilation[0],
                    j * stride[1] : j * stride[1] + dilation[1] * (kw - 1) + 1 : dilation[1],
                ]
                rows.append(patch.reshape(-1))
    return np.array(rows)


@pytest.mark.parametrize(
    ("kwargs", "padding"),
    [
        ({"kernel_size": 3, "padding": 1}, (1, 1)),
        ({"kernel_size": (2, 3), "stride": 2, "dilation": (1, 2)}, (0, 0)),
        ({"kernel_size": 3, "padding": 1, "padding_mode": "reflect"}, (1, 1)),
        ({"kernel_size": 3, "padding": "same", "padding_mode": "circular"}, (1, 1)),
    ],
)
def test_conv2d_rows_are_its_receptive_fields(kwargs, padding):
    conv = nn.Conv2d(3, 4, **kwargs)
    x = torch.randn(2, 3, 7, 6)
    rows, mask = layer_rows("conv", conv, x, None)
    assert mask is None
    ref = _reference_patches(
        x.numpy().astype(np.float64),
        conv.kernel_size,
        conv.stride,
        conv.dilation,
        padding,
        conv.padding_mode,
    )
    np.testing.assert_allclose(rows.reshape(-1, rows.shape[-1]), ref, rtol=1e-6)
    # and they reproduce the convolution with the flattened (out, in*kh*kw) weight
    out = conv(x).detach().numpy()
    flat = rows.reshape(-1, rows.shape[-1]) @ conv.weight.detach().numpy().reshape(4, -1).T
    np.testing.assert_allclose(
        flat + conv.bias.detach().numpy(), out.transpose(0, 2, 3, 1).reshape(-1, 4), atol=1e-5
    )


def test_conv1d_rows_reproduce_the_convolution():
    conv = nn.Conv1d(3, 5, kernel_size=3, stride=2, padding=1)
    x = torch.randn(2, 3, 9)
    rows, _ = layer_rows("conv", conv, x, None)
    out = conv(x).detach().numpy()
    flat = rows.reshape(-1, rows.shape[-1]) @ conv.weight.detach().numpy().reshape(5, -1).T
    np.testing.assert_allclose(
        flat + conv.bias.detach().numpy(), out.transpose(0, 2, 1).reshape(-1, 5), atol=1e-5
    )


def test_grouped_convolutions_are_refused_by_name():
    conv = nn.Conv2d(4, 4, 3, groups=2)
    with pytest.raises(ValueError, match="dw: grouped convolutions"):
        layer_rows("dw", conv, torch.zeros(1, 4, 5, 5), None)
