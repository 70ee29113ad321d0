"""Width and depth pruning of Hugging Face transformers (Minitron-style), leaving a smaller
dense model.

Supported families: Llama-family decoders (``LlamaModel`` / ``LlamaForCausalLM`` and models with
the same layout: ``q/k/v/o_proj``, ``gate/up/down_proj``, RMSNorm; multi-head and grouped-query
attention), BERT encoders (``BertModel``) and GPT-2 (``GPT2Model`` / ``GPT2LMHeadModel``).

- `prune_width` removes attention heads (for grouped-query attention: whole KV groups with
  ``kv_heads``, query heads within every group with ``heads``; ``head_dim`` and the
  ``num_heads / num_key_value_heads`` ratio stay whole numbers, so RoPE is untouched), FFN
  neurons (gate/up rows with down columns) and hidden channels (embeddings, every norm, every
  projection and the LM head together).
- `block_importance` scores blocks by Minitron's BI, ``1 - mean cos(block input, block output)``
  over real tokens, and optionally by the loss increase when the block is skipped.
- `remove_blocks` drops blocks, renumbers the rest and fixes ``num_hidden_layers`` and every
  attention's ``layer_idx`` so the KV cache still works.

Widths are given as the number of units to keep in every layer (uniform, so the result still
has a stock config) or as ``{layer_index: keep}`` (non-uniform; such a model runs in memory but
`check_saveable` refuses it, since a stock config has one width per kind).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from .importance import GroupImportance, resolve_importance
from .plan import Part, PruningPlan, Slice

Batch = Any  # a Mapping of model keyword arguments or a tensor of input ids
Width = int | Mapping[int, int] | None


class StructureError(ValueError):
    """The model or the requested sizes cannot be pruned structurally as asked."""


# --- what the model looks like -------------------------------------------------------------


@dataclass(frozen=True)
class Layout:
    """Where the parts of a supported transformer are."""

    family: Literal["llama", "bert", "gpt2"]
    model: Any  # Hugging Face modules: their submodules are reached by attribute
    base: Any
    blocks_owner: Any
    blocks_attr: str

    @property
    def blocks(self) -> Any:
        return getattr(self.blocks_owner, self.blocks_attr)

    @property
    def config(self) -> Any:
        return self.model.config


def layout(model: nn.Module) -> Layout:
    """Recognise a supported Hugging Face transformer; raises `StructureError` otherwise."""
    if not isinstance(model, nn.Module) or not hasattr(model, "config"):
        msg = f"model: expected a Hugging Face transformers model, got {type(model).__name__}"
        raise StructureError(msg)
    for attr in ("model", "transformer", "bert"):
        inner = getattr(model, attr, None)
        if isinstance(inner, nn.Module) and inner is not model:
            base = inner
            break
    else:
        base = model
    layers = getattr(base, "layers", None)
    if isinstance(layers, nn.ModuleList) and len(layers) and hasattr(layers[0], "self_attn"):
        attn = layers[0].self_attn
        if all(hasattr(attn, n) for n in ("q_proj", "k_proj", "v_proj", "o_proj")) and hasattr(
            layers[0].mlp, "down_proj"
        ):
            return Layout("llama", model, base, base, "layers")
    encoder = getattr(base, "encoder", None)
    layer = getattr(encoder, "layer", None)
    if isinstance(layer, nn.ModuleList) and len(layer) and hasattr(layer[0].attention, "self"):
        return Layout("bert", model, base, encoder, "layer")
    h = getattr(base, "h", None)
    if isinstance(h, nn.ModuleList) and len(h) and hasattr(getattr(h[0], "attn", None), "c_attn"):
        return Layout("gpt2", model, base, base, "h")
    msg = (
        f"model: {type(model).__name__} is not a supported layout (Llama-family decoder, BERT "
        "encoder or GPT-2)"
    )
    raise StructureError(msg)


@dataclass(frozen=True)
class _Attention:
    module: nn.Module
    heads: int
    kv_heads: int
    head_dim: int
    q: list[Slice]  # query-head channels, out dim (q rows) and in dim (output projection)
    kv: list[Slice]  # kv-head channels (equal to the query heads without GQA)


def _attention(lay: Layout, i: int) -> _Attention:
    block: Any = lay.blocks[i]
    p = f"blocks.{i}."
    if lay.family == "llama":
        a = block.self_attn
        d = int(a.head_dim)
        heads = a.q_proj.out_features // d
        kv = a.k_proj.out_features // d
        q = [_lin_out(a.q_proj, p + "q_proj"), _lin_in(a.o_proj, p + "o_proj")]
        kvs = [_lin_out(a.k_proj, p + "k_proj"), _lin_out(a.v_proj, p + "v_proj")]
        return _Attention(a, heads, kv, d, q, kvs)
    if lay.family == "bert":
        s = block.attention.self
        d = int(s.attention_head_size)
        heads = s.query.out_features // d
        q = [
            _lin_out(s.query, p + "query"),
            _lin_out(s.key, p + "key"),
            _lin_out(s.value, p + "value"),
            _lin_in(block.attention.output.dense, p + "attention.output.dense"),
        ]
        return _Attention(s, heads, heads, d, q, [])
    a = block.attn
    d = int(a.head_dim)
    width = int(a.split_size)
    c_attn = Slice(a.c_attn, "weight", 1, (0, width, 2 * width), p + "attn.c_attn")
    c_bias = Slice(a.c_attn, "bias", 0, (0, width, 2 * width), p + "attn.c_attn")
    q = [c_attn, c_bias, Slice(a.c_proj, "weight", 0, (0,), p + "attn.c_proj")]
    return _Attention(a, width // d, width // d, d, q, [])


def _ffn(lay: Layout, i: int) -> tuple[int, list[Slice], Any]:
    """FFN width of block `i`, its slices (the activation's input channel on each) and the
    module whose input is the FFN activation (for activation importance)."""
    block: Any = lay.blocks[i]
    p = f"blocks.{i}."
    if lay.family == "llama":
        m = block.mlp
        s = [_lin_out(m.gate_proj, p + "gate_proj"), _lin_out(m.up_proj, p + "up_proj")]
        return m.down_proj.in_features, [*s, _lin_in(m.down_proj, p + "down_proj")], m.down_proj
    if lay.family == "bert":
        up, down = block.intermediate.dense, block.output.dense
        s = [_lin_out(up, p + "intermediate.dense"), _lin_in(down, p + "output.dense")]
        return down.in_features, s, down
    fc, proj = block.mlp.c_fc, block.mlp.c_proj
    s = [
        Slice(fc, "weight", 1, label=p + "mlp.c_fc"),
        Slice(fc, "bias", 0, label=p + "mlp.c_fc"),
        Slice(proj, "weight", 0, label=p + "mlp.c_proj"),
    ]
    return int(proj.nx), s, proj


def _hidden(lay: Layout) -> tuple[int, list[Slice], list[nn.Module]]:
    """Every slice carrying a hidden channel, and the norms whose outputs score the channels."""
    cfg = lay.config
    base = lay.base
    slices: list[Slice] = []
    norms: list[nn.Module] = []
    if lay.family == "llama":
        _check_wrapper(lay, ("LlamaModel",), allow_lm_head=True)
        slices.append(Slice(base.embed_tokens, "weight", 1, label="embed_tokens"))
        for i, b in enumerate(lay.blocks):
            p = f"blocks.{i}."
            a, m = b.self_attn, b.mlp
            norms += [b.input_layernorm, b.post_attention_layernorm]
            slices += _norm(b.input_layernorm, p + "input_layernorm")
            slices += _norm(b.post_attention_layernorm, p + "post_attention_layernorm")
            for name in ("q_proj", "k_proj", "v_proj"):
                slices.append(_lin_in(getattr(a, name), p + name))
            slices += _lin_out_all(a.o_proj, p + "o_proj")
            slices += [_lin_in(m.gate_proj, p + "gate_proj"), _lin_in(m.up_proj, p + "up_proj")]
            slices += _lin_out_all(m.down_proj, p + "down_proj")
        norms.append(base.norm)
        slices += _norm(base.norm, "norm")
    elif lay.family == "bert":
        _check_wrapper(lay, ("BertModel",), allow_lm_head=False)
        e = base.embeddings
        for name in ("word_embeddings", "position_embeddings", "token_type_embeddings"):
            if isinstance(getattr(e, name, None), nn.Embedding):
                slices.append(Slice(getattr(e, name), "weight", 1, label=f"embeddings.{name}"))
        norms.append(e.LayerNorm)
        slices += _norm(e.LayerNorm, "embeddings.LayerNorm")
        for i, b in enumerate(lay.blocks):
            p = f"blocks.{i}."
            s = b.attention.self
            for name in ("query", "key", "value"):
                slices.append(_lin_in(getattr(s, name), p + name))
            out = b.attention.output
            slices += _lin_out_all(out.dense, p + "attention.output.dense")
            slices += _norm(out.LayerNorm, p + "attention.output.LayerNorm")
            slices.append(_lin_in(b.intermediate.dense, p + "intermediate.dense"))
            slices += _lin_out_all(b.output.dense, p + "output.dense")
            slices += _norm(b.output.LayerNorm, p + "output.LayerNorm")
            norms += [out.LayerNorm, b.output.LayerNorm]
        pooler = getattr(base, "pooler", None)
        if pooler is not None:
            slices.append(_lin_in(pooler.dense, "pooler.dense"))
            slices += _lin_out_all(pooler.dense, "pooler.dense")
    else:
        _check_wrapper(lay, ("GPT2Model",), allow_lm_head=True)
        slices += [
            Slice(base.wte, "weight", 1, label="wte"),
            Slice(base.wpe, "weight", 1, label="wpe"),
        ]
        for i, b in enumerate(lay.blocks):
            p = f"blocks.{i}."
            norms += [b.ln_1, b.ln_2]
            slices += _norm(b.ln_1, p + "ln_1") + _norm(b.ln_2, p + "ln_2")
            slices.append(Slice(b.attn.c_attn, "weight", 0, label=p + "attn.c_attn"))
            slices += _conv1d_out_all(b.attn.c_proj, p + "attn.c_proj")
            slices.append(Slice(b.mlp.c_fc, "weight", 0, label=p + "mlp.c_fc"))
            slices += _conv1d_out_all(b.mlp.c_proj, p + "mlp.c_proj")
        norms.append(base.ln_f)
        slices += _norm(base.ln_f, "ln_f")
    head = getattr(lay.model, "lm_head", None)
    if isinstance(head, nn.Linear):
        slices.append(_lin_in(head, "lm_head"))
    return int(cfg.hidden_size), slices, norms


def _check_wrapper(lay: Layout, bases: tuple[str, ...], allow_lm_head: bool) -> None:
    if lay.model is lay.base:
        return
    extra = [n for n, _ in lay.model.named_children() if n not in ("model", "transformer", "bert")]
    if allow_lm_head and extra == ["lm_head"]:
        return
    msg = (
        f"hidden: pruning hidden channels supports {', '.join(bases)}"
        f"{' and its causal-LM head' if allow_lm_head else ''}; {type(lay.model).__name__} has "
        f"other modules reading the hidden state ({', '.join(extra)}): prune its base model"
    )
    raise StructureError(msg)


def _lin_out(lin: nn.Module, label: str) -> Slice:
    return Slice(lin, "weight", 0, label=label)


def _lin_in(lin: nn.Module, label: str) -> Slice:
    return Slice(lin, "weight", 1, label=label)


def _lin_out_all(lin: nn.Module, label: str) -> list[Slice]:
    out = [Slice(lin, "weight", 0, label=label)]
    if getattr(lin, "bias", None) is not None:
        out.append(Slice(lin, "bias", 0, label=label))
    return out


def _conv1d_out_all(conv: nn.Module, label: str) -> list[Slice]:
    return [Slice(conv, "weight", 1, label=label), Slice(conv, "bias", 0, label=label)]


def _norm(norm: nn.Module, label: str) -> list[Slice]:
    out = [Slice(norm, "weight", 0, label=label)]
    if getattr(norm, "bias", None) is not None:
        out.append(Slice(norm, "bias", 0, label=label))
    return out


def _with_biases(slices: list[Slice]) -> list[Slice]:
    """Add the bias of every Linear whose output rows are in `slices`."""
    out = list(slices)
    for s in slices:
        lin = s.module
        if (
            isinstance(lin, nn.Linear)
            and s.name == "weight"
            and s.dim == 0
            and lin.bias is not None
        ):
            out.append(Slice(s.module, "bias", 0, s.offsets, s.label))
    return out


# --- calibration statistics ----------------------------------------------------------------


def _batches(calibration_batches: Iterable[Batch]) -> list[Batch]:
    given: object = calibration_batches
    if isinstance(given, (torch.Tensor, Mapping)):
        return [given]
    if isinstance(given, (str, bytes)) or not isinstance(given, Iterable):
        msg = "calibration_batches: expected an iterable of batches (dicts of tensors or ids)"
        raise TypeError(msg)
    batches = list(given)
    if not batches:
        msg = "calibration_batches: no batches given"
        raise ValueError(msg)
    return batches


def _run(model: nn.Module, batch: Batch) -> Any:
    if isinstance(batch, Mapping):
        return model(**batch)
    if isinstance(batch, torch.Tensor):
        return model(input_ids=batch)
    msg = f"calibration_batches: a batch must be a dict of tensors or ids, got {type(batch)}"
    raise TypeError(msg)


def _token_mask(batch: Batch) -> torch.Tensor | None:
    if isinstance(batch, Mapping) and batch.get("attention_mask") is not None:
        mask = batch["attention_mask"]
        return mask.bool() if mask.dim() == 2 else None
    return None


class _Stats:
    """Sums per channel over real tokens of a statistic of some module's input or output."""

    def __init__(self) -> None:
        self.mask: torch.Tensor | None = None
        self.sums: dict[str, torch.Tensor] = {}
        self.tokens: dict[str, int] = {}
        self.handles: list[Any] = []

    def tokens_of(self, x: torch.Tensor) -> torch.Tensor:
        x = x.detach().float()
        if self.mask is not None and x.dim() == 3 and x.shape[:2] == self.mask.shape:
            return x[self.mask]
        return x.reshape(-1, x.shape[-1])

    def add(self, key: str, values: torch.Tensor) -> None:
        total = values.sum(0)
        self.sums[key] = total if key not in self.sums else self.sums[key] + total
        self.tokens[key] = self.tokens.get(key, 0) + values.shape[0]

    def mean(self, key: str) -> torch.Tensor:
        return self.sums[key] / max(self.tokens[key], 1)

    def close(self) -> None:
        for h in self.handles:
            h.remove()


def _activations(
    lay: Layout,
    batches: Sequence[Batch],
    heads: bool,
    ffn: bool,
    hidden: bool,
    progress: bool,
) -> dict[str, torch.Tensor]:
    """Minitron activation importance: mean over real tokens of |neuron| (FFN, input of the
    down projection), of the L2 norm of each head's output (input of the output projection), and
    the sum over every norm layer of the mean |channel| of its output (hidden)."""
    stats = _Stats()
    for i in range(len(lay.blocks)):
        if heads:
            att = _attention(lay, i)
            o_in = _output_projection(lay, i)

            def head_hook(
                _m: nn.Module, args: tuple[Any, ...], key: str = f"heads.{i}", d: int = att.head_dim
            ) -> None:
                x = stats.tokens_of(args[0])
                stats.add(key, x.reshape(x.shape[0], -1, d).norm(dim=-1))

            stats.handles.append(o_in.register_forward_pre_hook(head_hook))
        if ffn:
            down = _ffn(lay, i)[2]
            assert down is not None

            def ffn_hook(_m: nn.Module, args: tuple[Any, ...], key: str = f"ffn.{i}") -> None:
                stats.add(key, stats.tokens_of(args[0]).abs())

            stats.handles.append(down.register_forward_pre_hook(ffn_hook))
    if hidden:
        for j, norm in enumerate(_hidden(lay)[2]):

            def norm_hook(_m: nn.Module, _a: Any, out: Any, key: str = f"norm.{j}") -> None:
                stats.add(key, stats.tokens_of(out).abs())

            stats.handles.append(norm.register_forward_hook(norm_hook))
    try:
        with torch.no_grad():
            for batch in _progress(batches, progress, "activations"):
                stats.mask = _token_mask(batch)
                _run(lay.model, batch)
    finally:
        stats.close()
    result = {k: stats.mean(k) for k in stats.sums if not k.startswith("norm.")}
    if hidden:
        norms = [stats.mean(k) for k in stats.sums if k.startswith("norm.")]
        result["hidden"] = torch.stack(norms).sum(0)
    return result


def _output_projection(lay: Layout, i: int) -> Any:
    b = lay.blocks[i]
    if lay.family == "llama":
        return b.self_attn.o_proj
    if lay.family == "bert":
        return b.attention.output.dense
    return b.attn.c_proj


def _progress(items: Sequence[Any], enabled: bool, desc: str) -> Iterable[Any]:
    if not enabled:
        return items
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return items
    return tqdm(items, desc=desc, leave=False)


# --- width ---------------------------------------------------------------------------------


def prune_width(
    model: nn.Module,
    calibration_batches: Iterable[Batch] | None = None,
    *,
    heads: Width = None,
    kv_heads: Width = None,
    ffn: Width = None,
    hidden: int | None = None,
    importance: str | GroupImportance = "activation",
    round_to: int = 1,
    progress: bool = False,
    dry_run: bool = False,
) -> PruningPlan:
    """Remove attention heads, FFN neurons and hidden channels; returns the applied plan.

    Args:
        model: a supported Hugging Face model (see `layout`), changed in place.
        calibration_batches: batches (dicts of model inputs, or input-id tensors) for
            ``importance="activation"``; padding (``attention_mask == 0``) is left out.
        heads: query heads to keep per layer (an int for every layer, or ``{layer: keep}``).
            With grouped-query attention it must be a multiple of the KV groups kept; heads are
            then removed evenly within every group.
        kv_heads: KV groups to keep per layer (grouped-query attention; each group goes with
            all its query heads).
        ffn: FFN neurons to keep per layer.
        hidden: hidden (embedding) channels to keep, the same everywhere.
        importance: ``"activation"`` (Minitron, needs calibration_batches), ``"magnitude"``,
            ``"taylor"`` (reads ``.grad`` left by ``loss.backward()``), or a callable taking a
            `Part` and returning one score per channel (higher is kept).
        round_to: FFN and hidden widths are rounded up to a multiple of this.
        dry_run: build and return the plan without applying it.
    """
    lay = layout(model)
    n = len(lay.blocks)
    score = resolve_importance(importance)
    heads_keep = _per_layer(heads, n, "heads")
    kv_keep = _per_layer(kv_heads, n, "kv_heads")
    ffn_keep = _per_layer(ffn, n, "ffn")
    if isinstance(round_to, bool) or not isinstance(round_to, int) or round_to < 1:
        msg = f"round_to: expected an int >= 1, got {round_to!r}"
        raise ValueError(msg)
    if hidden is not None and (isinstance(hidden, bool) or not isinstance(hidden, int)):
        msg = f"hidden: expected an int (channels to keep), got {hidden!r}"
        raise TypeError(msg)
    acts: dict[str, torch.Tensor] = {}
    if importance == "activation":
        if calibration_batches is None:
            msg = "calibration_batches: required for importance='activation'"
            raise ValueError(msg)
        acts = _activations(
            lay,
            _batches(calibration_batches),
            heads=bool(heads_keep or kv_keep),
            ffn=bool(ffn_keep),
            hidden=hidden is not None,
            progress=progress,
        )
    plan = PruningPlan()
    for i in range(n):
        if i in heads_keep or i in kv_keep:
            _plan_heads(lay, i, heads_keep.get(i), kv_keep.get(i), score, acts, plan)
        if i in ffn_keep:
            _plan_ffn(lay, i, _round(ffn_keep[i], round_to, "ffn"), score, acts, plan)
    if hidden is not None:
        _plan_hidden(lay, _round(hidden, round_to, "hidden"), score, acts, plan)
    _plan_config(lay, plan)
    if not dry_run:
        plan.apply()
    return plan


def _per_layer(value: Width, n: int, name: str) -> dict[int, int]:
    if value is None:
        return {}
    if isinstance(value, Mapping):
        out = {}
        for k, v in value.items():
            if isinstance(k, bool) or not isinstance(k, int) or not -n <= k < n:
                msg = f"{name}: layer index {k!r} out of range for {n} blocks"
                raise ValueError(msg)
            out[k % n] = _count(v, name)
        return out
    return dict.fromkeys(range(n), _count(value, name))


def _count(v: object, name: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        msg = f"{name}: expected a count to keep (int), got {v!r}"
        raise TypeError(msg)
    if v < 1:
        msg = f"{name}: keeping {v} would remove everything; keep at least 1"
        raise ValueError(msg)
    return v


def _round(keep: int, round_to: int, name: str) -> int:
    return -(-keep // round_to) * round_to


def _check_keep(keep: int, total: int, name: str) -> None:
    if keep > total:
        msg = f"{name}: cannot keep {keep}, the layer has only {total}"
        raise ValueError(msg)


def _top(scores: torch.Tensor, keep: int) -> torch.Tensor:
    """Indices of the `keep` highest scores, in increasing index order (ties: lower index)."""
    order = torch.argsort(-scores.double(), stable=True)
    return torch.sort(order[:keep]).values


def _unit_scores(channel_scores: torch.Tensor, unit: int) -> torch.Tensor:
    return channel_scores.reshape(-1, unit).sum(1)


def _plan_heads(
    lay: Layout,
    i: int,
    heads: int | None,
    kv_heads: int | None,
    score: GroupImportance,
    acts: Mapping[str, torch.Tensor],
    plan: PruningPlan,
) -> None:
    att = _attention(lay, i)
    d, h, g = att.head_dim, att.heads, att.kv_heads
    r = h // g
    kv_keep_n = g if kv_heads is None else kv_heads
    if kv_heads is None and r == 1 and heads is not None:
        kv_keep_n = heads  # without GQA every head is its own group
    _check_keep(kv_keep_n, g, f"kv_heads (layer {i})")
    if kv_heads is not None and g == h and lay.family != "llama":
        msg = "kv_heads: this model has no grouped-query attention; use heads"
        raise StructureError(msg)
    heads_n = kv_keep_n * r if heads is None else heads
    _check_keep(heads_n, h, f"heads (layer {i})")
    if heads_n % kv_keep_n:
        msg = (
            f"heads: {heads_n} query heads cannot be spread evenly over {kv_keep_n} KV groups "
            f"(layer {i}); keep a multiple of {kv_keep_n}"
        )
        raise StructureError(msg)
    q_part = Part(f"blocks.{i} query heads", h * d, torch.arange(h * d), _with_biases(att.q), d)
    if f"heads.{i}" in acts:
        head_scores = acts[f"heads.{i}"].double()
    else:
        head_scores = _unit_scores(torch.as_tensor(score(q_part)).double(), d)
    group_scores = head_scores.reshape(g, r).sum(1)
    groups = _top(group_scores, kv_keep_n)
    per_group = heads_n // kv_keep_n
    kept_heads = torch.cat(
        [gi * r + _top(head_scores[gi * r : (gi + 1) * r], per_group) for gi in groups.tolist()]
    )
    q_part.keep = _channels(kept_heads, d)
    plan.parts.append(q_part)
    if att.kv:
        kv_part = Part(f"blocks.{i} KV heads", g * d, _channels(groups, d), _with_biases(att.kv), d)
        plan.parts.append(kv_part)
    a = att.module
    if lay.family == "llama":
        plan.fixes.append((a, "num_key_value_groups", per_group))
        for attr, value in (("num_heads", heads_n), ("num_key_value_heads", kv_keep_n)):
            if hasattr(a, attr):
                plan.fixes.append((a, attr, value))
    elif lay.family == "bert":
        plan.fixes += [(a, "num_attention_heads", heads_n), (a, "all_head_size", heads_n * d)]
    else:
        plan.fixes += [(a, "num_heads", heads_n), (a, "split_size", heads_n * d)]
        plan.fixes.append((a.c_attn, "nf", 3 * heads_n * d))
        plan.fixes.append((a.c_proj, "nx", heads_n * d))
    _fix_linear_sizes(plan, [*att.q, *att.kv])


def _channels(units: torch.Tensor, unit: int) -> torch.Tensor:
    return (units[:, None] * unit + torch.arange(unit)[None, :]).reshape(-1)


def _plan_ffn(
    lay: Layout,
    i: int,
    keep: int,
    score: GroupImportance,
    acts: Mapping[str, torch.Tensor],
    plan: PruningPlan,
) -> None:
    width, slices, down = _ffn(lay, i)
    _check_keep(keep, width, f"ffn (layer {i})")
    part = Part(f"blocks.{i} FFN neurons", width, torch.arange(width), _with_biases(slices))
    scores = acts[f"ffn.{i}"] if f"ffn.{i}" in acts else torch.as_tensor(score(part))
    part.keep = _top(scores, keep)
    plan.parts.append(part)
    if lay.family == "gpt2":
        plan.fixes += [(slices[0].module, "nf", keep), (down, "nx", keep)]
    _fix_linear_sizes(plan, slices)


def _plan_hidden(
    lay: Layout,
    keep: int,
    score: GroupImportance,
    acts: Mapping[str, torch.Tensor],
    plan: PruningPlan,
) -> None:
    width, slices, _norms = _hidden(lay)
    _check_keep(keep, width, "hidden")
    part = Part("hidden channels", width, torch.arange(width), slices)
    scores = acts["hidden"] if "hidden" in acts else torch.as_tensor(score(part))
    part.keep = _top(scores, keep)
    plan.parts.append(part)
    _fix_linear_sizes(plan, slices)
    for s in slices:
        m = s.module
        if isinstance(m, nn.Embedding):
            plan.fixes.append((m, "embedding_dim", keep))
        elif hasattr(m, "normalized_shape"):
            plan.fixes.append((m, "normalized_shape", (keep,)))
        elif type(m).__name__ == "Conv1D" and s.name == "weight":
            plan.fixes.append((m, "nx" if s.dim == 0 else "nf", keep))


def _fix_linear_sizes(plan: PruningPlan, slices: Sequence[Slice]) -> None:
    linears = {id(s.module): s.module for s in slices if isinstance(s.module, nn.Linear)}
    if linears:
        plan.then.append((f"set in/out_features of {len(linears)} Linear layers", _Sizes(linears)))


class _Sizes:
    """Set Linear layers' ``in_features`` / ``out_features`` from their shrunk weights."""

    def __init__(self, linears: Mapping[int, nn.Linear]) -> None:
        self.linears = list(linears.values())

    def __call__(self) -> None:
        for lin in self.linears:
            lin.out_features, lin.in_features = (int(x) for x in lin.weight.shape)


def _plan_config(lay: Layout, plan: PruningPlan) -> None:
    def sync() -> None:
        sync_config(lay)

    plan.then.append(("write the new sizes into the config", sync))


def sync_config(lay: Layout) -> list[str]:
    """Write the modules' sizes into the config; returns why it is not uniform (empty if it is)."""
    cfg = lay.config
    n = len(lay.blocks)
    heads = {_attention(lay, i).heads for i in range(n)}
    kv = {_attention(lay, i).kv_heads for i in range(n)}
    ffn = {_ffn(lay, i)[0] for i in range(n)}
    dims = {_attention(lay, i).head_dim for i in range(n)}
    problems = []
    for what, values in (("heads", heads), ("KV heads", kv), ("FFN widths", ffn)):
        if len(values) > 1:
            problems.append(f"blocks have different {what} ({sorted(values)})")
    hidden = int(_embedding(lay).weight.shape[1])
    cfg.hidden_size = hidden
    cfg.num_hidden_layers = n
    if len(heads) == 1:
        cfg.num_attention_heads = heads.pop()
    if lay.family == "llama":
        cfg.head_dim = dims.pop()
        if len(kv) == 1:
            cfg.num_key_value_heads = kv.pop()
    elif cfg.hidden_size != cfg.num_attention_heads * next(iter(dims)):
        problems.append(
            f"{cfg.model_type} derives the head size from hidden_size / num_attention_heads "
            f"({cfg.hidden_size} / {cfg.num_attention_heads}), which no longer equals the "
            f"model's head size {next(iter(dims))}"
        )
    if len(ffn) == 1:
        if lay.family == "gpt2":
            cfg.n_inner = ffn.pop()
        else:
            cfg.intermediate_size = ffn.pop()
    return problems


def _embedding(lay: Layout) -> Any:
    if lay.family == "llama":
        return lay.base.embed_tokens
    if lay.family == "bert":
        return lay.base.embeddings.word_embeddings
    return lay.base.wte


def check_saveable(model: nn.Module) -> None:
    """Raise `StructureError` saying why the model cannot be saved in the stock layout."""
    problems = sync_config(layout(model))
    if problems:
        msg = "cannot save in the stock transformers layout: " + "; ".join(problems)
        raise StructureError(msg)


# --- depth ---------------------------------------------------------------------------------


@dataclass
class BlockImportance:
    """Per-block scores: BI (higher = the block changes its input more) and, when asked, the
    loss increase when the block alone is skipped."""

    bi: list[float]
    loss_increase: list[float] | None = None

    def least_important(self, count: int, by: Literal["bi", "loss"] = "bi") -> list[int]:
        values = self.bi if by == "bi" else self.loss_increase
        if values is None:
            msg = "by: loss increases were not computed (block_importance(..., loss=True))"
            raise ValueError(msg)
        order = sorted(range(len(values)), key=lambda i: (values[i], i))
        return sorted(order[:count])


def block_importance(
    model: nn.Module,
    calibration_batches: Iterable[Batch],
    *,
    loss: bool = False,
    progress: bool = False,
) -> BlockImportance:
    """Minitron's block importance ``BI_i = 1 - mean_tokens cos(x_i, x_{i+1})`` (block input
    and output, real tokens only) and, with ``loss=True``, the language-model loss increase of
    skipping each block (needs batches the model computes a loss for, e.g. with ``labels``)."""
    lay = layout(model)
    batches = _batches(calibration_batches)
    n = len(lay.blocks)
    sums = torch.zeros(n, dtype=torch.float64)
    count = torch.zeros(n, dtype=torch.float64)
    state: dict[str, Any] = {"mask": None}
    handles = []
    for i, block in enumerate(lay.blocks):

        def hook(
            _m: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any, i: int = i
        ) -> None:
            x = args[0] if args else kwargs["hidden_states"]
            y = out[0] if isinstance(out, tuple) else out
            cos = nn.functional.cosine_similarity(x.double(), y.double(), dim=-1)
            mask = state["mask"]
            cos = cos[mask] if mask is not None and mask.shape == cos.shape else cos.reshape(-1)
            sums[i] += cos.sum()
            count[i] += cos.numel()

        handles.append(block.register_forward_hook(hook, with_kwargs=True))
    try:
        with torch.no_grad():
            for batch in _progress(batches, progress, "block importance"):
                state["mask"] = _token_mask(batch)
                _run(model, batch)
    finally:
        for h in handles:
            h.remove()
    bi = (1 - sums / count.clamp(min=1)).tolist()
    if not loss:
        return BlockImportance(bi)
    dense = _mean_loss(model, batches)
    increases = []
    for i in _progress(list(range(n)), progress, "skip each block"):
        handle = lay.blocks[i].register_forward_hook(_identity_hook, with_kwargs=True)
        try:
            increases.append(_mean_loss(model, batches) - dense)
        finally:
            handle.remove()
    return BlockImportance(bi, increases)


def _identity_hook(_m: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> Any:
    x = args[0] if args else kwargs["hidden_states"]
    return (x, *out[1:]) if isinstance(out, tuple) else x


def _mean_loss(model: nn.Module, batches: Sequence[Batch]) -> float:
    total = 0.0
    with torch.no_grad():
        for batch in batches:
            out = _run(model, batch)
            value = getattr(out, "loss", None)
            if value is None:
                msg = "calibration_batches: the model returned no loss (pass labels)"
                raise ValueError(msg)
            total += float(value)
    return total / len(batches)


def remove_blocks(model: nn.Module, which: Iterable[int]) -> list[int]:
    """Remove the blocks at the given indices in place; returns the indices kept (old numbers).

    Renumbers the remaining blocks' ``layer_idx`` (KV cache slots) and sets
    ``config.num_hidden_layers`` (and trims ``config.layer_types`` where the config has one).
    """
    lay = layout(model)
    n = len(lay.blocks)
    drop = set()
    for w in which:
        if isinstance(w, bool) or not isinstance(w, int) or not -n <= w < n:
            msg = f"which: block index {w!r} out of range for {n} blocks"
            raise ValueError(msg)
        drop.add(w % n)
    keep = [i for i in range(n) if i not in drop]
    if not keep:
        msg = f"which: removing all {n} blocks would leave no model"
        raise ValueError(msg)
    blocks = lay.blocks
    setattr(lay.blocks_owner, lay.blocks_attr, nn.ModuleList([blocks[i] for i in keep]))
    for new, block in enumerate(lay.blocks):
        for m in block.modules():
            if hasattr(m, "layer_idx"):
                m.layer_idx = new
    cfg = lay.config
    layer_types = getattr(cfg, "layer_types", None)
    if isinstance(layer_types, list) and len(layer_types) == n:
        cfg.layer_types = [layer_types[i] for i in keep]
    cfg.num_hidden_layers = len(keep)
    return keep


# --- sizes ---------------------------------------------------------------------------------


def count_parameters(model: nn.Module) -> int:
    """Parameters, tied tensors counted once."""
    return sum(p.numel() for p in model.parameters())


def flops_per_token(model: nn.Module, seq_len: int) -> int:
    """Forward FLOPs per token at sequence length `seq_len`: 2 per multiply-add of every
    projection (the LM head included), plus attention's scores and weighted sum
    (``4 · seq_len · heads · head_dim`` per block, the causal mask not discounted)."""
    lay = layout(model)
    total = 0
    m: Any
    for m in model.modules():
        if isinstance(m, nn.Linear):
            total += 2 * m.in_features * m.out_features
        elif type(m).__name__ == "Conv1D":
            total += 2 * int(m.nx) * int(m.nf)
    for i in range(len(lay.blocks)):
        att = _attention(lay, i)
        total += 4 * seq_len * att.heads * att.head_dim
    pooler = getattr(lay.base, "pooler", None)
    if pooler is not None:  # runs once per sequence, not per token
        total -= 2 * pooler.dense.in_features * pooler.dense.out_features
    return total
