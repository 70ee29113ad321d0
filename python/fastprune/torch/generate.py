"""Greedy decoding of a causal language model on the CPU, timed: what a sparsified model buys.

:func:`greedy` runs the prompt once (prefill), then feeds back the most likely token one step at
a time through the model's key/value cache, and times the two phases apart: decoding one token
at a time is where sparse layers pay (it reads every weight once per token), prefill is a large
matrix product where they barely matter. :func:`compare` decodes the same prompt with a model and
with a reference (its dense, masked twin), in turns, and says whether the tokens agree.
"""

from __future__ import annotations

import inspect
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn


@dataclass(frozen=True)
class Generation:
    """Greedy tokens after a prompt, the seconds of prefill and of decoding them, and the
    last-position logits of every decoding step (float32, (tokens, vocab))."""

    tokens: list[int]
    prefill_seconds: float
    decode_seconds: float
    logits: torch.Tensor

    @property
    def tokens_per_second(self) -> float:
        return len(self.tokens) / self.decode_seconds if self.decode_seconds else float("inf")


def greedy(model: nn.Module, ids: torch.Tensor, tokens: int) -> Generation:
    """The `tokens` greedy tokens that `model` (a Hugging Face causal LM) writes after `ids`.

    `ids` is a (1, length) tensor of token ids. Every step is run, end-of-sequence tokens
    included, so two models always decode the same number of tokens.
    """
    if not isinstance(ids, torch.Tensor) or ids.ndim != 2 or ids.shape[0] != 1 or ids.numel() < 1:
        msg = f"ids: expected a (1, length) tensor of token ids, got {getattr(ids, 'shape', ids)}"
        raise ValueError(msg)
    if not isinstance(tokens, int) or tokens < 1:
        msg = f"tokens: expected a positive integer, got {tokens!r}"
        raise ValueError(msg)
    # transformers 5 names the key/value cache `cache`, earlier versions `past_key_values`
    name = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    out: list[int] = []
    logits = []
    with torch.inference_mode():
        t0 = time.perf_counter()
        step = model(ids, use_cache=True)
        prefill = time.perf_counter() - t0
        past = getattr(step, name)
        nxt = step.logits[:, -1].argmax(-1, keepdim=True)
        t0 = time.perf_counter()
        for _ in range(tokens):
            out.append(int(nxt))
            step = model(nxt, use_cache=True, **{name: past})
            past = getattr(step, name)
            logits.append(step.logits[:, -1].float())
            nxt = step.logits[:, -1].argmax(-1, keepdim=True)
        seconds = time.perf_counter() - t0
    return Generation(out, prefill, seconds, torch.cat(logits))


@dataclass(frozen=True)
class Comparison:
    """One model against a reference on the same prompt (medians of the rounds)."""

    tokens: int
    same_tokens: bool
    first_difference: int | None  # the first step whose tokens differ
    max_logit_difference: float  # over the steps up to and including the first difference
    tokens_per_second: float
    reference_tokens_per_second: float

    @property
    def speedup(self) -> float:
        return self.tokens_per_second / self.reference_tokens_per_second

    def as_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "speedup": self.speedup}


def compare(
    model: nn.Module, reference: nn.Module, ids: torch.Tensor, tokens: int, rounds: int = 3
) -> Comparison:
    """Decodes `ids` with `model` and `reference` in turns, `rounds` times each."""
    if not isinstance(rounds, int) or rounds < 1:
        msg = f"rounds: expected a positive integer, got {rounds!r}"
        raise ValueError(msg)
    runs: list[Generation] = []
    references: list[Generation] = []
    for _ in range(rounds):
        runs.append(greedy(model, ids, tokens))
        references.append(greedy(reference, ids, tokens))
    mine, theirs = runs[0], references[0]
    pairs = enumerate(zip(mine.tokens, theirs.tokens, strict=True))
    first = next((i for i, (a, b) in pairs if a != b), None)
    upto = tokens if first is None else first + 1
    difference = float((mine.logits[:upto] - theirs.logits[:upto]).abs().max())
    return Comparison(
        tokens=tokens,
        same_tokens=first is None,
        first_difference=first,
        max_logit_difference=difference,
        tokens_per_second=tokens / statistics.median(g.decode_seconds for g in runs),
        reference_tokens_per_second=tokens
        / statistics.median(g.decode_seconds for g in references),
    )


def load_causal_lm(directory: str | Path, *, progress: bool = False) -> tuple[nn.Module, Any]:
    """The causal LM in `directory` and its tokenizer: a sparse checkpoint (written by
    :func:`fastprune.torch.save_sparse`) with its packed layers, else the dense model."""
    import transformers

    from . import models
    from .checkpoint import SPARSE_FILE, load_sparse

    folder = models.check_model_dir(directory)
    if (folder / SPARSE_FILE).is_file():
        model = load_sparse(folder)
        tokenizer = transformers.AutoTokenizer.from_pretrained(folder, local_files_only=True)
    else:
        model, tokenizer = models.load_pretrained(folder, progress=progress)
    if not models.generates_text(model):
        msg = f"model: {type(model).__name__} in {str(directory)!r} is not a causal language model"
        raise ValueError(msg)
    return model.eval(), tokenizer
