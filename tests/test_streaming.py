"""fastprune.torch.prune_streaming and ``fastprune prune --max-memory / --resume``: a sharded
tiny Llama (and GPT-2) pruned block by block from disk gives the weights `prune_model` gives it
in memory."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.skipif(
    any(importlib.util.find_spec(m) is None for m in ("torch", "transformers", "safetensors")),
    reason="needs torch, transformers and safetensors",
)

VOCAB = 96
LAYERS = 4


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    folder = tmp_path_factory.mktemp("llama")
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=LAYERS,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    model.save_pretrained(folder, safe_serialization=True, max_shard_size="40KB")
    assert len(list(folder.glob("*.safetensors"))) > 2  # sharded, blocks split across files
    return folder


@pytest.fixture(scope="module")
def batches() -> list[dict]:
    import torch

    g = torch.Generator().manual_seed(1)
    made = []
    for _ in range(3):
        ids = torch.randint(0, VOCAB, (2, 12), generator=g)
        made.append({"input_ids": ids, "attention_mask": torch.ones_like(ids)})
    made[1]["attention_mask"][0, 8:] = 0  # padding stays out of the statistics
    return made


def _in_memory(folder: Path, batches: list[dict], **options):
    from transformers import AutoModelForCausalLM

    from fastprune.torch import prune_model

    model = AutoModelForCausalLM.from_pretrained(folder)
    report = prune_model(model, batches, progress=False, **options)
    return model.state_dict(), report


def _written(folder: Path) -> dict:
    from safetensors.torch import load_file

    index = json.loads((folder / "model.safetensors.index.json").read_text())
    files = set(index["weight_map"].values())
    tensors = {}
    for name in files:
        tensors.update(load_file(folder / name))
    assert set(index["weight_map"]) == set(tensors)
    return tensors


def _assert_same(a: dict, b: dict) -> None:
    import torch

    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def _stream(llama_dir, out, batches, **options):
    from fastprune.torch import prune_streaming

    return prune_streaming(llama_dir, out, batches, progress=False, **options)


@pytest.mark.parametrize("method", ["sparsegpt", "wanda"])
def test_streaming_equals_prune_model_in_memory(llama_dir, batches, tmp_path, method):
    from transformers import AutoModelForCausalLM

    from fastprune._files import INCOMPLETE
    from fastprune.torch.streaming import PROGRESS_FILE

    expected, expected_report = _in_memory(llama_dir, batches, method=method)
    out = tmp_path / "pruned"
    report = _stream(llama_dir, out, batches, method=method, max_memory="16GiB")
    # the same per-layer step on the same inputs, in the same order: bit-identical weights
    _assert_same(_written(out), expected)
    loaded = AutoModelForCausalLM.from_pretrained(out)
    _assert_same(loaded.state_dict(), expected)
    assert [r.name for r in report.layers] == [r.name for r in expected_report.layers]
    assert [r.error for r in report.layers] == [r.error for r in expected_report.layers]
    assert len(report.layers) == 7 * LAYERS
    for row in report.layers:
        weight = loaded.get_submodule(row.name).weight.detach().numpy()
        assert np.count_nonzero(weight == 0) == weight.size // 2
    assert not (out / INCOMPLETE).exists()
    assert not (out / PROGRESS_FILE).exists()
    assert (out / "config.json").is_file()
    memory = report.manifest["memory"]
    assert memory["max_memory"] == 16 * 2**30
    assert memory["activations"] == "memory"
    assert 0 < memory["peak_rss"] <= memory["max_memory"]
    assert json.loads((out / "prune_report.json").read_text())["manifest"]["memory"] == memory


def test_a_gpt2_directory_streams_like_prune_model(batches, tmp_path):
    """Conv1D projections (stored transposed), learned positions, a head tied to the input
    embeddings (not stored): the same weights as in memory."""
    import torch
    from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel

    config = GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=3, n_head=4, n_positions=64)
    config.bos_token_id = config.eos_token_id = 0
    torch.manual_seed(0)
    GPT2LMHeadModel(config).save_pretrained(tmp_path / "gpt2", max_shard_size="30KB")
    expected, _ = _in_memory(tmp_path / "gpt2", batches, method="sparsegpt")
    report = _stream(tmp_path / "gpt2", tmp_path / "out", batches, method="sparsegpt")
    assert len(report.layers) == 4 * 3
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    _assert_same(loaded.state_dict(), expected)


@pytest.mark.parametrize("family", ["Mistral", "Qwen2"])
def test_llama_like_families_stream_like_prune_model(family, batches, tmp_path):
    import torch
    import transformers

    config = getattr(transformers, f"{family}Config")(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=64,
        pad_token_id=0, bos_token_id=0, eos_token_id=0,
    )  # fmt: skip
    torch.manual_seed(0)
    getattr(transformers, f"{family}ForCausalLM")(config).save_pretrained(tmp_path / "model")
    expected, _ = _in_memory(tmp_path / "model", batches, method="sparsegpt")
    report = _stream(tmp_path / "model", tmp_path / "out", batches, method="sparsegpt")
    assert len(report.layers) == 7 * 2
    loaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    _assert_same(loaded.state_dict(), expected)


def test_magnitude_pruning_streams_without_a_forward_pass(llama_dir, tmp_path, monkeypatch):
    import fastprune.torch.streaming as streaming

    def no_forward(*args, **kwargs):
        raise AssertionError("magnitude pruning ran a forward pass")

    expected, _ = _in_memory(llama_dir, None, method="magnitude")
    monkeypatch.setattr(streaming, "capture_block_inputs", no_forward)
    monkeypatch.setattr(streaming, "run_block", no_forward)
    monkeypatch.setattr(streaming, "run_calibration_pass", no_forward)
    report = _stream(llama_dir, tmp_path / "out", None, method="magnitude")
    assert len(report.layers) == 7 * LAYERS
    assert all(row.error is None and row.tokens == 0 for row in report.layers)
    _assert_same(_written(tmp_path / "out"), expected)
    with pytest.raises(ValueError, match="calibration_batches: method 'wanda' needs"):
        _stream(llama_dir, tmp_path / "out2", None, method="wanda")


def test_activations_on_disk_give_the_same_weights(llama_dir, batches, tmp_path):
    _stream(llama_dir, tmp_path / "memory", batches, method="sparsegpt")
    spill = tmp_path / "spill"
    report = _stream(
        llama_dir, tmp_path / "disk", batches, method="sparsegpt", activations_dir=spill
    )
    assert report.manifest["memory"]["activations"] == "disk"
    _assert_same(_written(tmp_path / "disk"), _written(tmp_path / "memory"))
    assert list(spill.iterdir()) == []  # the activation files are removed


def test_activations_go_to_disk_when_they_do_not_fit(llama_dir, batches, tmp_path, monkeypatch):
    from fastprune.torch import streaming

    monkeypatch.setattr(streaming, "_resident", lambda: 10**8)  # the plan no longer varies
    fits = _stream(llama_dir, tmp_path / "fits", batches, max_memory=10**10)
    planned = fits.manifest["memory"]["planned"]
    assert fits.manifest["memory"]["activations"] == "memory"
    spilled = _stream(llama_dir, tmp_path / "spilled", batches, max_memory=planned - 1)
    assert spilled.manifest["memory"]["activations"] == "disk"
    assert spilled.manifest["memory"]["planned"] < planned
    _assert_same(_written(tmp_path / "spilled"), _written(tmp_path / "fits"))
    assert not list((tmp_path / "spilled").glob(".fastprune-activations-*"))


def test_the_plan_holds_the_refits_arrays(llama_dir, batches, tmp_path, monkeypatch):
    """Refitting SparseGPT's kept weights needs float64 arrays the size of the largest layer and
    the inverse of its Hessian: the plan grows by them, and only when the refit runs."""
    from fastprune.torch import streaming

    monkeypatch.setattr(streaming, "_resident", lambda: 10**8)
    planned = {
        (method, refit): _stream(
            llama_dir,
            tmp_path / f"{method}-{refit}",
            batches,
            method=method,
            refit=refit,
            max_memory=10**10,
        ).manifest["memory"]["planned"]
        for method, refit in (("sparsegpt", False), ("sparsegpt", True), ("wanda", True))
    }
    largest, width = 64 * 32, 64  # the feed-forward's down projection: 32 x 64, 64 inputs
    extra = streaming.REFIT_BYTES_PER_WEIGHT * largest + streaming.REFIT_BYTES_PER_WIDTH2 * width**2
    assert planned["sparsegpt", True] - planned["sparsegpt", False] == extra
    assert planned["wanda", True] == planned["sparsegpt", False]


class _Stop(Exception):
    pass


def _stop_after(block: int):
    def on_block(index: int) -> None:
        if index == block:
            raise _Stop

    return on_block


def test_an_interrupted_run_resumes_to_the_same_result(llama_dir, batches, tmp_path):
    from fastprune._files import INCOMPLETE
    from fastprune.torch.streaming import PROGRESS_FILE

    whole = _stream(llama_dir, tmp_path / "whole", batches, method="sparsegpt")
    out = tmp_path / "stopped"
    with pytest.raises(_Stop):
        _stream(llama_dir, out, batches, method="sparsegpt", on_block=_stop_after(1))
    assert (out / INCOMPLETE).exists()  # a half-written checkpoint never looks complete
    assert not (out / "model.safetensors.index.json").exists()
    assert json.loads((out / PROGRESS_FILE).read_text())["finished_blocks"] == 2
    seen: list[int] = []
    resumed = _stream(
        llama_dir, out, batches, method="sparsegpt", resume=True, on_block=seen.append
    )
    assert seen == [2, 3]  # only the blocks left were pruned
    assert not (out / INCOMPLETE).exists()
    _assert_same(_written(out), _written(tmp_path / "whole"))
    assert resumed.manifest["resumed_after_blocks"] == 2
    assert [(r.name, r.error, r.group) for r in resumed.layers] == [
        (r.name, r.error, r.group) for r in whole.layers
    ]


def test_resume_needs_the_same_run(llama_dir, batches, tmp_path):
    out = tmp_path / "stopped"
    with pytest.raises(ValueError, match=r"resume: .* holds no stopped streaming run"):
        _stream(llama_dir, out, batches, resume=True)
    with pytest.raises(_Stop):
        _stream(llama_dir, out, batches, method="wanda", on_block=_stop_after(0))
    with pytest.raises(ValueError, match=r"resume: the run .* had another model"):
        _stream(llama_dir, out, batches, method="wanda", sparsity=0.25, resume=True)
    with pytest.raises(ValueError, match=r"resume: the run .* had another model"):
        _stream(llama_dir, out, batches[:2], method="wanda", resume=True)


def test_a_budget_below_one_block_is_refused(llama_dir, batches, tmp_path):
    out = tmp_path / "pruned"
    with pytest.raises(ValueError, match="max_memory: 1000000 bytes is less than one block needs"):
        _stream(llama_dir, out, batches, max_memory="1MB")
    assert not out.exists()  # refused before anything is written
    with pytest.raises(ValueError, match="max_memory: expected a size"):
        _stream(llama_dir, out, batches, max_memory="lots")


def test_parse_memory():
    from fastprune.torch.streaming import parse_memory

    assert parse_memory("12GB") == 12 * 10**9
    assert parse_memory("8 GiB") == 8 * 2**30
    assert parse_memory("1.5mib") == int(1.5 * 2**20)
    assert parse_memory(4096) == 4096
    assert parse_memory("2e9") == 2 * 10**9
    for bad in ("0", "-1GB", "12 parsecs", "", True, 1.5):
        with pytest.raises(ValueError, match="max_memory"):
            parse_memory(bad)


def test_a_model_that_does_not_generate_text_is_refused(tmp_path, batches):
    import torch
    from transformers import BertConfig, BertModel

    config = BertConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
    )
    torch.manual_seed(0)
    BertModel(config).save_pretrained(tmp_path / "bert")
    with pytest.raises(ValueError, match="model_dir: BertModel is not a causal language model"):
        _stream(tmp_path / "bert", tmp_path / "out", batches)


def test_experts_kept_as_3d_tensors_are_refused_by_name(tmp_path, batches):
    import torch
    from transformers import MixtralConfig, MixtralForCausalLM

    config = MixtralConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        num_local_experts=4,
    )
    torch.manual_seed(0)
    MixtralForCausalLM(config).save_pretrained(tmp_path / "moe")
    with pytest.raises(ValueError, match=r"model\.layers\.0\.mlp\.experts keeps mixture-of"):
        _stream(tmp_path / "moe", tmp_path / "out", batches)


# --- the CLI ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def llama_with_tokenizer(tmp_path_factory, llama_dir) -> Path:
    import shutil

    from _torch_toy import word_tokenizer

    folder = tmp_path_factory.mktemp("llama_tok")
    for item in llama_dir.iterdir():
        shutil.copy2(item, folder / item.name)
    words = [f"w{i}" for i in range(VOCAB - 5)]
    vocab = folder / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]) + "\n")
    word_tokenizer(vocab).save_pretrained(folder)
    return folder


def _cli(capsys, *argv: str) -> tuple[int, str, str]:
    from fastprune.cli import main

    status = main(list(argv))
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def _prune_args(model: Path, out: Path, calib: Path, *extra: str) -> list[str]:
    return [
        "prune", str(model), "--out", str(out), "--calib", str(calib), "--method", "wanda",
        "--samples", "4", "--seqlen", "16", "--quiet", *extra,
    ]  # fmt: skip


def test_cli_max_memory_and_resume(llama_with_tokenizer, tmp_path, capsys, monkeypatch):
    from fastprune._files import INCOMPLETE
    from fastprune.torch import streaming

    calib = tmp_path / "calib.txt"
    calib.write_text(" ".join(f"w{i % 80}" for i in range(400)) + "\n")
    whole = tmp_path / "whole"
    in_memory = tmp_path / "in_memory"
    status, out, _ = _cli(
        capsys, *_prune_args(llama_with_tokenizer, whole, calib, "--max-memory", "16GiB")
    )
    assert status == 0, out
    assert "block by block; peak memory" in out
    manifest = json.loads((whole / "manifest.json").read_text())
    assert manifest["memory"]["max_memory"] == 16 * 2**30
    assert manifest["model"]["class"] == "LlamaForCausalLM"
    assert manifest["calibration"]["text"]["packing"] == "pack"
    assert manifest["calibration"]["sha256"]
    status, _, _ = _cli(capsys, *_prune_args(llama_with_tokenizer, in_memory, calib))
    assert status == 0
    _assert_same(_written(whole), _stored(in_memory))

    # stopped after the second block, then resumed: the same files
    stopped = tmp_path / "stopped"
    save = streaming._save
    calls: list[Path] = []

    def failing_save(path, tensors, metadata=None):
        calls.append(path)
        if len(calls) == 3:
            raise KeyboardInterrupt
        save(path, tensors, metadata)

    monkeypatch.setattr(streaming, "_save", failing_save)
    with pytest.raises(KeyboardInterrupt):
        _cli(capsys, *_prune_args(llama_with_tokenizer, stopped, calib, "--max-memory", "16GiB"))
    monkeypatch.setattr(streaming, "_save", save)
    assert (stopped / INCOMPLETE).exists()
    status, _, err = _cli(
        capsys, *_prune_args(llama_with_tokenizer, stopped, calib, "--max-memory", "16GiB")
    )
    assert status == 1 and "exists and is not empty" in err
    status, out, _ = _cli(capsys, *_prune_args(llama_with_tokenizer, stopped, calib, "--resume"))
    assert status == 0, out
    assert not (stopped / INCOMPLETE).exists()
    _assert_same(_written(stopped), _written(whole))
    assert json.loads((stopped / "manifest.json").read_text())["resumed_after_blocks"] == 2


def _stored(folder: Path) -> dict:
    from safetensors.torch import load_file

    tensors = {}
    for f in folder.glob("*.safetensors"):
        tensors.update(load_file(f))
    return tensors


def test_cli_refuses_what_streaming_cannot_do(llama_with_tokenizer, tmp_path, capsys):
    calib = tmp_path / "calib.txt"
    calib.write_text("w1 w2 w3\n")
    out = tmp_path / "out"
    for extra, said in (
        (("--max-memory", "lots"), "--max-memory: expected a size"),
        (("--max-memory", "1MB"), "max_memory: 1000000 bytes is less than one block needs"),
        (("--max-memory", "8GB", "--save-format", "sparse"), "cannot take --save-format sparse"),
        (("--resume", "--no-sequential"), "cannot take --no-sequential"),
        (("--resume",), "holds no stopped streaming run"),
    ):
        status, _, err = _cli(capsys, *_prune_args(llama_with_tokenizer, out, calib, *extra))
        assert status == 1, extra
        assert said in err, (extra, err)
