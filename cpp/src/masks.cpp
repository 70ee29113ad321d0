#include "fastprune/masks.hpp"

#include <algorithm>

namespace fastprune::masks {

template <class T>
void prune_smallest(const T* scores, Index n, Index k, bool* keep, T* scratch) {
  if (k <= 0) {
    std::fill(keep, keep + n, true);
    return;
  }
  if (k >= n) {
    std::fill(keep, keep + n, false);
    return;
  }
  std::copy(scores, scores + n, scratch);
  std::nth_element(scratch, scratch + (k - 1), scratch + n);
  const T threshold = scratch[k - 1];
  // Everything below the threshold is pruned; the rest of the budget goes to the entries equal
  // to it, lowest index first.
  Index below = 0;
  for (Index i = 0; i < n; ++i) below += scores[i] < threshold;
  Index ties_left = k - below;
  for (Index i = 0; i < n; ++i) {
    const T s = scores[i];
    const bool tie_pruned = s == threshold && ties_left > 0;
    ties_left -= tie_pruned;
    keep[i] = !(s < threshold || tie_pruned);
  }
}

template <class T>
void keep_n_of_m(const T* scores, Index cols, int n, int m, bool* keep) {
  const int pruned = m - n;
  for (Index g = 0; g < cols; g += m) {
    const T* s = scores + g;
    // The rank of entry i by (score, index) among its group; the `pruned` lowest ranks go.
    for (int i = 0; i < m; ++i) {
      int rank = 0;
      for (int j = 0; j < m; ++j) rank += (s[j] < s[i]) | ((s[j] == s[i]) & (j < i));
      keep[g + i] = rank >= pruned;
    }
  }
}

template void prune_smallest<float>(const float*, Index, Index, bool*, float*);
template void prune_smallest<double>(const double*, Index, Index, bool*, double*);
template void keep_n_of_m<float>(const float*, Index, int, int, bool*);
template void keep_n_of_m<double>(const double*, Index, int, int, bool*);

}  // namespace fastprune::masks
