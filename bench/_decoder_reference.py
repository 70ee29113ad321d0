"""The reference pruning procedures for a Hugging Face decoder, in plain torch.

Written from the SparseGPT (Frantar & Alistarh, 2023) and Wanda (Sun et al., 2024) papers and the
procedure of their published LLaMA code, independently of fastprune's implementation, so that
fastprune's results can be checked against it on the same model and calibration tokens:

- the decoder blocks are pruned one after another; the inputs of block k+1 are the outputs of
  block k after it was pruned;
- SparseGPT, "true sequential": inside a block the layers are pruned in the order the block calls
  them (q/k/v, then o, then gate/up, then down), each group calibrated on its inputs after the
  groups before it were pruned; Hessian ``H = 2/N Σ x xᵀ`` in float32, dead inputs get a unit
  diagonal, damping 1 % of the mean diagonal, the inverse's upper Cholesky factor, column blocks
  of 128 with a per-block saliency threshold (or N:M groups), OBS updates inside the block and
  one lazy update after it;
- Wanda: all layers of a block calibrated together on the block's inputs, score
  ``|W_ij| · ‖X_j‖``, the lowest pruned in each output row (or in each group of M);
- magnitude: the lowest ``|W_ij|`` of each layer (or of each group of M), no calibration.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any

import torch
from torch import nn

TRUE_SEQUENTIAL = (
    ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
    ("self_attn.o_proj",),
    ("mlp.gate_proj", "mlp.up_proj"),
    ("mlp.down_proj",),
)


class _Captured(Exception):
    pass


def decoder_blocks(model: nn.Module) -> nn.ModuleList:
    return model.model.layers  # type: ignore[no-any-return, return-value, union-attr]


def block_linears(block: nn.Module) -> dict[str, nn.Linear]:
    return {name: m for name, m in block.named_modules() if isinstance(m, nn.Linear)}


def capture_first_block_inputs(
    model: nn.Module, windows: torch.Tensor, batch_size: int
) -> list[tuple[torch.Tensor, dict[str, Any]]]:
    """Hidden states and keyword arguments the first block receives, per batch of windows."""
    captured: list[tuple[torch.Tensor, dict[str, Any]]] = []

    def hook(_m: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        hidden = args[0] if args else kwargs.pop("hidden_states")
        captured.append((hidden, {k: v for k, v in kwargs.items() if k != "hidden_states"}))
        raise _Captured

    handle = decoder_blocks(model)[0].register_forward_pre_hook(hook, with_kwargs=True)
    try:
        for start in range(0, windows.shape[0], batch_size):
            with contextlib.suppress(_Captured):
                model(windows[start : start + batch_size], use_cache=False)
    finally:
        handle.remove()
    return captured


def _run(block: nn.Module, hidden: torch.Tensor, kwargs: dict[str, Any]) -> torch.Tensor:
    out = block(hidden, **kwargs)
    return out[0] if isinstance(out, (tuple, list)) else out


class _Stats:
    """Running ``H = 2/N Σ x xᵀ`` and ``Σ x_j² / N`` of one layer's inputs, float32."""

    def __init__(self, width: int) -> None:
        self.hessian = torch.zeros(width, width)
        self.sq = torch.zeros(width)
        self.count = 0

    def add(self, x: torch.Tensor) -> None:
        rows = x.reshape(-1, x.shape[-1]).float()
        n = rows.shape[0]
        total = self.count + n
        self.hessian *= self.count / total
        self.sq *= self.count / total
        scaled = rows * math.sqrt(2.0 / total)
        self.hessian += scaled.T @ scaled
        self.sq += (rows * rows).sum(0) / total
        self.count = total


def _calibrate(
    block: nn.Module,
    names: tuple[str, ...],
    batches: list[tuple[torch.Tensor, dict[str, Any]]],
) -> dict[str, _Stats]:
    linears = block_linears(block)
    stats = {name: _Stats(linears[name].in_features) for name in names}
    handles = []
    for name in names:

        def hook(_m: nn.Module, args: tuple[Any, ...], _s: _Stats = stats[name]) -> None:
            _s.add(args[0].detach())

        handles.append(linears[name].register_forward_pre_hook(hook))
    try:
        for hidden, kwargs in batches:
            _run(block, hidden, kwargs)
    finally:
        for h in handles:
            h.remove()
    return stats


def sparsegpt_layer(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    sparsity: float,
    prune_n: int = 0,
    prune_m: int = 0,
    blocksize: int = 128,
    percdamp: float = 0.01,
) -> torch.Tensor:
    """SparseGPT's pruned weight; with prune_n > 0, `prune_n` of every `prune_m` are pruned."""
    w = weight.detach().clone().float()
    h = hessian.clone()
    columns = w.shape[1]
    dead = torch.diag(h) == 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    h += percdamp * torch.mean(torch.diag(h)) * torch.eye(columns)
    hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)
    for i1 in range(0, columns, blocksize):
        i2 = min(i1 + blocksize, columns)
        count = i2 - i1
        w1 = w[:, i1:i2].clone()
        q1 = torch.zeros_like(w1)
        err1 = torch.zeros_like(w1)
        hinv1 = hinv[i1:i2, i1:i2]
        diag = torch.diag(hinv1)
        if prune_n == 0:
            saliency = w1**2 / diag.reshape(1, -1) ** 2
            threshold = torch.sort(saliency.flatten())[0][int(saliency.numel() * sparsity)]
            mask1 = saliency <= threshold
        else:
            mask1 = torch.zeros_like(w1, dtype=torch.bool)
        for i in range(count):
            col = w1[:, i]
            if prune_n != 0 and i % prune_m == 0:
                saliency = w1[:, i : i + prune_m] ** 2 / diag[i : i + prune_m].reshape(1, -1) ** 2
                lowest = torch.topk(saliency, prune_n, dim=1, largest=False)[1]
                mask1.scatter_(1, i + lowest, True)
            q = col.clone()
            q[mask1[:, i]] = 0.0
            q1[:, i] = q
            e = (col - q) / hinv1[i, i]
            w1[:, i:] -= e.unsqueeze(1) @ hinv1[i, i:].unsqueeze(0)
            err1[:, i] = e
        w[:, i1:i2] = q1
        w[:, i2:] -= err1 @ hinv[i1:i2, i2:]
    return w.to(weight.dtype)


def wanda_layer(
    weight: torch.Tensor, sq: torch.Tensor, sparsity: float, prune_n: int = 0, prune_m: int = 0
) -> torch.Tensor:
    score = weight.abs().float() * torch.sqrt(sq).reshape(1, -1)
    return _prune_lowest(weight, score, sparsity, prune_n, prune_m, per_row=True)


def magnitude_layer(
    weight: torch.Tensor, sparsity: float, prune_n: int = 0, prune_m: int = 0
) -> torch.Tensor:
    score = weight.abs().float()
    return _prune_lowest(weight, score, sparsity, prune_n, prune_m, per_row=False)


def _prune_lowest(
    weight: torch.Tensor,
    score: torch.Tensor,
    sparsity: float,
    prune_n: int,
    prune_m: int,
    *,
    per_row: bool,
) -> torch.Tensor:
    pruned = torch.zeros_like(score, dtype=torch.bool)
    if prune_n:
        for start in range(0, score.shape[1], prune_m):
            group = score[:, start : start + prune_m]
            pruned.scatter_(1, start + torch.topk(group, prune_n, dim=1, largest=False)[1], True)
    elif per_row:
        order = torch.sort(score, dim=1, stable=True)[1]
        pruned.scatter_(1, order[:, : int(score.shape[1] * sparsity)], True)
    else:
        threshold = torch.sort(score.flatten())[0][int(score.numel() * sparsity)]
        pruned = score <= threshold
    out = weight.detach().clone()
    out[pruned] = 0
    return out


@torch.no_grad()
def prune(
    model: nn.Module,
    windows: torch.Tensor | None,
    method: str,
    sparsity: float = 0.5,
    pattern: str = "unstructured",
    *,
    batch_size: int = 8,
) -> None:
    """Prune every Linear layer of `model`'s decoder blocks in place with the reference procedure.

    `windows` is an (n, seqlen) tensor of calibration token ids (unused for magnitude).
    """
    prune_n = prune_m = 0
    if pattern != "unstructured":
        kept, prune_m = (int(v) for v in pattern.split(":"))
        prune_n = prune_m - kept
    model.eval()
    blocks = decoder_blocks(model)
    if method == "magnitude":
        for block in blocks:
            for layer in block_linears(block).values():
                layer.weight.copy_(magnitude_layer(layer.weight, sparsity, prune_n, prune_m))
        return
    assert windows is not None
    batches = capture_first_block_inputs(model, windows, batch_size)
    for block in blocks:
        linears = block_linears(block)
        if method == "sparsegpt":
            for names in TRUE_SEQUENTIAL:
                stats = _calibrate(block, names, batches)
                for name in names:
                    layer = linears[name]
                    layer.weight.copy_(
                        sparsegpt_layer(
                            layer.weight, stats[name].hessian, sparsity, prune_n, prune_m
                        )
                    )
        elif method == "wanda":
            stats = _calibrate(block, tuple(linears), batches)
            for name, layer in linears.items():
                layer.weight.copy_(
                    wanda_layer(layer.weight, stats[name].sq, sparsity, prune_n, prune_m)
                )
        else:
            msg = f"unknown method {method!r}"
            raise ValueError(msg)
        batches = [(_run(block, hidden, kwargs), kwargs) for hidden, kwargs in batches]
