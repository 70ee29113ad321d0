"""Channel pruning for plain PyTorch models (CNNs): a dependency graph from one traced run.

`DependencyGraph.build` traces the model with ``torch.fx`` and runs it once on the example
inputs to learn every tensor's shape. Each Conv / Linear output opens a *channel space*; the
graph follows how a space travels along dimension 1:

- through BatchNorm (whose statistics and affine parameters go with it), activations, pooling,
  dropout and other shape-keeping operations unchanged;
- into a depthwise convolution (``groups == in_channels == out_channels``), whose output is the
  same space;
- into ``+ - *`` of two tensors (residual coupling: both spaces become one);
- into ``torch.cat(dim=1)`` at an offset;
- into ``flatten`` of an ``(N, C, H, W)`` tensor, after which a channel is ``H * W`` consecutive
  features of the next Linear.

A space is prunable unless it reaches the model's output, a grouped convolution other than a
depthwise one, or an operation the graph does not know (those are listed in
`DependencyGraph.blocked`, with the reason). Every prunable space is one group: its producers'
output rows and biases, the BatchNorms on it, and its consumers' input columns.

The graph works on models ``torch.fx.symbolic_trace`` can trace; Hugging Face transformers are
handled by `fastprune.torch.structural.transformers` instead.
"""

from __future__ import annotations

import operator
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

import fastprune.importance as fpi

from .importance import GroupImportance, resolve_importance
from .plan import Part, PruningPlan, Slice
from .transformers import StructureError

_PASS_MODULES = (
    nn.ReLU,
    nn.ReLU6,
    nn.GELU,
    nn.SiLU,
    nn.Sigmoid,
    nn.Tanh,
    nn.LeakyReLU,
    nn.Hardswish,
    nn.Identity,
    nn.Dropout,
    nn.Dropout2d,
    nn.MaxPool1d,
    nn.MaxPool2d,
    nn.AvgPool1d,
    nn.AvgPool2d,
    nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool2d,
)
_PASS_FUNCTIONS = {
    torch.relu,
    torch.sigmoid,
    torch.tanh,
    nn.functional.relu,
    nn.functional.gelu,
    nn.functional.silu,
    nn.functional.max_pool2d,
    nn.functional.avg_pool2d,
    nn.functional.adaptive_avg_pool2d,
    nn.functional.dropout,
}
_PASS_METHODS = {"relu", "sigmoid", "tanh", "contiguous", "clone"}
_ELEMENTWISE = {operator.add, operator.sub, operator.mul, torch.add, torch.sub, torch.mul}


@dataclass
class _Space:
    size: int
    producers: list[Slice] = field(default_factory=list)
    consumers: list[Slice] = field(default_factory=list)
    modules: list[tuple[nn.Module, str]] = field(default_factory=list)  # to fix sizes
    blocked: list[str] = field(default_factory=list)


Segments = list[tuple[int, int, int]]  # (space id, offset along dim 1, span per channel)


@dataclass
class DependencyGraph:
    """Channel spaces of a traced model and how pruning one propagates."""

    model: nn.Module
    nodes: list[tuple[str, str]]  # (node name, what it is)
    edges: list[tuple[str, str, str]]  # (from, to, how a pruned channel propagates)
    spaces: list[_Space]
    parent: list[int]
    owners: dict[str, int]  # module name -> its output space
    blocked: dict[str, str] = field(default_factory=dict)  # module name -> why not prunable

    @classmethod
    def build(cls, model: nn.Module, example_inputs: Any) -> DependencyGraph:
        """Trace `model` and run it once on `example_inputs` (a tensor or a tuple of them)."""
        given: object = model
        if not isinstance(given, nn.Module):
            msg = f"model: expected a torch.nn.Module, got {type(given).__name__}"
            raise TypeError(msg)
        try:
            traced = fx.symbolic_trace(model)
        except Exception as err:  # torch.fx raises many kinds for untraceable code
            msg = f"model: torch.fx cannot trace {type(model).__name__}: {err}"
            raise StructureError(msg) from err
        inputs = example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)
        with torch.no_grad():
            ShapeProp(traced).propagate(*inputs)
        builder = _Builder(model, traced)
        builder.walk()
        return cls(
            model,
            builder.nodes,
            builder.edges,
            builder.spaces,
            builder.parent,
            builder.owners,
            builder.blocked_modules(),
        )

    def root(self, s: int) -> int:
        while self.parent[s] != s:
            s = self.parent[s]
        return s

    def groups(self) -> list[Part]:
        """One `Part` per prunable channel space (all channels kept)."""
        merged: dict[int, list[_Space]] = {}
        for i, space in enumerate(self.spaces):
            merged.setdefault(self.root(i), []).append(space)
        parts = []
        for _, members in sorted(merged.items()):
            if any(m.blocked for m in members):
                continue
            slices = [s for m in members for s in (*m.producers, *m.consumers)]
            if not any(m.producers for m in members):
                continue
            names = [s.label for m in members for s in m.producers]
            size = members[0].size
            part = Part(
                f"channels of {', '.join(dict.fromkeys(names))}", size, torch.arange(size), slices
            )
            parts.append(part)
        return parts

    def group(self, module: nn.Module, indices: Sequence[int]) -> PruningPlan:
        """The plan that removes output channels `indices` of `module` and all coupled slices."""
        name = _name_of(self.model, module)
        if name in self.blocked:
            raise StructureError(f"module: {name} cannot be pruned: {self.blocked[name]}")
        if name not in self.owners:
            raise StructureError(f"module: {name} produces no channel space in the graph")
        part = next(
            p
            for p in self.groups()
            if any(s.module is module and s.dim == 0 and s.name == "weight" for s in p.slices)
        )
        drop = sorted({int(i) for i in indices})
        if any(not 0 <= i < part.channels for i in drop):
            raise ValueError(f"indices: out of range for {part.channels} channels")
        if len(drop) == part.channels:
            raise ValueError("indices: removing every channel would leave nothing")
        part.keep = torch.tensor([i for i in range(part.channels) if i not in set(drop)])
        return _plan([part], self.model)

    def __str__(self) -> str:
        lines = [f"DependencyGraph of {type(self.model).__name__}: {len(self.nodes)} nodes"]
        lines += [f"  {name}: {what}" for name, what in self.nodes]
        lines += [f"  {a} -> {b}: {how}" for a, b, how in self.edges]
        for p in self.groups():
            lines.append(f"  group: {p.what} ({p.channels} channels, {len(p.slices)} tensors)")
        lines += [f"  not prunable: {n} ({why})" for n, why in self.blocked.items()]
        return "\n".join(lines)


def _name_of(model: nn.Module, module: nn.Module) -> str:
    for name, m in model.named_modules():
        if m is module:
            return name
    raise ValueError("module: not a submodule of the graph's model")


class _Builder:
    def __init__(self, model: nn.Module, traced: fx.GraphModule) -> None:
        self.model = model
        self.traced = traced
        self.modules = dict(model.named_modules())
        self.spaces: list[_Space] = []
        self.parent: list[int] = []
        self.owners: dict[str, int] = {}
        self.values: dict[str, Segments | None] = {}
        self.nodes: list[tuple[str, str]] = []
        self.edges: list[tuple[str, str, str]] = []
        self.module_of_space: dict[int, str] = {}

    def new_space(self, size: int, name: str) -> int:
        self.spaces.append(_Space(size))
        self.parent.append(len(self.parent))
        self.module_of_space[len(self.spaces) - 1] = name
        return len(self.spaces) - 1

    def root(self, s: int) -> int:
        while self.parent[s] != s:
            s = self.parent[s]
        return s

    def union(self, a: int, b: int, why: str) -> None:
        ra, rb = self.root(a), self.root(b)
        if ra != rb:
            if self.spaces[ra].size != self.spaces[rb].size:
                self.block([a, b], f"{why} couples channel counts that differ")
                return
            self.parent[rb] = ra

    def block(self, spaces: Sequence[int], why: str) -> None:
        for s in spaces:
            self.spaces[s].blocked.append(why)

    def block_value(self, segs: Segments | None, why: str) -> None:
        if segs:
            self.block([s for s, _, _ in segs], why)

    def blocked_modules(self) -> dict[str, str]:
        out = {}
        for name, s in self.owners.items():
            reasons = [
                r
                for i, sp in enumerate(self.spaces)
                if self.root(i) == self.root(s)
                for r in sp.blocked
            ]
            if reasons:
                out[name] = reasons[0]
        return out

    def walk(self) -> None:
        for node in self.traced.graph.nodes:
            self.values[node.name] = self.visit(node)

    def arg_segments(self, node: fx.Node) -> list[Segments | None]:
        return [self.values.get(a.name) for a in node.all_input_nodes]

    def visit(self, node: fx.Node) -> Segments | None:
        if node.op == "placeholder":
            self.nodes.append((node.name, "input"))
            return None
        if node.op == "output":
            self.nodes.append((node.name, "output"))
            for segs in self.arg_segments(node):
                self.block_value(segs, "it reaches the model's output")
            return None
        if node.op == "get_attr":
            self.nodes.append((node.name, "parameter"))
            return None
        if node.op == "call_module":
            return self.visit_module(node, self.modules[str(node.target)], str(node.target))
        return self.visit_function(node)

    def edge(self, node: fx.Node, how: str) -> None:
        for a in node.all_input_nodes:
            self.edges.append((a.name, node.name, how))

    def visit_module(self, node: fx.Node, m: nn.Module, name: str) -> Segments | None:
        (segs,) = self.arg_segments(node)[:1] or [None]
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            depthwise = m.groups > 1 and m.groups == m.in_channels == m.out_channels
            self.nodes.append(
                (
                    name,
                    "depthwise conv" if depthwise else ("grouped conv" if m.groups > 1 else "conv"),
                )
            )
            if depthwise and segs:
                self.edge(node, "depthwise: output channel c is input channel c")
                for s, off, span in segs:
                    sp = self.spaces[s]
                    sp.producers.append(Slice(m, "weight", 0, (off,), name, span))
                    if m.bias is not None:
                        sp.producers.append(Slice(m, "bias", 0, (off,), name, span))
                    sp.modules.append((m, "depthwise"))
                return segs
            if m.groups > 1:
                self.block_value(segs, f"{name} is a grouped convolution")
            else:
                self.consume(segs, m, "weight", 1, name, node)
            return self.produce(m, name, int(m.out_channels))
        if isinstance(m, nn.Linear):
            self.nodes.append((name, "linear"))
            shape = node.all_input_nodes[0].meta.get("tensor_meta")
            if shape is not None and len(shape.shape) != 2:
                self.block_value(segs, f"{name} reads a tensor of rank {len(shape.shape)}")
            else:
                self.consume(segs, m, "weight", 1, name, node)
            return self.produce(m, name, m.out_features)
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)):
            self.nodes.append((name, "batchnorm"))
            self.edge(node, "norm coupling: statistics and affine go with the channel")
            for s, off, span in segs or []:
                sp = self.spaces[s]
                for t in ("weight", "bias", "running_mean", "running_var"):
                    if getattr(m, t, None) is not None:
                        sp.consumers.append(Slice(m, t, 0, (off,), name, span))
                sp.modules.append((m, "batchnorm"))
            return segs
        if isinstance(m, _PASS_MODULES):
            self.nodes.append((name, type(m).__name__))
            self.edge(node, "unchanged")
            return segs
        self.nodes.append((name, f"unknown module {type(m).__name__}"))
        for value in self.arg_segments(node):
            self.block_value(value, f"it reaches {name} ({type(m).__name__}), not followed")
        return None

    def produce(self, m: nn.Module, name: str, size: int) -> Segments:
        s = self.new_space(size, name)
        self.owners[name] = s
        sp = self.spaces[s]
        sp.producers.append(Slice(m, "weight", 0, label=name))
        if getattr(m, "bias", None) is not None:
            sp.producers.append(Slice(m, "bias", 0, label=name))
        sp.modules.append((m, "producer"))
        return [(s, 0, 1)]

    def consume(
        self, segs: Segments | None, m: nn.Module, t: str, dim: int, name: str, node: fx.Node
    ) -> None:
        self.edge(node, "output to input")
        for s, off, span in segs or []:
            self.spaces[s].consumers.append(Slice(m, t, dim, (off,), name, span))
            self.spaces[s].modules.append((m, "consumer"))

    def visit_function(self, node: fx.Node) -> Segments | None:
        target = node.target
        args = self.arg_segments(node)
        label = getattr(target, "__name__", str(target))
        if (node.op == "call_method" and target in _PASS_METHODS) or target in _PASS_FUNCTIONS:
            self.nodes.append((node.name, label))
            self.edge(node, "unchanged")
            return args[0] if args else None
        if target in _ELEMENTWISE:
            self.nodes.append((node.name, f"elementwise {label}"))
            tensors = [a for a in args if a is not None]
            if len(tensors) == 2:
                a, b = tensors
                if len(a) == len(b) == 1 and a[0][1:] == b[0][1:] == (0, 1):
                    self.edge(node, "residual coupling: one channel space")
                    self.union(a[0][0], b[0][0], f"{node.name}")
                    return a
                self.block_value(a, f"{node.name} combines concatenated channels")
                self.block_value(b, f"{node.name} combines concatenated channels")
                return None
            return tensors[0] if tensors else None
        if target is torch.cat:
            dim = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else 0)
            inputs: Any = node.args[0]
            self.nodes.append((node.name, "concat"))
            if dim != 1 or not all(self.values.get(getattr(x, "name", "")) for x in inputs):
                for value in args:
                    self.block_value(value, f"{node.name} concatenates on dim {dim}")
                return None
            self.edge(node, "concat: channels at offsets")
            out: Segments = []
            offset = 0
            for x in inputs:
                for s, off, span in self.values[x.name] or []:
                    out.append((s, offset + off, span))
                offset += int(x.meta["tensor_meta"].shape[1])
            return out
        if target is torch.flatten or (node.op == "call_method" and target == "flatten"):
            self.nodes.append((node.name, "flatten"))
            start = node.kwargs.get("start_dim", node.args[1] if len(node.args) > 1 else 0)
            shape = node.all_input_nodes[0].meta["tensor_meta"].shape
            segs = args[0]
            if start != 1 or segs is None:
                self.block_value(segs, f"{node.name} flattens from dim {start}")
                return None
            stride = int(np.prod(shape[2:])) if len(shape) > 2 else 1
            self.edge(node, f"flatten: a channel is {stride} features")
            return [(s, off * stride, span * stride) for s, off, span in segs]
        self.nodes.append((node.name, f"unknown operation {label}"))
        for value in args:
            self.block_value(value, f"it reaches {node.name} ({label}), which is not followed")
        return None


def _plan(parts: list[Part], model: nn.Module) -> PruningPlan:
    plan = PruningPlan(parts=parts)
    modules = {id(s.module): s.module for p in parts for s in p.slices}
    plan.then.append((f"fix the sizes of {len(modules)} modules", _FixSizes(modules.values())))
    return plan


class _FixSizes:
    def __init__(self, modules: Any) -> None:
        self.modules = list(modules)

    def __call__(self) -> None:
        for m in self.modules:
            if isinstance(m, nn.Linear):
                m.out_features, m.in_features = (int(x) for x in m.weight.shape)
            elif isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
                if m.groups > 1:  # depthwise: one channel per group
                    m.groups = m.in_channels = m.out_channels = int(m.weight.shape[0])
                else:
                    m.out_channels, m.in_channels = (int(x) for x in m.weight.shape[:2])
            elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)):
                if m.running_mean is not None:
                    m.num_features = int(m.running_mean.shape[0])
                else:
                    m.num_features = int(m.weight.shape[0])


def prune_channels(
    model: nn.Module,
    example_inputs: Any,
    ratio: float | Mapping[str, float],
    *,
    importance: str | GroupImportance = "magnitude",
    scope: Literal["layer", "global"] = "layer",
    round_to: int = 1,
    ignore: Sequence[str] = (),
    steps: int = 1,
) -> list[PruningPlan]:
    """Remove the least important channels of every prunable group; returns the applied plans.

    Args:
        ratio: the fraction of channels to remove from every group, or ``{module name: ratio}``
            for the groups those modules produce (others untouched).
        importance: ``"magnitude"``, ``"taylor"`` (reads ``.grad``) or a callable
            ``part -> one score per channel``.
        scope: ``"layer"`` removes `ratio` of every group; ``"global"`` ranks the channels of
            all groups together (scores divided by their group's mean) and removes `ratio` of
            all of them, keeping at least `round_to` channels per group.
        round_to: every group keeps a multiple of this many channels.
        ignore: module names whose groups are left whole.
        steps: prune in this many equal steps, re-scoring in between.
    """
    if importance == "activation":
        msg = "importance: 'activation' is for transformers (prune_width); use magnitude/taylor"
        raise ValueError(msg)
    score = resolve_importance(importance)
    if scope not in ("layer", "global"):
        raise ValueError(f"scope: expected 'layer' or 'global', got {scope!r}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps: expected an int >= 1, got {steps!r}")
    if isinstance(round_to, bool) or not isinstance(round_to, int) or round_to < 1:
        raise ValueError(f"round_to: expected an int >= 1, got {round_to!r}")
    ratios = dict(ratio) if isinstance(ratio, Mapping) else None
    uniform = 0.0 if isinstance(ratio, Mapping) else float(ratio)
    for r in ratios.values() if ratios is not None else [ratio]:
        if not isinstance(r, (int, float)) or not 0 <= float(r) < 1:
            raise ValueError(f"ratio: expected a fraction in [0, 1), got {r!r}")
    graph = DependencyGraph.build(model, example_inputs)
    originals = {p.what: p.channels for p in graph.groups()}
    plans = []
    for step in range(1, steps + 1):
        graph = DependencyGraph.build(model, example_inputs) if step > 1 else graph
        chosen = []
        for part in graph.groups():
            names = {s.label for s in part.slices if s.dim == 0 and s.name == "weight"}
            if names & set(ignore):
                continue
            wanted = (
                uniform
                if ratios is None
                else max((ratios[n] for n in names if n in ratios), default=0.0)
            )
            if wanted == 0:
                continue
            total = originals.get(part.what, part.channels)
            keep = max(
                round_to, -(-round(total * (1 - wanted * step / steps)) // round_to) * round_to
            )
            chosen.append((part, min(keep, part.channels)))
        if not chosen:
            break
        scores = [torch.as_tensor(np.asarray(score(p), dtype=np.float64)) for p, _ in chosen]
        if scope == "global":
            _global_keep(chosen, scores, uniform if ratios is None else None, round_to)
        decided = {}
        for (part, keep), s in zip(chosen, scores, strict=True):
            if keep < part.channels:
                order = torch.argsort(-s, stable=True)
                decided[part.what] = torch.sort(order[:keep]).values
        # one group at a time: removing one group's channels from a concatenated tensor moves
        # the offsets of the others, so the graph is rebuilt in between
        for what, keep_index in decided.items():
            current = DependencyGraph.build(model, example_inputs)
            part = next(p for p in current.groups() if p.what == what)
            part.keep = keep_index
            plan = _plan([part], model)
            plan.apply()
            plans.append(plan)
    return plans


def _global_keep(
    chosen: list[tuple[Part, int]],
    scores: list[torch.Tensor],
    ratio: float | None,
    round_to: int,
) -> None:
    if ratio is None:
        raise ValueError("scope: 'global' needs one ratio, not a mapping")
    normalized = [torch.as_tensor(fpi.normalize(s.numpy(), "mean")) for s in scores]
    flat = torch.cat(normalized)
    drop = int(flat.numel() * ratio)
    threshold = torch.sort(flat).values[drop - 1] if drop else -torch.inf
    for i, ((part, _), s) in enumerate(zip(chosen, normalized, strict=True)):
        keep = int((s > threshold).sum())
        keep = max(round_to, -(-keep // round_to) * round_to)
        chosen[i] = (part, min(keep, part.channels))
