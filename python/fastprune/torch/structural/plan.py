"""A pruning plan: every coupled parameter slice that goes when some channels go.

A plan is built before anything changes, can be printed to show what it will remove, and
`PruningPlan.apply` then shrinks the parameters (and buffers) in place and fixes the modules'
and the config's size attributes. Parameters shared by several modules (tied embeddings and LM
heads) are sliced once and the one new tensor is put back on every owner.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn


@dataclass(frozen=True)
class Slice:
    """One tensor of a group: channel ``c`` of the group is indices ``offset + c * span`` up to
    ``offset + (c + 1) * span`` on `dim`, for every offset in `offsets` (a fused q/k/v
    projection holds each channel three times; a Linear after a flatten reads ``span = H * W``
    columns per channel)."""

    module: nn.Module
    name: str
    dim: int
    offsets: tuple[int, ...] = (0,)
    label: str = ""
    span: int = 1

    def tensor(self) -> torch.Tensor:
        value = getattr(self.module, self.name)
        if not isinstance(value, torch.Tensor):
            msg = f"{self.label or type(self.module).__name__}.{self.name} is not a tensor"
            raise TypeError(msg)
        return value

    def rows(self, tensor: torch.Tensor, channels: int) -> torch.Tensor:
        """`tensor` viewed as ``(channels, len(offsets) * rest)``: one row per group channel."""
        moved = tensor.movedim(self.dim, 0)
        size = channels * self.span
        parts = [moved[o : o + size].reshape(channels, -1) for o in self.offsets]
        return torch.cat(parts, dim=1)

    def index(self, keep: torch.Tensor) -> torch.Tensor:
        within = (keep[:, None] * self.span + torch.arange(self.span)[None, :]).reshape(-1)
        return torch.cat([within + o for o in self.offsets])


@dataclass
class Part:
    """Channels of one coupled dimension and the slices that carry it."""

    what: str
    channels: int
    keep: torch.Tensor
    slices: list[Slice]
    unit: int = 1  # channels per prunable unit (head_dim for attention heads)

    @property
    def removed(self) -> int:
        return self.channels - int(self.keep.numel())


@dataclass
class PruningPlan:
    """What to keep in each coupled dimension and which attributes to fix afterwards."""

    parts: list[Part] = field(default_factory=list)
    fixes: list[tuple[object, str, Any]] = field(default_factory=list)
    # run after the tensors shrank: steps that read the new shapes (described, then called)
    then: list[tuple[str, Callable[[], None]]] = field(default_factory=list)
    applied: bool = False

    def __str__(self) -> str:
        lines = [f"PruningPlan ({'applied' if self.applied else 'not applied'})"]
        for part in self.parts:
            unit = f" ({part.unit} channels each)" if part.unit > 1 else ""
            lines.append(
                f"  {part.what}: keep {part.keep.numel() // part.unit} of "
                f"{part.channels // part.unit}{unit}, in {len(part.slices)} tensors"
            )
            for s in part.slices:
                lines.append(f"    {s.label or type(s.module).__name__}.{s.name} dim {s.dim}")
        for obj, attr, value in self.fixes:
            lines.append(f"  set {type(obj).__name__}.{attr} = {value!r}")
        for what, _ in self.then:
            lines.append(f"  then {what}")
        return "\n".join(lines)

    def apply(self) -> None:
        """Shrink every tensor of the plan and set the fixed attributes. Runs once."""
        if self.applied:
            msg = "plan: already applied"
            raise RuntimeError(msg)
        # every index is relative to the tensors as they are now: collect what each part
        # removes from each tensor (and dimension) first, then shrink every tensor once, so
        # that parts sharing a tensor (pieces of one producer, a fused projection, tied
        # weights) never see each other's shifted offsets
        tensors: dict[int, torch.Tensor] = {}
        owners: dict[int, list[tuple[nn.Module, str]]] = {}
        removals: dict[int, dict[int, list[torch.Tensor]]] = {}
        for part in self.parts:
            removed = _complement(part.keep, part.channels)
            for s in part.slices:
                old = s.tensor()
                tensors[id(old)] = old
                if (s.module, s.name) not in owners.setdefault(id(old), []):
                    owners[id(old)].append((s.module, s.name))
                removals.setdefault(id(old), {}).setdefault(s.dim, []).append(s.index(removed))
        for key, old in tensors.items():
            new = old
            for dim, indices in removals[key].items():
                new = _shrunk(new, dim, _complement(torch.cat(indices), old.shape[dim]))
            for module, name in owners[key]:
                _put(module, name, new)
        for obj, attr, value in self.fixes:
            setattr(obj, attr, value)
        for _, step in self.then:
            step()
        self.applied = True


def _complement(index: torch.Tensor, size: int) -> torch.Tensor:
    keep = torch.ones(size, dtype=torch.bool)
    keep[index.long()] = False
    return torch.nonzero(keep).reshape(-1)


def _shrunk(old: torch.Tensor, dim: int, index: torch.Tensor) -> torch.Tensor:
    data = old.detach().index_select(dim, index.to(old.device)).clone()
    if isinstance(old, nn.Parameter):
        new = nn.Parameter(data, requires_grad=old.requires_grad)
        if old.grad is not None:  # the kept entries' gradients stay (Taylor scores read them)
            new.grad = old.grad.index_select(dim, index.to(old.device)).clone()
        return new
    return data


def _put(module: nn.Module, name: str, value: torch.Tensor) -> None:
    if name in module._buffers:
        module._buffers[name] = value
    else:
        setattr(module, name, value)
