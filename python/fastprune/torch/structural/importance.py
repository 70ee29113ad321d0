"""Group importance: one score per channel of a `Part` (higher = keep), pluggable.

``magnitude`` and ``taylor`` read every tensor of the group with the channel on dimension 0
(`Slice.rows`); ``taylor`` reuses `fastprune.importance.group_taylor` (Torch-Pruning's
GroupTaylorImportance: abs-then-sum per channel unless ``multivariable``, reductions and
normalizers from `fastprune.importance`). The Minitron ``activation`` importance needs the model
run on calibration data and is computed by the caller (`transformers.prune_width`,
`channels.prune_channels`); here it only names itself.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

import fastprune.importance as fpi

from .plan import Part

GroupImportance = Callable[[Part], Any]


def magnitude(p: int = 2, reduction: fpi.Reduction = "sum") -> GroupImportance:
    """Per channel, the L`p` norm of each tensor's slice, reduced over the group's tensors."""
    if p not in (1, 2):
        msg = f"p: expected 1 or 2, got {p!r}"
        raise ValueError(msg)

    def score(part: Part) -> np.ndarray[Any, Any]:
        per_tensor = []
        for s in part.slices:
            rows = s.rows(s.tensor().detach().double(), part.channels)
            per_tensor.append(rows.abs().sum(1) if p == 1 else rows.pow(2).sum(1).sqrt())
        return fpi.reduce_group([t.numpy() for t in per_tensor], reduction)

    return score


def taylor(
    reduction: fpi.Reduction = "mean",
    normalizer: fpi.Normalizer | None = "mean",
    multivariable: bool = False,
    bias: bool = False,
) -> GroupImportance:
    """Torch-Pruning's GroupTaylorImportance from the ``.grad`` of the group's parameters (run
    ``loss.backward()`` first; buffers such as BatchNorm statistics are skipped). Biases count
    only with ``bias=True``, as there."""

    def score(part: Part) -> np.ndarray[Any, Any]:
        pairs = []
        for s in part.slices:
            t = s.tensor()
            if (s.name == "bias" and not bias) or not isinstance(t, torch.nn.Parameter):
                continue  # buffers (BatchNorm running statistics) have no gradient
            if t.grad is None:
                msg = f"importance: {s.label}.{s.name} has no .grad; run loss.backward() first"
                raise ValueError(msg)
            w = s.rows(t.detach().double(), part.channels).numpy()
            g = s.rows(t.grad.detach().double(), part.channels).numpy()
            pairs.append((w, g))
        return fpi.group_taylor(pairs, reduction, normalizer, multivariable)

    return score


def _activation_marker(part: Part) -> Any:
    msg = "activation importance is computed from calibration data by prune_width/prune_channels"
    raise RuntimeError(msg)


def resolve_importance(importance: str | GroupImportance) -> GroupImportance:
    """``"magnitude"``, ``"taylor"``, ``"activation"`` or a callable ``part -> scores``."""
    if callable(importance):
        user = importance

        def checked(part: Part) -> Any:
            scores = torch.as_tensor(np.asarray(user(part), dtype=np.float64))
            if scores.shape != (part.channels,):
                msg = (
                    f"importance: the callable returned shape {tuple(scores.shape)} for "
                    f"{part.what}; expected ({part.channels},)"
                )
                raise ValueError(msg)
            return scores

        return checked
    if importance == "magnitude":
        return magnitude()
    if importance == "taylor":
        return taylor()
    if importance == "activation":
        return _activation_marker
    msg = (
        "importance: expected 'activation', 'magnitude', 'taylor' or a callable, got "
        f"{importance!r}"
    )
    raise ValueError(msg)
