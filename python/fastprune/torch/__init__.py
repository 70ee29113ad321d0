"""PyTorch integration: prune a real model layer by layer from calibration data, or shrink it
structurally (`DependencyGraph`, `prune_channels`, `prune_width`, `remove_blocks`, ...).

Needs the ``torch`` extra (``pip install "fastprune[torch]"``); the core package never imports
torch. The structural names are loaded from `fastprune.torch.structural` on first use, so that
importing this package does not load the structural machinery.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .checkpoint import SavedSparse, load_sparse, save_sparse
from .owl import OwlProfile, owl_sparsity
from .prune import DEFAULT_TARGETS, METHODS, prune_model, resolve_blocks, select_layers
from .report import LayerReport, PruneReport
from .sparse import LayerDecision, SparseLinear, SparsifyReport, densify, sparsify
from .streaming import prune_streaming
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

if TYPE_CHECKING:
    from .structural import (
        BlockImportance,
        DependencyGraph,
        GroupImportance,
        Layout,
        Part,
        PruningPlan,
        Slice,
        StructureError,
        block_importance,
        check_saveable,
        count_parameters,
        flops_per_token,
        layout,
        prune_channels,
        prune_width,
        remove_blocks,
        shrink,
        sync_config,
    )


def __getattr__(name: str) -> Any:
    """Load the structural names (`fastprune.torch.structural`) on first access."""
    if name in _STRUCTURAL:
        value = getattr(importlib.import_module(".structural", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_STRUCTURAL})


__all__ = [
    "DEFAULT_TARGETS",
    "METHODS",
    "BlockImportance",
    "DependencyGraph",
    "GradualPruner",
    "GroupImportance",
    "LayerDecision",
    "LayerReport",
    "Layout",
    "LotteryConfig",
    "LotteryConfigBuilder",
    "LotteryTicket",
    "MaskedModel",
    "OwlProfile",
    "Part",
    "PruneReport",
    "PruningPlan",
    "RewindStrategy",
    "RoundRecord",
    "SavedSparse",
    "Slice",
    "SparseLinear",
    "SparsifyReport",
    "StructureError",
    "WinningTicket",
    "block_importance",
    "check_saveable",
    "count_parameters",
    "densify",
    "flops_per_token",
    "layout",
    "load_sparse",
    "owl_sparsity",
    "prune_channels",
    "prune_model",
    "prune_streaming",
    "prune_width",
    "remove_blocks",
    "resolve_blocks",
    "save_sparse",
    "select_layers",
    "shrink",
    "sparsify",
    "sync_config",
]

# The structural names: those of __all__ not imported above (they are imported for type checkers
# only), so the list of exports is written once.
_STRUCTURAL = frozenset(__all__).difference(globals())
