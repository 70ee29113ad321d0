"""How a ``torch.export`` run of a model becomes channel spaces (see
`fastprune.torch.structural.channels`): `_ExportWalk` follows the ATen graph with the spaces,
cuts, couplings and coarsening of `_channel_spaces`, one value's channels along one dimension
(the last for a Linear's output).

ATen spells out what torch.fx leaves inside modules: a Linear is ``aten.linear`` (a transformers
``Conv1D`` is ``addmm`` on a flattened input), an RMSNorm is a mean of squares over the channels
and a scale, attention is ``scaled_dot_product_attention`` on ``(batch, heads, tokens,
head_dim)`` tensors made by reshapes and transposes. Parameters are graph inputs, mapped back to
their modules through the exported program's signature.
"""

import inspect
import math
import operator
from collections.abc import Mapping
from typing import Any

import torch
from torch import fx, nn

from ._channel_spaces import Segments, _Builder, _meta, _meta_shape
from .plan import Slice

# unary (or scalar-argument) operations that keep every channel where it is
_PASS = {
    "_to_copy",
    "abs",
    "alias",
    "clone",
    "contiguous",
    "cos",
    "detach",
    "dropout",
    "elu",
    "exp",
    "gelu",
    "hardswish",
    "leaky_relu",
    "lift_fresh_copy",
    "log",
    "neg",
    "pow",
    "relu",
    "rsqrt",
    "sigmoid",
    "silu",
    "sin",
    "sqrt",
    "tanh",
    "to",
    "type_as",
}
_ELEMENTWISE = {"add", "sub", "mul", "div"}
_CHECKS = {"_assert_tensor_metadata", "_assert_async", "_assert_scalar"}  # no values
_RESHAPES = {"view", "reshape", "_unsafe_view"}
_REDUCTIONS = {"mean", "sum", "amax"}


def _op(node: fx.Node) -> str:
    """The ATen operation's name without its overload (``aten.view.default`` -> ``view``)."""
    packet = getattr(node.target, "overloadpacket", None)
    return str(getattr(packet, "__name__", getattr(node.target, "__name__", node.target)))


def _module_of(node: fx.Node) -> tuple[str, str] | None:
    """The innermost module `node` runs in: its name in the model and its class name."""
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return None
    path, kind = list(stack.values())[-1]
    return str(path), str(getattr(kind, "__name__", kind)).rsplit(".", 1)[-1]


def _norm_module(node: fx.Node) -> str | None:
    """The module `node` runs in when that is a normalisation layer (its class name ends in
    ``Norm``: LayerNorm, RMSNorm, ...), else None."""
    found = _module_of(node)
    return found[0] if found is not None and found[1].endswith("Norm") else None


class _ExportWalk(_Builder):
    def __init__(self, model: nn.Module, program: Any) -> None:
        super().__init__(model, program.graph_module)
        # every name a module has: the graph names the one each use went through
        self.modules = dict(model.named_modules(remove_duplicate=False))
        signature = program.graph_signature
        state: dict[str, torch.Tensor] = dict(model.named_parameters(remove_duplicate=False))
        state.update(model.named_buffers(remove_duplicate=False))
        self.params: dict[str, tuple[str, torch.Tensor]] = {}
        for placeholder, fqn in {
            **signature.inputs_to_parameters,
            **signature.inputs_to_buffers,
        }.items():
            if fqn in state:
                self.params[placeholder] = (fqn, state[fqn])
        self.axes: dict[str, int] = {}  # value -> the dimension its channels are on
        head = getattr(model, "get_output_embeddings", None)
        self.lm_head = head() if callable(head) else None
        self.seen_norms: set[str] = set()
        # split node -> its pieces' channels and the dim they are on
        self.split_pieces: dict[str, list[tuple[Segments | None, int]]] = {}
        # (weight, dim) -> the channels its first use wrote or read there
        self.weight_uses: dict[tuple[int, int], Segments | None] = {}

    def walk(self) -> None:
        super().walk()
        # name the module an operation runs in, for a readable printout
        where = {node.name: _module_of(node) for node in self.traced.graph.nodes}
        self.nodes = [
            (name, f"{what} in {found[0]}" if (found := where.get(name)) and found[0] else what)
            for name, what in self.nodes
        ]

    def axis(self, node: Any) -> int:
        return self.axes.get(getattr(node, "name", ""), -1)

    def carried(self, node: Any) -> Segments | None:
        if not isinstance(node, fx.Node):
            return None
        return self.resolve(self.values.get(node.name))

    def out(self, node: fx.Node, segs: Segments | None, axis: int) -> Segments | None:
        if segs:
            self.axes[node.name] = axis
        return segs

    def param(self, node: Any, holder: fx.Node) -> tuple[nn.Module, str, str] | None:
        """The module and attribute of the parameter graph input `node`: the module `holder`
        runs in when it holds that tensor (a tied LM head), else the parameter's owner."""
        if not isinstance(node, fx.Node) or node.name not in self.params:
            return None
        fqn, tensor = self.params[node.name]
        found = _module_of(holder)
        if found is not None:
            path = found[0]
            module = self.modules.get(path)
            for attr, value in getattr(module, "_parameters", {}).items():
                if module is not None and value is tensor:
                    return module, attr, path
        owner, _, attr = fqn.rpartition(".")
        return self.modules[owner], attr, owner

    def visit(self, node: fx.Node) -> Segments | None:
        if node.op == "placeholder":
            if node.name not in self.params:
                self.nodes.append((node.name, "input"))
            return None
        if node.op == "output":
            self.nodes.append((node.name, "output"))
            for a in node.all_input_nodes:
                self.block_value(self.carried(a), "it reaches the model's output")
            return None
        if node.op != "call_function":
            return None
        if node.target is operator.getitem:
            pieces = self.split_pieces.get(getattr(node.args[0], "name", ""))
            index: Any = node.args[1]
            if pieces is None:
                return None
            segs, axis = pieces[int(index)]
            return self.out(node, segs, axis)
        op = _op(node)
        if op == "embedding":
            return self.embedding(node)
        if op == "linear":
            return self.linear(node)
        if op == "addmm":
            return self.addmm(node)
        args = [self.carried(a) for a in node.all_input_nodes]
        if not any(args) or op in _CHECKS:  # no channel space flows through: nothing to follow
            return None
        x: Any = node.args[0]
        segs, axis = self.carried(x), self.axis(x)
        if op in _PASS and sum(map(bool, args)) == 1 and segs:
            self.edge(node, "unchanged")
            return self.out(node, segs, axis)
        if op in _ELEMENTWISE:
            return self.elementwise_op(node, op)
        if op in _RESHAPES:
            return self.reshape_op(node, segs, axis)
        if op in ("transpose", "permute", "t", "unsqueeze", "squeeze", "expand", "select"):
            return self.move(node, op, segs, axis)
        if op == "slice":
            return self.slice_op(node, segs, axis)
        if op == "cat":
            return self.cat(node)
        if op in ("split", "split_with_sizes", "chunk"):
            self.split_op(node, segs, axis)
            return None
        if op in _REDUCTIONS:
            return self.reduce(node, op, segs, axis)
        if op in ("layer_norm", "rms_norm"):
            return self.norm(node, op, segs, axis)
        if op == "scaled_dot_product_attention":
            return self.attention(node)
        if op == "matmul":
            return self.batched_matmul(node)
        if op in ("softmax", "_softmax", "log_softmax"):
            return self.softmax(node, op, segs, axis)
        self.nodes.append((node.name, f"unknown operation aten.{op}"))
        for value in args:
            self.block_value(value, f"it reaches {node.name} (aten.{op}), which is not followed")
        return None

    # --- modules ----------------------------------------------------------------------------

    def produce(self, m: nn.Module, name: str, size: int, dim: int = 0) -> Segments:
        segs = super().produce(m, name, size, dim)
        self.shared_weight(m, dim, segs, name)
        return segs

    def consume(
        self, segs: Segments | None, m: nn.Module, dim: int, name: str, node: fx.Node
    ) -> None:
        super().consume(segs, m, dim, name, node)
        self.shared_weight(m, dim, segs, name)

    def shared_weight(self, m: nn.Module, dim: int, segs: Segments | None, name: str) -> None:
        """A weight used more than once (a layer applied twice, a tied LM head) has one set of
        channels on each dim: the uses' channels become one space, or are blocked where one
        use reads an input that is not pruned."""
        key = (id(getattr(m, "weight", m)), dim)
        if key not in self.weight_uses:
            self.weight_uses[key] = segs
            return
        seen = self.resolve(self.weight_uses[key])
        why = f"{name} is used more than once"
        if seen and segs:
            self.couple(seen, segs, why)
        elif seen or segs:
            self.block_value(seen, f"{why}, once on channels that are not pruned")
            self.block_value(segs, f"{why}, once on channels that are not pruned")
            self.weight_uses[key] = None

    def embedding(self, node: fx.Node) -> Segments | None:
        found = self.param(node.args[0], node)
        if found is None:
            return None
        m, _, name = found
        self.nodes.append((name, "embedding"))
        rank = len(_meta_shape(node) or ())
        width = int(self.params[str(getattr(node.args[0], "name", ""))][1].shape[1])
        return self.out(node, self.produce(m, name, width, 1), rank - 1)

    def linear(self, node: fx.Node) -> Segments | None:
        x: Any = node.args[0]
        found = self.param(node.args[1], node)
        if found is None or found[1] != "weight":
            self.unknown(node, "aten.linear with a weight that is no module's parameter")
            return None
        m, _, name = found
        weight = m.weight
        assert isinstance(weight, torch.Tensor)
        kind = "LM head" if m is self.lm_head else "linear"
        if not isinstance(m, nn.Linear):
            kind += f" (weight of {type(m).__name__})"
        self.nodes.append((name, kind))
        segs = self.carried(x)
        rank = len(_meta_shape(x) or ())
        if segs and self.axis(x) != rank - 1:
            self.block_value(segs, f"{name} reads channels that are not its input features")
        else:
            self.consume(segs, m, 1, name, node)
        rows = int(weight.shape[0])
        return self.out(node, self.produce(m, name, rows), len(_meta_shape(node) or ()) - 1)

    def addmm(self, node: fx.Node) -> Segments | None:
        """``addmm(bias, x, weight)``: a transformers ``Conv1D``, weight ``(in, out)``."""
        x: Any = node.args[1]
        found = self.param(node.args[2], node)
        if found is None or found[1] != "weight":
            self.unknown(node, "aten.addmm with a weight that is no module's parameter")
            return None
        m, _, name = found
        weight = m.weight
        assert isinstance(weight, torch.Tensor)
        self.nodes.append((name, f"linear ({type(m).__name__}, weight stored (in, out))"))
        segs = self.carried(x)
        if segs and self.axis(x) != 1:
            self.block_value(segs, f"{name} reads channels that are not its input features")
        else:
            self.consume(segs, m, 0, name, node)
        return self.out(node, self.produce(m, name, int(weight.shape[1]), 1), 1)

    def norm(self, node: fx.Node, op: str, segs: Segments | None, axis: int) -> Segments | None:
        """``layer_norm(x, shape, weight, bias)`` / ``rms_norm(x, shape, weight)`` over the
        channels: norm coupling, the affine parameters go with each channel."""
        name = _norm_module(node) or node.name
        self.nodes.append((name, "LayerNorm" if op == "layer_norm" else "RMSNorm"))
        shape: Any = node.args[1]
        rank = len(_meta_shape(node) or ())
        if len(shape) != 1 or axis != rank - 1:
            self.block_value(segs, f"{name} normalises over dims other than the channels")
            return None
        self.edge(node, "norm coupling: statistics over all channels, scale per channel")
        for arg in node.args[2:4]:
            found = self.param(arg, node)
            if found is not None:
                m, attr, label = found
                for s, off, span in segs or []:
                    self.spaces[s].consumers.append(Slice(m, attr, 0, (off,), label, span))
        return self.out(node, segs, axis)

    def attention(self, node: fx.Node) -> Segments | None:
        """``scaled_dot_product_attention(q, k, v, mask)`` on ``(batch, heads, tokens, d)``:
        query head ``h`` attends with key/value head ``h // r`` (``r`` query heads share one
        under grouped-query attention), and its output is that query head."""
        self.nodes.append((node.name, "attention (scaled_dot_product_attention)"))
        q, k, v = (self.carried(a) for a in node.args[:3])
        heads = [(_meta_shape(a) or (0,) * 3)[-3] for a in node.args[:3]]
        mask = self.carried(node.args[3]) if len(node.args) > 3 else None
        usable = all(
            segs and self.axis(a) == len(_meta_shape(a) or ()) - 3
            for a, segs in zip(node.args[:3], (q, k, v), strict=True)
        )
        if not usable or mask or heads[0] % heads[1] or heads[1] != heads[2]:
            why = f"{node.name} (attention) reads channels that are not whole heads"
            for segs in (q, k, v, mask):
                self.block_value(segs, why)
            return None
        r = heads[0] // heads[1]  # key/value heads given once for r query heads (enable_gqa)
        why = f"{node.name} (attention) couples query heads with their key/value heads"
        shared = self.couple(q or [], self.scaled(k or [], r), why)
        if shared is not None:
            shared = self.couple(shared, self.scaled(v or [], r), why)
        if shared is None:  # the channels that were not coupled go nowhere either
            for segs in (q, k, v):
                self.block_value(self.resolve(segs), f"{why}, which do not line up")
            return None
        self.edge(node, "attention: query heads go with their key/value heads")
        return self.out(node, self.resolve(shared), self.axis(node.args[0]))

    def batched_matmul(self, node: fx.Node) -> Segments | None:
        """``matmul`` of two tensors holding their channels on the same batch dim (attention
        written out: ``q @ k.T``, ``probs @ v``, per head): one space, kept by the result."""
        a, b = node.args[:2]
        ranks = {len(_meta_shape(a) or ()), len(_meta_shape(b) or ())}
        axes = {self.axis(a), self.axis(b)}
        first, second = self.carried(a), self.carried(b)
        rank = max(ranks)
        if len(ranks) == 1 and len(axes) == 1 and 0 <= min(axes) < rank - 2 and first and second:
            shared = self.couple(first, second, f"{node.name} (matmul per head)")
            if shared is not None:
                self.nodes.append((node.name, "attention (matmul per head)"))
                self.edge(node, "attention: query heads go with their key/value heads")
            return self.out(node, shared, axes.pop())
        self.unknown(node, "aten.matmul, which is not followed")
        return None

    def softmax(self, node: fx.Node, op: str, segs: Segments | None, axis: int) -> Segments | None:
        rank = len(_meta_shape(node) or ())
        dim: Any = node.args[1]
        if dim % rank != axis:
            self.edge(node, f"{op} along dim {dim % rank}: channels unchanged")
            return self.out(node, segs, axis)
        self.nodes.append((node.name, op))
        self.block_value(segs, f"{node.name} ({op}) mixes the channels")
        return None

    def scaled(self, segs: Segments, r: int) -> Segments:
        return [(s, off * r, span * r) for s, off, span in segs]

    def unknown(self, node: fx.Node, why: str) -> None:
        self.nodes.append((node.name, why))
        for a in node.all_input_nodes:
            self.block_value(self.carried(a), f"it reaches {node.name} ({why})")

    # --- elementwise ------------------------------------------------------------------------

    def elementwise_op(self, node: fx.Node, op: str) -> Segments | None:
        """``add``/``mul``/...: a parameter varying along the channels (a norm's scale, a
        bias) goes with them; otherwise the rule of `_Builder.elementwise`."""
        rank = len(_meta_shape(node) or ())
        inputs = [a for a in node.args if isinstance(a, fx.Node)]
        carrying = [a for a in inputs if self.carried(a)]
        offsets = {self.axis(a) + rank - len(_meta_shape(a) or ()) for a in carrying}
        if len(offsets) != 1:
            why = f"{node.name} ({op}) combines channels held on different dims"
            for a in carrying:
                self.block_value(self.carried(a), why)
            return None
        axis = offsets.pop()
        segs = self.carried(carrying[0]) or []
        for a in inputs:
            found = None if a in carrying else self.param(a, node)
            shape = _meta_shape(a) or ()
            at = axis - (rank - len(shape))
            if found is None or not 0 <= at < len(shape) or shape[at] == 1:
                continue
            m, attr, label = found
            kind = _norm_module(node)
            self.edge(node, "norm scale per channel" if kind else f"{attr} per channel")
            for s, off, span in segs:
                self.spaces[s].consumers.append(Slice(m, attr, at, (off,), label, span))
            return self.out(node, segs, axis)
        return self.out(node, self.elementwise(node, op, axis), axis)

    # --- shapes -----------------------------------------------------------------------------

    def reshape_op(self, node: fx.Node, segs: Segments | None, axis: int) -> Segments | None:
        """A reshape keeps the channels when the dims before and after them keep their sizes;
        splits them into ``(units, d)`` (attention heads: a channel is then a whole head, and
        only whole heads can go); or merges them with the dims after them (a channel is then
        that many features: heads back into a hidden vector, a key/value head repeated for
        its query heads)."""
        before = _meta_shape(node.args[0]) or ()
        after = _meta_shape(node) or ()
        c = before[axis]
        lead, rest = math.prod(before[:axis]), math.prod(before[axis + 1 :])
        for b in range(len(after)):
            if math.prod(after[:b]) != lead:
                continue
            if after[b] == c and math.prod(after[b + 1 :]) == rest:
                self.nodes.append((node.name, "reshape"))
                self.edge(node, "reshape: channel dim kept")
                return self.out(node, segs, b)
            d = after[b + 1] if b + 1 < len(after) else 0
            if d > 1 and after[b] * d == c and math.prod(after[b + 2 :]) == rest:
                return self.split_heads(node, segs or [], d, b)
            for m in range(axis + 2, len(before) + 1):
                stride = math.prod(before[axis + 1 : m])
                if after[b] == c * stride and math.prod(after[b + 1 :]) == math.prod(before[m:]):
                    self.nodes.append((node.name, "reshape"))
                    self.edge(node, f"reshape: a channel is {stride} features")
                    return self.out(node, self.scaled(segs or [], stride), b)
        why = f"{node.name} reshapes {before} to {after}, which mixes the channels"
        self.nodes.append((node.name, "reshape"))
        self.block_value(segs, why)
        return None

    def split_heads(self, node: fx.Node, segs: Segments, d: int, axis: int) -> Segments | None:
        self.nodes.append((node.name, f"reshape into heads of {d}"))
        found = _module_of(node)
        where = f" in {found[0]}" if found is not None else ""
        why = f"{node.name} (reshape{where}) splits the channels into heads of {d}"
        if any(
            off % d or self.spaces[s].size * span % d or (span % d and d % span)
            for s, off, span in segs
        ):
            self.block_value(segs, f"{why}, which do not line up with its channels")
            return None
        for s, _, span in segs:
            if span < d and not self.coarsen(s, d // span, why):
                return None
        segs = self.resolve(segs) or []
        self.edge(node, f"reshape: channels in heads of {d}")
        return self.out(node, [(s, off // d, span // d) for s, off, span in segs], axis)

    def move(self, node: fx.Node, op: str, segs: Segments | None, axis: int) -> Segments | None:
        """Operations that move, add or drop dims around the channels."""
        before = _meta_shape(node.args[0]) or ()
        after = _meta_shape(node) or ()
        args: Any = node.args
        new: int | None = axis
        if op in ("transpose", "t"):
            d0, d1 = (args[1] % len(before), args[2] % len(before)) if op == "transpose" else (0, 1)
            new = d1 if axis == d0 else d0 if axis == d1 else axis
        elif op == "permute":
            new = [d % len(before) for d in args[1]].index(axis)
        elif op == "unsqueeze":
            new = axis + (args[1] % len(after) <= axis)
        elif op == "expand":
            new = axis + len(after) - len(before)
        elif op == "select":
            dim = args[1] % len(before)
            new = None if dim == axis else axis - (dim < axis)
        else:  # squeeze: the size-1 dims before the channels go
            dims = args[1] if len(args) > 1 else range(len(before))
            dims = [dims] if isinstance(dims, int) else dims
            gone = [d % len(before) for d in dims if before[d % len(before)] == 1]
            new = None if axis in gone else axis - sum(d < axis for d in gone)
        if new is None or after[new] != before[axis]:
            self.nodes.append((node.name, op))
            self.block_value(segs, f"{node.name} ({op}) changes the channel dim")
            return None
        return self.out(node, segs, new)

    def slice_op(self, node: fx.Node, segs: Segments | None, axis: int) -> Segments | None:
        before = _meta_shape(node.args[0]) or ()
        args: Any = node.args
        dim = (args[1] if len(args) > 1 else 0) % len(before)
        if dim != axis or _meta_shape(node) == before:
            return self.out(node, segs, axis)
        self.nodes.append((node.name, "slice"))
        self.block_value(segs, f"{node.name} slices the channels")
        return None

    def cat(self, node: fx.Node) -> Segments | None:
        """``cat`` along the channels: offsets (`_Builder.concat`); along another dim, of
        inputs holding their channels alike (RoPE's rotated halves of a head): one space."""
        inputs: Any = node.args[0]
        rank = len(_meta_shape(node) or ())
        dim: Any = node.args[1] if len(node.args) > 1 else 0
        axes = {self.axis(x) for x in inputs}
        values = [self.carried(x) for x in inputs]
        if len(axes) == 1 and dim % rank not in axes and all(values):
            first = values[0] or []
            for other in values[1:]:
                coupled = self.couple(first, other or [], node.name)
                if coupled is None:
                    for value in values:
                        self.block_value(self.resolve(value), f"{node.name} (cat) is not followed")
                    return None
                first = coupled
            self.edge(node, f"concat along dim {dim % rank}: channels unchanged")
            return self.out(node, first, axes.pop())
        axis = next(iter(axes - {-1}), -1)
        if axis < 0 or len(axes - {-1}) > 1:
            for value in values:
                self.block_value(value, f"{node.name} concatenates channels held on other dims")
            return None
        return self.out(node, self.concat(node, axis), axis)

    def split_op(self, node: fx.Node, segs: Segments | None, axis: int) -> None:
        """``split``/``chunk`` along the channels: each piece holds the channels at its offsets
        (the sizes are the traced ones; the plan fixes the attributes a module splits by).
        Along another dim every piece holds all channels."""
        before = _meta_shape(node.args[0]) or ()
        args: Any = node.args
        dim = (args[2] if len(args) > 2 else 0) % len(before)
        sizes = [int(t.shape[dim]) for t in _meta(node) or ()]
        self.nodes.append((node.name, "split"))
        if dim != axis:
            self.edge(node, f"split along dim {dim}: channels unchanged")
            self.split_pieces[node.name] = [(segs, axis)] * len(sizes)
            return
        bounds = {sum(sizes[:i]) for i in range(len(sizes) + 1)}
        self.split_pieces[node.name] = [(None, axis)] * len(sizes)
        if not self.cut_at(segs or [], bounds, node.name):
            return
        self.edge(node, f"split: {len(sizes)} pieces at offsets")
        whole = self.resolve(segs) or []
        start = 0
        pieces: list[tuple[Segments | None, int]] = []
        for size in sizes:
            inside = [
                (s, off - start, span) for s, off, span in whole if start <= off < start + size
            ]
            pieces.append((inside, axis))
            start += size
        self.split_pieces[node.name] = pieces

    def reduce(self, node: fx.Node, op: str, segs: Segments | None, axis: int) -> Segments | None:
        """A reduction over other dims keeps the channels; over the channels it is a norm's
        statistic inside a normalisation layer (norm coupling), and mixes them elsewhere."""
        before = _meta_shape(node.args[0]) or ()
        args: Any = node.args
        dims = args[1] if len(args) > 1 and args[1] is not None else range(len(before))
        dims = [d % len(before) for d in ([dims] if isinstance(dims, int) else dims)]
        keep = bool(args[2]) if len(args) > 2 else bool(node.kwargs.get("keepdim", False))
        if axis not in dims:
            return self.out(node, segs, axis - (0 if keep else sum(d < axis for d in dims)))
        found = _module_of(node)
        if found is None or not found[1].endswith("Norm"):
            self.nodes.append((node.name, op))
            self.block_value(segs, f"{node.name} ({op}) reduces over the channels")
            return None
        if found[0] not in self.seen_norms:
            self.seen_norms.add(found[0])
            self.nodes.append(found)
        self.edge(node, "norm coupling: statistics over all channels")
        return None


def _export_arguments(model: nn.Module, kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """`kwargs`, with ``use_cache=False`` for a model that would otherwise return a KV cache
    (an object torch.export cannot return, and tensors that are no channels to prune)."""
    config = getattr(model, "config", None)
    takes = inspect.signature(model.forward).parameters
    if getattr(config, "use_cache", False) and "use_cache" in takes and "use_cache" not in kwargs:
        return {**kwargs, "use_cache": False}
    return dict(kwargs)
