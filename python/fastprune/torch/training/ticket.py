"""What a lottery-ticket search finds (:class:`WinningTicket`, one :class:`RoundRecord` per
round), its files, and the model state as NumPy arrays that tickets and rewinding keep."""

from __future__ import annotations

import contextlib
import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

import fastprune as fp
from fastprune._files import atomic_write, atomic_write_text

from ..hooks import tensor_to_numpy
from ..prune import DEFAULT_TARGETS
from .masked import MaskedModel

TICKET_TENSORS = "ticket.safetensors"
TICKET_JSON = "ticket.json"
TICKET_PLOT = "ticket.png"


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
