"""Pruning during training: masks that stay put under an optimizer, lottery tickets, and
gradual pruning on a schedule.

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

from __future__ import annotations

import contextlib
import dataclasses
import json
import sys
import time
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn
from torch.optim.optimizer import (
    register_optimizer_step_post_hook,
    register_optimizer_step_pre_hook,
)

import fastprune as fp
from fastprune._arrays import check_sparsity
from fastprune._files import atomic_write, atomic_write_text
from fastprune.schedules import (
    SparsitySchedule,
    kept_per_group,
    rank_pruned_first,
    round_sparsity,
    rounds_to_reach,
)

from .hooks import layer_rows, tensor_to_numpy, weight_matrix, weight_of, write_weight
from .prune import DEFAULT_TARGETS, select_layers

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

Scores = Mapping[str, Any]
Importance = str | Callable[[str, nn.Module], Any]
IMPORTANCES = ("magnitude", "taylor", "wanda")

TICKET_TENSORS = "ticket.safetensors"
TICKET_JSON = "ticket.json"
TICKET_PLOT = "ticket.png"


# --- masks under an optimizer ------------------------------------------------------------------


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


# --- lottery tickets -----------------------------------------------------------------------------


@dataclass(frozen=True)
class RewindStrategy:
    """Where the surviving weights restart from after each round of pruning.

    ``RewindStrategy.to_init()`` (Frankle & Carbin: the values at initialisation),
    ``RewindStrategy.to_iteration(k)`` (late rewinding: the values after the k-th optimizer
    step of the first, dense training) or ``RewindStrategy.fine_tune()`` (no rewinding: the
    trained weights are pruned and training goes on from them). :meth:`parse` reads
    ``"init"``, ``"iteration:K"`` and ``"none"``.
    """

    kind: Literal["init", "iteration", "none"] = "init"
    iteration: int = 0

    def __post_init__(self) -> None:
        if self.kind not in ("init", "iteration", "none"):
            msg = f"kind: expected 'init', 'iteration' or 'none', got {self.kind!r}"
            raise ValueError(msg)
        if isinstance(self.iteration, bool) or not isinstance(self.iteration, int):
            msg = f"iteration: expected an int, got {self.iteration!r}"
            raise TypeError(msg)
        if self.iteration < 0 or (self.kind != "iteration" and self.iteration != 0):
            msg = (
                f"iteration: expected 0 for {self.kind!r} and >= 0 otherwise, got {self.iteration}"
            )
            raise ValueError(msg)

    @classmethod
    def to_init(cls) -> RewindStrategy:
        return cls("init")

    @classmethod
    def to_iteration(cls, k: int) -> RewindStrategy:
        return cls("iteration", k)

    @classmethod
    def fine_tune(cls) -> RewindStrategy:
        return cls("none")

    @classmethod
    def parse(cls, spec: str | RewindStrategy) -> RewindStrategy:
        if isinstance(spec, RewindStrategy):
            return spec
        given: object = spec
        if not isinstance(given, str):
            msg = f"rewind: expected a RewindStrategy or a str, got {type(given).__name__}"
            raise TypeError(msg)
        text = spec.strip().lower()
        if text in ("init", "none"):
            return cls(text)  # type: ignore[arg-type]
        if text.startswith("iteration:") and text[len("iteration:") :].isdigit():
            return cls("iteration", int(text[len("iteration:") :]))
        msg = f"rewind: expected 'init', 'iteration:K' or 'none', got {spec!r}"
        raise ValueError(msg)

    def __str__(self) -> str:
        return f"iteration:{self.iteration}" if self.kind == "iteration" else self.kind


@dataclass(frozen=True)
class LotteryConfig:
    """How :class:`LotteryTicket` prunes.

    Attributes:
        rounds: rounds of pruning (training runs ``rounds + 1`` times: dense, then once per
            mask).
        rate: the fraction of the *remaining* weights each round prunes, so after ``r``
            rounds a layer's sparsity is ``1 − (1 − rate)^r``.
        scope: ``"layer"`` (every layer pruned to its own sparsity) or ``"global"`` (the
            layers pruned at `rate` ranked together, as the paper does for deep networks).
        pattern: unstructured, or a Block / Row / Column pattern (per layer). N:M fixes the
            sparsity, so it cannot compound over rounds; use :class:`GradualPruner` for it.
        first_rate: the rate of the first maskable layer (None: `rate`).
        last_rate: the rate of the last maskable layer (None: ``rate / 2``, as the paper
            prunes its output layers at half the rate). A single maskable layer uses `last_rate`.
        rewind: a :class:`RewindStrategy` or its spec (``"init"``, ``"iteration:K"``, ``"none"``).
        targets, ignore: which layers are masked, as for :class:`MaskedModel`.
    """

    rounds: int = 5
    rate: float = 0.2
    scope: Literal["layer", "global"] = "layer"
    pattern: str | fp.Pattern = "unstructured"
    first_rate: float | None = None
    last_rate: float | None = None
    rewind: RewindStrategy | str = field(default_factory=RewindStrategy.to_init)
    targets: tuple[type[nn.Module], ...] = DEFAULT_TARGETS
    ignore: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if isinstance(self.rounds, bool) or not isinstance(self.rounds, int) or self.rounds < 0:
            msg = f"rounds: expected an int >= 0, got {self.rounds!r}"
            raise ValueError(msg)
        _rate(self.rate, "rate")
        for name in ("first_rate", "last_rate"):
            if getattr(self, name) is not None:
                _rate(getattr(self, name), name)
        if self.scope not in ("layer", "global"):
            msg = f"scope: expected 'layer' or 'global', got {self.scope!r}"
            raise ValueError(msg)
        pat = fp.pattern(self.pattern)
        if isinstance(pat, fp.NM):
            msg = (
                f"pattern: {pat} fixes the sparsity at {pat.sparsity:g}, so it cannot compound "
                "over rounds; use GradualPruner for N:M"
            )
            raise ValueError(msg)
        if self.scope == "global" and not isinstance(pat, fp.Unstructured):
            msg = f"scope: 'global' ranks single weights; {pat} needs scope='layer'"
            raise ValueError(msg)
        object.__setattr__(self, "rewind", RewindStrategy.parse(self.rewind))
        object.__setattr__(self, "targets", tuple(self.targets))
        ignore: object = self.ignore
        if isinstance(ignore, str):
            msg = f"ignore: expected a list of names or glob patterns, got {self.ignore!r}"
            raise TypeError(msg)
        object.__setattr__(self, "ignore", tuple(self.ignore))

    @classmethod
    def builder(cls) -> LotteryConfigBuilder:
        return LotteryConfigBuilder()

    def rate_of(self, index: int, count: int) -> float:
        """The per-round rate of the maskable layer at position `index` of `count`."""
        if index == count - 1:
            return self.rate / 2 if self.last_rate is None else self.last_rate
        if index == 0:
            return self.rate if self.first_rate is None else self.first_rate
        return self.rate

    def to_dict(self) -> dict[str, Any]:
        return {
            "rounds": self.rounds,
            "rate": self.rate,
            "scope": self.scope,
            "pattern": str(self.pattern),
            "first_rate": self.first_rate,
            "last_rate": self.last_rate,
            "rewind": str(self.rewind),
            "targets": [t.__name__ for t in self.targets],
            "ignore": list(self.ignore),
        }


class LotteryConfigBuilder:
    """Builds a :class:`LotteryConfig` step by step; every method returns the builder.

    ``LotteryConfig.builder().rate(0.2).reach(0.95).rewind_to_init().build()``.
    """

    def __init__(self) -> None:
        self._fields: dict[str, Any] = {}
        self._reach: float | None = None

    def rounds(self, rounds: int) -> LotteryConfigBuilder:
        self._fields["rounds"] = rounds
        return self

    def reach(self, sparsity: float) -> LotteryConfigBuilder:
        """As many rounds as it takes for the layers at `rate` to reach `sparsity`."""
        self._reach = check_sparsity(sparsity, "sparsity")
        return self

    def rate(self, rate: float) -> LotteryConfigBuilder:
        self._fields["rate"] = rate
        return self

    def scope(self, scope: Literal["layer", "global"]) -> LotteryConfigBuilder:
        self._fields["scope"] = scope
        return self

    def pattern(self, pattern: str | fp.Pattern) -> LotteryConfigBuilder:
        self._fields["pattern"] = pattern
        return self

    def first_rate(self, rate: float | None) -> LotteryConfigBuilder:
        self._fields["first_rate"] = rate
        return self

    def last_rate(self, rate: float | None) -> LotteryConfigBuilder:
        self._fields["last_rate"] = rate
        return self

    def rewind_to_init(self) -> LotteryConfigBuilder:
        self._fields["rewind"] = RewindStrategy.to_init()
        return self

    def rewind_to_iteration(self, k: int) -> LotteryConfigBuilder:
        self._fields["rewind"] = RewindStrategy.to_iteration(k)
        return self

    def fine_tune(self) -> LotteryConfigBuilder:
        self._fields["rewind"] = RewindStrategy.fine_tune()
        return self

    def layers(
        self, targets: Sequence[type[nn.Module]] = DEFAULT_TARGETS, ignore: Sequence[str] = ()
    ) -> LotteryConfigBuilder:
        self._fields["targets"] = tuple(targets)
        self._fields["ignore"] = tuple(ignore)
        return self

    def build(self) -> LotteryConfig:
        fields = dict(self._fields)
        if self._reach is not None:
            if "rounds" in fields:
                msg = "rounds: give either rounds(...) or reach(...), not both"
                raise ValueError(msg)
            rate = fields.get("rate", LotteryConfig.rate)
            fields["rounds"] = rounds_to_reach(self._reach, _rate(rate, "rate"))
        return LotteryConfig(**fields)


@dataclass(frozen=True)
class RoundRecord:
    """One round of :class:`LotteryTicket`: the mask's sparsity, the metric after training
    with it, and the round's wall time (pruning, rewinding, training, evaluation)."""

    round: int
    sparsity: float
    layers: dict[str, float]
    metric: float | None
    seconds: float


@dataclass
class WinningTicket:
    """The masks found by :class:`LotteryTicket` and the weights training restarts from.

    Attributes:
        masks: bool arrays (True = kept) of each masked layer's weight shape.
        weights: the model's state dict (parameters and buffers) as NumPy arrays, at the
            rewind point (initialisation or iteration k; with fine-tuning, the trained weights
            the round started from). Pruned weights are zeroed by :meth:`apply`.
        rounds: the records of every round up to this ticket's.
        config: the :class:`LotteryConfig` as a dict.
    """

    masks: dict[str, np.ndarray[Any, Any]]
    weights: dict[str, np.ndarray[Any, Any]]
    rounds: list[RoundRecord]
    config: dict[str, Any]

    @property
    def sparsity(self) -> float:
        """The fraction of the masked layers' weights that the masks prune."""
        total = sum(m.size for m in self.masks.values())
        kept = sum(int(m.sum()) for m in self.masks.values())
        return 1.0 - kept / max(total, 1)

    def apply(self, model: nn.Module) -> MaskedModel:
        """Load the ticket's weights into `model` (same architecture) and attach its masks;
        train the returned :class:`MaskedModel`'s model and call ``remove()`` when done."""
        load_state(model, self.weights)
        types = tuple({type(model.get_submodule(name)) for name in self.masks})
        return MaskedModel(model, targets=types or DEFAULT_TARGETS, masks=self.masks)

    def save(self, directory: str | Path) -> list[Path]:
        """Write ``ticket.safetensors`` (``mask/<layer>``, ``weight/<state key>``),
        ``ticket.json`` (rounds, config, versions) and, with matplotlib, ``ticket.png``."""
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        tensors: dict[str, np.ndarray[Any, Any]] = {
            f"mask/{name}": mask for name, mask in self.masks.items()
        }
        tensors.update({f"weight/{key}": value for key, value in self.weights.items()})
        written = [out / TICKET_TENSORS, out / TICKET_JSON]
        fp.save(written[0], tensors)
        atomic_write_text(written[1], self.to_json() + "\n")
        with contextlib.suppress(ImportError):
            written.append(self.plot(out / TICKET_PLOT))
        return written

    @classmethod
    def load(cls, directory: str | Path) -> WinningTicket:
        source = Path(directory)
        data = json.loads((source / TICKET_JSON).read_text(encoding="utf-8"))
        tensors = fp.load(source / TICKET_TENSORS)
        masks = {
            k[len("mask/") :]: np.asarray(v) for k, v in tensors.items() if k.startswith("mask/")
        }
        weights = {
            k[len("weight/") :]: np.asarray(v)
            for k, v in tensors.items()
            if k.startswith("weight/")
        }
        rounds = [RoundRecord(**record) for record in data["rounds"]]
        return cls(masks, weights, rounds, data["config"])

    def to_dict(self) -> dict[str, Any]:
        return {
            "sparsity": self.sparsity,
            "rounds": [dataclasses.asdict(r) for r in self.rounds],
            "config": self.config,
            "versions": {"fastprune": fp.__version__, "torch": str(torch.__version__)},
        }

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    def table(self) -> str:
        """One line per round: sparsity, metric and seconds."""
        lines = ["round  sparsity  metric    seconds"]
        for r in self.rounds:
            metric = "-" if r.metric is None else f"{r.metric:.4f}"
            lines.append(f"{r.round:>5}  {r.sparsity:>8.4f}  {metric:>8}  {r.seconds:>7.2f}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()

    def plot(self, path: str | Path) -> Path:
        """A PNG of the metric against the fraction of weights remaining; ImportError without
        matplotlib."""
        from matplotlib.figure import Figure

        fig = Figure(figsize=(6.0, 4.0), layout="constrained")
        ax = fig.subplots()
        points = [(100 * (1 - r.sparsity), r.metric) for r in self.rounds if r.metric is not None]
        ax.plot([x for x, _ in points], [y for _, y in points], "o-")
        ax.set_xscale("log")
        ax.invert_xaxis()
        ax.set_xlabel("weights remaining (%)")
        ax.set_ylabel("metric")
        ax.set_title(f"lottery ticket, rewind: {self.config.get('rewind', '')}")
        target = Path(path)
        atomic_write(target, lambda f: fig.savefig(f, dpi=120, format="png"))
        return target


class LotteryTicket:
    """Iterative magnitude pruning with rewinding (the lottery-ticket procedure).

    ``LotteryTicket(model, config)`` or ``LotteryTicket(model, rounds=..., rate=..., ...)``
    (keywords override fields of `config`), then ``run(train_fn, eval_fn)``:

    1. round 0: ``train_fn(model)`` trains the dense model;
    2. each round r = 1..rounds: every masked layer is pruned by magnitude to
       ``1 − (1 − rate_l)^r`` (already pruned weights stay pruned), the model is rewound
       (:class:`RewindStrategy`) with its masks applied, and ``train_fn(model)`` trains it
       again while the masks hold (:class:`MaskedModel`: any optimizer ``train_fn`` creates);
    3. after every training ``eval_fn(model)`` (optional) gives the round's metric.

    ``run`` returns the last round's :class:`WinningTicket`; :attr:`tickets` holds the ticket
    of every round (round 0: no mask). The model ends with the last round's trained weights,
    pruned, and no hooks.
    """

    def __init__(
        self, model: nn.Module, config: LotteryConfig | None = None, **overrides: Any
    ) -> None:
        module: object = model
        if not isinstance(module, nn.Module):
            msg = f"model: expected a torch.nn.Module, got {type(module).__name__}"
            raise TypeError(msg)
        base = config if config is not None else LotteryConfig()
        given: object = base
        if not isinstance(given, LotteryConfig):
            msg = f"config: expected a LotteryConfig, got {type(given).__name__}"
            raise TypeError(msg)
        self.model = model
        self.config = dataclasses.replace(base, **overrides) if overrides else base
        self.tickets: list[WinningTicket] = []

    def run(
        self,
        train_fn: Callable[[nn.Module], object],
        eval_fn: Callable[[nn.Module], float] | None = None,
        *,
        progress: bool = True,
    ) -> WinningTicket:
        given: object = train_fn
        if not callable(given):
            msg = f"train_fn: expected a callable taking the model, got {train_fn!r}"
            raise TypeError(msg)
        evaluate: object = eval_fn
        if evaluate is not None and not callable(evaluate):
            msg = f"eval_fn: expected a callable taking the model, got {eval_fn!r}"
            raise TypeError(msg)
        cfg = self.config
        rewind = RewindStrategy.parse(cfg.rewind)
        masked = MaskedModel(self.model, cfg.targets, cfg.ignore)
        names = masked.names
        rates = {name: cfg.rate_of(i, len(names)) for i, name in enumerate(names)}
        together = [n for n in names if rates[n] == cfg.rate] if cfg.scope == "global" else []
        rewind_point = save_state(self.model)  # initialisation; iteration k once trained to it
        self.tickets = []
        records: list[RoundRecord] = []
        reporter = _RoundReporter(cfg.rounds + 1, progress)
        try:
            for r in range(cfg.rounds + 1):
                t0 = time.perf_counter()
                if r > 0:
                    if together:
                        masked.prune(round_sparsity(cfg.rate, r), scope="global", layers=together)
                    alone = [n for n in names if n not in together]
                    masked.prune(
                        {n: round_sparsity(rates[n], r) for n in alone},
                        pattern=cfg.pattern,
                        scope="layer",
                        layers=alone,
                    )
                    if rewind.kind != "none":
                        load_state(self.model, rewind_point)
                        masked.apply_masks()
                # the weights this round's training starts from (pruned ones zeroed by apply)
                ticket_weights = rewind_point if rewind.kind != "none" else save_state(self.model)
                if r == 0 and rewind.kind == "iteration" and rewind.iteration > 0:
                    rewind_point = _train_and_capture(self.model, train_fn, rewind.iteration)
                else:
                    train_fn(self.model)
                metric = None if eval_fn is None else float(eval_fn(self.model))
                record = RoundRecord(
                    round=r,
                    sparsity=masked.sparsity,
                    layers=masked.layer_sparsity(),
                    metric=metric,
                    seconds=time.perf_counter() - t0,
                )
                records.append(record)
                self.tickets.append(
                    WinningTicket(masked.masks, ticket_weights, list(records), cfg.to_dict())
                )
                reporter.update(record)
        finally:
            reporter.close()
            masked.remove()
        return self.tickets[-1]


def _train_and_capture(
    model: nn.Module, train_fn: Callable[[nn.Module], object], k: int
) -> dict[str, np.ndarray[Any, Any]]:
    """Run `train_fn` and return the model's state after the k-th optimizer step on its
    parameters (late rewinding); ValueError when training took fewer steps."""
    params = {id(p) for p in model.parameters()}
    steps = 0
    captured: dict[str, np.ndarray[Any, Any]] = {}

    def hook(optimizer: Any, _args: Any, _kwargs: Any) -> None:
        nonlocal steps, captured
        if any(id(p) in params for g in optimizer.param_groups for p in g["params"]):
            steps += 1
            if steps == k:
                captured = save_state(model)

    handle = register_optimizer_step_post_hook(hook)
    try:
        train_fn(model)
    finally:
        handle.remove()
    if steps < k:
        msg = (
            f"rewind: late rewinding to iteration {k}, but the first training took only "
            f"{steps} optimizer steps"
        )
        raise ValueError(msg)
    return captured


def save_state(model: nn.Module) -> dict[str, np.ndarray[Any, Any]]:
    """The model's state dict as NumPy copies (bfloat16 through ml_dtypes when installed)."""
    out = {}
    for key, value in model.state_dict().items():
        t = value.detach()
        array = tensor_to_numpy(t) if t.is_floating_point() else t.cpu().numpy()
        out[key] = np.array(array, copy=True)
    return out


def load_state(model: nn.Module, state: Mapping[str, np.ndarray[Any, Any]]) -> None:
    """Copy `state` (from :func:`save_state`) into the model's tensors, keeping their dtype
    and device; KeyError naming a missing or unexpected entry, ValueError for a shape."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        msg = f"state: missing {missing[:3]}, unexpected {unexpected[:3]} (another architecture?)"
        raise KeyError(msg)
    with torch.no_grad():
        for key, target in own.items():
            array = np.ascontiguousarray(state[key])
            if array.shape != tuple(target.shape):
                msg = f"state[{key!r}]: shape {array.shape}, the model has {tuple(target.shape)}"
                raise ValueError(msg)
            if array.dtype.name == "bfloat16":
                source = torch.from_numpy(array.view(np.int16)).view(torch.bfloat16)
            else:
                source = torch.from_numpy(array)
            target.copy_(source)


class _RoundReporter:
    """A tqdm bar over the rounds (one line per round on stderr without tqdm)."""

    def __init__(self, total: int, enabled: bool) -> None:
        self.enabled = enabled
        self.bar: Any = None
        if enabled:
            try:
                from tqdm.auto import tqdm
            except ImportError:
                return
            self.bar = tqdm(total=total, desc="lottery rounds", unit="round")

    def update(self, record: RoundRecord) -> None:
        if not self.enabled:
            return
        metric = "-" if record.metric is None else f"{record.metric:.4f}"
        if self.bar is not None:
            self.bar.set_postfix(sparsity=f"{record.sparsity:.3f}", metric=metric)
            self.bar.update(1)
        else:
            print(
                f"round {record.round}: sparsity {record.sparsity:.4f}, metric {metric}, "
                f"{record.seconds:.2f} s",
                file=sys.stderr,
            )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


# --- gradual pruning -----------------------------------------------------------------------------


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


def _rate(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        msg = f"{name}: expected a number in [0, 1), got {value!r}"
        raise TypeError(msg)
    if not 0.0 <= float(value) < 1.0:
        msg = f"{name}: must be in [0, 1), got {value}"
        raise ValueError(msg)
    return float(value)
