"""Structural pruning: remove heads, neurons, channels and whole blocks, leaving a smaller
dense model (`prune_width`, `block_importance`, `remove_blocks` and `shrink` for Hugging Face
transformers; `DependencyGraph` and `prune_channels` for any model torch.fx or torch.export can
follow, CNNs and transformers alike).
"""

from __future__ import annotations

from .channels import DependencyGraph, prune_channels
from .depth import BlockImportance, block_importance, remove_blocks
from .importance import GroupImportance, magnitude, resolve_importance, taylor
from .model_layout import Layout, StructureError, count_parameters, flops_per_token, layout
from .plan import Part, PruningPlan, Slice
from .shrink import latency, shrink
from .transformers import check_saveable, prune_width, sync_config

__all__ = [
    "BlockImportance",
    "DependencyGraph",
    "GroupImportance",
    "Layout",
    "Part",
    "PruningPlan",
    "Slice",
    "StructureError",
    "block_importance",
    "check_saveable",
    "count_parameters",
    "flops_per_token",
    "latency",
    "layout",
    "magnitude",
    "prune_channels",
    "prune_width",
    "remove_blocks",
    "resolve_importance",
    "shrink",
    "sync_config",
    "taylor",
]
