"""Gradual pruning during training on a sparsity schedule (:class:`GradualPruner`)."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

import fastprune as fp
from fastprune.schedules import SparsitySchedule, kept_per_group

from ..hooks import layer_rows, tensor_to_numpy, weight_matrix, weight_of
from ..prune import DEFAULT_TARGETS
from .masked import MaskedModel

Importance = str | Callable[[str, nn.Module], Any]
IMPORTANCES = ("magnitude", "taylor", "wanda")


class GradualPruner:
    """Raise the sparsity of a model during training on a schedule (Zhu & Gupta 2017).

    Call :meth:`step` once per optimizer step, after ``loss.backward()`` (Taylor scores read
    the gradients) and before ``optimizer.zero_grad()``. At the schedule's update steps the
    masks are chosen again from the scores of the current weights with
    :meth:`MaskedModel.prune`, at the schedule's sparsity; weights already pruned stay pruned
    (they are zero, and are ranked below every kept weight), so masks only shrink.

    Args:
        model: a model (a :class:`MaskedModel` is made for it) or a :class:`MaskedModel`.
        schedule: the :class:`fastprune.schedules.SparsitySchedule`.
        pattern: any :func:`fastprune.pattern`. **N:M is gradual by plain re-selection, not
            SR-STE**: at sparsity s each group of M keeps ``K = max(N, M − ⌊M·s⌋)``
            (:func:`fastprune.schedules.kept_per_group`), so 2:4 steps 4:4 → 3:4 → 2:4 as the
            schedule rises; each K:M mask is chosen inside the previous one and pruned weights
            get no gradient (no straight-through estimator, no decay of pruned weights toward
            zero). The schedule's final sparsity must be ``1 − N/M``.
        scope: for unstructured masks ``"row"``, ``"layer"`` or ``"global"``.
        importance: ``"magnitude"`` (``|w|``), ``"taylor"`` (``|w·∂L/∂w|`` from the gradients
            present at the update), ``"wanda"`` (``|w|·‖x_j‖`` over the layer inputs seen
            since the last update; forward hooks gather them, converting each input to NumPy),
            or a callable ``(name, module) -> (out, in*kh*kw) scores``.
        targets, ignore: which layers, when `model` is not already a MaskedModel.
    """

    def __init__(
        self,
        model: nn.Module | MaskedModel,
        schedule: SparsitySchedule,
        *,
        pattern: str | fp.Pattern = "unstructured",
        scope: Literal["row", "layer", "global"] = "layer",
        importance: Importance = "magnitude",
        targets: Sequence[type[nn.Module]] = DEFAULT_TARGETS,
        ignore: Sequence[str] = (),
    ) -> None:
        given: object = schedule
        if not isinstance(given, SparsitySchedule):
            msg = f"schedule: expected a SparsitySchedule, got {type(given).__name__}"
            raise TypeError(msg)
        if isinstance(importance, str) and importance not in IMPORTANCES:
            msg = (
                f"importance: expected one of {', '.join(IMPORTANCES)} or a callable, "
                f"got {importance!r}"
            )
            raise ValueError(msg)
        chosen: object = importance
        if not isinstance(chosen, str) and not callable(chosen):
            msg = f"importance: expected a name or a callable, got {importance!r}"
            raise TypeError(msg)
        if scope not in ("row", "layer", "global"):
            msg = f"scope: expected 'row', 'layer' or 'global', got {scope!r}"
            raise ValueError(msg)
        self.pattern = fp.pattern(pattern)
        if isinstance(self.pattern, fp.NM) and not np.isclose(
            schedule.final, self.pattern.sparsity
        ):
            msg = (
                f"schedule: {self.pattern} needs final sparsity {self.pattern.sparsity:g} "
                f"(1 - n/m), got {schedule.final:g}"
            )
            raise ValueError(msg)
        if scope == "global" and not isinstance(self.pattern, fp.Unstructured):
            msg = f"scope: 'global' ranks single weights; {self.pattern} needs 'row' or 'layer'"
            raise ValueError(msg)
        self.masked = (
            model if isinstance(model, MaskedModel) else MaskedModel(model, targets, ignore)
        )
        self.schedule = schedule
        self.scope = scope
        self.importance = importance
        self.steps = 0
        self.history: list[dict[str, float]] = []
        self._act_sq: dict[str, np.ndarray[Any, Any]] = {}
        self._hooks: list[Any] = []
        if importance == "wanda":
            for name in self.masked.names:
                module = self.masked.layer(name)
                self._hooks.append(module.register_forward_pre_hook(self._gather(name)))

    def step(self) -> bool:
        """Count one training step; at an update step choose the new masks. Returns whether
        the masks were updated."""
        t = self.steps
        self.steps += 1
        if not self.schedule.is_update(t):
            return False
        t0 = time.perf_counter()
        sparsity = self.schedule.sparsity(t)
        scores = {name: self._scores(name) for name in self.masked.names}
        if isinstance(self.pattern, fp.NM):
            k = kept_per_group(sparsity, self.pattern.n, self.pattern.m)
            if k < self.pattern.m:
                self.masked.prune(pattern=fp.NM(k, self.pattern.m), scores=scores)
        elif self.scope == "global":
            self.masked.prune(sparsity, scope="global", scores=scores)
        else:
            self.masked.prune(sparsity, pattern=self.pattern, scope=self.scope, scores=scores)
        self._act_sq.clear()
        self.history.append(
            {"step": t, "sparsity": self.masked.sparsity, "seconds": time.perf_counter() - t0}
        )
        return True

    def remove(self) -> nn.Module:
        """Take every hook off (pruned weights stay zero) and return the model."""
        for handle in self._hooks:
            handle.remove()
        self._hooks.clear()
        return self.masked.remove()

    def _scores(self, name: str) -> Any:
        module = self.masked.layer(name)
        if callable(self.importance):
            return self.importance(name, module)
        weight = weight_matrix(module)
        if self.importance == "magnitude":
            return fp.importance.magnitude(weight)
        if self.importance == "taylor":
            grad = weight_of(module).grad
            if grad is None:
                msg = (
                    f"importance: taylor scores need gradients; {name} has none "
                    "(call step() after loss.backward())"
                )
                raise RuntimeError(msg)
            return fp.importance.taylor(weight, tensor_to_numpy(grad.reshape(grad.shape[0], -1)))
        act_sq = self._act_sq.get(name)
        if act_sq is None:
            msg = (
                f"importance: wanda scores need the layer inputs; {name} saw no forward pass "
                "since the last update"
            )
            raise RuntimeError(msg)
        return fp.importance.wanda(weight, act_sq)

    def _gather(self, name: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple[Any, ...]) -> None:
            if not args or not isinstance(args[0], torch.Tensor):
                return
            rows, _ = layer_rows(name, module, args[0].detach(), None)
            flat = rows.reshape(-1, rows.shape[-1]).astype(np.float64)
            sums = np.einsum("ij,ij->j", flat, flat)
            self._act_sq[name] = self._act_sq.get(name, 0.0) + sums

        return hook
