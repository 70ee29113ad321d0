"""Perplexity over a text (fastprune.torch.evaluate) and ``fastprune eval``."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("tokenizers")

from _torch_toy import word_tokenizer  # noqa: E402
from fastprune.cli import main  # noqa: E402
from fastprune.torch.evaluate import perplexity, token_windows  # noqa: E402

WORDS = ["the", "cat", "sat", "on", "mat", "dog", "ran", "in", "park", "today", "a", "city"]


def fake_tokenizer(text: str, add_special_tokens: bool) -> dict[str, list[int]]:
    assert add_special_tokens is False
    return {"input_ids": [len(word) for word in text.split(" ")]}


def test_token_windows_cut_the_stream_into_whole_windows():
    text = " ".join("x" * n for n in range(1, 24))  # tokens 1..23
    w = token_windows(fake_tokenizer, text, seqlen=5)
    assert w.tolist() == [
        [1, 2, 3, 4, 5],
        [6, 7, 8, 9, 10],
        [11, 12, 13, 14, 15],
        [16, 17, 18, 19, 20],
    ]
    assert token_windows(fake_tokenizer, text, seqlen=5, windows=2).shape == (2, 5)
    assert token_windows(fake_tokenizer, "ab\r\nc d", seqlen=2).tolist() == [[4, 1]]
    with pytest.raises(ValueError, match="4 windows of 5 tokens, 5 needed"):
        token_windows(fake_tokenizer, text, seqlen=5, windows=5)
    with pytest.raises(ValueError, match="seqlen"):
        token_windows(fake_tokenizer, text, seqlen=1)
    with pytest.raises(ValueError, match="windows"):
        token_windows(fake_tokenizer, text, windows=0)
    with pytest.raises(ValueError, match="0 windows"):
        token_windows(fake_tokenizer, "a b", seqlen=5)


def _tiny_llama(vocab: int = 40):
    config = transformers.LlamaConfig(
        vocab_size=vocab,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(config).eval()


def test_perplexity_equals_a_direct_float64_computation():
    model = _tiny_llama()
    windows = torch.randint(0, 40, (3, 9), generator=torch.Generator().manual_seed(1))
    nll = 0.0
    with torch.no_grad():
        for row in windows:
            logits = model(row[None]).logits[0].double()
            logp = torch.log_softmax(logits, dim=-1)
            nll -= sum(float(logp[t, row[t + 1]]) for t in range(len(row) - 1))
    result = perplexity(model, windows)
    assert result.tokens == 3 * 8 and result.windows == 3
    assert result.nll == pytest.approx(nll, rel=1e-5)
    assert result.value == pytest.approx(math.exp(nll / 24), rel=1e-5)
    assert perplexity(model, windows, batch_size=2).value == pytest.approx(result.value, rel=1e-5)
    assert not model.training
    with pytest.raises(ValueError, match="windows"):
        perplexity(model, windows[0])
    with pytest.raises(ValueError, match="batch_size"):
        perplexity(model, windows, batch_size=0)


def test_cli_eval_on_dense_and_sparse_directories(tmp_path, capsys):
    from fastprune.torch import save_sparse, sparsify

    folder = tmp_path / "llama"
    folder.mkdir()
    (folder / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", *WORDS]))
    tokenizer = word_tokenizer(folder / "vocab.txt")
    model = _tiny_llama(len(tokenizer))
    with torch.no_grad():
        for name, module in model.named_modules():
            if isinstance(module, torch.nn.Linear) and name != "lm_head":
                w = module.weight
                w[w.abs() < w.abs().median()] = 0
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    rng = np.random.default_rng(0)
    text = tmp_path / "text.txt"
    text.write_text(" ".join(rng.choice(WORDS, 200)))
    status = main(["eval", str(folder), "--text", str(text), "--seqlen", "16", "--json"])
    assert status == 0
    dense = json.loads(capsys.readouterr().out)
    windows = token_windows(tokenizer, text.read_text(), seqlen=16)
    assert dense["windows"] == windows.shape[0] >= 10
    assert dense["value"] == pytest.approx(perplexity(model, windows).value, rel=1e-6)

    sparsify(model, format="packed")
    sparse_dir = tmp_path / "sparse"
    save_sparse(model, sparse_dir)
    tokenizer.save_pretrained(sparse_dir)
    status = main(
        ["eval", str(sparse_dir), "--text", str(text), "--seqlen", "16", "--windows", "4"]
    )
    assert status == 0
    out = capsys.readouterr().out
    assert "over 4 windows of 16 tokens" in out
    assert main(["eval", str(folder), "--text", str(tmp_path / "missing.txt")]) == 1
    assert "missing.txt" in capsys.readouterr().err
    assert main(["eval", str(folder), "--text", str(text), "--seqlen", "1"]) == 1
    assert "--seqlen" in capsys.readouterr().err
