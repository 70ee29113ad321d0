"""The CLI's commands that run a causal language model: ``generate``, ``eval`` and
``sample-text``.

    fastprune generate MODEL_DIR [--prompt TEXT] [--max-new-tokens N] [--compare-dense]
    fastprune eval MODEL_DIR --text FILE [--seqlen 1024] [--windows N]
    fastprune sample-text MODEL_DIR --out FILE [--sequences 16] [--tokens 1024] [--seed 0]

``generate`` and ``eval`` read a dense model directory or a sparse one written by ``fastprune
prune --save-format sparse`` (its packed layers run as they are stored); ``sample-text`` writes
text the model samples itself, for ``fastprune prune --calib`` when no text like the model's own
is at hand.
"""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path
from typing import Any

import fastprune as fp

from .cli import CommandError, _check_positive, _require_torch


def add_parsers(commands: Any) -> None:
    """Adds ``generate``, ``eval`` and ``sample-text`` to the CLI's subcommands."""
    generate = commands.add_parser(
        "generate",
        help="greedy decoding with a dense or sparse causal LM directory, with tokens/s",
        description="Decode a prompt greedily on the CPU and time it (prefill and decoding "
        "apart). A directory written with --save-format sparse runs its packed layers.",
    )
    generate.add_argument("model_dir", help="model directory (dense, or sparse from prune)")
    generate.add_argument("--prompt", default="The history of the city begins in the year")
    generate.add_argument("--max-new-tokens", type=int, default=64, help="tokens to decode (64)")
    generate.add_argument(
        "--sparsify",
        action="store_true",
        help="swap a dense pruned model's Linear layers for sparse ones where they measure faster",
    )
    generate.add_argument(
        "--compare-dense",
        action="store_true",
        help="also decode with the dense (masked) twin of the sparse layers, in turns: tokens/s "
        "of both and whether the tokens agree",
    )
    generate.add_argument("--rounds", type=int, default=3, help="timed runs with --compare-dense")
    _add_common(generate, "print the report as JSON")
    generate.set_defaults(run=_run_generate)

    evaluate = commands.add_parser(
        "eval",
        help="perplexity of a causal LM directory (dense or sparse) over a text file",
        description="Tokenize the text as one stream, cut it into non-overlapping windows of "
        "--seqlen tokens and report exp of the mean next-token loss, as the papers do.",
    )
    evaluate.add_argument("model_dir", help="model directory (dense, or sparse from prune)")
    evaluate.add_argument("--text", required=True, help="the evaluation text file")
    evaluate.add_argument("--seqlen", type=int, default=1024, help="tokens per window (1024)")
    evaluate.add_argument("--windows", type=int, help="the first N windows (default: all)")
    evaluate.add_argument("--batch-size", type=int, default=1, help="windows per forward (1)")
    _add_common(evaluate, "print the result as JSON")
    evaluate.set_defaults(run=_run_eval)

    sample = commands.add_parser(
        "sample-text",
        help="calibration text a causal LM samples itself (for prune --calib)",
        description="Sample --sequences texts of --tokens tokens from the model (each from a "
        "random first token, temperature 1, no top-k/top-p, no end-of-text) and write them one "
        "per line: calibration text that follows the model's own distribution.",
    )
    sample.add_argument("model_dir", help="model directory (a causal language model)")
    sample.add_argument("--out", required=True, help="the text file to write")
    sample.add_argument("--sequences", type=int, default=16, help="texts to sample (16)")
    sample.add_argument("--tokens", type=int, default=1024, help="tokens per text (1024)")
    sample.add_argument("--seed", type=int, default=0, help="random seed (0)")
    sample.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_common(sample, "print what was written as JSON")
    sample.set_defaults(run=_run_sample_text)


def _add_common(command: argparse.ArgumentParser, json_help: str) -> None:
    command.add_argument("--threads", type=int, help="threads for torch and fastprune")
    command.add_argument("--json", action="store_true", help=json_help)


def _load(args: argparse.Namespace, doing: str) -> tuple[Any, Any]:
    """The causal LM and tokenizer of ``model_dir``, on ``--threads`` threads."""
    _require_torch(doing)
    import torch

    from .torch.generate import load_causal_lm

    if args.threads:
        torch.set_num_threads(args.threads)
        fp.set_num_threads(args.threads)
    try:
        return load_causal_lm(args.model_dir)
    except (OSError, ValueError) as err:
        raise CommandError(str(err)) from err


def _run_generate(args: argparse.Namespace) -> int:
    _check_positive(args, ("max_new_tokens", "rounds", "threads"))
    model, tokenizer = _load(args, "generating text")
    import torch

    from .torch import densify, sparsify
    from .torch.generate import compare, greedy

    report: dict[str, Any] = {"model": args.model_dir, "prompt": args.prompt}
    if args.sparsify:
        decisions = sparsify(model)
        report["sparsify"] = {"swapped": len(decisions.swapped), "layers": len(decisions.layers)}
        if not args.json:
            print(decisions)
    ids = tokenizer(args.prompt, return_tensors="pt").input_ids
    run = greedy(model, ids, args.max_new_tokens)
    report.update(
        text=tokenizer.decode(run.tokens),
        tokens=len(run.tokens),
        prefill_seconds=run.prefill_seconds,
        tokens_per_second=run.tokens_per_second,
        threads=torch.get_num_threads(),
    )
    if args.compare_dense:
        dense = copy.deepcopy(model)
        if not densify(dense):
            raise CommandError("--compare-dense: the model has no sparse layers to compare")
        report["compare_dense"] = compare(
            model, dense, ids, args.max_new_tokens, rounds=args.rounds
        ).as_dict()
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"{args.prompt}{report['text']}")
    print(
        f"{report['tokens']} tokens at {report['tokens_per_second']:.1f} tokens/s "
        f"(prefill {report['prefill_seconds'] * 1000:.0f} ms, {report['threads']} threads)"
    )
    if args.compare_dense:
        c = report["compare_dense"]
        first = c["first_difference"]
        agree = "the same tokens" if first is None else f"tokens differ from step {first}"
        print(
            f"dense twin: {c['reference_tokens_per_second']:.1f} tokens/s; sparse "
            f"{c['tokens_per_second']:.1f} tokens/s ({c['speedup']:.2f}x, medians of "
            f"{args.rounds}); {agree}"
        )
    return 0


def _run_eval(args: argparse.Namespace) -> int:
    _check_positive(args, ("windows", "batch_size", "threads"))
    if args.seqlen < 2:
        raise CommandError(f"--seqlen: must be at least 2, got {args.seqlen}")
    try:
        text = Path(args.text).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise CommandError(f"--text: {err}") from err
    model, tokenizer = _load(args, "evaluating a model")
    from .torch.evaluate import perplexity, token_windows

    try:
        windows = token_windows(tokenizer, text, seqlen=args.seqlen, windows=args.windows)
        result = perplexity(model, windows, batch_size=args.batch_size)
    except ValueError as err:
        raise CommandError(str(err)) from err
    report = {"model": args.model_dir, "text": Path(args.text).name, "seqlen": args.seqlen}
    report.update(result.as_dict())
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(
            f"perplexity {result.value:.3f} over {result.windows} windows of {args.seqlen} tokens "
            f"of {Path(args.text).name} ({result.tokens} predicted tokens)"
        )
    return 0


def _run_sample_text(args: argparse.Namespace) -> int:
    _check_positive(args, ("sequences", "tokens", "threads"))
    out = Path(args.out)
    if out.is_dir():
        raise CommandError(f"--out: {str(out)!r} is a directory, expected a file to write")
    model, tokenizer = _load(args, "sampling text")
    from ._files import atomic_write_text
    from .torch.self_text import sample_text

    texts = sample_text(
        model,
        tokenizer,
        sequences=args.sequences,
        tokens=args.tokens,
        seed=args.seed,
        progress=not (args.quiet or args.json),
    )
    atomic_write_text(out, "\n".join(texts) + "\n")
    report = {
        "model": args.model_dir,
        "out": str(out),
        "sequences": len(texts),
        "tokens_per_sequence": args.tokens,
        "seed": args.seed,
    }
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(f"wrote {len(texts)} texts of {args.tokens} sampled tokens to {out}")
    return 0
