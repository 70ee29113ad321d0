"""Which text a pruned decoder is good at: SmolLM2-135M pruned on STS-B, measured on held-out
STS-B and on WikiText-2.

    python -m bench.decoder_domains [--calib-lines 256] [--wiki-windows 4] [--dev-windows 8]

SparseGPT and Wanda at 50 % (``fastprune prune`` with its defaults) calibrated on the first
``--calib-lines`` lines of STS-B train pairs (8 per line, as ``bench.decoder`` builds them), then
the perplexity of the dense and pruned models on windows of 1,024 tokens of two texts neither was
calibrated on: STS-B dev (sentences like the calibration text, built the same way) and WikiText-2
test (encyclopedia prose). SparseGPT fits the weights to the calibration tokens, Wanda only
reads each input's norm; the table shows what that does on text like and unlike the calibration
text. Needs what ``bench.decoder`` needs.
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path
from typing import Any

from .decoder import (
    DATA,
    EVAL_SEQLEN,
    WIKITEXT_TEST,
    calibration_lines,
    load,
    missing,
    run_cli,
    smollm2_dir,
)

STSB_DEV = DATA / "stsb-en-dev.csv"


def stsb_dev_text(pairs_per_line: int) -> str:
    """STS-B dev pairs, `pairs_per_line` joined per line, lines joined by newlines."""
    with STSB_DEV.open(newline="", encoding="utf-8") as handle:
        pairs = [f"{a} {b}" for a, b, _ in csv.reader(handle)]
    return "\n".join(
        " ".join(pairs[i : i + pairs_per_line]) for i in range(0, len(pairs), pairs_per_line)
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.decoder_domains", description=__doc__)
    parser.add_argument("--cache", type=Path, default=Path("build/bench-decoder"))
    parser.add_argument("--calib-lines", type=int, default=256)
    parser.add_argument("--wiki-windows", type=int, default=4)
    parser.add_argument("--dev-windows", type=int, default=8)
    parser.add_argument("--methods", nargs="+", default=["wanda", "sparsegpt"])
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    absent = missing() + ([] if STSB_DEV.is_file() else [STSB_DEV.name])
    if absent:
        parser.error(f"needs {', '.join(absent)}")
    import transformers

    from fastprune.torch.evaluate import perplexity, token_windows

    args.cache.mkdir(parents=True, exist_ok=True)
    folder = smollm2_dir(args.cache)
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    texts = {
        "STS-B dev": token_windows(
            tokenizer, stsb_dev_text(8), seqlen=EVAL_SEQLEN, windows=args.dev_windows
        ),
        "WikiText-2 test": token_windows(
            tokenizer,
            WIKITEXT_TEST.read_text(encoding="utf-8"),
            seqlen=EVAL_SEQLEN,
            windows=args.wiki_windows,
        ),
    }
    calib = args.cache / f"stsb-train-{args.calib_lines}.txt"
    calib.write_text("\n".join(calibration_lines(args.calib_lines, 8)) + "\n")
    models: dict[str, Path] = {"dense": folder}
    tokens: Any = None
    for method in args.methods:
        out = args.cache / f"domains-{method}-{args.calib_lines}"
        run = run_cli(folder, calib, out, method, "unstructured", [])
        tokens = run["manifest"]["calibration"]["text"]["text_tokens"]
        models[f"{method} 50 %"] = out
    rows: dict[str, dict[str, float]] = {}
    for name, path in models.items():
        model = load(path)
        rows[name] = {text: perplexity(model, windows).value for text, windows in texts.items()}
        print(name, rows[name], flush=True)
    print(
        f"calibration: STS-B train, {args.calib_lines} lines of 8 pairs ({tokens} tokens); "
        f"evaluation: {args.dev_windows} windows of STS-B dev, {args.wiki_windows} of WikiText-2 "
        f"test, {EVAL_SEQLEN} tokens each"
    )
    print("| model | STS-B dev | vs dense | WikiText-2 test | vs dense |")
    print("|---|---:|---:|---:|---:|")
    dense = rows["dense"]
    for name, row in rows.items():
        dev, wiki = row["STS-B dev"], row["WikiText-2 test"]
        print(
            f"| {name} | {dev:.2f} | {dev / dense['STS-B dev']:.2f}x | {wiki:.2f} | "
            f"{wiki / dense['WikiText-2 test']:.2f}x |"
        )
    if args.json:
        args.json.write_text(json.dumps({"tokens": tokens, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
