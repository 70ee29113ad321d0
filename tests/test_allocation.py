"""Non-uniform sparsity: fastprune.allocation (OWL) against float64 NumPy references, and
fastprune.torch.owl_sparsity / ``prune --sparsity-profile owl`` on a tiny decoder."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastprune.allocation import outlier_ratio, owl
from fastprune.cli import main

torch_needed = pytest.mark.skipif(
    any(importlib.util.find_spec(m) is None for m in ("torch", "transformers", "tokenizers")),
    reason="needs torch, transformers and tokenizers",
)


def owl_reference(ratios, target, lam):
    """OWL as its authors write it: ratios scaled onto [0, 2 lam], centred on the density."""
    r = np.asarray(ratios, np.float64)
    scaled = (r - r.min()) * (1 / (r.max() - r.min()) * lam * 2)
    density = scaled - scaled.mean() + (1 - target)
    return 1 - density


def test_outlier_ratio_counts_scores_above_m_times_the_mean():
    rng = np.random.default_rng(0)
    scores = rng.standard_exponential((40, 30)).astype(np.float32) ** 3
    for m in (1.0, 3.0, 5.0):
        mean = scores.astype(np.float64).mean()
        expected = sum(1 for s in scores.ravel() if float(s) > m * mean) / scores.size
        assert outlier_ratio(scores, m) == pytest.approx(expected, abs=0)
    assert outlier_ratio(np.ones(10), 1.0) == 0.0
    assert outlier_ratio(np.array([0.0, 0.0, 9.0]), 2.0) == pytest.approx(1 / 3)


@pytest.mark.parametrize(
    ("scores", "m", "error", "match"),
    [
        (np.zeros(0), 5.0, ValueError, "empty"),
        (np.array([1.0, np.nan]), 5.0, ValueError, "finite"),
        (np.array([1.0, -1.0]), 5.0, ValueError, "non-negative"),
        (np.array([1.0]), 0.0, ValueError, "m"),
        (np.array([1.0]), float("inf"), ValueError, "m"),
        (np.array(["a"]), 5.0, TypeError, "numeric"),
    ],
)
def test_outlier_ratio_errors(scores, m, error, match):
    with pytest.raises(error, match=match):
        outlier_ratio(scores, m)


def test_owl_matches_the_reference_formula():
    rng = np.random.default_rng(1)
    for _ in range(20):
        ratios = rng.random(12) * 0.05
        target, lam = rng.uniform(0.3, 0.8), rng.uniform(0.0, 0.1)
        np.testing.assert_allclose(owl(ratios, target, lam), owl_reference(ratios, target, lam),
                                   rtol=0, atol=1e-12)  # fmt: skip


def test_owl_prunes_blocks_with_more_outliers_less():
    s = owl([0.01, 0.03, 0.02], 0.7, 0.08)
    assert s[1] < s[2] < s[0]
    assert s[0] - s[1] == pytest.approx(0.16)
    assert s.mean() == pytest.approx(0.7, abs=1e-12)


def test_equal_ratios_or_zero_lambda_are_uniform():
    np.testing.assert_array_equal(owl([0.02] * 5, 0.5, 0.08), np.full(5, 0.5))
    np.testing.assert_allclose(owl([0.01, 0.5, 0.2], 0.5, 0.0), np.full(3, 0.5), atol=1e-15)


def test_sizes_weight_the_mean():
    ratios, sizes = [0.01, 0.04, 0.02, 0.03], [100, 300, 50, 550]
    s = owl(ratios, 0.6, 0.1, sizes)
    assert float(np.dot(s, sizes) / np.sum(sizes)) == pytest.approx(0.6, abs=1e-12)
    spread = s.max() - s.min()
    assert spread == pytest.approx(0.2)


def test_a_block_pushed_past_a_bound_is_held_there_and_the_mean_kept():
    s = owl([0.0, 0.0, 0.0, 1.0], 0.05, 0.08)  # the last block would go to 0.05 - 0.12 < 0
    assert s[3] == 0.0
    assert s.mean() == pytest.approx(0.05, abs=1e-12)
    assert np.all(s[:3] == s[0])
    s = owl([1.0, 0.0], 0.95, 0.5)  # the second block would reach 0.95 + 0.5 >= 1
    assert s.max() < 1.0 and s.min() >= 0.0
    assert s.mean() == pytest.approx(0.95, abs=1e-9)


@settings(max_examples=200, deadline=None)
@given(
    ratios=st.lists(st.floats(0, 1), min_size=1, max_size=40),
    target=st.floats(0, 0.99),
    lam=st.floats(0, 0.99),
    data=st.data(),
)
def test_owl_properties(ratios, target, lam, data):
    sizes = data.draw(st.lists(st.integers(1, 10**6), min_size=len(ratios), max_size=len(ratios)))
    s = owl(ratios, target, lam, sizes)
    w = np.asarray(sizes, np.float64)
    assert np.all((s >= 0) & (s < 1))
    assert float(s @ w / w.sum()) == pytest.approx(target, abs=1e-9)
    order = np.argsort(ratios, kind="stable")
    assert np.all(np.diff(s[order]) <= 1e-12)  # more outliers, never more sparsity
    assert s.max() - s.min() <= 2 * lam + 1e-12


@pytest.mark.parametrize(
    ("args", "error", "match"),
    [
        (([0.1, 0.2], 1.0, 0.08), ValueError, "sparsity"),
        (([0.1, 0.2], 0.5, 1.0), ValueError, "lam"),
        (([0.1, 0.2], 0.5, -0.1), ValueError, "lam"),
        (([], 0.5, 0.08), ValueError, "outlier_ratios"),
        (([0.1, float("nan")], 0.5, 0.08), ValueError, "outlier_ratios"),
        (([0.1, 0.2], 0.5, 0.08, [1, 2, 3]), ValueError, "sizes"),
        (([0.1, 0.2], 0.5, 0.08, [1, 0]), ValueError, "sizes"),
    ],
)
def test_owl_errors(args, error, match):
    with pytest.raises(error, match=match):
        owl(*args)


def test_inputs_are_not_modified():
    ratios, sizes = np.array([0.3, 0.1, 0.2]), np.array([1.0, 2.0, 3.0])
    before = ratios.copy(), sizes.copy()
    owl(ratios, 0.5, 0.1, sizes)
    np.testing.assert_array_equal(ratios, before[0])
    np.testing.assert_array_equal(sizes, before[1])


# --- the torch layer and the CLI ------------------------------------------------------------


def _tiny_llama():
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=40,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():  # outliers that differ from block to block
        for i, layer in enumerate(model.model.layers):
            layer.mlp.down_proj.weight[:, : 4 * i] *= 20
    return model


@torch_needed
def test_owl_sparsity_measures_each_block_like_a_direct_computation():
    import torch

    from fastprune.torch import owl_sparsity

    model = _tiny_llama()
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 40, (3, 10), generator=generator)
    mask = torch.ones(3, 10, dtype=torch.long)
    mask[1, 6:] = 0  # padding: left out of the statistics
    batches = [{"input_ids": ids, "attention_mask": mask}]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    profile = owl_sparsity(model, batches, 0.7, m=3.0, lam=0.08)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])

    inputs: dict[str, torch.Tensor] = {}
    linears = {
        n: mod
        for n, mod in model.named_modules()
        if isinstance(mod, torch.nn.Linear) and "layers" in n
    }
    handles = [
        mod.register_forward_pre_hook(lambda mod, a, n=n: inputs.__setitem__(n, a[0].detach()))
        for n, mod in linears.items()
    ]
    with torch.no_grad():
        model(input_ids=ids, attention_mask=mask, use_cache=False)
    for h in handles:
        h.remove()
    keep = mask.bool()
    ratios = []
    for block in range(3):
        scores = []
        for n, mod in linears.items():
            if not n.startswith(f"model.layers.{block}."):
                continue
            x = inputs[n][keep].double()
            norm = x.pow(2).mean(0).sqrt()
            scores.append((mod.weight.double().abs() * norm).reshape(-1))
        s = torch.cat(scores)
        ratios.append(float((s > 3.0 * s.mean()).double().mean()))
    np.testing.assert_allclose(profile.outlier_ratios, ratios, rtol=0, atol=1e-12)
    np.testing.assert_allclose(
        profile.block_sparsities, owl_reference(ratios, 0.7, 0.08), atol=1e-12
    )
    assert set(profile.layers) == set(linears)
    assert profile.layers["model.layers.2.mlp.up_proj"] == profile.block_sparsities[2]
    sizes = {n: linears[n].weight.numel() for n in linears}
    mean = sum(profile.layers[n] * sizes[n] for n in linears) / sum(sizes.values())
    assert mean == pytest.approx(0.7, abs=1e-12)


@torch_needed
def test_owl_sparsity_errors():
    import torch

    from fastprune.torch import owl_sparsity

    model = _tiny_llama()
    with pytest.raises(ValueError, match="no calibration token"):
        owl_sparsity(model, [], 0.5)
    with pytest.raises(ValueError, match="no layer"):
        owl_sparsity(model, [torch.zeros(1, 3, dtype=torch.long)], 0.5, ignore=["*"])
    with pytest.raises(ValueError, match="sparsity"):
        owl_sparsity(model, [torch.zeros(1, 3, dtype=torch.long)], 1.5)


@torch_needed
def test_cli_sparsity_profile_owl(tmp_path, capsys):
    from _torch_toy import word_tokenizer

    folder = tmp_path / "llama"
    folder.mkdir()
    words = ["the", "cat", "sat", "on", "mat", "dog", "ran", "in", "park", "today"]
    (folder / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", *words]))
    tokenizer = word_tokenizer(folder / "vocab.txt")
    model = _tiny_llama()
    model.resize_token_embeddings(len(tokenizer))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    out = tmp_path / "out"
    status = main([
        "prune", str(folder), "--out", str(out), "--method", "wanda", "--sparsity", "0.6",
        "--sparsity-profile", "owl", "--owl-m", "3", "--samples", "4", "--seqlen", "8", "--quiet",
    ])  # fmt: skip
    assert status == 0
    manifest = json.loads((out / "manifest.json").read_text())
    profile = manifest["sparsity_profile"]
    assert profile["kind"] == "owl" and profile["m"] == 3.0
    assert len(profile["block_sparsities"]) == 3
    report = json.loads((out / "prune_report.json").read_text())
    for layer in report["layers"]:
        block = int(layer["name"].split(".")[2])
        # each row prunes a whole number of its (32 or 64) weights
        assert layer["sparsity"] == pytest.approx(profile["block_sparsities"][block], abs=1 / 32)
    capsys.readouterr()
    status = main([
        "prune", str(folder), "--out", str(tmp_path / "nm"), "--pattern", "2:4",
        "--sparsity-profile", "owl", "--quiet",
    ])  # fmt: skip
    assert status == 1
    assert "N:M" in capsys.readouterr().err
