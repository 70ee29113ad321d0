"""PyTorch integration: prune a real model layer by layer from calibration data.

Needs the ``torch`` extra (``pip install "fastprune[torch]"``); the core package never imports
torch.
"""

from __future__ import annotations

from .prune import DEFAULT_TARGETS, METHODS, prune_model, resolve_blocks, select_layers
from .report import LayerReport, PruneReport
from .sparse import LayerDecision, SparseLinear, SparsifyReport, densify, sparsify
from .training import (
    GradualPruner,
    LotteryConfig,
    LotteryConfigBuilder,
    LotteryTicket,
    MaskedModel,
    RewindStrategy,
    RoundRecord,
    WinningTicket,
)

__all__ = [
    "DEFAULT_TARGETS",
    "METHODS",
    "GradualPruner",
    "LayerDecision",
    "LayerReport",
    "LotteryConfig",
    "LotteryConfigBuilder",
    "LotteryTicket",
    "MaskedModel",
    "PruneReport",
    "RewindStrategy",
    "RoundRecord",
    "SparseLinear",
    "SparsifyReport",
    "WinningTicket",
    "densify",
    "prune_model",
    "resolve_blocks",
    "select_layers",
    "sparsify",
]
