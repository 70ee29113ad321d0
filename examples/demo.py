"""Score and mask a 4096×4096 layer in several sparsity patterns; print sparsity and time."""

from __future__ import annotations

import time

import numpy as np

import fastprune as fp


def main() -> None:
    rng = np.random.default_rng(0)
    out_features = in_features = 4096
    weight = rng.standard_normal((out_features, in_features), dtype=np.float32)
    act_sq = rng.gamma(2.0, 1.0, in_features).astype(np.float32)
    print(f"fastprune {fp.__version__} on {fp.info()['isa']}, {fp.get_num_threads()} threads")
    print(f"layer {out_features}x{in_features}, Wanda scores")

    t0 = time.perf_counter()
    scores = fp.importance.wanda(weight, act_sq)
    print(f"{'scores':<26} {'':>10} {(time.perf_counter() - t0) * 1e3:8.2f} ms")

    cases = [
        ("unstructured 50% per row", dict(sparsity=0.5)),
        ("unstructured 70% layer", dict(sparsity=0.7, scope="layer")),
        ("2:4", dict(pattern="2:4")),
        ("4:8", dict(pattern="4:8")),
        ("block 16x16 50%", dict(sparsity=0.5, pattern="block:16x16")),
        ("row 25%", dict(sparsity=0.25, pattern="row")),
        ("column 25%", dict(sparsity=0.25, pattern="column")),
    ]
    for name, kwargs in cases:
        t0 = time.perf_counter()
        mask = fp.mask(scores, **kwargs)  # type: ignore[arg-type]
        seconds = time.perf_counter() - t0
        sparsity = 1.0 - np.count_nonzero(mask) / mask.size
        print(f"{name:<26} sparsity {sparsity:6.2%} {seconds * 1e3:8.2f} ms")


if __name__ == "__main__":
    main()
