"""fastprune: post-training pruning of neural-network weights on plain arrays.

Importance scores, sparsity masks, the SparseGPT solver, streaming calibration statistics and
sparse formats, computed by a C++/Eigen core compiled for several instruction sets.
"""

from __future__ import annotations

__version__ = "0.1.0"

from ._errors import SetupError

try:
    from . import _core
except SetupError:  # a setting this machine or build cannot honour: its own reason says why
    raise
except ImportError as err:  # pragma: no cover - only reached by a broken installation
    msg = (
        "fastprune's compiled core could not be imported. Install the package with "
        "`pip install .` (a C++17 compiler is needed to build from source); "
        f"the import failed with: {err}"
    )
    raise ImportError(msg) from err

from . import _cpu, allocation, importance, masks, schedules
from .calibration import Calibration
from .formats import BSR, COO, CSR, Bitmask, NMCompressed, SparseMatrix
from .io import load, save
from .masks import NM, Block, Column, Pattern, Row, Unstructured, apply_mask, mask, pattern
from .pruners import magnitude_prune, wanda
from .solver import HessianFactor, sparsegpt, sparsegpt_factor
from .sparse import PackedLinear


def info() -> dict[str, object]:
    """How fastprune was built and what it runs on.

    Keys: ``version``, ``isa`` (the instruction-set level in use), ``isa_reason`` (why it was
    chosen), ``compiled_isas`` and ``supported_isas``, ``cpu``, ``compiler``, ``build_type``,
    ``flags`` (compiler flags of the level in use), ``byte_compress`` (whether sparse
    products read unstructured rows in windows listed by AVX-512 VBMI2), ``eigen``,
    ``eigen_simd``, ``openmp``, ``blas`` (what runs the large dense linear algebra: "eigen" or
    the OpenBLAS configuration),
    ``threads``, ``memory_cache_bytes`` and ``memory_cache_limit`` (see
    :func:`set_memory_cache_limit`), ``sanitized`` and ``cuda`` (whether a CUDA backend was
    built).
    """
    build = _core.build_info()
    held, limit = _core.memory_cache()
    return {
        "version": __version__,
        "isa": _core.ISA,
        "isa_reason": _core.REASON,
        "compiled_isas": list(_core.compiled_levels()),
        "supported_isas": list(_core.supported_levels()),
        "cpu": _cpu.brand(),
        "compiler": build["compiler"],
        "build_type": build["build_type"],
        "flags": build["flags"],
        "byte_compress": _core.sparse_linear.byte_compress(),
        "eigen": build["eigen"],
        "eigen_simd": build["eigen_simd"],
        "openmp": build["openmp"],
        "blas": build["blas"],
        "threads": _core.get_num_threads(),
        "memory_cache_bytes": held,
        "memory_cache_limit": limit,
        "sanitized": build["sanitized"],
        "cuda": build["cuda"],
    }


def set_num_threads(n: int) -> None:
    """Set how many threads fastprune's kernels may use, in every thread of the process
    (results never depend on it)."""
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= 2**31 - 1:
        msg = f"n: expected a positive int below 2**31, got {n!r}"
        raise ValueError(msg)
    _core.set_num_threads(n)


def get_num_threads() -> int:
    """How many threads fastprune's kernels may use."""
    return _core.get_num_threads()


def set_memory_cache_limit(nbytes: int) -> None:
    """Keep at most `nbytes` of freed working memory for later calls (0 keeps none).

    The kernels' large temporary buffers (the SparseGPT solver's factor and column blocks, the
    two halves of a split Hessian update, float16/bfloat16 batches widened for one) are kept
    when freed, up to this limit in all (1 GiB unless set), and reused by later calls that need
    buffers of about the same size, as pruning a model's layers one after another does: memory
    fresh from the operating system costs a page fault per page when first written. The arrays
    the core returns (pruned weights, masks, scores) live in the same memory: while they are
    referenced they are the caller's, and once NumPy frees them they are kept like a buffer.
    Lowering the limit frees the oldest kept buffers beyond it.
    """
    if isinstance(nbytes, bool) or not isinstance(nbytes, int) or nbytes < 0:
        msg = f"nbytes: expected an int >= 0, got {nbytes!r}"
        raise ValueError(msg)
    _core.set_memory_cache_limit(min(nbytes, 2**63))


def release_memory() -> None:
    """Free the working memory kept for later calls (see :func:`set_memory_cache_limit`)."""
    _core.release_memory_cache()


def __getattr__(name: str) -> object:
    """``fastprune.save_sparse``: :func:`fastprune.torch.save_sparse`, imported (with torch) on
    first use so that the core package never imports torch."""
    if name == "save_sparse":
        from .torch.checkpoint import save_sparse

        return save_sparse
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "BSR",
    "COO",
    "CSR",
    "NM",
    "Bitmask",
    "Block",
    "Calibration",
    "Column",
    "HessianFactor",
    "NMCompressed",
    "PackedLinear",
    "Pattern",
    "Row",
    "SparseMatrix",
    "Unstructured",
    "__version__",
    "allocation",
    "apply_mask",
    "get_num_threads",
    "importance",
    "info",
    "load",
    "magnitude_prune",
    "mask",
    "masks",
    "pattern",
    "release_memory",
    "save",
    "schedules",
    "set_memory_cache_limit",
    "set_num_threads",
    "sparsegpt",
    "sparsegpt_factor",
    "wanda",
]
