// Sparsity-mask selection. A mask is an array of bool, true = the weight is kept.
//
// Ties are deterministic everywhere: scores are ranked by (score, index), so among equal
// scores the lower index is pruned first (-0.0 and +0.0 are equal scores). Selection never
// sorts: it is an O(n) radix selection on the scores' order-preserving integer keys, or a
// rank count inside each group for N:M.
//
// The matrix-level kernels below also tell whether every score was finite: they return false
// when a NaN or Inf was seen, and the mask they wrote must then be thrown away. (Checking
// inside the kernel costs nothing measurable; a separate pass would cost a read of the
// scores.) The row-level primitives expect finite scores; given a NaN they still stay in
// bounds, but their answer is meaningless.
#pragma once

#include <vector>

#include "fastprune/common.hpp"
#include "fastprune/order_key.hpp"

namespace fastprune::masks {

// --- row-level primitives (also used by the SparseGPT solver) ---------------------------

// keep[i] = false for the k smallest of the n scores by (score, index), true for the rest.
// O(n): a radix selection of the threshold on the scores' keys in `scratch` (room for n keys)
// and one pass. 0 <= k <= n.
template <class T>
void prune_smallest(const T* scores, Index n, Index k, bool* keep, KeyOf<T>* scratch);

// N:M along one row of `cols` scores (cols % m == 0, 1 <= n <= m): in every group of m
// consecutive scores the n largest are kept and the m - n smallest pruned.
template <class T>
void keep_n_of_m(const T* scores, Index cols, int n, int m, bool* keep);

// --- matrix-level kernels (threads over rows; results never depend on the thread count) --

// Unstructured, per row: exactly `pruned_per_row` (<= cols) of every row pruned.
template <class T>
bool mask_per_row(ConstMatrixView<T> scores, Index pruned_per_row, MatrixView<bool> keep);

// N:M, per row: in every group of m consecutive columns the n largest kept (cols % m == 0).
template <class T>
bool mask_n_of_m(ConstMatrixView<T> scores, int n, int m, MatrixView<bool> keep);

// Unstructured over several matrices ranked together, as if their rows were concatenated in
// order (matrix 0 row-major, then matrix 1, ...): exactly `pruned` entries pruned in total.
// finite[i] tells whether matrix i held only finite scores. `keep[i]` has scores[i]'s shape.
template <class T>
void mask_smallest_overall(const std::vector<ConstMatrixView<T>>& scores, Index pruned,
                           const std::vector<MatrixView<bool>>& keep, std::vector<char>& finite);

// Blocks of h x w (rows % h == 0, cols % w == 0) ranked by their summed score (summed in
// double): exactly `pruned_blocks` blocks pruned, ties by block index in row-major block
// order. Row pruning is Block(1, cols), column pruning Block(rows, 1).
template <class T>
bool mask_blocks(ConstMatrixView<T> scores, Index h, Index w, Index pruned_blocks,
                 MatrixView<bool> keep);

}  // namespace fastprune::masks
