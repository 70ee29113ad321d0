"""The structural names are exported from `fastprune.torch`, loaded on first access."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

pytest.importorskip("torch")


def test_every_exported_name_resolves_to_the_structural_object() -> None:
    ft = importlib.import_module("fastprune.torch")
    structural = importlib.import_module("fastprune.torch.structural")
    for name in ft.__all__:
        value = getattr(ft, name)
        if name in structural.__all__:
            assert value is getattr(structural, name), name
    assert set(ft.__all__) <= set(dir(ft))
    for name in ("DependencyGraph", "PruningPlan", "prune_channels", "prune_width"):
        assert name in ft.__all__
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        _ = ft.nope


def test_structural_is_loaded_only_when_used() -> None:
    code = (
        "import sys, fastprune.torch as ft\n"
        "assert 'fastprune.torch.structural' not in sys.modules\n"
        "from fastprune.torch import DependencyGraph, remove_blocks\n"
        "assert 'fastprune.torch.structural' in sys.modules\n"
        "assert DependencyGraph.__module__ == 'fastprune.torch.structural.channels'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
