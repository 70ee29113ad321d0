// The SparseGPT solver (Frantar & Alistarh 2023): prune a weight matrix column block by column
// block, choosing each block's mask by the saliency w² / U_jj² and compensating every pruned weight
// with the optimal-brain-surgeon update of the weights to its right.
//
// U is the upper Cholesky factor of the damped inverse Hessian, H⁻¹ = Uᵀ U. Weights are row-major
// (out_features, in_features); every kernel partitions its work into fixed tiles, each computed by
// one thread in a fixed order, so results never depend on the number of threads.
#pragma once

#include "fastprune/common.hpp"

namespace fastprune::sparsegpt {

// U of the damped H⁻¹ without ever forming H⁻¹: with J the reversal permutation and L the lower
// Cholesky factor of J·H·J, U = J·L⁻¹·J (one blocked factorisation, one blocked triangular
// inverse). `hessian` (c×c) is read as (H + Hᵀ)/2 and must be symmetric to a relative 1e-4 of its
// largest entry. Columns with H_jj == 0 are dead: dead[j] = true and H_jj = 1. Then
// damp · mean(diag H) is added to the diagonal; when the factorisation fails the relative damping
// is multiplied by 10 (starting from 1e-6 when it is 0) and the factorisation retried, at most
// `max_tries` times in all. Writes U (c×c, zero below the diagonal) into `u`; returns the
// relative damping that worked. Throws std::invalid_argument when every try fails.
template <class T>
double inverse_hessian_factor(ConstMatrixView<T> hessian, double damp, int max_tries,
                              MatrixView<T> u, bool* dead);

// What to prune: `m == 0` is unstructured (in every block of columns exactly
// int(rows · block_cols · sparsity) weights pruned jointly over all rows), else N:M with `n` of
// every `m` consecutive weights of a row kept. `blocksize` is a multiple of m.
struct Options {
  double sparsity = 0.5;
  int n = 0;
  int m = 0;
  Index blocksize = 128;
};

// Prunes `weight` (rows×c) in place: dead columns are zeroed, then each block of columns gets its
// mask and every pruned weight's error err = (w − q) / U_jj is propagated to the weights to its
// right, W[:, j:] −= err · U[j, j:] (per column inside the block, one GEMM for the columns after
// it). `allowed` (rows×c, may be null) marks the weights that may be kept: the others are pruned
// first in every selection. Writes the mask (true = kept) and returns Σ (w − q)² / U_jj² / 2.
template <class T>
double prune(MatrixView<T> weight, ConstMatrixView<T> u, const bool* dead, const Options& options,
             ConstMatrixView<bool> allowed, MatrixView<bool> mask);

}  // namespace fastprune::sparsegpt
