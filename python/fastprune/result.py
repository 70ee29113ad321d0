"""The result every pruner returns."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt


@dataclass(frozen=True)
class PruneResult:
    """A pruned weight matrix and how it was obtained.

    Attributes:
        weight: the pruned weights, shape ``(out_features, in_features)``, in the input's dtype.
        mask: bool array of the same shape, True where a weight is kept.
        loss: the method's own reconstruction-loss estimate (SparseGPT: ``Σ (w - q)² / d² / 2``
            summed over all weights, as in the paper; 0.0 for methods that do not estimate one).
        damp_used: relative damping that made the Hessian factorisable (SparseGPT), else None.
        seconds: wall time of the call.
    """

    weight: npt.NDArray[Any]
    mask: npt.NDArray[np.bool_]
    loss: float
    damp_used: float | None
    seconds: float

    @property
    def sparsity(self) -> float:
        """The fraction of weights the mask prunes."""
        return 1.0 - float(np.count_nonzero(self.mask)) / max(self.mask.size, 1)
