"""Perplexity of a causal language model over a text, the way the pruning papers measure it.

The whole text is tokenized as one stream (no special tokens added), cut into consecutive,
non-overlapping windows of ``seqlen`` tokens (a last partial window is dropped), and each window
is scored on its own: perplexity is ``exp`` of the mean next-token negative log-likelihood over
every predicted position (``seqlen - 1`` per window). SparseGPT and Wanda report WikiText-2 test
perplexity this way with ``seqlen`` 2048 (or the model's context); fastprune's benchmarks use
1,024.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F


@dataclass(frozen=True)
class Perplexity:
    """The perplexity, the windows and predicted tokens it was measured on, and their summed
    negative log-likelihood (nats)."""

    value: float
    windows: int
    tokens: int
    nll: float

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def token_windows(
    tokenizer: Any, text: str, *, seqlen: int = 1024, windows: int | None = None
) -> torch.Tensor:
    """The first `windows` (default: all) whole windows of `seqlen` tokens of `text`, (n, seqlen).

    CRLF line endings are read as LF. ValueError when the text holds fewer windows than asked.
    """
    if not isinstance(seqlen, int) or seqlen < 2:
        msg = f"seqlen: expected an integer >= 2, got {seqlen!r}"
        raise ValueError(msg)
    if windows is not None and (not isinstance(windows, int) or windows < 1):
        msg = f"windows: expected a positive integer or None, got {windows!r}"
        raise ValueError(msg)
    ids = tokenizer(text.replace("\r\n", "\n"), add_special_tokens=False)["input_ids"]
    available = len(ids) // seqlen
    wanted = available if windows is None else windows
    if available < max(wanted, 1):
        msg = (
            f"text: {len(ids)} tokens hold {available} windows of {seqlen} tokens, "
            f"{wanted or 1} needed"
        )
        raise ValueError(msg)
    return torch.tensor(ids[: wanted * seqlen], dtype=torch.long).reshape(wanted, seqlen)


def perplexity(model: nn.Module, windows: torch.Tensor, *, batch_size: int = 1) -> Perplexity:
    """Perplexity of `model` (a Hugging Face causal LM, evaluated in float32 logits) over the
    rows of `windows` (n, seqlen), `batch_size` rows per forward pass."""
    if not isinstance(windows, torch.Tensor) or windows.ndim != 2 or windows.shape[1] < 2:
        msg = f"windows: expected an (n, seqlen >= 2) tensor of token ids, got {windows!r:.80}"
        raise ValueError(msg)
    if not isinstance(batch_size, int) or batch_size < 1:
        msg = f"batch_size: expected a positive integer, got {batch_size!r}"
        raise ValueError(msg)
    was_training = model.training
    model.eval()
    total = 0.0
    try:
        with torch.inference_mode():
            for start in range(0, windows.shape[0], batch_size):
                rows = windows[start : start + batch_size]
                logits = model(rows, use_cache=False).logits[:, :-1].float()
                loss = F.cross_entropy(
                    logits.reshape(-1, logits.shape[-1]), rows[:, 1:].reshape(-1), reduction="sum"
                )
                total += float(loss)
    finally:
        model.train(was_training)
    predicted = windows.shape[0] * (windows.shape[1] - 1)
    return Perplexity(math.exp(total / predicted), int(windows.shape[0]), predicted, total)
