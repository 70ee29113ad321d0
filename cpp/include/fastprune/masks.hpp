// Sparsity-mask selection. A mask is an array of bool, true = the weight is kept.
//
// Ties are deterministic everywhere: scores are ranked by (score, index), so among equal
// scores the lower index is pruned first. Scores must be free of NaN (checked by callers).
#pragma once

#include "fastprune/common.hpp"

namespace fastprune::masks {

// keep[i] = false for the k smallest of the n scores by (score, index), true for the rest.
// O(n): one partial selection on `scratch` (room for n values) and one pass. 0 <= k <= n.
template <class T>
void prune_smallest(const T* scores, Index n, Index k, bool* keep, T* scratch);

// N:M along one row of `cols` scores (cols % m == 0, 1 <= n <= m): in every group of m
// consecutive scores the n largest are kept and the m - n smallest pruned.
template <class T>
void keep_n_of_m(const T* scores, Index cols, int n, int m, bool* keep);

}  // namespace fastprune::masks
