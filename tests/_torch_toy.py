"""A tiny two-block transformer encoder and its calibration batches, shared by the tests of
fastprune.torch (hooks, prune_model, the report)."""

from __future__ import annotations

import numpy as np
import torch

nn = torch.nn

D = 16
VOCAB = 40


class Attention(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.q = nn.Linear(d, d)
        self.k = nn.Linear(d, d)
        self.v = nn.Linear(d, d)
        self.o = nn.Linear(d, d)

    def forward(self, x, mask):
        scores = self.q(x) @ self.k(x).transpose(1, 2) / x.shape[-1] ** 0.5
        scores = scores.masked_fill(~mask[:, None, :], torch.finfo(x.dtype).min)
        return self.o(scores.softmax(-1) @ self.v(x))


class Block(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.attn = Attention(d)
        self.up = nn.Linear(d, 2 * d)
        self.down = nn.Linear(2 * d, d)
        self.norm = nn.LayerNorm(d)

    def forward(self, x, attention_mask=None):
        x = x + self.attn(x, attention_mask)
        return (self.norm(x + self.down(torch.relu(self.up(x)))),)


class Toy(nn.Module):
    """A 2-block transformer encoder that honours the attention mask."""

    def __init__(self, d: int = D) -> None:
        super().__init__()
        self.emb = nn.Embedding(VOCAB, d)
        self.layers = nn.ModuleList([Block(d), Block(d)])
        self.head = nn.Linear(d, VOCAB)

    def forward(self, input_ids, attention_mask):
        x = self.emb(input_ids)
        mask = attention_mask.bool()
        for block in self.layers:
            x = block(x, attention_mask=mask)[0]
        return self.head(x)


BLOCK_LAYERS = ("attn.q", "attn.k", "attn.v", "attn.o", "up", "down")


def toy(seed: int = 0, dtype=torch.float32) -> Toy:
    torch.manual_seed(seed)
    return Toy().to(dtype)


def batches(seed: int = 1, n: int = 3, pad_fill: int | None = None) -> list[dict]:
    """Batches of 4 sequences of 12 tokens whose last 1..4 positions are padding."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        ids = torch.randint(0, VOCAB, (4, 12), generator=gen)
        mask = torch.ones(4, 12, dtype=torch.long)
        for row in range(4):
            mask[row, 12 - 1 - row :] = 0
        if pad_fill is not None:
            ids = torch.where(mask.bool(), ids, torch.full_like(ids, pad_fill))
        out.append({"input_ids": ids, "attention_mask": mask})
    return out


def weights(model: nn.Module) -> dict[str, np.ndarray]:
    return {
        name: m.weight.detach().float().numpy().copy()
        for name, m in model.named_modules()
        if isinstance(m, nn.Linear)
    }


def names(block: int) -> list[str]:
    return [f"layers.{block}.{layer}" for layer in BLOCK_LAYERS]


def word_tokenizer(vocab_file: object, do_lower_case: bool = True) -> object:
    """A BertTokenizerFast over the words of a one-word-per-line vocab file.

    transformers 5's fast tokenizer ignores the words of a ``vocab_file`` argument (every word
    becomes [UNK]), so the words are passed as a dict.
    """
    from pathlib import Path

    from transformers import BertTokenizerFast

    words = Path(str(vocab_file)).read_text(encoding="utf-8").split()
    vocab = {w: i for i, w in enumerate(words)}
    return BertTokenizerFast(vocab=vocab, do_lower_case=do_lower_case)
