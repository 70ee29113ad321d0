"""Channel pruning of randomly built CNNs through the dependency graph.

Exactness: zeroing a group's removed channels (producer rows, BN entries, consumer columns) and
then removing them leaves the outputs unchanged, for residual adds, depthwise convs, BatchNorm,
concat and flatten -> Linear.
"""

from __future__ import annotations

from typing import Any

import pytest

torch = pytest.importorskip("torch")
nn = torch.nn

from fastprune.torch.structural import StructureError  # noqa: E402
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
        removed = torch.tensor(sorted(set(range(part.channels)) - set(part.keep.tolist())))
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


def test_prune_channels_ignore_and_mapping() -> None:
    model = net()
    prune_channels(model, X, {"side": 0.5}, ignore=["fc"])
    assert model.side.out_channels == 3 and model.stem.out_channels == 8
    assert model.fc.out_features == 12


def test_grouped_conv_is_not_pruned_and_says_why() -> None:
    model = Grouped().eval()
    graph = DependencyGraph.build(model, X)
    assert "grouped convolution" in graph.blocked["c1"]
    with pytest.raises(StructureError, match="grouped convolution"):
        graph.group(model.c1, [0])


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="ratio"):
        prune_channels(net(), X, 1.0)
    model = net()
    graph = DependencyGraph.build(model, X)
    with pytest.raises(ValueError, match="every channel"):
        graph.group(model.side, range(6))
    with pytest.raises(ValueError, match="not a submodule"):
        graph.group(net().stem, [0])
    with pytest.raises(ValueError, match="scope"):
        prune_channels(model, X, 0.5, scope="nope")  # type: ignore[arg-type]
