"""OWL for a PyTorch model: per-layer sparsities from its blocks' share of outlier weights.

:func:`owl_sparsity` runs the dense model once over the calibration batches, gathering each
prunable layer's per-feature sum of squared inputs (padding left out), scores every weight
as Wanda does (``|W_ij| * ||X_j||``), measures each block's outlier ratio over all of its
layers' scores together, and allocates the sparsities with :func:`fastprune.allocation.owl`.
The result maps every layer to its block's sparsity and is given to ``prune_model`` as its
``sparsity``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

import fastprune as fp

from ..allocation import outlier_ratio, owl
from .hooks import Batch, call_model, layer_rows, token_mask_of, weight_matrix
from .prune import DEFAULT_TARGETS, resolve_blocks, select_layers


@dataclass(frozen=True)
class OwlProfile:
    """What :func:`owl_sparsity` found: per block its outlier ratio, weights and sparsity, and
    ``layers``, the sparsity of every layer (what ``prune_model(sparsity=...)`` takes)."""

    target: float
    m: float
    lam: float
    outlier_ratios: list[float]
    block_weights: list[int]
    block_sparsities: list[float]
    layers: dict[str, float]

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def owl_sparsity(
    model: nn.Module,
    calibration_batches: Iterable[Batch],
    sparsity: float,
    *,
    m: float = 5.0,
    lam: float = 0.08,
    blocks: str | Sequence[nn.Module] | None = None,
    targets: Sequence[type[nn.Module]] = DEFAULT_TARGETS,
    ignore: Sequence[str] = (),
) -> OwlProfile:
    """OWL's per-layer sparsities for `model` (not modified) at the mean `sparsity`.

    `m` is the outlier threshold (a score above `m` times its block's mean), `lam` the most a
    block's sparsity may differ from the target. `blocks`, `targets` and `ignore` select the
    layers as ``prune_model`` does; the fraction of the selected weights pruned is `sparsity`.
    """
    found, _ = resolve_blocks(model, blocks)
    layers = select_layers(model, found, targets, ignore)
    if not layers:
        msg = "model: no layer to prune was found (check `targets` and `ignore`)"
        raise ValueError(msg)
    sums = {name: np.zeros(0) for _, name, _ in layers}
    counts = dict.fromkeys(sums, 0)
    mask: list[Any] = [None]

    def hook_for(name: str) -> Any:
        def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            x = args[0] if args else kwargs.get("input")
            if not isinstance(x, torch.Tensor):
                msg = f"{name}: cannot find the layer's input tensor"
                raise TypeError(msg)
            rows, keep = layer_rows(name, module, x, mask[0])
            flat = rows.reshape(-1, rows.shape[-1]).astype(np.float64)
            if keep is not None:
                flat = flat[keep.reshape(-1)]
            square = np.einsum("ij,ij->j", flat, flat)
            sums[name] = square if sums[name].size == 0 else sums[name] + square
            counts[name] += flat.shape[0]

        return hook

    handles = [
        module.register_forward_pre_hook(hook_for(name), with_kwargs=True)
        for _, name, module in layers
    ]
    try:
        with torch.no_grad():
            for batch in calibration_batches:
                mask[0] = token_mask_of(batch)
                call_model(model, batch)
    finally:
        for handle in handles:
            handle.remove()
    if not any(counts.values()):
        msg = "calibration_batches: no calibration token reached the layers (is it empty?)"
        raise ValueError(msg)
    by_block: dict[int | None, list[str]] = {}
    for block, name, _ in layers:
        by_block.setdefault(block, []).append(name)
    modules = {name: module for _, name, module in layers}
    ratios, sizes = [], []
    for names in by_block.values():
        scores = [
            fp.importance.wanda(weight_matrix(modules[n]), sums[n] / counts[n])
            for n in names
            if counts[n] > 0
        ]
        if not scores:
            msg = f"{', '.join(names)}: no calibration token reached these layers"
            raise ValueError(msg)
        ratios.append(outlier_ratio(np.concatenate([s.reshape(-1) for s in scores]), m))
        sizes.append(sum(weight_matrix(modules[n]).size for n in names))
    allocated = owl(ratios, sparsity, lam, sizes)
    per_layer = {
        name: float(s)
        for s, names in zip(allocated, by_block.values(), strict=True)
        for name in names
    }
    return OwlProfile(
        target=float(sparsity),
        m=float(m),
        lam=float(lam),
        outlier_ratios=[float(r) for r in ratios],
        block_weights=[int(n) for n in sizes],
        block_sparsities=[float(s) for s in allocated],
        layers=per_layer,
    )
