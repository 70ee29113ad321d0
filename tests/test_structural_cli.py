"""`fastprune shrink` on a tiny Llama (GQA) directory: a stock-loadable smaller model + report."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from _torch_toy import word_tokenizer  # noqa: E402
from fastprune.cli import main  # noqa: E402

WORDS = [
    "the",
    "a",
    "model",
    "is",
    "small",
    "fast",
    "dense",
    "pruning",
    "removes",
    "heads",
    "blocks",
    "and",
    "channels",
]


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory: Any) -> Path:
    folder = tmp_path_factory.mktemp("llama")
    vocab = folder / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n")
    tokenizer = word_tokenizer(vocab)
    config = transformers.LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        pad_token_id=0,
    )
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def calib(tmp_path: Path) -> str:
    path = tmp_path / "calib.txt"
    path.write_text("\n".join(" ".join(WORDS[i:] + WORDS[:i]) for i in range(8)) + "\n")
    return str(path)


def test_shrink_writes_a_stock_loadable_smaller_model(
    llama_dir: Path, tmp_path: Path, capsys: Any
) -> None:
    out = tmp_path / "out"
    args = [str(llama_dir), "--out", str(out), "--calib", calib(tmp_path), "--quiet"]
    args += ["--ffn", "32", "--kv-heads", "1", "--drop-blocks", "1", "--json"]
    assert main(["shrink", *args]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["after"]["parameters"] < report["before"]["parameters"]
    assert report["after"]["flops_per_token"] < report["before"]["flops_per_token"]
    assert report["removed"]["blocks"] and len(report["removed"]["blocks"]) == 1
    assert report["after"]["latency_s"] > 0 and report["ratios"]["speedup"] > 0
    saved = json.loads((out / "shrink_report.json").read_text())
    assert saved["manifest"]["options"]["ffn"] == 32
    assert json.loads((out / "manifest.json").read_text())["command"] == "shrink"
    model = transformers.AutoModelForCausalLM.from_pretrained(out)
    cfg = model.config
    assert (cfg.num_hidden_layers, cfg.intermediate_size, cfg.num_key_value_heads) == (3, 32, 1)
    assert cfg.num_attention_heads == 2 and cfg.head_dim == 8
    assert sum(p.numel() for p in model.parameters()) == report["after"]["parameters"]


def test_shrink_errors_are_one_line(llama_dir: Path, tmp_path: Path, capsys: Any) -> None:
    base = [str(llama_dir), "--calib", calib(tmp_path), "--quiet"]
    assert main(["shrink", *base, "--out", str(tmp_path / "a"), "--heads", "3"]) == 1
    assert "spread evenly" in capsys.readouterr().err
    assert main(["shrink", *base, "--out", str(tmp_path / "b"), "--drop-blocks", "4"]) == 1
    assert "no model" in capsys.readouterr().err
