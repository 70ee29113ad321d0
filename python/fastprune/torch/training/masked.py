"""Masks that stay put under an optimizer (:class:`MaskedModel`): zeroed weights, gradients
and optimizer state at the pruned positions."""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Literal

import numpy as np
import torch
from torch import nn
from torch.optim.optimizer import (
    register_optimizer_step_post_hook,
    register_optimizer_step_pre_hook,
)

import fastprune as fp
from fastprune.schedules import rank_pruned_first

from ..hooks import weight_matrix, weight_of, write_weight
from ..prune import DEFAULT_TARGETS, select_layers

Scores = Mapping[str, Any]


class MaskedModel:
    """Masks on the weights of a model's layers that no optimizer can undo.

    Args:
        model: any ``torch.nn.Module``; it is modified in place (pruned weights set to zero).
        targets: the module types whose ``weight`` gets a mask (default Linear, Conv1d, Conv2d).
        ignore: names or glob patterns (``fnmatch``) of layers to leave alone.
        masks: initial masks by layer name, bool arrays or tensors (True = kept) of the
            weight's shape or of its ``(out, in*kh*kw)`` matrix shape.

    Layers without a mask are dense. See the module docstring for how the masks are enforced;
    :meth:`remove` (or leaving a ``with`` block) takes the hooks off.
    """

    def __init__(
        self,
        model: nn.Module,
        targets: Sequence[type[nn.Module]] = DEFAULT_TARGETS,
        ignore: Sequence[str] = (),
        masks: Mapping[str, Any] | None = None,
    ) -> None:
        module: object = model
        if not isinstance(module, nn.Module):
            msg = f"model: expected a torch.nn.Module, got {type(module).__name__}"
            raise TypeError(msg)
        if isinstance(ignore, str) or not all(isinstance(name, str) for name in ignore):
            msg = f"ignore: expected a list of names or glob patterns, got {ignore!r}"
            raise TypeError(msg)
        found = select_layers(model, [model], targets, ignore)
        if not found:
            msg = f"targets: the model has no {', '.join(t.__name__ for t in targets)} layer"
            raise ValueError(msg)
        self.model = model
        self._layers: dict[str, nn.Module] = {name: module for _, name, module in found}
        self._masks: dict[str, torch.Tensor] = {}
        self._by_param: dict[int, tuple[str, torch.Tensor]] = {}
        self._generation = 0
        self._cleaned: weakref.WeakKeyDictionary[Any, int] = weakref.WeakKeyDictionary()
        self._handles: list[Any] = []
        for name, module in self._layers.items():
            param = weight_of(module)
            self._by_param[id(param)] = (name, param)
            if param.requires_grad:
                hook = param.register_hook(self._grad_hook(name))  # type: ignore[no-untyped-call]
                self._handles.append(hook)
        self._handles.append(register_optimizer_step_pre_hook(self._before_step))
        self._handles.append(register_optimizer_step_post_hook(self._after_step))
        self._removed = False
        if masks is not None:
            self.set_masks(masks)

    # -- what is masked

    @property
    def names(self) -> list[str]:
        """The layers that can carry a mask, in model order."""
        return list(self._layers)

    def layer(self, name: str) -> nn.Module:
        return self._layers[self._known(name)]

    @property
    def masks(self) -> dict[str, np.ndarray[Any, Any]]:
        """The masks set so far, as bool NumPy arrays of each weight's shape (copies)."""
        return {name: mask.cpu().numpy().copy() for name, mask in self._masks.items()}

    def mask_matrix(self, name: str) -> np.ndarray[Any, Any]:
        """The layer's mask as an ``(out, in*kh*kw)`` bool array (all True when unmasked)."""
        module = self.layer(name)
        shape = _matrix_shape(module)
        mask = self._masks.get(name)
        if mask is None:
            return np.ones(shape, dtype=bool)
        return mask.cpu().numpy().reshape(shape)

    def layer_sparsity(self) -> dict[str, float]:
        """The fraction of each maskable layer's weights that its mask prunes."""
        out = {}
        for name, module in self._layers.items():
            mask = self._masks.get(name)
            total = weight_of(module).numel()
            kept = total if mask is None else int(mask.sum())
            out[name] = 1.0 - kept / max(total, 1)
        return out

    @property
    def sparsity(self) -> float:
        """The fraction of all maskable weights that the masks prune."""
        total = sum(weight_of(m).numel() for m in self._layers.values())
        pruned = sum(
            int((~mask).sum()) for mask in self._masks.values()
        )  # unmasked layers prune nothing
        return pruned / max(total, 1)

    # -- setting masks

    def set_mask(self, name: str, mask: Any) -> None:
        """Attach `mask` (True = kept) to the layer `name` and zero its pruned weights, their
        gradients and, before the next step of each optimizer, their optimizer state."""
        self.set_masks({name: mask})

    def set_masks(self, masks: Mapping[str, Any]) -> None:
        """:meth:`set_mask` for several layers at once."""
        self._check_active()
        given: object = masks  # checked at run time too: callers may not be type-checked
        if not isinstance(given, Mapping):
            msg = f"masks: expected a mapping of layer names to masks, got {type(given).__name__}"
            raise TypeError(msg)
        converted = {self._known(name): self._as_mask(name, mask) for name, mask in masks.items()}
        self._masks.update(converted)
        self._generation += 1
        self.apply_masks(converted)

    def apply_masks(self, names: Iterable[str] | None = None) -> None:
        """Set the pruned weights (and any gradient they hold) to zero, through
        :func:`fastprune.apply_mask`."""
        chosen = self._masks if names is None else {n: self._masks[n] for n in names}
        with torch.no_grad():
            for name in chosen:
                module = self._layers[name]
                keep = self.mask_matrix(name)
                write_weight(module, fp.apply_mask(weight_matrix(module), keep))
                grad = weight_of(module).grad
                if grad is not None:
                    grad.masked_fill_(~self._device_mask(name, grad), 0)

    def prune(
        self,
        sparsity: float | Mapping[str, float] | None = None,
        pattern: str | fp.Pattern = "unstructured",
        scope: Literal["row", "layer", "global"] = "layer",
        scores: Scores | None = None,
        layers: Sequence[str] | None = None,
    ) -> dict[str, float]:
        """Choose new masks with :func:`fastprune.mask` and set them. The weights already
        pruned rank below every kept one (:func:`fastprune.schedules.rank_pruned_first`), so
        they stay pruned whenever the new pattern allows it: always for a higher unstructured
        sparsity, a K:M after a (K+j):M, or blocks after blocks of the same shape; an N:M mask
        after an unstructured one keeps exactly N per group, zeros included.

        Args:
            sparsity: the fraction of each layer to prune: one float, or one per layer name
                (``scope="global"`` takes one float for all the layers together). Implied by
                an N:M pattern.
            pattern: any :func:`fastprune.pattern` (unstructured, ``"N:M"``, ``Block``, ...).
            scope: for unstructured masks, what is ranked together: ``"row"``, ``"layer"``
                or ``"global"`` (all of `layers` as one); other patterns select within each
                layer.
            scores: importance scores by layer name, each ``(out, in*kh*kw)`` (higher =
                more important); layers not in it are scored by their weights' magnitude.
            layers: the layers to prune (default all maskable layers).

        Returns:
            each pruned layer's sparsity.
        """
        self._check_active()
        pat = fp.pattern(pattern)
        chosen = [self._known(n) for n in (self.names if layers is None else layers)]
        if not chosen:
            return {}
        given = scores or {}
        ranked = {}
        for name in chosen:
            module = self._layers[name]
            s = given[name] if name in given else fp.importance.magnitude(weight_matrix(module))
            previous = self._masks.get(name)
            ranked[name] = (
                rank_pruned_first(s, self.mask_matrix(name)) if previous is not None else s
            )
        if scope == "global":
            if not isinstance(sparsity, (int, float)) or isinstance(sparsity, bool):
                msg = f"sparsity: scope='global' takes one number, got {sparsity!r}"
                raise TypeError(msg)
            new = dict(
                zip(
                    chosen,
                    fp.mask(list(ranked.values()), sparsity, pat, scope="global"),
                    strict=True,
                )
            )
        else:
            selection_scope = scope if isinstance(pat, fp.Unstructured) else "row"
            new = {
                name: fp.mask(s, _sparsity_of(sparsity, name), pat, scope=selection_scope)  # type: ignore[arg-type]
                for name, s in ranked.items()
            }
        self.set_masks(new)
        everything = self.layer_sparsity()
        return {name: everything[name] for name in chosen}

    # -- taking the masks off

    def remove(self) -> nn.Module:
        """Take the hooks off (the pruned weights stay zero) and return the model."""
        if not self._removed:
            self.apply_masks()
            for handle in self._handles:
                handle.remove()
            self._handles.clear()
            self._removed = True
        return self.model

    def __enter__(self) -> MaskedModel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    # -- hooks

    def _grad_hook(self, name: str) -> Callable[[torch.Tensor], torch.Tensor]:
        def hook(grad: torch.Tensor) -> torch.Tensor:
            if name not in self._masks:
                return grad
            return grad.masked_fill(~self._device_mask(name, grad), 0)

        return hook

    def _masked_params(self, optimizer: Any) -> Iterable[tuple[str, torch.Tensor]]:
        for group in optimizer.param_groups:
            for param in group["params"]:
                entry = self._by_param.get(id(param))
                if entry is not None and entry[1] is param and entry[0] in self._masks:
                    yield entry

    def _before_step(self, optimizer: Any, _args: Any, _kwargs: Any) -> None:
        if self._cleaned.get(optimizer) == self._generation:
            return
        with torch.no_grad():
            for name, param in self._masked_params(optimizer):
                for value in optimizer.state.get(param, {}).values():
                    if isinstance(value, torch.Tensor) and value.shape == param.shape:
                        value.masked_fill_(~self._device_mask(name, value), 0)
        self._cleaned[optimizer] = self._generation

    def _after_step(self, optimizer: Any, _args: Any, _kwargs: Any) -> None:
        with torch.no_grad():
            for name, param in self._masked_params(optimizer):
                param.masked_fill_(~self._device_mask(name, param), 0)

    # -- helpers

    def _device_mask(self, name: str, like: torch.Tensor) -> torch.Tensor:
        mask = self._masks[name]
        if mask.device != like.device:
            mask = self._masks[name] = mask.to(like.device)
        return mask

    def _known(self, name: object) -> str:
        if not isinstance(name, str) or name not in self._layers:
            msg = f"masks: {name!r} is not one of the masked layers ({', '.join(self._layers)})"
            raise KeyError(msg)
        return name

    def _as_mask(self, name: str, mask: Any) -> torch.Tensor:
        param = weight_of(self._layers[name])
        if isinstance(mask, torch.Tensor):
            if mask.dtype != torch.bool:
                msg = f"masks[{name!r}]: expected a bool mask, got dtype {mask.dtype}"
                raise TypeError(msg)
            tensor = mask.detach().to(param.device).clone()
        else:
            array = np.asarray(mask)
            if array.dtype != np.bool_:
                msg = f"masks[{name!r}]: expected a bool mask, got dtype {array.dtype}"
                raise TypeError(msg)
            tensor = torch.from_numpy(np.array(array, dtype=bool)).to(param.device)
        if tuple(tensor.shape) not in (tuple(param.shape), _matrix_shape(self._layers[name])):
            msg = (
                f"masks[{name!r}]: shape {tuple(tensor.shape)} matches neither the weight "
                f"{tuple(param.shape)} nor its matrix {_matrix_shape(self._layers[name])}"
            )
            raise ValueError(msg)
        return tensor.reshape(param.shape)

    def _check_active(self) -> None:
        if self._removed:
            msg = "MaskedModel: the masks were removed; create a new MaskedModel"
            raise RuntimeError(msg)


def _matrix_shape(module: nn.Module) -> tuple[int, int]:
    weight = weight_of(module)
    return int(weight.shape[0]), int(weight[0].numel()) if weight.shape[0] else 0


def _sparsity_of(spec: float | Mapping[str, float] | None, name: str) -> float | None:
    if isinstance(spec, Mapping):
        if name not in spec:
            msg = f"sparsity: no value for layer {name!r}"
            raise KeyError(msg)
        return spec[name]
    return spec
