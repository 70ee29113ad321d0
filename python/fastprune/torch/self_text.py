"""Calibration text a causal language model writes itself.

SparseGPT fits each layer's kept weights to the calibration tokens' inputs, so what the pruned
model is good at follows the calibration text; a small text of one kind (short sentences, one
topic) pulls it towards that kind. When no text like what the model will see is at hand, the
model's own samples are: they follow the distribution the model learnt. :func:`sample_text` draws
them: each sequence starts (after the tokenizer's BOS token, where it has one) from a token drawn
uniformly from the vocabulary's ordinary tokens and continues by sampling from the model's full
next-token distribution (temperature 1, no top-k or top-p cut), with the end-of-text token
suppressed so that every sequence has its full length. The draws are reproducible from `seed` and
leave torch's global random state as it was.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


def sample_text(
    model: nn.Module,
    tokenizer: Any,
    *,
    sequences: int = 16,
    tokens: int = 1024,
    seed: int = 0,
    batch_size: int = 16,
    progress: bool = True,
) -> list[str]:
    """`sequences` texts of `tokens` sampled tokens each, decoded, one line per text (newlines
    become spaces). `model` is a Hugging Face causal language model."""
    for name, value in (("sequences", sequences), ("tokens", tokens), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            msg = f"{name}: expected a positive integer, got {value!r}"
            raise ValueError(msg)
    generate = getattr(model, "generate", None)
    if not callable(generate):
        msg = f"model: {type(model).__name__} cannot generate text (no generate method)"
        raise TypeError(msg)
    special = set(getattr(tokenizer, "all_special_ids", []))
    ordinary = torch.tensor([i for i in range(len(tokenizer)) if i not in special])
    if ordinary.numel() == 0:
        raise ValueError("tokenizer: has no ordinary token to start a sequence from")
    bos = getattr(tokenizer, "bos_token_id", None)
    eos = getattr(tokenizer, "eos_token_id", None)
    most = max_tokens(model, tokenizer)
    if most is not None and tokens > most:
        context = most + (1 if bos is None else 2)
        msg = (
            f"tokens: {tokens} sampled tokens after the first token do not fit the model's "
            f"context of {context} positions (at most {most})"
        )
        raise ValueError(msg)
    pad = eos if eos is not None else (bos if bos is not None else 0)
    texts: list[str] = []
    was_training = model.training
    model.eval()
    batches = range(0, sequences, batch_size)
    bar = _progress(len(batches) * tokens, progress)
    try:
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            torch.manual_seed(seed)
            for start in batches:
                count = min(batch_size, sequences - start)
                first = ordinary[torch.randint(0, ordinary.numel(), (count, 1))]
                ids = first if bos is None else torch.cat([torch.full_like(first, bos), first], 1)
                out = generate(
                    input_ids=ids,
                    attention_mask=torch.ones_like(ids),
                    do_sample=True,
                    temperature=1.0,
                    top_k=0,
                    top_p=1.0,
                    max_new_tokens=tokens,
                    min_new_tokens=tokens,  # the end-of-text token is never drawn
                    pad_token_id=pad,
                    cache_implementation="static",
                    streamer=None if bar is None else _Steps(bar),
                )
                for row in out[:, 0 if bos is None else 1 :]:
                    text = tokenizer.decode(row, skip_special_tokens=True)
                    texts.append(" ".join(text.split()))
    finally:
        model.train(was_training)
        if bar is not None:
            bar.close()
    return texts


def max_tokens(model: nn.Module, tokenizer: Any) -> int | None:
    """The most tokens a sequence can sample within the model's context
    (``config.max_position_embeddings``) after its first token and, where the tokenizer has one,
    BOS; None where the model states no context."""
    context = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    first = 1 if getattr(tokenizer, "bos_token_id", None) is None else 2
    if isinstance(context, int) and context > first:
        return context - first
    return None


def _progress(total: int, enabled: bool) -> Any:
    """A tqdm bar over the decoding steps of every batch, or None (disabled, or no tqdm)."""
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    return tqdm(total=total, desc="sampling calibration text", unit="step")


class _Steps:
    """A transformers streamer that advances `bar` by each decoding step ``generate`` hands it
    (the first call carries the prompt, which is not a step)."""

    def __init__(self, bar: Any) -> None:
        self.bar = bar
        self.prompt = True

    def put(self, value: torch.Tensor) -> None:
        if self.prompt:
            self.prompt = False
            return
        self.bar.update(value.shape[-1] if value.dim() > 1 else 1)

    def end(self) -> None:
        """Nothing to flush: the bar counts steps as they come."""
