"""Channel pruning for any PyTorch model: a dependency graph from one traced run.

`DependencyGraph.build` traces the model with ``torch.fx`` where it can (CNNs), and otherwise
with ``torch.export`` (non-strict), which follows Hugging Face transformers; either way it runs
the model once on the example inputs to learn every tensor's shape. Each Conv / ConvTranspose /
Linear output opens a *channel space*; on a torch.fx graph the graph follows how a space travels
along dimension 1:

- through BatchNorm (whose statistics and affine parameters go with it), activations, pooling,
  dropout, ``mean``/``sum``/``amax`` over spatial dims and other operations that keep each
  channel apart, unchanged;
- into a convolution's input (weight dim 1; dim 0 for a transposed convolution, whose weight is
  ``(in, out / groups, ...)``);
- into a depthwise convolution (``groups == in_channels == out_channels``), whose output is the
  same space;
- into a grouped convolution with ``g`` groups, plain or transposed: its weight holds one
  group's channels, so its input and output spaces are split into ``g`` equal groups from
  which the same channels go;
- into ``+ - *`` of two tensors (residual coupling: both spaces become one);
- into ``torch.cat(dim=1)`` at an offset, and out of ``split``/``chunk`` along dim 1 (offsets
  into the input's channels; the pieces must stay equal, so each piece loses the same
  channels);
- into ``flatten`` (or a ``reshape``/``view`` to ``(N, -1)``) of an ``(N, C, H, W)`` tensor,
  after which a channel is ``H * W`` consecutive features of the next Linear, and through a
  ``reshape``/``view`` that keeps dims 0 and 1.

A space is prunable unless it reaches the model's output or an operation the graph cannot
follow: an unknown module or function, a reshape to a constant channel count or one that splits
the channels into groups, a split at constant sizes (those are listed in
`DependencyGraph.blocked`, with the reason). Every prunable space is one group: its producers'
output rows and biases, the BatchNorms on it, and its consumers' input columns.

On a ``torch.export`` graph (ATen operations, see `_export_walk`) a space travels along the
dimension a Linear writes, the last one:

- out of embeddings (their columns), Linear and transformers ``Conv1D`` layers (seen as
  ``addmm``, weight ``(in, out)``) and into their inputs;
- through LayerNorm and RMSNorm (*norm coupling*: the scale and bias go with each channel, and
  the statistics over all channels change when some go, so hidden channels are pruned like
  `prune_width` prunes them, not exactly like zeroing them), activations, residual adds and
  ``act(gate) * up``;
- through ``split`` along the channels (each piece at its offsets) and reshapes that keep the
  dims around the channels, split them into ``(heads, head_dim)`` or merge them back;
- into ``scaled_dot_product_attention`` (or attention written out: ``matmul`` per head and a
  ``softmax`` over the tokens): after the reshape into heads one channel is one head;
  where a key/value head is repeated for ``r`` query heads (grouped-query attention) a channel
  is one KV group, its key and value heads with its ``r`` query heads. `DependencyGraph.group`
  refuses to remove part of such a unit, naming the reshape (and the attention) that made it.

Everything else that carries channels (an unknown ATen operation, a reduction over the channels
outside a norm, the model's output) blocks them, named in `DependencyGraph.blocked`. Every size
in an exported graph is a constant; the plan fixes the sizes modules keep (Linear, ``Conv1D``,
embeddings, norms and, on a Hugging Face model `layout` recognises, the attention's head counts
and the config), so a model that computes its shapes from constants of its own is not covered.
"""

from __future__ import annotations

import os
import traceback
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

import fastprune.importance as fpi

from ._channel_spaces import _TRANSPOSED, _Builder, _leaves, _root, _Space
from ._export_walk import _export_arguments, _ExportWalk
from ._sizes import fix_sizes
from .importance import GroupImportance, resolve_importance
from .plan import Part, PruningPlan
from .transformers import Layout, StructureError, _sync_heads, layout, sync_config


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
    tracer: Literal["fx", "export"] = "fx"  # what followed the model

    @classmethod
    def build(
        cls,
        model: nn.Module,
        example_inputs: Any,
        tracer: Literal["auto", "fx", "export"] = "auto",
    ) -> DependencyGraph:
        """Follow `model` once on `example_inputs`: a tensor, a tuple of them, or a dict of
        keyword arguments (``{"input_ids": ..., "attention_mask": ...}``).

        ``tracer="fx"`` traces with ``torch.fx`` (channels on dim 1), ``"export"`` with
        ``torch.export`` (non-strict; channels on a Linear's last dim); ``"auto"`` uses torch.fx
        where it can trace the model and torch.export otherwise (Hugging Face transformers).
        """
        given: object = model
        if not isinstance(given, nn.Module):
            msg = f"model: expected a torch.nn.Module, got {type(given).__name__}"
            raise TypeError(msg)
        if tracer not in ("auto", "fx", "export"):
            raise ValueError(f"tracer: expected 'auto', 'fx' or 'export', got {tracer!r}")
        args, kwargs = _arguments(example_inputs)
        if tracer == "fx" and kwargs:
            raise ValueError("example_inputs: torch.fx takes positional inputs only, not a dict")
        failure = ""
        if tracer == "fx" or (tracer == "auto" and not kwargs):
            try:
                traced = fx.symbolic_trace(model)
            except Exception as err:  # torch.fx raises many kinds for untraceable code
                if tracer == "fx":
                    raise StructureError(_trace_failure(model, err)) from err
                failure = _trace_failure(model, err)
            else:
                with torch.no_grad():
                    ShapeProp(traced).propagate(*args)
                builder = _Builder(model, traced)
                builder.walk()
                return cls._of(model, builder, "fx")
        kwargs = _export_arguments(model, kwargs)
        try:
            program = torch.export.export(model, args, kwargs, strict=False)
        except Exception as err:  # torch.export, too, raises many kinds
            msg = _trace_failure(model, err, "torch.export cannot follow")
            raise StructureError(f"{failure}; {msg}" if failure else msg) from err
        walk = _ExportWalk(model, program)
        walk.walk()
        return cls._of(model, walk, "export")

    @classmethod
    def _of(cls, model: nn.Module, builder: _Builder, tracer: Literal["fx", "export"]) -> Any:
        return cls(
            model,
            builder.nodes,
            builder.edges,
            builder.spaces,
            builder.parent,
            builder.owners,
            builder.blocked_modules(),
            tracer,
        )

    def _units(self, root: int) -> list[str]:
        """Why the channels of the group `root` go in units (heads), if they do."""
        found = [
            why
            for i, space in enumerate(self.spaces)
            if space.pieces is None and _root(self.parent, i) == root
            for why in space.units
        ]
        return list(dict.fromkeys(found))

    def _parts(self) -> list[tuple[int, Part, list[str]]]:
        """(root space, its `Part`, the modules producing it) per prunable channel space."""
        merged: dict[int, list[_Space]] = {}
        for i, space in enumerate(self.spaces):
            if space.pieces is None:
                merged.setdefault(_root(self.parent, i), []).append(space)
        out = []
        for root, members in sorted(merged.items()):
            if any(m.blocked for m in members) or not any(m.producers for m in members):
                continue
            size = members[0].size
            slices = [s for m in members for s in (*m.producers, *m.consumers)]
            names = list(dict.fromkeys(s.label for m in members for s in m.producers))
            weights = [s for m in members for s in m.producers if s.name == "weight"]
            where = []
            for label in dict.fromkeys(s.label for s in weights):
                mine = [s for s in weights if s.label == label]
                first = mine[0]
                if len(mine) > 1:  # pieces pruned alike (groups, chunks)
                    where.append(f"{label} ({len(mine)} equal pieces)")
                elif first.offsets == (0,) and size * first.span == first.tensor().shape[first.dim]:
                    where.append(label)
                else:
                    end = first.offsets[0] + size * first.span
                    where.append(f"{label}[{first.offsets[0]}:{end}]")
            what = f"channels of {', '.join(where)}"
            units = self._units(root)
            if units:
                what += f", whole units only ({'; '.join(units)})"
            norms = {id(s.module) for s in slices if type(s.module).__name__.endswith("Norm")}
            if norms:
                what += (
                    f"; norm coupling: {len(norms)} norms over these channels compute their "
                    "statistics over fewer channels once some go"
                )
            out.append((root, Part(what, size, torch.arange(size), slices), names))
        return out

    def groups(self) -> list[Part]:
        """One `Part` per prunable channel space (all channels kept). Where grouped
        convolutions or a chunk need equal pieces of an output, the pieces form one part:
        its channel ``j`` is channel ``j`` of every piece."""
        return [part for _, part, _ in self._parts()]

    def group(
        self, module: nn.Module, indices: Sequence[int], dim: Literal["out", "in"] = "out"
    ) -> PruningPlan:
        """The plan that removes channels `indices` of `module` and all coupled slices:
        its output channels (``dim="out"``), or the input channels it reads (``dim="in"``,
        counted along its weight's input dimension; after a flatten a channel is several
        features, and removing any of them removes the channel).

        Where the graph needs equal pieces (a grouped convolution's groups, a chunk's pieces),
        removing channel ``j`` of one piece removes it from every piece.
        """
        name = _name_of(self.model, module)
        if dim not in ("out", "in"):
            raise ValueError(f"dim: expected 'out' or 'in', got {dim!r}")
        found = self._parts()
        parts = {r: p for r, p, _ in found}
        # (root, first index, channels, features per channel) covering the chosen dimension
        covers: list[tuple[int, int, int, int]] = []
        if dim == "out":
            if name in self.blocked:
                raise StructureError(f"module: {name} cannot be pruned: {self.blocked[name]}")
            if name not in self.owners:
                raise StructureError(f"module: {name} produces no channel space in the graph")
            covers = [
                (_root(self.parent, s), first, self.spaces[s].size, scale)
                for s, first, scale in _leaves(self.spaces, self.owners[name])
            ]
        else:
            in_dim = 0 if isinstance(module, _TRANSPOSED) else 1
            covers = [
                (root, s.offsets[0], part.channels, s.span)
                for root, part, _ in found
                for s in part.slices
                if s.module is module and s.name == "weight" and s.dim == in_dim
            ]
            if not covers:
                msg = f"module: the input channels of {name} are not prunable (see graph.blocked)"
                raise StructureError(msg)
        drops: dict[int, set[int]] = {root: set() for root, _, _, _ in covers}
        chosen_indices = {int(i) for i in indices}
        for i in indices:
            hit = [(r, f, span) for r, f, n, span in covers if f <= i < f + n * span]
            if not hit:
                raise ValueError(f"indices: {i} is not a prunable {dim}put channel of {name}")
            root, first, span = hit[0]
            unit = (int(i) - first) // span
            units = self._units(root)
            whole = range(first + unit * span, first + (unit + 1) * span)
            if units and not chosen_indices.issuperset(whole):
                msg = (
                    f"indices: {name}'s {dim}put channels go in units of {span} "
                    f"({'; '.join(units)}); removing channel {i} needs all of "
                    f"{whole.start}..{whole.stop - 1}"
                )
                raise StructureError(msg)
            drops[root].add(unit)
        chosen = []
        for root, drop in drops.items():
            part = parts[root]
            if len(drop) == part.channels:
                raise ValueError("indices: removing every channel would leave nothing")
            part.keep = torch.tensor([c for c in range(part.channels) if c not in drop])
            chosen.append(part)
        return _plan(chosen, self.model)

    def __str__(self) -> str:
        lines = [f"DependencyGraph of {type(self.model).__name__}: {len(self.nodes)} nodes"]
        lines += [f"  {name}: {what}" for name, what in self.nodes]
        lines += [f"  {a} -> {b}: {how}" for a, b, how in self.edges]
        for p in self.groups():
            lines.append(f"  group: {p.what} ({p.channels} channels, {len(p.slices)} tensors)")
        lines += [f"  not prunable: {n} ({why})" for n, why in self.blocked.items()]
        return "\n".join(lines)


def _trace_failure(model: nn.Module, err: Exception, what: str = "torch.fx cannot trace") -> str:
    """Say where tracing stopped: the model's own source line that the tracer could not follow
    (the last frame outside torch), and point Hugging Face transformers to `prune_width`."""
    msg = f"model: {what} {type(model).__name__}"
    frames = [
        f
        for f in traceback.extract_tb(err.__traceback__)
        if f"{os.sep}torch{os.sep}" not in f.filename and f.filename != __file__
    ]
    if frames:
        f = frames[-1]
        msg += f" at {os.path.basename(f.filename)}:{f.lineno} ({f.name}: {(f.line or '').strip()})"
    msg += f": {str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__}"
    try:
        layout(model)
    except StructureError:
        return msg
    return msg + "; for Hugging Face transformers use prune_width / block_importance"


def _arguments(example_inputs: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
    if isinstance(example_inputs, Mapping):
        return (), dict(example_inputs)
    if isinstance(example_inputs, tuple):
        return example_inputs, {}
    return (example_inputs,), {}


def _run(model: nn.Module, example_inputs: Any) -> None:
    args, kwargs = _arguments(example_inputs)
    model(*args, **kwargs)


def _name_of(model: nn.Module, module: nn.Module) -> str:
    for name, m in model.named_modules():
        if m is module:
            return name
    raise ValueError("module: not a submodule of the graph's model")


def _plan(parts: list[Part], model: nn.Module) -> PruningPlan:
    plan = PruningPlan(parts=parts)
    fix_sizes(plan, [s for p in parts for s in p.slices])
    try:
        lay = layout(model)
    except StructureError:
        return plan
    plan.then.append(("fix the attention head counts and the config", _FixTransformer(lay)))
    return plan


class _FixTransformer:
    """A Hugging Face model's attention attributes and config, as `prune_width` leaves them."""

    def __init__(self, lay: Layout) -> None:
        self.lay = lay

    def __call__(self) -> None:
        _sync_heads(self.lay)
        sync_config(self.lay)


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
        importance: ``"magnitude"``, ``"taylor"`` (reads ``.grad``), ``"activation"`` (mean
            |output| of each channel on `example_inputs`, which then serve as calibration
            data) or a callable ``part -> one score per channel``.
        scope: ``"layer"`` removes `ratio` of every group; ``"global"`` ranks the channels of
            all groups together (scores divided by their group's mean) and removes `ratio` of
            all of them, keeping at least `round_to` channels per group.
        round_to: every group keeps a multiple of this many channels.
        ignore: module names whose groups are left whole.
        steps: prune in this many equal steps, re-scoring in between.
    """
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
        if isinstance(r, (int, float)) and float(r) >= 1:
            raise ValueError(f"ratio: {r!r} would remove every channel; expected a fraction < 1")
        if not isinstance(r, (int, float)) or not 0 <= float(r) < 1:
            raise ValueError(f"ratio: expected a fraction in [0, 1), got {r!r}")
    graph = DependencyGraph.build(model, example_inputs)
    known = dict(model.named_modules())
    for what, names in (("ratio", list(ratios or ())), ("ignore", list(ignore))):
        for name in names:
            if name not in known:
                raise ValueError(f"{what}: the model has no module {name!r}")
            if what == "ratio" and name in graph.blocked:
                raise StructureError(f"ratio: {name} cannot be pruned: {graph.blocked[name]}")
            if what == "ratio" and name not in graph.owners:
                raise StructureError(f"ratio: {name} produces no channels of its own")
    originals = {key: p.channels for key, p, _ in _keyed(graph)}
    plans = []
    for step in range(1, steps + 1):
        graph = DependencyGraph.build(model, example_inputs) if step > 1 else graph
        chosen = []
        producers = {}
        for key, part, names in _keyed(graph):
            producers[id(part)] = names
            if set(names) & set(ignore):
                continue
            wanted = (
                uniform
                if ratios is None
                else max((ratios[n] for n in names if n in ratios), default=0.0)
            )
            if wanted == 0:
                continue
            total = originals.get(key, part.channels)
            keep = max(
                round_to, -(-round(total * (1 - wanted * step / steps)) // round_to) * round_to
            )
            chosen.append((part, min(keep, part.channels)))
        if not chosen:
            break
        if importance == "activation":
            parts = [p for p, _ in chosen]
            scores = _activation_scores(model, example_inputs, parts, producers, graph.tracer)
        else:
            scores = [torch.as_tensor(np.asarray(score(p), dtype=np.float64)) for p, _ in chosen]
        if scope == "global":
            _global_keep(chosen, scores, uniform if ratios is None else None, round_to)
        decided = []
        for (part, keep), s in zip(chosen, scores, strict=True):
            if keep < part.channels:
                order = torch.argsort(-s, stable=True)
                part.keep = torch.sort(order[:keep]).values
                decided.append(part)
        if decided:
            # one plan: every index is relative to the model as it is now, so groups that
            # share a tensor (pieces of a concat, of a grouped convolution) apply together
            plan = _plan(decided, model)
            plan.apply()
            plans.append(plan)
    return plans


def _activation_scores(
    model: nn.Module,
    example_inputs: Any,
    parts: list[Part],
    producers: dict[int, list[str]],
    tracer: str,
) -> list[torch.Tensor]:
    """Minitron's activation importance for channels: the mean |output| of each channel over
    the example inputs (all positions), averaged over the group's producing modules."""
    modules = dict(model.named_modules())
    wanted = {n for p in parts for n in producers[id(p)]}
    means: dict[str, torch.Tensor] = {}

    def hook(name: str) -> Any:
        def record(_: nn.Module, __: Any, out: torch.Tensor) -> None:
            channels = 1 if tracer == "fx" else out.dim() - 1
            dims = [d for d in range(out.dim()) if d != channels]
            means[name] = out.detach().double().abs().mean(dim=dims)

        return record

    handles = [modules[n].register_forward_hook(hook(n)) for n in sorted(wanted)]
    try:
        with torch.no_grad():
            _run(model, example_inputs)
    finally:
        for h in handles:
            h.remove()
    out = []
    for part in parts:
        # a producer's slices index its output channels (a transposed grouped conv's weight
        # slice is its first group, whose indices are output indices too); weight and bias
        # of one piece are the same outputs, counted once
        rows = {
            (s.label, s.offsets): means[s.label][s.index(torch.arange(part.channels))]
            .reshape(len(s.offsets), part.channels, -1)
            .sum((0, 2))
            for s in part.slices
            if s.label in producers[id(part)] and s.name in ("weight", "bias")
        }
        out.append(torch.stack(list(rows.values())).mean(0))
    return out


def _keyed(graph: DependencyGraph) -> list[tuple[tuple[Any, ...], Part, list[str]]]:
    """The graph's parts with a key that survives pruning: the producing modules and, for
    pieces of the same outputs, their order."""
    seen: dict[tuple[str, ...], int] = {}
    out = []
    for _, part, names in graph._parts():
        n = seen[tuple(names)] = seen.get(tuple(names), -1) + 1
        out.append(((*names, n), part, names))
    return out


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
