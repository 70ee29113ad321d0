"""Pruning during training: masks that stay put under an optimizer, lottery tickets, and
gradual pruning on a schedule, one module each (:mod:`.masked`; :mod:`.config`, :mod:`.lottery`
and :mod:`.ticket`; :mod:`.gradual`).

- :class:`MaskedModel` attaches a bool mask (True = kept) to the weight of chosen layers. The
  pruned weights are set to zero, a gradient hook zeroes their gradients, and two hooks on every
  optimizer's step (``torch.optim.optimizer.register_optimizer_step_pre_hook`` / ``post_hook``)
  keep them at exactly zero: before the first step of an optimizer after a mask changed, its
  state at the pruned positions (SGD's momentum buffer, Adam's moments) is zeroed, and after
  every step the pruned weights are set to zero again. With zero gradients and zero state, SGD
  with momentum and Adam/AdamW with weight decay leave a zero weight at zero anyway; the reset
  after the step also covers optimizers that would not. The forward pass runs on the
  parameters themselves, so nothing changes in the model's structure or state dict;
  :meth:`MaskedModel.remove` takes the hooks off, leaving the zeros in place.
  Masks are chosen with :func:`fastprune.mask` from any :mod:`fastprune.importance` score, in
  any pattern (unstructured per row, per layer or global; N:M; Block; Row; Column).
- :class:`LotteryTicket` runs iterative magnitude pruning with rewinding (Frankle & Carbin
  2019; late rewinding: Frankle et al. 2020, "Linear mode connectivity and the lottery ticket
  hypothesis"): train, prune a fraction of the remaining weights, rewind the survivors to their
  values at initialisation (or at iteration k, or not at all), and repeat. It returns a
  :class:`WinningTicket`: masks, the weights training restarts from, and per-round sparsity,
  metric and time; saved as safetensors + JSON (+ a PNG with matplotlib).
- :class:`GradualPruner` raises the sparsity during training on a
  :class:`fastprune.schedules.SparsitySchedule` (Zhu & Gupta 2017), re-selecting the mask
  every Δt steps from magnitude, Taylor (the current gradients) or Wanda (activation
  statistics gathered since the last update) scores.
"""

from .config import LotteryConfig, LotteryConfigBuilder, RewindStrategy
from .gradual import GradualPruner
from .lottery import LotteryTicket
from .masked import MaskedModel
from .ticket import RoundRecord, WinningTicket

__all__ = [
    "GradualPruner",
    "LotteryConfig",
    "LotteryConfigBuilder",
    "LotteryTicket",
    "MaskedModel",
    "RewindStrategy",
    "RoundRecord",
    "WinningTicket",
]
