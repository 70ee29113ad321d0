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

// The factors of the damped Hessian, never forming H⁻¹: with J the reversal permutation and L the
// lower Cholesky factor of J·H·J, T = J·L·J is upper triangular with H = T·Tᵀ, and U = T⁻¹ =
// J·L⁻¹·J is the upper Cholesky factor of H⁻¹ (H⁻¹ = Uᵀ U). `hessian` (c×c) is read as
// (H + Hᵀ)/2 and must be symmetric to a relative 1e-4 of its largest entry. Columns with
// H_jj == 0 are dead: dead[j] = true and H_jj = 1. Then damp · mean(diag H) is added to the
// diagonal; when the factorisation fails the relative damping is multiplied by 10 (starting from
// 1e-6 when it is 0) and the factorisation retried, at most `max_tries` times in all.
// inverse_hessian_factor writes U (one blocked factorisation, one blocked triangular inverse),
// hessian_factor writes T (the factorisation alone, kept only when 1 / T_jj is finite too), each
// c×c and zero below the diagonal; both return the relative damping that worked and throw
// std::invalid_argument when every try fails.
// SparseGPT's damping rule, the one definition: dead columns (H_jj == 0) count as H_jj = 1, and
// a relative damping `damp` adds damp · damped_mean_diagonal to the diagonal.
template <class T>
double damped_mean_diagonal(ConstMatrixView<T> hessian, const bool* dead);

// out (c×c, float64) = the damped Hessian that a factor with `dead` columns and relative damping
// `damp` (its damp_used) factorises: H with the dead diagonal entries set to 1, plus the shift on
// the diagonal. Returns the shift. For what needs the damped matrix itself (a refit of the kept
// weights against it).
template <class T>
double damped_hessian(ConstMatrixView<T> hessian, const bool* dead, double damp,
                      MatrixView<double> out);

template <class T>
double inverse_hessian_factor(ConstMatrixView<T> hessian, double damp, int max_tries,
                              MatrixView<T> u, bool* dead);
template <class T>
double hessian_factor(ConstMatrixView<T> hessian, double damp, int max_tries, MatrixView<T> t,
                      bool* dead);

// In place: T (upper triangular) becomes U = T⁻¹. False when U is not finite.
template <class T>
bool invert_factor(MatrixView<T> t);

// The refit of the kept weights for a chosen mask, directly: for each row r, with S its kept
// columns that are not dead, out[r, S] solves H_SS x = gram_target[r, S] (H = `damped`, the
// damped Hessian, positive definite, so that every H_SS is), out[r, j] = 0 elsewhere: one
// Cholesky factorisation of H_SS per row (|S|³/3 multiply-adds) and two triangular solves. Each
// row is solved by one thread, so results do not depend on the number of threads. False when some
// H_SS is not positive definite (its rows are left zero).
bool refit_direct(ConstMatrixView<double> damped, ConstMatrixView<double> gram_target,
                  ConstMatrixView<bool> mask, const bool* dead, MatrixView<double> out);

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

// The same pruning, of `original` into `out` (same shape), from T rather than U: the triangular
// inverse is never formed. With Q the pruned weights and D = W0 − Q the total change (W0 the
// original with dead columns zeroed), Q = W0 − Err·U, so Err = D·T, and the columns [s1, s2) of a
// superblock receive from the columns before it W0 + D[:, :s1] · T[:s1, s1:s2] · U[s1:s2, s1:s2]:
// one GEMM per superblock, against the growing D, which `out` holds until every superblock is
// done. Only the diagonal blocks of U are inverted. The results equal prune's up to rounding.
template <class T>
double prune_from(ConstMatrixView<T> original, ConstMatrixView<T> t, const bool* dead,
                  const Options& options, ConstMatrixView<bool> allowed, MatrixView<T> out,
                  MatrixView<bool> mask);

// --- the one entry point ------------------------------------------------------------------

// Which factor the pruning works from. `automatic` is the solver's own choice; the others exist
// so that tests can run every case on both.
enum class Route { automatic, from_u, from_t };

// Layers with at most c² / kFromTRows rows (c inputs), pruned into a new output, work from T:
// that skips the triangular inverse (c³/3 flops) but costs about four passes over the weight
// (the total change is kept in the output until the last superblock, then turned into the
// pruned weights), so it pays for layers with fewer than about c² / 2048 rows; measured on 4096
// inputs, 4096 rows gained and 11008 lost. Taller layers, and any layer pruned in place, work
// from U.
inline constexpr Index kFromTRows = 2048;

// What a solve starts from: the layer's Hessian, factorised by the solve with `damp` and
// `max_tries` (the rules of inverse_hessian_factor), or a factor from hessian_factor, T and its
// dead columns. `u` is U = T⁻¹ when `u_known`; otherwise, when the route needs U, it is formed
// into `u` (into memory-cache memory when u.data is null) and the outcome says so, so that the
// caller can keep it for the next layer that shares the factor.
template <class T>
struct Source {
  bool from_hessian = true;
  ConstMatrixView<T> hessian{};
  double damp = 0.0;
  int max_tries = 1;
  ConstMatrixView<T> t{};
  const bool* dead = nullptr;
  MatrixView<T> u{};
  bool u_known = false;
};

struct Outcome {
  double loss = 0.0;          // Σ (w − q)² / U_jj² / 2
  double damp_used = 0.0;     // the relative damping that worked (a Hessian source only)
  bool formed_u = false;      // U was written into source.u
  bool weight_finite = true;  // false: the weight holds a NaN or an Inf, and nothing was pruned
};

// SparseGPT on `weight` (rows×c) into `out` (the same memory: in place), with the route chosen
// here: from T (prune_from, reading `weight` where it lies) for a short layer pruned into a new
// output, else from U (prune, on `out` after a copy of the weight when not in place). The mask
// marks the weights of dead columns pruned, whatever the budget said: they are set to 0. With
// `check_weight`, the weight is checked for NaN and Inf in the pass that copies or first reads
// it: when it holds one, nothing is factorised or pruned and the outcome says so.
template <class T>
Outcome solve(ConstMatrixView<T> weight, const Source<T>& source, const Options& options,
              Route route, ConstMatrixView<bool> allowed, MatrixView<T> out, MatrixView<bool> mask,
              bool check_weight);

}  // namespace fastprune::sparsegpt
