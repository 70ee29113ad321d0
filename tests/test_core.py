"""The package itself: build information, instruction-set dispatch and threads."""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
import threading

import ml_dtypes
import numpy as np
import pytest

import fastprune
from fastprune import _core


def run_child(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    """Run `code` in a fresh interpreter (the level is chosen once, at import)."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("FASTPRUNE_")}
    full_env.update(env)
    return subprocess.run(
        [sys.executable, "-c", code], env=full_env, capture_output=True, text=True, check=False
    )


def test_info_reports_the_build() -> None:
    info = fastprune.info()
    assert info["version"] == fastprune.__version__
    assert info["isa"] in _core.LEVELS
    assert info["isa"] in info["supported_isas"]
    assert set(info["supported_isas"]) <= set(info["compiled_isas"])
    assert info["isa_reason"]
    assert info["byte_compress"] == _core.sparse_linear.byte_compress()
    assert not info["byte_compress"] or info["isa"] == "avx512"
    assert isinstance(info["compiler"], str) and info["compiler"]
    assert info["cuda"] is False
    assert info["threads"] == fastprune.get_num_threads()
    assert 0 <= info["memory_cache_bytes"] <= info["memory_cache_limit"]  # type: ignore[operator]


def test_default_choice_is_the_best_supported_level() -> None:
    # In a child without FASTPRUNE_* settings: this run itself may have forced a level.
    out = run_child("from fastprune import _core; print(_core.ISA, _core.supported_levels()[0])")
    assert out.returncode == 0, out.stderr
    chosen, best = out.stdout.split()
    assert chosen == best


@pytest.mark.parametrize("level", _core.supported_levels())
def test_each_supported_level_can_be_forced(level: str) -> None:
    out = run_child(
        "import fastprune; i = fastprune.info(); print(i['isa'], i['isa_reason'])",
        FASTPRUNE_ISA=level,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[0] == level
    assert "forced by FASTPRUNE_ISA" in out.stdout


def vector_instructions(path: str) -> dict[str, int]:
    """Counts, in the disassembly of the shared object at `path`, of VEX/EVEX instructions (AVX
    and later: mnemonics starting with v), of 256-bit and 512-bit registers and of AVX-512 mask
    registers."""
    listing = subprocess.run(
        ["objdump", "-d", "--no-show-raw-insn", path], capture_output=True, text=True, check=True
    ).stdout
    return {
        "vex": len(re.findall(r"^\s*[0-9a-f]+:\s+v[a-z0-9]+\s", listing, re.MULTILINE)),
        "ymm": listing.count("%ymm"),
        "zmm": listing.count("%zmm"),
        "mask": len(re.findall(r"%k[0-7]\b", listing)),
    }


@pytest.mark.skipif(shutil.which("objdump") is None, reason="objdump is not installed")
def test_lower_levels_hold_no_instructions_of_higher_ones() -> None:
    """The machine code itself: the baseline module runs on a CPU without AVX (no VEX-encoded
    instruction at all), the AVX2 one on a CPU without AVX-512 (no 512-bit or mask register);
    the AVX-512 module, which must have both, shows that the disassembly sees them."""
    # found, not imported: loading a module built for a level this CPU lacks may already run
    # its instructions (static initialisers), an illegal instruction
    counts = {}
    for level in _core.compiled_levels():
        spec = importlib.util.find_spec(f"fastprune._core_{level}")
        assert spec is not None and spec.origin is not None, level
        counts[level] = vector_instructions(spec.origin)
    if "baseline" in counts:
        assert counts["baseline"] == {"vex": 0, "ymm": 0, "zmm": 0, "mask": 0}
    if "avx2" in counts:
        assert counts["avx2"]["zmm"] == counts["avx2"]["mask"] == 0
        assert counts["avx2"]["ymm"] > 0
    if "avx512" in counts:
        assert counts["avx512"]["zmm"] > 0 and counts["avx512"]["mask"] > 0
    assert vector_instructions(str(fastprune._cpu.__file__))["vex"] == 0


def test_flags_name_the_instruction_set() -> None:
    flags = {}
    for level in _core.supported_levels():
        out = run_child("import fastprune; print(fastprune.info()['flags'])", FASTPRUNE_ISA=level)
        assert out.returncode == 0, out.stderr
        flags[level] = out.stdout.strip()
    if "avx2" in flags:
        assert "x86-64-v3" in flags["avx2"]
    if "avx512" in flags:
        assert "x86-64-v4" in flags["avx512"]


def import_error(**env: str) -> str:
    """The message of the ImportError that importing fastprune raises in a child with `env`."""
    code = (
        "import sys\n"
        "try:\n"
        "    import fastprune\n"
        "except ImportError as err:\n"
        "    print(err)\n"
        "    sys.exit(3)\n"
    )
    out = run_child(code, **env)
    assert out.returncode == 3, (out.stdout, out.stderr)
    message = out.stdout.strip()
    assert "could not be imported" not in message  # the setting's own reason, not a wrapper
    return message


@pytest.mark.parametrize("value", ["sse9", "AVX2 ", "native"])
def test_unknown_level_is_an_import_error(value: str) -> None:
    assert import_error(FASTPRUNE_ISA=value).startswith("FASTPRUNE_ISA=")


@pytest.mark.parametrize("level", ["avx2", "avx512"])
def test_unsupported_level_is_an_import_error(level: str) -> None:
    message = import_error(FASTPRUNE_ISA=level, FASTPRUNE_DISABLE_ISA=level)
    assert message.startswith(f"FASTPRUNE_ISA={level}: ") and "cannot run it" in message


def test_bad_blas_choice_is_an_import_error() -> None:
    assert import_error(FASTPRUNE_BLAS="mkl").startswith("FASTPRUNE_BLAS='mkl'")


def test_disabled_levels_are_passed_over() -> None:
    out = run_child(
        "import fastprune; i = fastprune.info(); print(i['isa']); print(i['isa_reason'])",
        FASTPRUNE_DISABLE_ISA="avx512,avx2",
    )
    assert out.returncode == 0, out.stderr
    isa, reason = out.stdout.splitlines()
    assert isa == "baseline"
    assert "disabled by FASTPRUNE_DISABLE_ISA" in reason


@pytest.mark.parametrize("value", ["baseline", "avx3"])
def test_bad_disable_list_is_an_import_error(value: str) -> None:
    assert import_error(FASTPRUNE_DISABLE_ISA=value).startswith("FASTPRUNE_DISABLE_ISA: ")


def test_use_switches_level_and_restores() -> None:
    before = _core.impl
    for level in _core.supported_levels():
        with _core.use(level) as module:
            assert module.build_info()["isa"] == level
            assert _core.masks is module.masks
        assert _core.impl is before


def test_use_rejects_unavailable_level() -> None:
    with pytest.raises(ImportError, match="not available"), _core.use("sse9"):
        pass


def test_threads_round_trip() -> None:
    before = fastprune.get_num_threads()
    try:
        fastprune.set_num_threads(1)
        assert fastprune.get_num_threads() == 1
        fastprune.set_num_threads(3)
        assert fastprune.get_num_threads() == 3
    finally:
        fastprune.set_num_threads(before)


def test_the_thread_count_holds_in_every_thread() -> None:
    """Set from one Python thread, the count applies to kernels called from any other."""
    before = fastprune.get_num_threads()
    seen: list[int] = []
    try:
        fastprune.set_num_threads(1)
        worker = threading.Thread(target=lambda: seen.append(fastprune.get_num_threads()))
        worker.start()
        worker.join()
    finally:
        fastprune.set_num_threads(before)
    assert seen == [1]


@pytest.mark.parametrize("bad", [0, -2, 1.5, True, "2", 2**31, 10**10])
def test_bad_thread_count(bad: object) -> None:
    with pytest.raises(ValueError, match="n: expected a positive int"):
        fastprune.set_num_threads(bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", [-1, 1.5, True, "1", None])
def test_bad_memory_cache_limit(bad: object) -> None:
    with pytest.raises(ValueError, match="nbytes: expected an int >= 0"):
        fastprune.set_memory_cache_limit(bad)  # type: ignore[arg-type]


def test_memory_cache_keeps_working_memory_up_to_its_limit() -> None:
    rng = np.random.default_rng(3)
    w = rng.standard_normal((64, 1024)).astype(np.float32)
    h = np.eye(1024)  # the solve's factor alone is 4 MiB
    limit = fastprune.info()["memory_cache_limit"]
    assert limit == 1 << 30  # the default
    try:
        fastprune.sparsegpt(w, h)
        assert fastprune.info()["memory_cache_bytes"] >= 4 << 20
        fastprune.release_memory()
        assert fastprune.info()["memory_cache_bytes"] == 0
        fastprune.set_memory_cache_limit(3 << 20)  # below the factor's size: not kept
        fastprune.sparsegpt(w, h)
        assert fastprune.info()["memory_cache_bytes"] <= 3 << 20
        fastprune.set_memory_cache_limit(0)
        fastprune.sparsegpt(w, h)
        assert fastprune.info()["memory_cache_bytes"] == 0
        fastprune.set_memory_cache_limit(2**80)  # more than any machine has: no limit
        assert fastprune.info()["memory_cache_limit"] == 2**63
    finally:
        fastprune.set_memory_cache_limit(limit)


def test_equal_dtype_objects_and_byte_swapped_arrays_are_accepted() -> None:
    scores = np.arange(12, dtype=np.float32).reshape(3, 4)
    # An equal dtype that is not NumPy's own float32 object (here: carrying metadata).
    equal = scores.view(np.dtype(np.float32, metadata={"origin": "file"}))
    assert equal.dtype is not scores.dtype
    assert np.array_equal(fastprune.mask(equal, 0.5), fastprune.mask(scores, 0.5))
    swapped = scores.astype(np.dtype(">f4"))
    assert np.array_equal(fastprune.mask(swapped, 0.5), fastprune.mask(scores, 0.5))


@pytest.mark.parametrize("dtype", ["float32", "float64", ">f4", "float16", ml_dtypes.bfloat16])
@pytest.mark.parametrize(
    "layout", ["c", "f", "strided_rows", "reversed_rows", "one_column", "empty", "large"]
)
@pytest.mark.parametrize("bad", [None, np.nan, np.inf, -np.inf])
def test_finite_copy_is_a_checked_independent_copy(
    dtype: object, layout: str, bad: float | None
) -> None:
    """The working copy of a weight is made and checked in one pass by the core where the layout
    allows (on every thread for large arrays): equal to the input, C-ordered, its own memory."""
    from fastprune import _arrays

    rng = np.random.default_rng(8)
    shape = (1500, 2001) if layout == "large" else (37, 45)
    base = rng.standard_normal(shape).astype(dtype)
    if bad is not None:
        base.flat[rng.choice(base.size, 3, replace=False)] = bad
        base[-1, -1] = bad  # the tail of the last row, past the last whole group of lanes
    views = {
        "c": base,
        "f": np.asfortranarray(base),
        "strided_rows": base[::2],
        "reversed_rows": base[::-1],
        "one_column": base[:, 5:6],
        "empty": base[:0],
        "large": base,
    }
    a = views[layout]
    target = np.float64 if a.dtype == np.float64 else np.float32
    bad_count = int(np.count_nonzero(~np.isfinite(a)))
    if bad_count:
        with pytest.raises(ValueError, match=f"weight: contains {bad_count} NaN or Inf"):
            _arrays.finite_copy(a, target, "weight")
        return
    copy = _arrays.finite_copy(a, target, "weight")
    assert copy.dtype == target
    assert copy.flags.c_contiguous
    assert not np.shares_memory(copy, a)
    assert np.array_equal(copy, a.astype(target))


def every_half(brain: bool) -> tuple[np.ndarray, np.ndarray]:
    """All 65536 bit patterns of a 16-bit float (in a shape whose rows end in partial groups of
    vector lanes) and their float32 values, computed without the core."""
    bits = np.arange(2**16, dtype=np.uint16)
    if brain:
        values = (bits.astype(np.uint32) << 16).view(np.float32)  # bfloat16: the top half
    else:
        values = bits.view(np.float16).astype(np.float32)
    return bits.reshape(256, 256)[:, 3:250], values.reshape(256, 256)[:, 3:250]


@pytest.mark.parametrize("level", _core.supported_levels())
@pytest.mark.parametrize("brain", [False, True])
def test_16_bit_floats_widen_exactly_on_every_level(level: str, brain: bool) -> None:
    """Every float16/bfloat16 bit pattern (zeros, subnormals, normals, the largest, Inf, NaN)
    widens to the float32 NumPy computes, in vector groups and in the scalar tails alike."""
    bits, expected = every_half(brain)
    with _core.use(level) as core:
        widened, finite = core.calibration.widen_finite(bits, brain)
        assert not finite
        nan = np.isnan(expected)
        assert np.array_equal(np.isnan(widened), nan)
        assert np.array_equal(widened.view(np.uint32)[~nan], expected.view(np.uint32)[~nan])
        clean = np.where(np.isfinite(expected), bits, 0).astype(np.uint16)
        strided = clean[1::3, 2:]  # rows spaced apart, starting off any alignment
        widened, finite = core.calibration.widen_finite(strided, brain)
        assert finite
        assert widened.flags.c_contiguous
        assert np.array_equal(widened, np.where(np.isfinite(expected), expected, 0)[1::3, 2:])


@pytest.mark.parametrize("level", _core.supported_levels())
@pytest.mark.parametrize("brain", [False, True])
def test_16_bit_floats_are_screened_on_every_level(level: str, brain: bool) -> None:
    rng = np.random.default_rng(12)
    bits, expected = every_half(brain)
    finite_bits = bits[np.isfinite(expected)]
    base = rng.choice(finite_bits, (1500, 1001)).astype(np.uint16)  # large: on every thread
    infinity = np.uint16(0x7F80 if brain else 0x7C00)
    nan = np.uint16(infinity | 1)
    with _core.use(level) as core:
        for bad in (None, infinity, nan, infinity | np.uint16(0x8000)):
            a = base.copy()
            if bad is not None:
                a[rng.integers(1500), rng.integers(1001)] = bad
                a[-1, -1] = bad  # the tail of the last row
            for view in (a, np.asfortranarray(a), a[::2], a[:, 7:8], a[:0]):
                assert core.calibration.halves_finite(view, brain) == (
                    bad is None or not np.any(view == bad)
                )


@pytest.mark.parametrize("dtype", ["float32", "float64", ">f4", "float16", ml_dtypes.bfloat16])
@pytest.mark.parametrize(
    "layout",
    ["c", "f", "strided_cols", "reversed_rows", "one_column", "broadcast_rows", "empty", "large"],
)
@pytest.mark.parametrize("bad", [None, np.nan, np.inf, -np.inf])
def test_finiteness_check_agrees_with_numpy(dtype: object, layout: str, bad: float | None) -> None:
    """Arguments are screened for NaN/Inf by the core where the layout allows (on every thread
    for large arrays); every layout and dtype must give NumPy's answer, and the message names
    the argument and the count."""
    from fastprune import _arrays

    rng = np.random.default_rng(7)
    base = rng.standard_normal((1500, 2001) if layout == "large" else (37, 45)).astype(dtype)
    if bad is not None:
        base.flat[rng.choice(base.size, 3, replace=False)] = bad
        base[-1, -1] = bad  # the tail of the last row, past the last whole group of lanes
    views = {
        "c": base,
        "f": np.asfortranarray(base),
        "strided_cols": base[:, ::3],
        "reversed_rows": base[::-1],
        "one_column": base[:, 5:6],
        "broadcast_rows": np.broadcast_to(
            base[int(np.argmax(~np.isfinite(base).all(1)))], (9, base.shape[1])
        ),
        "empty": base[:0],
        "large": base,
    }
    a = views[layout]
    bad_count = int(np.count_nonzero(~np.isfinite(a)))
    if bad_count == 0:
        _arrays.check_finite(a, "weight")
    else:
        with pytest.raises(ValueError, match=f"weight: contains {bad_count} NaN or Inf"):
            _arrays.check_finite(a, "weight")
