"""``fastprune prune``: calibrate on text and prune a model directory, loaded whole or (with
``--max-memory`` or ``--resume``) block by block from disk with `fastprune.torch.prune_streaming`.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import fastprune as fp
from fastprune._arrays import check_sparsity
from fastprune._files import incomplete_marker

from .cli import (
    CommandError,
    _check_positive,
    _load_model_and_text,
    _model_name,
    _output_directory,
    _require_torch,
    _say,
    _source_and_text,
    _text_manifest,
)


def run_prune(args: argparse.Namespace) -> int:
    """``fastprune prune``: the model loaded whole, or block by block from disk with
    ``--max-memory`` or ``--resume``."""
    _check_positive(
        args, ("samples", "seqlen", "batch_size", "blocksize", "sample_sequences", "sample_tokens")
    )
    try:
        check_sparsity(args.sparsity, "--sparsity")
    except ValueError as err:
        raise CommandError(str(err)) from err
    if args.damp < 0:
        raise CommandError(f"--damp: must be non-negative, got {args.damp}")
    if args.pattern != "unstructured":
        try:
            fp.masks.pattern(args.pattern)
        except (TypeError, ValueError) as err:
            raise CommandError(f"--pattern: {err}") from err
    out = _output_directory(args)
    _require_torch("pruning a model")
    if args.max_memory is not None or args.resume:
        return _run_streaming(args, out)
    from .torch import models, owl_sparsity, prune_model

    source, model, tokenizer, lines, text = _load_model_and_text(args, models)
    sampled = _sampled_text(args, models, model, tokenizer)
    if sampled is not None:
        lines, text = sampled, "\n".join(sampled) + "\n"  # as sample-text writes them
    batches, calibration, described = _calibration_batches(args, models, model, tokenizer, lines)
    if sampled is not None:
        described = f"text the model sampled itself: {described}"
    if args.method == "magnitude":
        described += " (not used: magnitude pruning reads no data)"
    _say(args, f"calibration: {described}")
    sparsity: Any = args.sparsity
    profile = None
    if args.sparsity_profile == "owl":
        if args.pattern != "unstructured":
            raise CommandError("--sparsity-profile owl: N:M fixes every group's sparsity")
        _say(args, "OWL: scoring every layer on the dense model")
        try:
            profile = owl_sparsity(
                model,
                batches,
                check_sparsity(args.sparsity, "--sparsity"),
                m=args.owl_m,
                lam=args.owl_lambda,
                blocks=args.blocks,
                ignore=args.ignore,
            )
        except (TypeError, ValueError) as err:
            raise CommandError(str(err)) from err
        sparsity = profile.layers
        blocks_said = ", ".join(f"{s:.3f}" for s in profile.block_sparsities)
        _say(args, f"OWL block sparsities: {blocks_said}")
    try:
        report = prune_model(
            model,
            # magnitude pruning reads no data: running the calibration passes only to report
            # each layer's output error would cost as much as pruning with Wanda
            None if args.method == "magnitude" else batches,
            method=args.method,
            sparsity=sparsity,
            pattern=args.pattern,
            ignore=args.ignore,
            sequential=args.sequential,
            blocks=args.blocks,
            blocksize=args.blocksize,
            damp=args.damp,
            reconstruct=args.reconstruct,
            # refitting fits the calibration text closely: where that text is the model's own,
            # that is what the model does (unlike a small text of one kind, which it overfits)
            refit=True if args.refit is None and sampled is not None else args.refit,
            progress=not args.quiet,
            seed=args.seed,
            executor=args.executor,
        )
    except (TypeError, ValueError, ImportError) as err:
        raise CommandError(str(err)) from err
    report.manifest["model"] = {
        "source": _model_name(args, source),
        "class": type(model).__name__,
    }
    if profile is not None:
        report.manifest["sparsity_profile"] = {"kind": "owl", **profile.as_dict()}
    report.manifest["calibration"]["text"] = {
        **_text_manifest(args, text),
        **calibration,
        "batch_size": args.batch_size,
        "described": described,
    }
    if sampled is not None:
        report.manifest["calibration"]["text"].update(
            file="sampled by the model (fastprune sample-text)",
            sampled={
                "sequences": args.sample_sequences,
                "tokens": args.sample_tokens,
                "seed": args.seed,
            },
        )
    _say(args, f"writing {out}")
    with incomplete_marker(out):
        if args.save_format == "sparse":
            saved = _save_sparse(model, source, out)
            report.manifest["saved"] = {
                "format": "sparse",
                "file": saved.path.name,
                "bytes": saved.bytes,
                "dense_bytes": saved.dense_bytes,
                "packed_layers": saved.packed_layers,
            }
            _say(args, f"saved {saved}")
        else:
            models.save_pretrained_like(model, source, out, [layer.name for layer in report.layers])
        report.save(out)
    if not args.quiet:
        print(report.table())
    print(
        f"pruned {len(report.layers)} layers to {report.sparsity:.2%} sparsity "
        f"({args.method}, {args.pattern}); calibration: {described}; wrote {out}"
    )
    return 0


def _sampled_text(
    args: argparse.Namespace, models: Any, model: Any, tokenizer: Any
) -> list[str] | None:
    """Without ``--calib``, the texts a causal language model samples itself to be calibrated
    on (`fastprune.torch.self_text.sample_text`, as ``fastprune sample-text`` with the same
    ``--seed`` writes them); None where a file is given, the model is not a decoder, or the
    method reads no data. A decoder's own samples follow the distribution it learnt, where the
    shipped sentences are a little over a thousand words of one kind."""
    if args.calib is not None or args.method == "magnitude" or not models.generates_text(model):
        return None
    from .torch.self_text import max_tokens, sample_text

    most = max_tokens(model, tokenizer)  # a text never runs past the model's context
    if most is not None:
        args.sample_tokens = min(args.sample_tokens, most)
    _say(
        args,
        f"no --calib: sampling {args.sample_sequences} texts of {args.sample_tokens} tokens "
        f"from the model to calibrate on (seed {args.seed})",
    )
    try:
        return sample_text(
            model,
            tokenizer,
            sequences=args.sample_sequences,
            tokens=args.sample_tokens,
            seed=args.seed,
            progress=not args.quiet,
        )
    except (TypeError, ValueError) as err:
        raise CommandError(f"sampling calibration text: {err}") from err


def _calibration_batches(
    args: argparse.Namespace, models: Any, model: Any, tokenizer: Any, lines: list[str]
) -> tuple[list[dict[str, Any]], dict[str, Any], str]:
    """The calibration batches ``--packing``, ``--seqlen``, ``--samples`` and ``--batch-size``
    make of the text's lines for `model`, what the manifest records of them, and a sentence
    saying what they are."""
    packing = models.choose_packing(args.packing, model)
    seqlen = args.seqlen or models.default_seqlen(packing, model)
    calibration: dict[str, Any] = {"packing": packing, "lines": len(lines)}
    if packing == "pack":
        try:
            windows, counts = models.pack_text(
                tokenizer, lines, seqlen=seqlen, samples=args.samples, seed=args.seed
            )
        except ValueError as err:
            raise CommandError(str(err)) from err
        args.batch_size = args.batch_size or 1
        batches = models.window_batches(windows, args.batch_size)
        calibration.update(counts, samples=counts["sequences"])
        described = (
            f"{counts['text_tokens']} tokens of text packed into {counts['sequences']} "
            f"sequences of {counts['seqlen']} tokens ({counts['windows']} available)"
        )
        if counts["seqlen"] < seqlen:
            described += f"; the text is shorter than --seqlen {seqlen}"
    else:
        texts = models.choose_samples(lines, args.samples, args.seed)
        args.batch_size = args.batch_size or 8
        batches = models.text_batches(tokenizer, texts, seqlen=seqlen, batch_size=args.batch_size)
        calibration.update(samples=len(texts), seqlen=seqlen)
        described = f"{len(texts)} lines, one sequence each, padded and cut at {seqlen} tokens"
    return batches, calibration, described


def _save_sparse(model: Any, source: Path, out: Path) -> Any:
    """The pruned layers packed (every one: the file shrinks whatever the kernel's speed) into
    ``model.sparse.safetensors``; the source's other files (tokenizer, ...) copied."""
    from .torch import save_sparse, sparsify
    from .torch.models import copy_companion_files

    sparsify(model, format="packed")
    copy_companion_files(source, out)
    return save_sparse(model, out)


def _run_streaming(args: argparse.Namespace, out: Path) -> int:
    """``--max-memory`` / ``--resume``: prune a causal language model block by block from disk,
    as `prune_model`'s sequential mode would, with only one block in memory at a time."""
    used = {
        "--save-format sparse": args.save_format == "sparse",
        "--sparsity-profile owl": args.sparsity_profile == "owl",
        "--no-sequential": not args.sequential,
        "--reconstruct dense": args.reconstruct == "dense",
        "--blocks": args.blocks is not None,
    }
    refused = [flag for flag, given in used.items() if given]
    if refused:
        raise CommandError(f"--max-memory/--resume: a block-by-block run cannot take {refused[0]}")
    if not args.model_dir:
        raise CommandError("--max-memory/--resume: name the model directory to prune")
    from .torch import models
    from .torch.streaming import parse_memory, prune_streaming, skeleton

    try:
        budget = None if args.max_memory is None else parse_memory(args.max_memory, "--max-memory")
    except ValueError as err:
        raise CommandError(str(err)) from err
    source, lines, text = _source_and_text(args, models)
    if args.calib is None and args.method != "magnitude":
        _say(
            args,
            "no --calib: a block-by-block run cannot sample the model's own text, so it "
            "calibrates on the sentences shipped with fastprune; for a decoder, text like what "
            "it will see, or `fastprune sample-text` run where the model fits, calibrates better",
        )
    import transformers

    try:
        model, _, _ = skeleton(source)
        tokenizer = transformers.AutoTokenizer.from_pretrained(source, local_files_only=True)
    except (OSError, ValueError) as err:
        raise CommandError(f"cannot read the model in {str(source)!r}: {err}") from err
    batches, calibration, described = _calibration_batches(args, models, model, tokenizer, lines)
    _say(args, f"calibration: {described}")
    manifest = {
        "model": {"source": _model_name(args, source), "class": type(model).__name__},
        "calibration": {
            "text": {
                **_text_manifest(args, text),
                **calibration,
                "batch_size": args.batch_size,
                "described": described,
            }
        },
    }
    _say(args, f"pruning {source} block by block into {out}")
    try:
        report = prune_streaming(
            source,
            out,
            None if args.method == "magnitude" else batches,  # as in memory: no data read
            method=args.method,
            sparsity=args.sparsity,
            pattern=args.pattern,
            ignore=args.ignore,
            blocksize=args.blocksize,
            damp=args.damp,
            refit=bool(args.refit),
            max_memory=budget,
            resume=args.resume,
            progress=not args.quiet,
            seed=args.seed,
            executor=args.executor,
            manifest=manifest,
        )
    except (TypeError, ValueError, ImportError, FileNotFoundError) as err:
        raise CommandError(str(err)) from err
    if not args.quiet:
        print(report.table())
    memory = report.manifest["memory"]
    peak = memory["peak_rss"]
    said = "unknown" if peak is None else f"{peak / 2**30:.2f} GiB"
    limit = "no budget" if budget is None else f"budget {budget / 2**30:.2f} GiB"
    print(
        f"pruned {len(report.layers)} layers to {report.sparsity:.2%} sparsity "
        f"({args.method}, {args.pattern}) block by block; peak memory {said} ({limit}, "
        f"activations in {memory['activations']}); calibration: {described}; wrote {out}"
    )
    return 0
