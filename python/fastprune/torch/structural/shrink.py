"""Shrink a Hugging Face model (depth, then width) and report what it gained.

`shrink` removes the blocks with the lowest block importance, then prunes widths, and measures
parameters, FLOPs per token and CPU latency on one input before and after, in the same run.
"""

from __future__ import annotations

import platform
import statistics
import time
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

import fastprune as fp

from .activations import Batch
from .transformers import (
    block_importance,
    count_parameters,
    flops_per_token,
    layout,
    prune_width,
    remove_blocks,
)

REPORT_FILE = "shrink_report.json"


def latency(model: nn.Module, batch: Mapping[str, torch.Tensor], repeat: int = 5) -> float:
    """Median seconds of one forward pass over `batch`, after a warm-up pass."""
    times = []
    with torch.no_grad():
        model(**batch)
        for _ in range(repeat):
            start = time.perf_counter()
            model(**batch)
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def _sizes(model: nn.Module, batch: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    seq = int(batch["input_ids"].shape[1])
    lay = layout(model)
    return {
        "parameters": count_parameters(model),
        "flops_per_token": flops_per_token(model, seq),
        "blocks": len(lay.blocks),
        "config": {
            k: getattr(lay.config, k, None)
            for k in (
                "hidden_size",
                "num_attention_heads",
                "num_key_value_heads",
                "intermediate_size",
                "num_hidden_layers",
            )
        },
    }


def shrink(
    model: nn.Module,
    calibration_batches: Sequence[Batch],
    latency_batch: Mapping[str, torch.Tensor],
    *,
    heads: int | None = None,
    kv_heads: int | None = None,
    ffn: int | None = None,
    hidden: int | None = None,
    drop_blocks: int = 0,
    importance: str = "activation",
    progress: bool = False,
) -> dict[str, Any]:
    """Prune `model` in place; returns the report (what went, sizes and latency before/after)."""
    if isinstance(drop_blocks, bool) or not isinstance(drop_blocks, int) or drop_blocks < 0:
        msg = f"drop_blocks: expected an int >= 0, got {drop_blocks!r}"
        raise ValueError(msg)
    n = len(layout(model).blocks)
    if drop_blocks >= n:
        msg = f"drop_blocks: removing {drop_blocks} of {n} blocks would leave no model"
        raise ValueError(msg)
    before = _sizes(model, latency_batch)
    before["latency_s"] = latency(model, latency_batch)
    report: dict[str, Any] = {"before": before, "removed": {}}
    if drop_blocks:
        scores = block_importance(model, calibration_batches, progress=progress)
        which = scores.least_important(drop_blocks)
        remove_blocks(model, which)
        report["removed"]["blocks"] = which
        report["block_importance"] = scores.bi
    if any(v is not None for v in (heads, kv_heads, ffn, hidden)):
        plan = prune_width(
            model,
            calibration_batches,
            heads=heads,
            kv_heads=kv_heads,
            ffn=ffn,
            hidden=hidden,
            importance=importance,
            progress=progress,
        )
        report["removed"]["width"] = [
            {"what": p.what, "kept": int(p.keep.numel()) // p.unit, "of": p.channels // p.unit}
            for p in plan.parts
        ]
    after = _sizes(model, latency_batch)
    after["latency_s"] = latency(model, latency_batch)
    report["after"] = after
    report["ratios"] = {
        "parameters": after["parameters"] / before["parameters"],
        "flops": after["flops_per_token"] / before["flops_per_token"],
        "speedup": before["latency_s"] / after["latency_s"],
    }
    report["latency_input"] = list(latency_batch["input_ids"].shape)
    report["environment"] = {
        "fastprune": fp.__version__,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "machine": platform.machine(),
    }
    return report
