"""Sparse checkpoints: PackedLinear in fastprune.io, save_sparse / load_sparse, and the CLI's
``prune --save-format sparse`` and ``generate``."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

import fastprune as fp
from fastprune.cli import main

torch_needed = pytest.mark.skipif(
    any(importlib.util.find_spec(m) is None for m in ("torch", "transformers", "tokenizers")),
    reason="needs torch, transformers and tokenizers",
)


def _pruned(rows: int, cols: int, keep: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((rows, cols)).astype(np.float32)
    w[rng.random((rows, cols)) >= keep] = 0
    return w


# --- PackedLinear in safetensors (no torch) -------------------------------------------------


@pytest.mark.parametrize("layout", ["bitmask", "indices"])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_packed_linear_round_trips_through_io(tmp_path, dtype, layout):
    w = _pruned(7, 37, 0.3, 0)
    w[2] = 0  # an empty row
    packed = fp.PackedLinear.from_dense(w, dtype, layout)
    path = tmp_path / "p.safetensors"
    fp.save(path, {"layer.weight": packed, "layer.bias": np.arange(7, dtype=np.float32)})
    back = fp.load(path)
    loaded = back["layer.weight"]
    assert isinstance(loaded, fp.PackedLinear)
    assert loaded.shape == (7, 37)
    assert loaded.dtype == dtype
    assert loaded.layout == layout
    np.testing.assert_array_equal(loaded.to_dense(), packed.to_dense())
    np.testing.assert_array_equal(back["layer.bias"], np.arange(7, dtype=np.float32))
    expected = w.astype(np.float64)
    if dtype == "bfloat16":  # the stored values are w rounded to bfloat16
        expected = packed.to_dense().astype(np.float64)
    np.testing.assert_array_equal(loaded.to_dense().astype(np.float64), expected)


def test_io_metadata_is_written_and_fastprune_keys_are_reserved(tmp_path):
    path = tmp_path / "m.safetensors"
    fp.save(path, {"a": np.zeros(2, np.float32)}, metadata={"note": "kept"})
    _, metadata = fp.io.read_header(path)
    assert metadata == {"note": "kept"}
    with pytest.raises(ValueError, match="metadata"):
        fp.save(path, {"a": np.zeros(2, np.float32)}, metadata={"fastprune.sparse": "{}"})
    with pytest.raises(TypeError, match="metadata"):
        fp.save(path, {"a": np.zeros(2, np.float32)}, metadata={"n": 1})  # type: ignore[dict-item]


def test_a_tampered_packed_tensor_is_refused(tmp_path):
    packed = fp.PackedLinear.from_dense(_pruned(4, 20, 0.5, 1))
    parts = dict(packed.components())
    parts["offsets"] = parts["offsets"].copy()
    parts["offsets"][2] += 1  # no longer matches the mask
    path = tmp_path / "bad.safetensors"
    fp.save(
        path, {"w.mask": parts["mask"], "w.offsets": parts["offsets"], "w.values": parts["values"]}
    )
    header = path.read_bytes()
    length = int.from_bytes(header[:8], "little")
    meta = json.loads(header[8 : 8 + length])
    meta["__metadata__"] = {
        "fastprune.sparse": json.dumps(
            {"w": {"format": "packed", "shape": [4, 20], "dtype": "float32"}}
        )
    }
    text = json.dumps(meta).encode()
    text += b" " * (-len(text) % 8)
    path.write_bytes(len(text).to_bytes(8, "little") + text + header[8 + length :])
    with pytest.raises(ValueError, match="sparse tensor 'w'"):
        fp.load(path)


# --- save_sparse / load_sparse ------------------------------------------------------------


def _tiny_llama(tie: bool = True):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=50,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        tie_word_embeddings=tie,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).eval()
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and name != "lm_head":
            w = module.weight.data
            w[w.abs() < w.abs().median()] = 0
    return model


@torch_needed
@pytest.mark.parametrize("tie", [True, False])
def test_save_and_load_sparse_give_the_same_model(tmp_path, tie):
    import torch

    from fastprune.torch import SparseLinear, densify, load_sparse, save_sparse, sparsify

    model = _tiny_llama(tie)
    original = {k: v.clone() for k, v in model.state_dict().items()}
    ids = torch.tensor([[1, 5, 7, 2, 9, 11]])
    with torch.no_grad():
        expected = model(ids).logits
    sparsify(model, format="packed")
    saved = save_sparse(model, tmp_path / "sparse")
    assert saved.packed_layers == 14
    assert saved.bytes < saved.dense_bytes
    assert saved.path.stat().st_size == saved.bytes
    loaded = load_sparse(tmp_path / "sparse")
    assert sum(isinstance(m, SparseLinear) for m in loaded.modules()) == 14
    assert (loaded.lm_head.weight is loaded.model.embed_tokens.weight) == tie
    with torch.no_grad():
        got = loaded(ids).logits
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    densify(loaded)
    for key, value in loaded.state_dict().items():
        assert torch.equal(value, original[key]), key


@torch_needed
def test_load_sparse_into_a_given_model_and_bfloat16_weights(tmp_path):
    import torch
    from torch import nn

    from fastprune.torch import SparseLinear, load_sparse, save_sparse, sparsify

    def make() -> nn.Module:
        return nn.Sequential(nn.Linear(40, 24), nn.ReLU(), nn.Linear(24, 8, bias=False))

    torch.manual_seed(1)
    model = make().to(torch.bfloat16)
    for layer in (model[0], model[2]):
        w = layer.weight.data
        w[w.abs() < w.abs().float().quantile(0.7).to(w.dtype)] = 0
    x = torch.randn(3, 40).to(torch.bfloat16)
    with torch.no_grad():
        expected = model(x)
    sparsify(model, format="packed")
    save_sparse(model, tmp_path)
    assert not (tmp_path / "config.json").exists()
    with pytest.raises(FileNotFoundError, match="pass `model`"):
        load_sparse(tmp_path)
    loaded = load_sparse(tmp_path, make().to(torch.bfloat16))
    assert isinstance(loaded[0], SparseLinear) and loaded[0].weight_dtype == torch.bfloat16
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), expected)
    with pytest.raises(ValueError, match="shape"):
        load_sparse(tmp_path, nn.Sequential(nn.Linear(40, 16), nn.ReLU(), nn.Linear(16, 8)))
    with pytest.raises(ValueError, match="not the weight of a Linear"):
        load_sparse(tmp_path, nn.Sequential(nn.Identity(), nn.ReLU(), nn.Linear(24, 8)))


@torch_needed
def test_load_sparse_takes_the_index_layout(tmp_path):
    """A file whose packed weights are in the index layout loads into SparseLinear (which
    holds the bitmask layout) with the same products."""
    import torch
    from torch import nn

    from fastprune.torch import SparseLinear, load_sparse, save_sparse, sparsify

    def make() -> nn.Module:
        return nn.Sequential(nn.Linear(40, 24), nn.ReLU(), nn.Linear(24, 8))

    torch.manual_seed(2)
    model = make()
    for layer in (model[0], model[2]):
        w = layer.weight.data
        w[w.abs() < w.abs().quantile(0.9)] = 0
    x = torch.randn(3, 40)
    with torch.no_grad():
        expected = model(x)
    sparsify(model, format="packed")
    save_sparse(model, tmp_path)
    path = tmp_path / "model.sparse.safetensors"
    tensors = fp.load(path)
    _, metadata = fp.io.read_header(path)
    metadata.pop("fastprune.sparse", None)
    indexed = {
        name: t.with_layout("indices") if isinstance(t, fp.PackedLinear) else t
        for name, t in tensors.items()
    }
    assert sum(isinstance(t, fp.PackedLinear) for t in indexed.values()) == 2
    fp.save(path, indexed, metadata=metadata)
    assert all(
        t.layout == "indices" for t in fp.load(path).values() if isinstance(t, fp.PackedLinear)
    )
    loaded = load_sparse(tmp_path, make())
    assert isinstance(loaded[0], SparseLinear) and isinstance(loaded[2], SparseLinear)
    assert loaded[0].layout == loaded[2].layout == "indices"
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), expected)


@torch_needed
def test_load_sparse_errors(tmp_path):
    from fastprune.torch import load_sparse, save_sparse

    with pytest.raises(FileNotFoundError, match=r"model\.sparse\.safetensors"):
        load_sparse(tmp_path)
    fp.save(tmp_path / "model.sparse.safetensors", {"a": np.zeros(2, np.float32)})
    with pytest.raises(ValueError, match="not written by save_sparse"):
        load_sparse(tmp_path, _tiny_llama())
    with pytest.raises(TypeError, match="model"):
        save_sparse("not a model", tmp_path)


# --- the CLI: prune --save-format sparse, generate ------------------------------------------


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory) -> Path:
    from _torch_toy import word_tokenizer

    folder = tmp_path_factory.mktemp("llama")
    words = ["the", "cat", "sat", "on", "mat", "dog", "ran", "in", "park", "today", "a", "city"]
    vocab = folder / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]) + "\n")
    tokenizer = word_tokenizer(vocab)
    model = _tiny_llama()
    model.config.vocab_size = len(tokenizer)
    model.resize_token_embeddings(len(tokenizer))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def run(capsys, *argv: str) -> tuple[int, str, str]:
    status = main(list(argv))
    captured = capsys.readouterr()
    return status, captured.out, captured.err


@torch_needed
def test_prune_save_format_sparse_then_generate(llama_dir, tmp_path, capsys):
    out = tmp_path / "sparse"
    status, _, _ = run(
        capsys, "prune", str(llama_dir), "--out", str(out), "--method", "wanda", "--pattern",
        "2:4", "--samples", "4", "--seqlen", "8", "--save-format", "sparse", "--quiet",
    )  # fmt: skip
    assert status == 0
    assert (out / "model.sparse.safetensors").is_file()
    assert not (out / "model.safetensors").exists()
    assert (out / "tokenizer.json").is_file() or (out / "vocab.txt").is_file()
    saved = json.loads((out / "manifest.json").read_text())["saved"]
    assert saved["format"] == "sparse" and saved["packed_layers"] == 14
    assert saved["bytes"] < saved["dense_bytes"]

    dense_out = tmp_path / "dense"
    run(
        capsys, "prune", str(llama_dir), "--out", str(dense_out), "--method", "wanda",
        "--pattern", "2:4", "--samples", "4", "--seqlen", "8", "--quiet",
    )  # fmt: skip
    status, stdout, _ = run(
        capsys, "generate", str(out), "--prompt", "the cat", "--max-new-tokens", "6",
        "--compare-dense", "--rounds", "1", "--json",
    )  # fmt: skip
    assert status == 0
    sparse_report = json.loads(stdout)
    assert sparse_report["tokens"] == 6
    assert sparse_report["compare_dense"]["same_tokens"] is True
    status, stdout, _ = run(
        capsys, "generate", str(dense_out), "--prompt", "the cat", "--max-new-tokens", "6",
        "--json",
    )  # fmt: skip
    assert status == 0
    assert json.loads(stdout)["text"] == sparse_report["text"]


@torch_needed
def test_generate_errors(llama_dir, tmp_path, capsys):
    status, _, err = run(capsys, "generate", str(llama_dir), "--max-new-tokens", "0")
    assert status == 1 and "--max-new-tokens" in err
    status, _, err = run(capsys, "generate", str(llama_dir), "--compare-dense", "--rounds", "1")
    assert status == 1 and "no sparse layers" in err
    status, _, err = run(capsys, "generate", str(tmp_path))
    assert status == 1 and "config.json" in err


def test_the_core_package_imports_torch_only_for_save_sparse():
    import subprocess
    import sys

    code = (
        "import sys, fastprune\n"
        "assert 'torch' not in sys.modules, 'import fastprune loaded torch'\n"
        "save = fastprune.save_sparse\n"
        "from fastprune.torch import save_sparse\n"
        "assert save is save_sparse\n"
    )
    if importlib.util.find_spec("torch") is None:
        code = "import sys, fastprune\nassert 'torch' not in sys.modules\n"
    subprocess.run([sys.executable, "-c", code], check=True)
