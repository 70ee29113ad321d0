# Stubs for fastprune._core.sparsegpt (the compiled kernels).
from typing import Any

import numpy as np
import numpy.typing as npt

def hessian_factor(
    hessian: npt.NDArray[np.floating[Any]], damp: float, max_tries: int
) -> tuple[npt.NDArray[np.floating[Any]], npt.NDArray[np.bool_], float]: ...
def damped_hessian(
    hessian: npt.NDArray[np.floating[Any]], dead: npt.NDArray[np.bool_], damp: float
) -> tuple[npt.NDArray[np.float64], float]: ...
def refit_direct(
    damped: npt.NDArray[np.float64],
    gram_target: npt.NDArray[np.float64],
    mask: npt.NDArray[np.bool_],
    dead: npt.NDArray[np.bool_],
) -> npt.NDArray[np.float64]: ...
def invert_factor(t: npt.NDArray[np.floating[Any]]) -> npt.NDArray[np.floating[Any]]: ...
def solve(
    weight: npt.NDArray[np.floating[Any]],
    source: object,
    damp: float,
    max_tries: int,
    sparsity: float,
    n: int,
    m: int,
    blocksize: int,
    keep_mask: npt.NDArray[np.bool_] | None,
    inplace: bool,
    check_weight: bool,
    route: str = "automatic",
) -> tuple[
    npt.NDArray[np.floating[Any]],
    npt.NDArray[np.bool_],
    float,
    float,
    npt.NDArray[np.floating[Any]] | None,
    bool,
]: ...
