"""How one traced run of a model becomes channel spaces (see `fastprune.torch.structural.channels`):
the tables of operations the walk knows, the spaces, and `_Builder`, the walk over the torch.fx
graph that creates, couples, cuts, coarsens and blocks them (`_export_walk` walks a
``torch.export`` graph with the same machinery)."""

import math
import operator
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import fx, nn

from .plan import Slice

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
    nn.ELU,
    nn.Mish,
    nn.Softplus,
    nn.Upsample,
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
    nn.functional.adaptive_max_pool2d,
    nn.functional.max_pool1d,
    nn.functional.avg_pool1d,
    nn.functional.dropout,
    nn.functional.relu6,
    nn.functional.leaky_relu,
    nn.functional.hardswish,
    nn.functional.elu,
    nn.functional.interpolate,
}
_REDUCTIONS = {torch.mean, torch.sum, torch.amax, "mean", "sum", "amax"}
_PASS_METHODS = {"relu", "sigmoid", "tanh", "contiguous", "clone"}
_SHAPE_METHODS = {"size", "dim"}
_SHAPE_ATTRIBUTES = {"shape", "dtype", "device", "ndim"}
_RESHAPE_METHODS = {"view", "reshape"}
_ELEMENTWISE = {operator.add, operator.sub, operator.mul, torch.add, torch.sub, torch.mul}
_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_TRANSPOSED = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
_BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


@dataclass
class _Space:
    size: int
    producers: list[Slice] = field(default_factory=list)
    consumers: list[Slice] = field(default_factory=list)
    blocked: list[str] = field(default_factory=list)
    # why its channels are units of several of the producer's channels (a reshape into heads,
    # query heads sharing a key/value head); removing part of one unit is refused
    units: list[str] = field(default_factory=list)
    # once cut (by a chunk, a grouped convolution, a residual with joined channels) or
    # coarsened: the spaces it became, with their first channel and how many of its channels
    # each of theirs is
    pieces: list[tuple[int, int, int]] | None = None


Segments = list[tuple[int, int, int]]  # (space id, offset along the channel dim, span per channel)


def _root(parent: list[int], s: int) -> int:
    while parent[s] != s:
        s = parent[s]
    return s


def _leaves(spaces: list[_Space], s: int) -> list[tuple[int, int, int]]:
    """The live spaces space `s` became: (space, its first channel in `s`, channels of `s`
    per channel of it)."""
    pieces = spaces[s].pieces
    if pieces is None:
        return [(s, 0, 1)]
    return [
        (leaf, start + first * scale, k * scale)
        for p, start, scale in pieces
        for leaf, first, k in _leaves(spaces, p)
    ]


def _meta(node: Any) -> Any:
    """The traced value of `node`: torch.fx's shape propagation or torch.export's fake tensor."""
    if not isinstance(node, fx.Node):
        return None
    meta = node.meta.get("tensor_meta")
    return node.meta.get("val") if meta is None else meta


def _meta_shape(node: Any) -> tuple[int, ...] | None:
    shape = getattr(_meta(node), "shape", None)
    return None if shape is None else tuple(int(x) for x in shape)


class _Builder:
    def __init__(self, model: nn.Module, traced: fx.GraphModule) -> None:
        self.model = model
        self.traced = traced
        self.modules = dict(model.named_modules())
        self.spaces: list[_Space] = []
        self.parent: list[int] = []
        self.owners: dict[str, int] = {}
        self.values: dict[str, Segments | None] = {}
        self.pieces: dict[str, list[Segments | None]] = {}  # split node -> its outputs
        self.nodes: list[tuple[str, str]] = []
        self.edges: list[tuple[str, str, str]] = []

    def new_space(self, size: int) -> int:
        self.spaces.append(_Space(size))
        self.parent.append(len(self.parent))
        return len(self.spaces) - 1

    def root(self, s: int) -> int:
        return _root(self.parent, s)

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

    def resolve(self, segs: Segments | None) -> Segments | None:
        """`segs` with every space a chunk has cut since replaced by its pieces."""
        if segs is None:
            return None
        return [
            (leaf, off + first * span, span * scale)
            for s, off, span in segs
            for leaf, first, scale in _leaves(self.spaces, s)
        ]

    def alike(self, a: Segments, b: Segments) -> bool:
        """Whether `a` and `b` hold their channels at the same places (so can be coupled)."""
        return len(a) == len(b) and all(
            x[1:] == y[1:] and self.spaces[x[0]].size == self.spaces[y[0]].size
            for x, y in zip(a, b, strict=True)
        )

    def blocked_modules(self) -> dict[str, str]:
        out = {}
        for name, s in self.owners.items():
            roots = {self.root(leaf) for leaf, _, _ in _leaves(self.spaces, s)}
            reasons = [
                r
                for i, sp in enumerate(self.spaces)
                if sp.pieces is None and self.root(i) in roots
                for r in sp.blocked
            ]
            if reasons:
                out[name] = reasons[0]
        return out

    def walk(self) -> None:
        for node in self.traced.graph.nodes:
            self.values[node.name] = self.visit(node)

    def arg_segments(self, node: fx.Node) -> list[Segments | None]:
        return [self.resolve(self.values.get(a.name)) for a in node.all_input_nodes]

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
        if isinstance(m, (*_CONVS, *_TRANSPOSED)):
            return self.visit_conv(node, m, name, segs)
        if isinstance(m, nn.Linear):
            self.nodes.append((name, "linear"))
            shape = _meta_shape(node.all_input_nodes[0])
            if shape is not None and len(shape) != 2:
                self.block_value(segs, f"{name} reads a tensor of rank {len(shape)}")
            else:
                self.consume(segs, m, 1, name, node)
            return self.produce(m, name, m.out_features)
        if isinstance(m, _BATCHNORMS):
            self.nodes.append((name, "batchnorm"))
            self.edge(node, "norm coupling: statistics and affine go with the channel")
            for s, off, span in segs or []:
                for t in ("weight", "bias", "running_mean", "running_var"):
                    if getattr(m, t, None) is not None:
                        self.spaces[s].consumers.append(Slice(m, t, 0, (off,), name, span))
            return segs
        if isinstance(m, nn.Flatten):
            self.nodes.append((name, "flatten"))
            return self.flatten(node, segs, m.start_dim, m.end_dim)
        if isinstance(m, _PASS_MODULES):
            self.nodes.append((name, type(m).__name__))
            self.edge(node, "unchanged")
            return segs
        self.nodes.append((name, f"unknown module {type(m).__name__}"))
        for value in self.arg_segments(node):
            self.block_value(value, f"it reaches {name} ({type(m).__name__}), not followed")
        return None

    def visit_conv(
        self, node: fx.Node, m: nn.Module, name: str, segs: Segments | None
    ) -> Segments | None:
        """Convolutions, transposed ones included. A plain one reads its input channels on
        weight dim 1 and writes its outputs on dim 0; a transposed one the other way round.
        With ``g`` groups the weight holds one group's channels on the dimension of size
        ``channels / g``, so input and output are cut into ``g`` equal pieces that lose the
        same channels (the first piece's slice stands for all); a depthwise one
        (``g == in == out``) passes each channel through."""
        transposed = isinstance(m, _TRANSPOSED)
        conv: Any = m
        g, c_out = int(conv.groups), int(conv.out_channels)
        depthwise = g > 1 and g == conv.in_channels == c_out
        kind = "depthwise conv" if depthwise else ("grouped conv" if g > 1 else "conv")
        self.nodes.append((name, f"transposed {kind}" if transposed else kind))
        bias = m.bias is not None
        if depthwise:
            if segs:
                self.edge(node, "depthwise: output channel c is input channel c")
                for s, off, span in segs:
                    self.spaces[s].producers.append(Slice(m, "weight", 0, (off,), name, span))
                    if bias:
                        self.spaces[s].producers.append(Slice(m, "bias", 0, (off,), name, span))
                return segs
            out = self.produce(m, name, c_out)
            self.block_value(out, f"{name} is depthwise and its input channels are not pruned")
            return out
        in_dim, out_dim = (0, 1) if transposed else (1, 0)
        if g == 1:
            self.consume(segs, m, in_dim, name, node)
            return self.produce(m, name, c_out, out_dim)
        if segs:
            self.edge(node, f"grouped: {g} input pieces lose the same channels")
            pieces = self.equal_pieces(segs, int(conv.in_channels), g, name)
            whole = self.resolve(segs) or []  # cut into the pieces now
            for s, off, span in (whole if transposed else pieces[0]) if pieces else []:
                self.spaces[s].consumers.append(Slice(m, "weight", in_dim, (off,), name, span))
        s = self.new_space(c_out)
        self.owners[name] = s
        if transposed:  # bias is whole, weight dim 1 one group's outputs
            if bias:
                self.spaces[s].producers.append(Slice(m, "bias", 0, label=name))
            first = (self.equal_pieces([(s, 0, 1)], c_out, g, name) or [[(s, 0, 1)]])[0][0][0]
            self.spaces[first].producers.append(Slice(m, "weight", 1, label=name))
        else:
            self.spaces[s].producers.append(Slice(m, "weight", 0, label=name))
            if bias:
                self.spaces[s].producers.append(Slice(m, "bias", 0, label=name))
            self.equal_pieces([(s, 0, 1)], c_out, g, name)
        return [(s, 0, 1)]

    def produce(self, m: nn.Module, name: str, size: int, dim: int = 0) -> Segments:
        s = self.new_space(size)
        self.owners[name] = s
        sp = self.spaces[s]
        sp.producers.append(Slice(m, "weight", dim, label=name))
        if getattr(m, "bias", None) is not None:
            sp.producers.append(Slice(m, "bias", 0, label=name))
        return [(s, 0, 1)]

    def consume(
        self, segs: Segments | None, m: nn.Module, dim: int, name: str, node: fx.Node
    ) -> None:
        self.edge(node, "output to input")
        for s, off, span in segs or []:
            self.spaces[s].consumers.append(Slice(m, "weight", dim, (off,), name, span))

    def visit_function(self, node: fx.Node) -> Segments | None:
        target = node.target
        args = self.arg_segments(node)
        label = getattr(target, "__name__", str(target))
        method = node.op == "call_method"
        if (method and target in _SHAPE_METHODS) or (
            target is getattr and node.args[1] in _SHAPE_ATTRIBUTES
        ):
            self.nodes.append((node.name, "shape query"))
            return None
        if target is operator.getitem and isinstance(node.args[0], fx.Node):
            outputs = self.pieces.get(node.args[0].name)
            if outputs is not None:
                self.nodes.append((node.name, "piece"))
                index: Any = node.args[1]
                return outputs[int(index)]
        if not any(args):  # no channel space flows through: nothing to follow
            self.nodes.append((node.name, label))
            return None
        if (method and target in _PASS_METHODS) or target in _PASS_FUNCTIONS:
            self.nodes.append((node.name, label))
            self.edge(node, "unchanged")
            return args[0]
        if target in _ELEMENTWISE:
            return self.elementwise(node, label)
        if target is torch.cat:
            return self.concat(node, 1)
        if target is torch.flatten or (method and target == "flatten"):
            self.nodes.append((node.name, "flatten"))
            start = node.kwargs.get("start_dim", node.args[1] if len(node.args) > 1 else 0)
            end = node.kwargs.get("end_dim", node.args[2] if len(node.args) > 2 else -1)
            return self.flatten(node, args[0], start, end)
        if (method and target in _RESHAPE_METHODS) or target is torch.reshape:
            return self.reshape(node, args[0])
        if target in (torch.split, torch.chunk) or (method and target in ("split", "chunk")):
            return self.split(node, args[0])
        if target in _REDUCTIONS and (method or not isinstance(target, str)):
            return self.reduction(node, args[0], label)
        self.nodes.append((node.name, f"unknown operation {label}"))
        for value in args:
            self.block_value(value, f"it reaches {node.name} ({label}), which is not followed")
        return None

    def elementwise(self, node: fx.Node, label: str, axis: int = 1) -> Segments | None:
        """``+ - *``: two channel-carrying tensors become one space (a residual); a tensor the
        graph does not prune may only broadcast along the channels (dim `axis` of the
        result)."""
        self.nodes.append((node.name, f"elementwise {label}"))
        carried = [(a, self.resolve(self.values.get(a.name))) for a in node.all_input_nodes]
        tensors = [segs for _, segs in carried if segs]
        if len(tensors) == 2:
            coupled = self.couple(tensors[0], tensors[1], node.name)
            if coupled is not None:
                self.edge(node, "residual coupling: one channel space")
            return coupled
        rank = len(_meta_shape(node) or ())
        for other, segs in carried:
            shape = _meta_shape(other)
            at = axis - (rank - len(shape)) if shape is not None else -1
            if not segs and shape is not None and 0 <= at < len(shape) and shape[at] != 1:
                why = f"{node.name} combines the channels with {other.name}"
                for value in tensors:
                    self.block_value(value, why)
                return None
        self.edge(node, "unchanged")
        return tensors[0]

    def concat(self, node: fx.Node, axis: int) -> Segments | None:
        """``cat`` along the channel dim `axis`: each input's channels at its offset."""
        inputs: Any = node.args[0]
        dim: Any = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else 0)
        rank = len(_meta_shape(node) or ())
        dim = dim % rank if rank else dim
        self.nodes.append((node.name, "concat"))
        values = [self.resolve(self.values.get(getattr(x, "name", ""))) for x in inputs]
        if dim != axis:
            for value in values:
                self.block_value(value, f"{node.name} concatenates on dim {dim}")
            return None
        self.edge(node, "concat: channels at offsets")
        out: Segments = []
        offset = 0
        for x, value in zip(inputs, values, strict=True):
            # an input without a channel space (the model's input) just takes its place
            out += [(s, offset + off, span) for s, off, span in value or []]
            offset += (_meta_shape(x) or (0,) * (axis + 1))[axis]
        return out

    def flatten(
        self, node: fx.Node, segs: Segments | None, start: Any, end: Any
    ) -> Segments | None:
        shape = _meta_shape(node.all_input_nodes[0]) or ()
        if start != 1 or end not in (-1, len(shape) - 1):
            self.block_value(segs, f"{node.name} flattens dims {start}..{end}")
            return None
        stride = math.prod(shape[2:])
        self.edge(node, f"flatten: a channel is {stride} features")
        return [(s, off * stride, span * stride) for s, off, span in segs or []]

    def reshape(self, node: fx.Node, segs: Segments | None) -> Segments | None:
        """A reshape keeps the channels when it keeps dims 0 and 1 or flattens all from dim 1,
        and its target size for dim 1 is not a constant (``-1`` or read from ``x.size()``):
        a constant would no longer fit once channels go."""
        self.nodes.append((node.name, "reshape"))
        before = _meta_shape(node.all_input_nodes[0]) or ()
        after = _meta_shape(node) or ()
        sizes: Any = node.kwargs.get("shape", node.args[1:])
        if len(sizes) == 1 and isinstance(sizes[0], (tuple, list)):
            sizes = sizes[0]
        fixed = len(sizes) > 1 and isinstance(sizes[1], int) and sizes[1] != -1
        keeps = len(before) >= 2 and after[:2] == before[:2]
        flattens = len(before) > 2 and after == (before[0], math.prod(before[1:]))
        if (keeps or flattens) and not fixed:
            if keeps:
                self.edge(node, "reshape: channel dim kept")
                return segs
            return self.flatten(node, segs, 1, -1)
        if keeps or flattens:
            why = f"{node.name} reshapes to the constant size {sizes[1]} on the channel dim"
        elif len(after) > len(before) and after[0] == before[0] and after[1] < before[1]:
            why = (
                f"{node.name} splits the channels into groups {after[1:3]}, after which they are "
                "not followed"
            )
        else:
            why = f"{node.name} reshapes {before} to {after}, which mixes the channels"
        self.block_value(segs, why)
        return None

    def reduction(self, node: fx.Node, segs: Segments | None, label: str) -> Segments | None:
        """``mean``/``sum``/``amax`` over dims other than 0 and 1 (global pooling) keep every
        channel apart; over the channels they mix them."""
        self.nodes.append((node.name, label))
        dims: Any = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else None)
        rank = len(_meta_shape(node.all_input_nodes[0]) or ())
        dims = [dims] if isinstance(dims, int) else dims
        if rank > 2 and dims and all(isinstance(d, int) and d % rank > 1 for d in dims):
            self.edge(node, f"{label} over dims {tuple(dims)}: channels unchanged")
            return segs
        self.block_value(segs, f"{node.name} ({label}) reduces over the channels")
        return None

    def split(self, node: fx.Node, segs: Segments | None) -> Segments | None:
        """``split``/``chunk``: along dim 1 the pieces are offsets into the input's channels.
        They must stay equal (a chunk recomputes equal sizes; constant split sizes would not
        change), so piece k's channels are coupled to piece 0's: every piece loses the same."""
        chunk = node.target is torch.chunk or node.target == "chunk"
        label = "chunk" if chunk else "split"
        outputs = _meta(node)
        shapes = [tuple(int(x) for x in t.shape) for t in outputs or ()]
        self.pieces[node.name] = [None] * len(shapes)
        how = node.args[1] if len(node.args) > 1 else next(iter(node.kwargs.values()), None)
        dim: Any = node.kwargs.get("dim", node.args[2] if len(node.args) > 2 else 0)
        rank = len(_meta_shape(node.all_input_nodes[0]) or ())
        dim = dim % rank if rank else dim
        self.nodes.append((node.name, label))
        if dim != 1:
            self.edge(node, f"{label} along dim {dim}: channels unchanged")
            self.pieces[node.name] = [segs] * len(shapes)
            return None
        sizes = [shape[1] for shape in shapes]
        if not (chunk or isinstance(how, fx.Node)) or len(set(sizes)) != 1:
            why = f"{node.name} ({label}) cuts the channels into fixed sizes {sizes}"
            self.block_value(segs, why)
            return None
        total = (_meta_shape(node.all_input_nodes[0]) or (0, 0))[1]
        pieces = self.equal_pieces(segs or [], total, len(sizes), node.name)
        if pieces is not None:
            self.edge(node, f"{label}: {len(pieces)} equal pieces, pruned alike")
            self.pieces[node.name] = list(pieces)
        return None

    def extents(self, segs: Segments) -> list[tuple[int, int]]:
        """(offset, width) along dim 1 of every segment of `segs`."""
        return [(off, self.spaces[s].size * span) for s, off, span in segs]

    def cut_at(self, segs: Segments, bounds: set[int], why: str) -> bool:
        """Cut the spaces of `segs` so that no channel straddles a position in `bounds`;
        false (and `segs` blocked) where a bound falls inside one channel."""
        while True:
            current = self.resolve(segs) or []
            inside = [
                (s, off, span, b)
                for s, off, span in current
                for b in sorted(bounds)
                if off < b < off + self.spaces[s].size * span
            ]
            if not inside:
                return True
            s, off, span, b = inside[0]
            if (b - off) % span:
                self.block_value(current, f"{why} cuts through a channel")
                return False
            self.cut(s, (b - off) // span, why)

    def equal_pieces(self, segs: Segments, total: int, n: int, why: str) -> list[Segments] | None:
        """`segs` (a tensor of `total` features along dim 1) cut into `n` equal pieces whose
        channels are coupled (each piece loses the same ones, so they stay equal); None (and
        `segs` blocked) where the pieces are laid out differently."""
        width = total // n
        if not self.cut_at(segs, {i * width for i in range(1, n)}, why):
            return None
        whole = self.resolve(segs) or []
        pieces = [
            [
                (s, off - i * width, span)
                for s, off, span in whole
                if i * width <= off < (i + 1) * width
            ]
            for i in range(n)
        ]
        if not all(self.alike(pieces[0], p) for p in pieces[1:]):
            self.block_value(whole, f"{why} gives {n} pieces laid out differently")
            return None
        for p in pieces[1:]:
            for x, y in zip(pieces[0], p, strict=True):
                self.union(x[0], y[0], why)
        return pieces

    def cut(self, s: int, at: int, why: str) -> None:
        """Cut space `s`, and every space coupled to it, into channels ``[0, at)`` and
        ``[at, size)``; slices move with their channels."""
        root = self.root(s)
        members = [
            i for i, sp in enumerate(self.spaces) if sp.pieces is None and self.root(i) == root
        ]
        heads, tails = [], []
        for i in members:
            sp = self.spaces[i]
            head, tail = self.new_space(at), self.new_space(sp.size - at)
            for src, dst in ((sp.producers, "producers"), (sp.consumers, "consumers")):
                for sl in src:
                    getattr(self.spaces[head], dst).append(sl)
                    moved = tuple(o + at * sl.span for o in sl.offsets)
                    getattr(self.spaces[tail], dst).append(replace(sl, offsets=moved))
            self.spaces[head].blocked += sp.blocked
            self.spaces[tail].blocked += sp.blocked
            self.spaces[head].units += sp.units
            self.spaces[tail].units += sp.units
            sp.pieces = [(head, 0, 1), (tail, at, 1)]
            heads.append(head)
            tails.append(tail)
        for a, b in zip(heads[1:], tails[1:], strict=True):
            self.union(heads[0], a, why)
            self.union(tails[0], b, why)

    def coarsen(self, s: int, k: int, why: str) -> bool:
        """Make every `k` channels of space `s` (and of every space coupled to it) one channel
        that goes whole; false (and the spaces blocked) where their size is no multiple of
        `k`."""
        root = self.root(s)
        members = [
            i for i, sp in enumerate(self.spaces) if sp.pieces is None and self.root(i) == root
        ]
        if any(self.spaces[i].size % k for i in members):
            self.block(members, f"{why} needs units of {k} channels")
            return False
        new = []
        for i in members:
            sp = self.spaces[i]
            n = self.new_space(sp.size // k)
            coarse = self.spaces[n]
            coarse.producers = [replace(sl, span=sl.span * k) for sl in sp.producers]
            coarse.consumers = [replace(sl, span=sl.span * k) for sl in sp.consumers]
            coarse.blocked = list(sp.blocked)
            coarse.units = [*sp.units, why]
            sp.pieces = [(n, 0, k)]
            new.append(n)
        for n in new[1:]:
            self.union(new[0], n, why)
        return True

    def couple(self, a: Segments, b: Segments, why: str) -> Segments | None:
        """Make `a` and `b`, channels held at the same places of two tensors, one space: cut
        them at each other's bounds, and where a channel of one covers several of the other
        (a key/value head repeated for a group of query heads), coarsen the finer one. None
        (both blocked) where their channels do not line up."""
        bounds = {x for off, width in self.extents(a + b) for x in (off, off + width)}
        if self.cut_at(a + b, bounds, why):
            while True:
                ra, rb = self.resolve(a) or [], self.resolve(b) or []
                if self.alike(ra, rb):
                    for x, y in zip(ra, rb, strict=True):
                        self.union(x[0], y[0], why)
                    return ra
                if len(ra) != len(rb):
                    break
                pairs = [*zip(ra, rb, strict=True), *zip(rb, ra, strict=True)]
                finer = [
                    (x, y[2] // x[2])
                    for x, y in pairs
                    if x[1] == y[1] and y[2] > x[2] and y[2] % x[2] == 0
                ]
                if not finer:
                    break
                (s, _, _), k = finer[0]
                if not self.coarsen(s, k, why):
                    return None
        why = f"{why} combines channels held at different places"
        self.block_value(self.resolve(a), why)
        self.block_value(self.resolve(b), why)
        return None
