"""Calibration statistics for structural pruning of transformers: the batches, one forward
pass each, and the per-channel activation means that Minitron's importance reads."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from .model_layout import Layout, _attention, _ffn, _hidden

Batch = Any  # a Mapping of model keyword arguments or a tensor of input ids


def _batches(calibration_batches: Iterable[Batch]) -> list[Batch]:
    given: object = calibration_batches
    if isinstance(given, (torch.Tensor, Mapping)):
        return [given]
    if isinstance(given, (str, bytes)) or not isinstance(given, Iterable):
        msg = "calibration_batches: expected an iterable of batches (dicts of tensors or ids)"
        raise TypeError(msg)
    batches = list(given)
    if not batches:
        msg = "calibration_batches: no batches given"
        raise ValueError(msg)
    return batches


def _run(model: nn.Module, batch: Batch) -> Any:
    if isinstance(batch, Mapping):
        return model(**batch)
    if isinstance(batch, torch.Tensor):
        return model(input_ids=batch)
    msg = f"calibration_batches: a batch must be a dict of tensors or ids, got {type(batch)}"
    raise TypeError(msg)


def _token_mask(batch: Batch) -> torch.Tensor | None:
    if isinstance(batch, Mapping) and batch.get("attention_mask") is not None:
        mask = batch["attention_mask"]
        return mask.bool() if mask.dim() == 2 else None
    return None


class _Stats:
    """Sums per channel over real tokens of a statistic of some module's input or output."""

    def __init__(self) -> None:
        self.mask: torch.Tensor | None = None
        self.sums: dict[str, torch.Tensor] = {}
        self.tokens: dict[str, int] = {}
        self.handles: list[Any] = []

    def tokens_of(self, x: torch.Tensor) -> torch.Tensor:
        x = x.detach().float()
        if self.mask is not None and x.dim() == 3 and x.shape[:2] == self.mask.shape:
            return x[self.mask]
        return x.reshape(-1, x.shape[-1])

    def add(self, key: str, values: torch.Tensor) -> None:
        total = values.sum(0)
        self.sums[key] = total if key not in self.sums else self.sums[key] + total
        self.tokens[key] = self.tokens.get(key, 0) + values.shape[0]

    def mean(self, key: str) -> torch.Tensor:
        return self.sums[key] / max(self.tokens[key], 1)

    def close(self) -> None:
        for h in self.handles:
            h.remove()


def _activations(
    lay: Layout,
    batches: Sequence[Batch],
    heads: bool,
    ffn: bool,
    hidden: bool,
    progress: bool,
) -> dict[str, torch.Tensor]:
    """Minitron activation importance: mean over real tokens of |neuron| (FFN, input of the
    down projection), of the L2 norm of each head's output (input of the output projection), and
    the sum over every norm layer of the mean |channel| of its output (hidden)."""
    stats = _Stats()
    for i in range(len(lay.blocks)):
        if heads:
            att = _attention(lay, i)
            o_in = _output_projection(lay, i)

            def head_hook(
                _m: nn.Module, args: tuple[Any, ...], key: str = f"heads.{i}", d: int = att.head_dim
            ) -> None:
                x = stats.tokens_of(args[0])
                stats.add(key, x.reshape(x.shape[0], -1, d).norm(dim=-1))

            stats.handles.append(o_in.register_forward_pre_hook(head_hook))
        if ffn:
            down = _ffn(lay, i)[2]
            assert down is not None

            def ffn_hook(_m: nn.Module, args: tuple[Any, ...], key: str = f"ffn.{i}") -> None:
                stats.add(key, stats.tokens_of(args[0]).abs())

            stats.handles.append(down.register_forward_pre_hook(ffn_hook))
    if hidden:
        for j, norm in enumerate(_hidden(lay)[2]):

            def norm_hook(_m: nn.Module, _a: Any, out: Any, key: str = f"norm.{j}") -> None:
                stats.add(key, stats.tokens_of(out).abs())

            stats.handles.append(norm.register_forward_hook(norm_hook))
    try:
        with torch.no_grad():
            for batch in _progress(batches, progress, "activations"):
                stats.mask = _token_mask(batch)
                _run(lay.model, batch)
    finally:
        stats.close()
    result = {k: stats.mean(k) for k in stats.sums if not k.startswith("norm.")}
    if hidden:
        norms = [stats.mean(k) for k in stats.sums if k.startswith("norm.")]
        result["hidden"] = torch.stack(norms).sum(0)
    return result


def _output_projection(lay: Layout, i: int) -> Any:
    b = lay.blocks[i]
    if lay.family == "llama":
        return b.self_attn.o_proj
    if lay.family == "bert":
        return b.attention.output.dense
    return b.attn.c_proj


def _progress(items: Sequence[Any], enabled: bool, desc: str) -> Iterable[Any]:
    if not enabled:
        return items
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return items
    return tqdm(items, desc=desc, leave=False)
