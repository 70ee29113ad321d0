"""Channel pruning of randomly built CNNs through the dependency graph.

Exactness: zeroing a group's removed channels (producer rows, BN entries, consumer columns) and
then removing them leaves the outputs unchanged, for residual adds, depthwise convs, BatchNorm,
concat and flatten -> Linear.
"""

from __future__ import annotations

import random
import re
from typing import Any

import pytest

torch = pytest.importorskip("torch")
nn = torch.nn

from fastprune.torch.structural import StructureError, taylor  # noqa: E402
from fastprune.torch.structural.channels import DependencyGraph, prune_channels  # noqa: E402


class Net(nn.Module):
    """conv-BN-ReLU stem, a residual pair, a depthwise conv, a concat and flatten -> Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.a = nn.Conv2d(8, 8, 3, padding=1)
        self.b = nn.Conv2d(8, 8, 1)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.side = nn.Conv2d(8, 6, 1)
        self.bn2 = nn.BatchNorm2d(14)
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.fc = nn.Linear(14 * 4, 12)
        self.head = nn.Linear(12, 5)

    def forward(self, x: Any) -> Any:
        x = torch.relu(self.bn(self.stem(x)))
        x = x + self.b(torch.relu(self.a(x)))  # residual: stem and b share channels
        y = self.dw(x)  # depthwise: same channels as x
        z = torch.cat([y, self.side(x)], dim=1)
        z = self.pool(torch.relu(self.bn2(z)))
        return self.head(torch.relu(self.fc(torch.flatten(z, 1))))


class Grouped(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 1)
        self.c2 = nn.Conv2d(8, 8, 3, padding=1, groups=2)
        self.c3 = nn.Conv2d(8, 4, 1)

    def forward(self, x: Any) -> Any:
        return self.c3(self.c2(self.c1(x)))


def net() -> Any:
    torch.manual_seed(0)
    model = Net()
    with torch.no_grad():  # non-trivial BN statistics
        for bn in (model.bn, model.bn2):
            bn.running_mean.uniform_(-1, 1)
            bn.running_var.uniform_(0.5, 2)
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.5, 0.5)
    return model.eval()


X = torch.randn(2, 3, 6, 6, generator=torch.Generator().manual_seed(1))


def zero_removed(plan: Any) -> None:
    for part in plan.parts:
        removed = sorted(set(range(part.channels)) - set(part.keep.tolist()))
        removed = torch.tensor(removed, dtype=torch.long)
        for s in part.slices:
            if s.name in ("running_var",):
                continue  # a zero variance would divide by ~0; the channel is zero anyway
            with torch.no_grad():
                s.tensor().index_fill_(s.dim, s.index(removed), 0.0)


def test_graph_finds_the_couplings() -> None:
    graph = DependencyGraph.build(net(), X)
    groups = {p.what: p for p in graph.groups()}
    residual = next(p for w, p in groups.items() if "stem" in w)
    labels = {s.label for s in residual.slices}
    assert {"stem", "bn", "a", "b", "dw", "side", "bn2", "fc"} <= labels
    fc_slice = next(s for s in residual.slices if s.label == "fc")
    assert fc_slice.span == 4 and fc_slice.offsets == (0,)
    side = next(p for w, p in groups.items() if w == "channels of side")
    assert next(s for s in side.slices if s.label == "fc").offsets == (8 * 4,)
    assert "head" in graph.blocked  # feeds the model's output
    text = str(graph)
    assert "concat" in text and "depthwise" in text and "residual coupling" in text


@pytest.mark.parametrize("module", ["stem", "side", "a", "fc"])
def test_zero_then_remove_each_group(module: str) -> None:
    model = net()
    graph = DependencyGraph.build(model, X)
    plan = graph.group(dict(model.named_modules())[module], [0, 2, 3])
    assert not plan.applied and "keep" in str(plan)
    zero_removed(plan)
    with torch.no_grad():
        before = model(X)
    plan.apply()
    with torch.no_grad():
        after = model(X)
    torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-6)


def test_prune_channels_shrinks_and_keeps_sizes_consistent() -> None:
    model = net()
    plans = prune_channels(model, X, 0.5, round_to=2)
    assert plans
    assert model.stem.out_channels == 4 and model.dw.groups == 4 and model.bn.num_features == 4
    assert model.side.out_channels == 4 and model.bn2.num_features == 8
    assert model.fc.in_features == 8 * 4 and model.fc.out_features == 6
    assert model(X).shape == (2, 5)


def test_prune_channels_global_and_steps() -> None:
    model = net()
    prune_channels(model, X, 0.25, scope="global", steps=2)
    assert model(X).shape == (2, 5)
    total = model.stem.out_channels + model.side.out_channels + model.fc.out_features
    assert total < 8 + 6 + 12


def test_prune_channels_taylor_reads_gradients_and_skips_statistics() -> None:
    model = net()
    model(X).square().sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    plans = prune_channels(model, X, 0.5, importance="taylor", steps=2)
    assert len(plans) == 2 and model(X).shape == (2, 5)
    # the kept channels' gradients were sliced along with the weights, step after step
    first, second = (plan.parts[0] for plan in plans)
    assert first.what.startswith("channels of stem") and second.what == first.what
    expected = grads["stem.weight"][first.keep][second.keep]
    torch.testing.assert_close(model.stem.weight.grad, expected)


@pytest.mark.parametrize("multivariable", [False, True])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize(("reduction", "normalizer"), [("mean", "mean"), ("max", None)])
def test_group_taylor_follows_torch_pruning(
    multivariable: bool, bias: bool, reduction: Any, normalizer: Any
) -> None:
    """The `side` group (concatenated at offset 8 into bn2 and, after a 2x2 pool and flatten,
    into fc's columns 32..55) against a direct float64 computation: per layer
    sum |w * g| over a channel's entries (|sum w * g| if multivariable), biases only with
    bias=True, BatchNorm statistics never; layers reduced, then normalized."""
    model = net()
    model(X).square().sum().backward()
    graph = DependencyGraph.build(model, X)
    part = graph.group(model.side, []).parts[0]
    score = taylor(reduction, normalizer, multivariable, bias)(part)

    def per_channel(w: Any, g: Any) -> Any:
        prod = (w.double() * g.double()).reshape(6, -1)
        return prod.sum(1).abs() if multivariable else prod.abs().sum(1)

    fc_w = model.fc.weight.detach().double()[:, 32:56].reshape(12, 6, 4).transpose(0, 1)
    fc_g = model.fc.weight.grad.double()[:, 32:56].reshape(12, 6, 4).transpose(0, 1)
    layers = [
        per_channel(model.side.weight.detach(), model.side.weight.grad),
        per_channel(model.bn2.weight.detach()[8:], model.bn2.weight.grad[8:]),
        per_channel(fc_w, fc_g),
    ]
    if bias:
        layers.append(per_channel(model.side.bias.detach(), model.side.bias.grad))
        layers.append(per_channel(model.bn2.bias.detach()[8:], model.bn2.bias.grad[8:]))
    stacked = torch.stack(layers)
    expected = stacked.mean(0) if reduction == "mean" else stacked.max(0).values
    if normalizer == "mean":
        expected = expected / expected.mean()
    torch.testing.assert_close(torch.as_tensor(score), expected, rtol=1e-10, atol=1e-12)


def test_activation_importance_is_mean_output_magnitude() -> None:
    """Keeps the channels with the largest mean |output| on the example inputs; a residual
    group averages over its producers (stem, b, the depthwise dw)."""
    model = net()
    with torch.no_grad():
        x1 = torch.relu(model.bn(model.stem(X)))
        b_out = model.b(torch.relu(model.a(x1)))
        x2 = x1 + b_out
        side = model.side(x2).abs().mean(dim=(0, 2, 3))
        residual = torch.stack(
            [m.abs().mean(dim=(0, 2, 3)) for m in (model.stem(X), b_out, model.dw(x2))]
        ).mean(0)
    plans = prune_channels(model, X, 0.5, importance="activation")
    kept = {p.what: p.keep.tolist() for p in plans[0].parts}
    top = torch.argsort(-side.double(), stable=True)[:3]
    assert kept["channels of side"] == sorted(top.tolist())
    top = torch.argsort(-residual.double(), stable=True)[:4]
    assert kept["channels of stem, dw, b"] == sorted(top.tolist())


def test_prune_channels_ignore_and_mapping() -> None:
    model = net()
    prune_channels(model, X, {"side": 0.5}, ignore=["fc"])
    assert model.side.out_channels == 3 and model.stem.out_channels == 8
    assert model.fc.out_features == 12


def test_grouped_conv_prunes_the_same_channels_from_every_group() -> None:
    model = Grouped().eval()
    graph = DependencyGraph.build(model, X)
    part = next(p for p in graph.groups() if p.what.startswith("channels of c1"))
    assert part.channels == 4 and "2 equal pieces" in part.what
    plan = graph.group(model.c1, [1])  # and channel 5, its partner in the second group
    zero_removed(plan)
    with torch.no_grad():
        before = model(X)
    plan.apply()
    assert model.c1.out_channels == 6 and model.c2.in_channels == 6
    assert model.c2.weight.shape == (8, 3, 3, 3) and model.c2.groups == 2
    with torch.no_grad():
        torch.testing.assert_close(model(X), before, rtol=1e-5, atol=1e-6)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match=r"ratio: 1\.0 would remove every channel"):
        prune_channels(net(), X, 1.0)
    model = net()
    graph = DependencyGraph.build(model, X)
    with pytest.raises(ValueError, match="every channel"):
        graph.group(model.side, range(6))
    with pytest.raises(ValueError, match="not a submodule"):
        graph.group(net().stem, [0])
    with pytest.raises(ValueError, match="scope"):
        prune_channels(model, X, 0.5, scope="nope")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="ratio: the model has no module 'nope'"):
        prune_channels(model, X, {"nope": 0.5})
    with pytest.raises(ValueError, match="ignore: the model has no module"):
        prune_channels(model, X, 0.5, ignore=["nope"])
    with pytest.raises(StructureError, match="ratio: bn produces no channels"):
        prune_channels(model, X, {"bn": 0.5})
    with pytest.raises(ValueError, match="indices: 8 is not a prunable output channel of stem"):
        graph.group(model.stem, [8])
    with pytest.raises(ValueError, match="dim"):
        graph.group(model.stem, [0], dim="sideways")  # type: ignore[arg-type]
    with pytest.raises(StructureError, match="input channels of stem are not prunable"):
        graph.group(model.stem, [0], dim="in")  # reads the model's input


# ---- randomly built CNNs: every kind of coupling, zero then remove -----------------------------

KINDS = (
    "conv",
    "residual",
    "depthwise",
    "grouped",
    "transposed",
    "transposed_grouped",
    "transposed_depthwise",
    "concat",
    "concat_input",
    "chunk",
    "split",
    "reshape",
    "squeeze_excite",
)


class RandomCNN(nn.Module):
    """A stem, a random sequence of blocks (each kind of coupling), then pool -> flatten (or a
    reshape to (N, -1)) -> Linear -> Linear. Channel counts stay multiples of 4."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        rng = random.Random(seed)
        self.kinds = [KINDS[seed % len(KINDS)], *rng.choices(KINDS, k=rng.randint(2, 4))]
        self.flatten_by_reshape = rng.random() < 0.5
        c = rng.choice((8, 12))
        self.stem = nn.Conv2d(3, c, 3, padding=1)
        self.blocks = nn.ModuleList()
        for kind in self.kinds:
            block = nn.ModuleDict()
            c2 = rng.choice((4, 8, 12))
            g = rng.choice((2, 4))
            if kind == "conv":
                block["conv"] = nn.Conv2d(c, c2, 3, padding=1)
                block["bn"] = nn.BatchNorm2d(c2)
            elif kind == "residual":
                block["a"] = nn.Conv2d(c, c, 3, padding=1)
                block["b"] = nn.Conv2d(c, c, 1)
            elif kind == "depthwise":
                block["conv"] = nn.Conv2d(c, c, 3, padding=1, groups=c)
            elif kind == "grouped":
                block["conv"] = nn.Conv2d(c, c2, 3, padding=1, groups=g)
                block["bn"] = nn.BatchNorm2d(c2)
            elif kind == "transposed":
                block["conv"] = nn.ConvTranspose2d(c, c2, 3, padding=1)
            elif kind == "transposed_grouped":
                block["conv"] = nn.ConvTranspose2d(c, c2, 3, padding=1, groups=g)
            elif kind == "transposed_depthwise":
                block["conv"] = nn.ConvTranspose2d(c, c, 3, padding=1, groups=c)
            elif kind == "concat":
                block["side"] = nn.Conv2d(c, c2, 1)
            elif kind == "concat_input":  # 3 image channels + c2 + 1
                block["side"] = nn.Conv2d(c, c2 + 1, 1)
            elif kind in ("chunk", "split"):
                block["conv"] = nn.Conv2d(c, 2 * c2, 1)
            elif kind == "reshape":
                block["conv"] = nn.Conv2d(c, c2, 1)
            elif kind == "squeeze_excite":
                block["fc1"] = nn.Linear(c, 4)
                block["fc2"] = nn.Linear(4, c)
            self.blocks.append(block)
            c = {
                "residual": c,
                "depthwise": c,
                "transposed_depthwise": c,
                "squeeze_excite": c,
                "concat": c + c2,
                "concat_input": c2 + 4,
            }.get(kind, c2)
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.fc = nn.Linear(c * 4, 10)
        self.head = nn.Linear(10, 5)

    def forward(self, image: Any) -> Any:
        x = torch.relu(self.stem(image))
        for kind, block in zip(self.kinds, self.blocks, strict=True):
            if kind in ("conv", "grouped"):
                x = torch.relu(block["bn"](block["conv"](x)))
            elif kind == "residual":
                x = x + block["b"](torch.relu(block["a"](x)))
            elif kind == "concat":
                x = torch.cat([x, block["side"](x)], dim=1)
            elif kind == "concat_input":
                x = torch.cat([image, block["side"](x)], dim=1)
            elif kind == "chunk":
                a, b = block["conv"](x).chunk(2, dim=1)
                x = a * torch.sigmoid(b)
            elif kind == "split":
                y = block["conv"](x)
                a, b = torch.split(y, y.size(1) // 2, dim=1)
                x = torch.relu(a) + b
            elif kind == "reshape":
                y = block["conv"](x)
                n, ch, h, w = y.shape
                x = torch.relu(y.view(n, ch, -1)).reshape(n, ch, h, w)
            elif kind == "squeeze_excite":
                n, ch = x.shape[:2]
                s = torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1)
                s = torch.sigmoid(block["fc2"](torch.relu(block["fc1"](s))))
                x = x * s.view(n, ch, 1, 1)
            else:
                x = torch.relu(block["conv"](x))
        x = self.pool(x)
        x = x.reshape(x.size(0), -1) if self.flatten_by_reshape else torch.flatten(x, 1)
        return self.head(torch.relu(self.fc(x)))


def random_cnn(seed: int) -> Any:
    torch.manual_seed(seed)
    model = RandomCNN(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
    return model.eval()


def prunable_owners(model: Any, graph: Any) -> dict[str, str]:
    """One producing module name per prunable group (a residual's producers share one)."""
    out: dict[str, str] = {}
    modules = dict(model.named_modules())
    for name in graph.owners:
        if name not in graph.blocked:
            parts = graph.group(modules[name], []).parts
            out.setdefault(" + ".join(p.what for p in parts), name)
    return out


@pytest.mark.parametrize("seed", range(2 * len(KINDS)))
def test_random_cnn_zero_then_remove_every_group(seed: int) -> None:
    x = torch.randn(2, 3, 6, 6, generator=torch.Generator().manual_seed(seed))
    model = random_cnn(seed)
    owners = prunable_owners(model, DependencyGraph.build(model, x))
    assert "fc" in owners.values()
    rng = random.Random(seed)
    for what, name in owners.items():
        model = random_cnn(seed)  # a fresh copy per group
        graph = DependencyGraph.build(model, x)
        module = dict(model.named_modules())[name]
        smallest = min(p.channels for p in graph.group(module, []).parts)
        if smallest < 2:
            continue
        total = getattr(module, "out_channels", None) or module.out_features
        plan = graph.group(module, rng.sample(range(total), rng.randint(1, smallest - 1)))
        assert any(p.removed for p in plan.parts)
        zero_removed(plan)
        with torch.no_grad():
            before = model(x)
        plan.apply()
        with torch.no_grad():
            after = model(x)
        assert after.shape == before.shape
        torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-5, msg=f"{what}: {plan}")


@pytest.mark.parametrize("seed", range(len(KINDS)))
def test_random_cnn_prune_channels_runs_and_fixes_sizes(seed: int) -> None:
    x = torch.randn(2, 3, 6, 6, generator=torch.Generator().manual_seed(seed))
    model = random_cnn(seed)
    plans = prune_channels(model, x, 0.5)
    assert plans
    assert model(x).shape == (2, 5)
    for m in model.modules():  # every size attribute agrees with the tensors
        if isinstance(m, nn.Conv2d):
            assert m.weight.shape[:2] == (m.out_channels, m.in_channels // m.groups)
        elif isinstance(m, nn.ConvTranspose2d):
            assert m.weight.shape[:2] == (m.in_channels, m.out_channels // m.groups)
        elif isinstance(m, nn.Linear):
            assert m.weight.shape == (m.out_features, m.in_features)
        elif isinstance(m, nn.BatchNorm2d):
            assert m.running_mean.shape == (m.num_features,)


class Transposed1d(nn.Module):
    """ConvTranspose1d plain, grouped and depthwise, then a plain Conv1d."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv1d(2, 8, 3, padding=1)
        self.up = nn.ConvTranspose1d(8, 12, 2, stride=2)
        self.grouped = nn.ConvTranspose1d(12, 8, 3, padding=1, groups=4)
        self.dw = nn.ConvTranspose1d(8, 8, 3, padding=1, groups=8)
        self.out = nn.Conv1d(8, 3, 1)

    def forward(self, x: Any) -> Any:
        x = torch.relu(self.up(torch.relu(self.a(x))))
        return self.out(torch.tanh(self.dw(torch.relu(self.grouped(x)))))


@pytest.mark.parametrize(
    ("module", "drop", "sizes"),
    [
        ("a", [0, 7], {"a": (2, 6), "up": (6, 12)}),
        # grouped reads 4 groups of 3: 1 and 4 are channel 1 of groups 0 and 1, so 1, 4, 7, 10 go
        ("up", [1, 4], {"up": (8, 8), "grouped": (8, 8)}),
        ("grouped", [5], {"grouped": (12, 4), "dw": (4, 4), "out": (4, 3)}),  # 4 groups of 2
    ],
)
def test_conv_transpose_1d(module: str, drop: list[int], sizes: dict[str, Any]) -> None:
    torch.manual_seed(0)
    model = Transposed1d().eval()
    x = torch.randn(2, 2, 5)
    plan = DependencyGraph.build(model, x).group(getattr(model, module), drop)
    zero_removed(plan)
    with torch.no_grad():
        before = model(x)
    plan.apply()
    for name, (c_in, c_out) in sizes.items():
        m = getattr(model, name)
        assert (m.in_channels, m.out_channels) == (c_in, c_out), name
    with torch.no_grad():
        torch.testing.assert_close(model(x), before, rtol=1e-5, atol=1e-6)


def test_conv_transpose_weight_layout_is_in_out() -> None:
    model = Transposed1d().eval()
    plan = DependencyGraph.build(model, torch.randn(1, 2, 5)).group(model.up, [0])
    plan.apply()
    assert model.up.weight.shape == (8, 8, 2)  # (in, out / groups, k): outputs on dim 1
    assert model.grouped.weight.shape == (8, 2, 3)  # ... read on dim 0, one per group


def test_chunk_pieces_lose_the_same_channels() -> None:
    class Glu(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 1)
            self.out = nn.Conv2d(4, 2, 1)

        def forward(self, x: Any) -> Any:
            a, b = self.conv(x).chunk(2, dim=1)
            return self.out(a * torch.sigmoid(b))

    model = Glu().eval()
    graph = DependencyGraph.build(model, X)
    assert "chunk" in str(graph)
    plan = graph.group(model.conv, [1])
    zero_removed(plan)
    with torch.no_grad():
        before = model(X)
    plan.apply()
    assert model.conv.out_channels == 6 and model.out.in_channels == 3
    conv_rows = next(s for s in plan.parts[0].slices if s.label == "conv" and s.name == "weight")
    assert conv_rows.offsets in ((0,), (4,))  # the two pieces are two slices of one tensor
    with torch.no_grad():
        torch.testing.assert_close(model(X), before, rtol=1e-5, atol=1e-6)


class Unfollowable(nn.Module):
    """`how` picks an operation on the channels that the graph cannot follow."""

    def __init__(self, how: str) -> None:
        super().__init__()
        self.how = how
        self.conv = nn.Conv2d(3, 8, 1)
        self.pos = nn.Parameter(torch.randn(1, 8, 1, 1))
        self.out = nn.Conv2d(8, 2, 1)

    def forward(self, x: Any) -> Any:
        y = self.conv(x)
        n = y.size(0)
        if self.how == "split_constant":
            a, b = torch.split(y, [4, 4], dim=1)
            y = a + b
            y = torch.cat([y, y], dim=1)
        elif self.how == "reshape_constant":
            y = y.view(n, 8, -1).view(y.shape)
        elif self.how == "reshape_groups":
            y = y.view(n, 2, 4, 6, 6).transpose(1, 2).reshape(y.shape)
        elif self.how == "roll":
            y = torch.roll(y, 1, dims=1)
        elif self.how == "parameter":
            y = y + self.pos
        elif self.how == "index":
            y = torch.cat([y[:, :4], y[:, 4:]], dim=1)
        elif self.how == "channel_sum":
            y = y * y.sum(1, keepdim=True)
        return self.out(y)


@pytest.mark.parametrize(
    ("how", "reason"),
    [
        ("split_constant", r"split.*fixed sizes \[4, 4\]"),
        ("reshape_constant", "constant size 8 on the channel dim"),
        ("reshape_groups", r"splits the channels into groups \(2, 4\)"),
        ("roll", r"\(roll\), which is not followed"),
        ("parameter", "combines the channels with pos"),
        ("index", r"\(getitem\), which is not followed"),
        ("channel_sum", r"\(sum\) reduces over the channels"),
    ],
)
def test_operations_the_graph_cannot_follow_are_named(how: str, reason: str) -> None:
    model = Unfollowable(how).eval()
    graph = DependencyGraph.build(model, X)
    assert re.search(reason, graph.blocked["conv"])
    with pytest.raises(StructureError, match="conv cannot be pruned"):
        graph.group(model.conv, [0])
    with pytest.raises(StructureError, match="ratio: conv cannot be pruned"):
        prune_channels(model, X, {"conv": 0.5})
    prune_channels(model, X, 0.5)  # prunes nothing it cannot follow
    assert model.conv.out_channels == 8 and model(X).shape == (2, 2, 6, 6)


def test_an_untraceable_model_names_the_failure() -> None:
    class Branchy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 1)

        def forward(self, x: Any) -> Any:
            y = self.conv(x)
            return y if y.sum() > 0 else -y  # data-dependent control flow

    with pytest.raises(StructureError, match=r"torch\.fx cannot trace Branchy at .*y\.sum\(\)"):
        DependencyGraph.build(Branchy(), X)


def test_group_by_input_channels() -> None:
    """Input channels of fc after the flatten: feature 33 is channel 0 of `side` (offset 32,
    4 features per channel); input channel 3 of `b` is channel 3 of the residual space."""
    model = net()
    graph = DependencyGraph.build(model, X)
    plan = graph.group(model.fc, [33, 34, 4 * 14 - 1], dim="in")
    removed = {p.what: sorted(set(range(p.channels)) - set(p.keep.tolist())) for p in plan.parts}
    assert removed["channels of side"] == [0, 5]
    assert all(r == [] for w, r in removed.items() if w != "channels of side")
    zero_removed(plan)
    with torch.no_grad():
        before = model(X)
    plan.apply()
    assert model.side.out_channels == 4 and model.fc.in_features == 12 * 4
    with torch.no_grad():
        torch.testing.assert_close(model(X), before, rtol=1e-5, atol=1e-6)
    model = net()
    graph = DependencyGraph.build(model, X)
    residual = graph.group(model.b, [3], dim="in").parts
    assert [p.what for p in residual] == ["channels of a"]
    assert graph.group(model.a, [3], dim="in").parts[0].what.startswith("channels of stem")


def test_a_hugging_face_model_needs_torch_export() -> None:
    transformers = pytest.importorskip("transformers")
    config = transformers.LlamaConfig(
        vocab_size=32,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
    )
    model = transformers.LlamaForCausalLM(config).eval()
    with pytest.raises(StructureError, match=r"cannot trace LlamaForCausalLM.*use prune_width"):
        DependencyGraph.build(model, torch.zeros(1, 4, dtype=torch.long), tracer="fx")
    # by default torch.export follows it instead
    assert DependencyGraph.build(model, torch.zeros(1, 4, dtype=torch.long)).tracer == "export"


def test_global_pooling_by_mean_keeps_channels_apart() -> None:
    class MeanPool(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3)
            self.bn = nn.BatchNorm2d(8)
            self.fc = nn.Linear(8, 2)

        def forward(self, x: Any) -> Any:
            y = torch.relu(self.bn(self.conv(x)))
            return self.fc(y.mean(dim=(2, 3)) + torch.amax(y, dim=-1).sum(-1))

    torch.manual_seed(0)
    model = MeanPool().eval()
    graph = DependencyGraph.build(model, X)
    assert "conv" not in graph.blocked
    plan = graph.group(model.conv, [2, 6])
    zero_removed(plan)
    with torch.no_grad():
        before = model(X)
    plan.apply()
    assert model.fc.in_features == 6
    with torch.no_grad():
        torch.testing.assert_close(model(X), before, rtol=1e-5, atol=1e-6)
