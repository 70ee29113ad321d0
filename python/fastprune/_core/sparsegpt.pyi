# Stubs for fastprune._core.sparsegpt (the compiled kernels).
from typing import Any

import numpy as np
import numpy.typing as npt

def inverse_hessian_factor(
    hessian: npt.NDArray[np.floating[Any]], damp: float, max_tries: int
) -> tuple[npt.NDArray[np.floating[Any]], npt.NDArray[np.bool_], float]: ...
def hessian_factor(
    hessian: npt.NDArray[np.floating[Any]], damp: float, max_tries: int
) -> tuple[npt.NDArray[np.floating[Any]], npt.NDArray[np.bool_], float]: ...
def invert_factor(t: npt.NDArray[np.floating[Any]]) -> npt.NDArray[np.floating[Any]]: ...
def prune(
    weight: npt.NDArray[np.floating[Any]],
    u: npt.NDArray[np.floating[Any]],
    dead: npt.NDArray[np.bool_],
    sparsity: float,
    n: int,
    m: int,
    blocksize: int,
    keep_mask: npt.NDArray[np.bool_] | None = None,
) -> tuple[npt.NDArray[np.bool_], float]: ...
def solve(
    weight: npt.NDArray[np.floating[Any]],
    hessian: npt.NDArray[np.floating[Any]],
    damp: float,
    max_tries: int,
    sparsity: float,
    n: int,
    m: int,
    blocksize: int,
    keep_mask: npt.NDArray[np.bool_] | None = None,
) -> tuple[npt.NDArray[np.bool_], float, float]: ...
def prune_from(
    weight: npt.NDArray[np.floating[Any]],
    t: npt.NDArray[np.floating[Any]],
    dead: npt.NDArray[np.bool_],
    sparsity: float,
    n: int,
    m: int,
    blocksize: int,
    keep_mask: npt.NDArray[np.bool_] | None = None,
) -> tuple[npt.NDArray[np.floating[Any]], npt.NDArray[np.bool_], float]: ...
def solve_from(
    weight: npt.NDArray[np.floating[Any]],
    hessian: npt.NDArray[np.floating[Any]],
    damp: float,
    max_tries: int,
    sparsity: float,
    n: int,
    m: int,
    blocksize: int,
    keep_mask: npt.NDArray[np.bool_] | None = None,
) -> tuple[npt.NDArray[np.floating[Any]], npt.NDArray[np.bool_], float, float]: ...
