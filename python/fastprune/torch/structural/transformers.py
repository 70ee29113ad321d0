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

This module holds width pruning and the config it changes; what the model looks like
(`model_layout`), its calibration statistics (`activations`) and depth pruning (`depth`) have
their own modules, whose public names are exported from here too.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import nn

from ._sizes import fix_sizes
from .activations import Batch, _activations, _batches
from .depth import BlockImportance, block_importance, remove_blocks
from .importance import GroupImportance, resolve_importance
from .model_layout import (
    Layout,
    StructureError,
    _attention,
    _ffn,
    _hidden,
    _with_biases,
    count_parameters,
    flops_per_token,
    layout,
)
from .plan import Part, PruningPlan

Width = int | Mapping[int, int] | None


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
    plan.fixes += _head_fixes(lay, i, heads_n, kv_keep_n)
    fix_sizes(plan, [*att.q, *att.kv])


def _head_fixes(lay: Layout, i: int, heads: int, kv_heads: int) -> list[tuple[object, str, Any]]:
    """The attributes block `i`'s attention reads its head counts from, set for `heads` query
    and `kv_heads` key/value heads."""
    att = _attention(lay, i)
    a: Any = att.module
    d = att.head_dim
    if lay.family == "llama":
        fixes: list[tuple[object, str, Any]] = [(a, "num_key_value_groups", heads // kv_heads)]
        for attr, value in (("num_heads", heads), ("num_key_value_heads", kv_heads)):
            if hasattr(a, attr):
                fixes.append((a, attr, value))
        return fixes
    if lay.family == "bert":
        return [(a, "num_attention_heads", heads), (a, "all_head_size", heads * d)]
    return [(a, "num_heads", heads), (a, "split_size", heads * d)]


def _sync_heads(lay: Layout) -> None:
    """Set every attention's head-count attributes from its projections' weights (after
    their heads were removed by a plan that did not set them)."""
    for i in range(len(lay.blocks)):
        att = _attention(lay, i)
        a: Any = att.module
        d = att.head_dim
        if lay.family == "llama":
            heads, kv = a.q_proj.weight.shape[0] // d, a.k_proj.weight.shape[0] // d
        elif lay.family == "bert":
            heads = kv = a.query.weight.shape[0] // d
        else:
            heads = kv = a.c_proj.weight.shape[0] // d
        for obj, attr, value in _head_fixes(lay, i, int(heads), int(kv)):
            setattr(obj, attr, value)


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
    width, slices, _ = _ffn(lay, i)
    _check_keep(keep, width, f"ffn (layer {i})")
    part = Part(f"blocks.{i} FFN neurons", width, torch.arange(width), _with_biases(slices))
    scores = acts[f"ffn.{i}"] if f"ffn.{i}" in acts else torch.as_tensor(score(part))
    part.keep = _top(scores, keep)
    plan.parts.append(part)
    fix_sizes(plan, slices)


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
    fix_sizes(plan, slices)


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


__all__ = [
    "BlockImportance",
    "Layout",
    "StructureError",
    "block_importance",
    "check_saveable",
    "count_parameters",
    "flops_per_token",
    "layout",
    "prune_width",
    "remove_blocks",
    "sync_config",
]
