"""Module sizes after a plan shrank their tensors: every Linear, convolution, BatchNorm,
embedding, norm and transformers ``Conv1D`` a plan touches gets the size attributes its forward
reads set from its new weight, the same way for channel plans (`channels`) and width plans
(`transformers`)."""

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ._channel_spaces import _BATCHNORMS, _CONVS, _TRANSPOSED
from .plan import PruningPlan, Slice


def fix_sizes(plan: PruningPlan, slices: Sequence[Slice]) -> None:
    """After `plan` shrinks its tensors, set the sizes of the modules holding `slices`."""
    modules = {id(s.module): s.module for s in slices}
    if modules:
        plan.then.append((f"fix the sizes of {len(modules)} modules", _FixSizes(modules.values())))


class _FixSizes:
    """Set each module's size attributes from its (shrunk) weight."""

    def __init__(self, modules: Any) -> None:
        self.modules = list(modules)

    def __call__(self) -> None:
        for m in self.modules:
            if isinstance(m, nn.Linear):
                m.out_features, m.in_features = (int(x) for x in m.weight.shape)
            elif isinstance(m, (*_CONVS, *_TRANSPOSED)):
                # the attributes still hold the sizes the graph was built from
                w = [int(x) for x in m.weight.shape[:2]]
                if m.groups > 1 and m.groups == m.in_channels == m.out_channels:  # depthwise
                    m.groups = m.in_channels = m.out_channels = w[0]
                elif isinstance(m, _TRANSPOSED):
                    m.in_channels, m.out_channels = w[0], w[1] * m.groups
                else:
                    m.out_channels, m.in_channels = w[0], w[1] * m.groups
            elif isinstance(m, _BATCHNORMS):
                if m.running_mean is not None:
                    m.num_features = int(m.running_mean.shape[0])
                else:
                    m.num_features = int(m.weight.shape[0])
            elif isinstance(m, nn.Embedding):
                m.num_embeddings, m.embedding_dim = (int(x) for x in m.weight.shape)
            elif hasattr(m, "normalized_shape") and isinstance(m.weight, torch.Tensor):
                m.normalized_shape = (int(m.weight.shape[0]),)  # LayerNorm, RMSNorm
            elif type(m).__name__ == "Conv1D":  # transformers: weight (in, out)
                m.nx, m.nf = (int(x) for x in m.weight.shape)
