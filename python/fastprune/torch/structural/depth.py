"""Depth pruning of transformers: Minitron's block importance (BI, and the loss when a block is
skipped) and `remove_blocks`, which keeps the KV cache working."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from .activations import Batch, _batches, _progress, _run, _token_mask
from .model_layout import layout


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
