"""The compiled core, loaded for the best instruction-set level this machine supports.

The core is compiled once per level (``_core_baseline``, ``_core_avx2``, ``_core_avx512``), each
its own shared object so that Eigen code built with different vector widths never meets. At
import the best level that the CPU and OS support (cpuid + xgetbv) is chosen;
``FASTPRUNE_ISA=baseline|avx2|avx512`` forces one, and an unknown or unsupported value is an
ImportError, never a silent fallback. ``FASTPRUNE_DISABLE_ISA=avx512[,avx2]`` takes levels
out of consideration (for example to avoid AVX-512 clock throttling, or to try a lesser level);
it may also name the one feature used within a level where the CPU has it, ``avx512vbmi2``
(``sparse_linear.byte_compress``).
The chosen module's submodules (``importance``, ``masks``, ``calibration``, ``sparsegpt``,
``formats``) are attributes of this package.

Large dense linear algebra (the GEMMs, the Cholesky factorisation and triangular inverse of the
SparseGPT solver, the Hessian's rank-k updates) is split into fixed tiles shared among
fastprune's own threads; each tile is one single-threaded call to the OpenBLAS that the
``scipy-openblas32`` wheel ships when it is installed (held at one thread of its own), or to
Eigen. ``FASTPRUNE_BLAS=eigen`` keeps every tile on Eigen, ``FASTPRUNE_BLAS=openblas`` makes a
missing OpenBLAS an ImportError.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
from collections.abc import Iterator
from types import ModuleType

from .. import _cpu
from .._errors import SetupError

LEVELS = ("avx512", "avx2", "baseline")
FEATURES = ("avx512vbmi2",)  # used within a level where the CPU has it; FASTPRUNE_DISABLE_ISA
SUBMODULES = ("importance", "masks", "calibration", "sparsegpt", "formats", "sparse_linear")


def compiled_levels() -> tuple[str, ...]:
    """The levels this build contains, best first."""
    built = set(_cpu.compiled.split(","))
    return tuple(level for level in LEVELS if level in built)


def _detect() -> dict[str, tuple[bool, str]]:
    """Level -> (usable, reason): what the CPU and OS allow, less FASTPRUNE_DISABLE_ISA."""
    disabled = {part.strip() for part in os.environ.get("FASTPRUNE_DISABLE_ISA", "").split(",")}
    disabled.discard("")
    unknown = disabled - set(LEVELS) - set(FEATURES)
    if unknown:
        known = ", ".join(LEVELS + FEATURES)
        msg = f"FASTPRUNE_DISABLE_ISA: unknown name(s) {sorted(unknown)}; known: {known}"
        raise SetupError(msg)
    if "baseline" in disabled:
        msg = "FASTPRUNE_DISABLE_ISA: the baseline level cannot be disabled"
        raise SetupError(msg)
    detected = {name: (supported, reason) for name, supported, reason in _cpu.levels()}
    for level in disabled & set(LEVELS):
        detected[level] = (False, "disabled by FASTPRUNE_DISABLE_ISA")
    return detected


def supported_levels() -> tuple[str, ...]:
    """The levels both compiled into this build and usable on this machine, best first."""
    detected = _detect()
    return tuple(level for level in compiled_levels() if detected[level][0])


def _choose() -> tuple[str, str]:
    detected = _detect()
    compiled = compiled_levels()
    forced = os.environ.get("FASTPRUNE_ISA", "").strip()
    if forced:
        if forced not in LEVELS:
            msg = f"FASTPRUNE_ISA={forced!r} is not one of {', '.join(LEVELS)}"
            raise SetupError(msg)
        supported, reason = detected[forced]
        if not supported:
            msg = f"FASTPRUNE_ISA={forced}: this CPU/OS cannot run it ({reason})"
            raise SetupError(msg)
        if forced not in compiled:
            have = ", ".join(compiled)
            msg = f"FASTPRUNE_ISA={forced}: not compiled into this build (has {have})"
            raise SetupError(msg)
        return forced, f"forced by FASTPRUNE_ISA={forced}"
    passed_over = []
    for level in LEVELS:
        supported, reason = detected[level]
        if supported and level in compiled:
            why = f"best level supported here: {reason}"
            if passed_over:
                why += "; passed over " + "; ".join(passed_over)
            return level, why
        passed_over.append(f"{level} ({reason if not supported else 'not compiled'})")
    msg = "no compiled instruction-set level can run here: " + "; ".join(passed_over)
    raise SetupError(msg)


def load(level: str) -> ModuleType:
    """The compiled core for one level (raises ImportError if it cannot run here)."""
    if level not in supported_levels():
        msg = f"instruction-set level {level!r} is not available here (have {supported_levels()})"
        raise SetupError(msg)
    return importlib.import_module(f"fastprune._core_{level}")


def _openblas() -> tuple[str, str] | None:
    """(path, symbol prefix) of the scipy-openblas32 library, or None when it is not wanted."""
    choice = os.environ.get("FASTPRUNE_BLAS", "").strip() or "auto"
    if choice not in ("auto", "openblas", "eigen"):
        msg = f"FASTPRUNE_BLAS={choice!r} is not one of openblas, eigen"
        raise SetupError(msg)
    if choice == "eigen":
        return None
    try:
        import scipy_openblas32
    except ImportError as err:
        if choice == "openblas":
            msg = "FASTPRUNE_BLAS=openblas but the scipy-openblas32 package is not installed"
            raise SetupError(msg) from err
        return None
    suffix = ".dylib" if sys.platform == "darwin" else ".so"
    name = f"lib{scipy_openblas32.get_library()}{suffix}"
    return os.path.join(scipy_openblas32.get_lib_dir(), name), "scipy_"


def _install(module: ModuleType) -> None:
    if _BLAS is None:
        module.unload_blas()
    else:
        try:
            module.load_openblas(*_BLAS)
        except ValueError as err:
            if os.environ.get("FASTPRUNE_BLAS", "").strip() == "openblas":
                raise SetupError(str(err)) from err
            module.unload_blas()
    g = globals()
    g["impl"] = module
    for name in (
        "build_info",
        "set_num_threads",
        "get_num_threads",
        "set_memory_cache_limit",
        "release_memory_cache",
        "memory_cache",
    ):
        g[name] = getattr(module, name)
    for name in SUBMODULES:
        sub = getattr(module, name)
        g[name] = sub
        sys.modules[f"{__name__}.{name}"] = sub


@contextlib.contextmanager
def use(level: str) -> Iterator[ModuleType]:
    """Run the enclosed code on another level's core (for comparing levels in tests)."""
    previous = globals()["impl"]
    module = load(level)
    module.set_num_threads(previous.get_num_threads())  # each level keeps its own count
    _install(module)
    try:
        yield globals()["impl"]
    finally:
        _install(previous)


@contextlib.contextmanager
def eigen_only() -> Iterator[None]:
    """Run the enclosed code with all dense linear algebra on Eigen (for comparing backends)."""
    globals()["impl"].unload_blas()
    try:
        yield
    finally:
        _install(globals()["impl"])


ISA, REASON = _choose()
_BLAS = _openblas()
_install(importlib.import_module(f"fastprune._core_{ISA}"))
