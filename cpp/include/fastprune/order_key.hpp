#pragma once
// Exact-count selection on floats, shared by the mask kernels and the SparseGPT solver: an
// order-preserving integer key per value, and a radix selection of the key of a given rank.
// Both callers rank by (score, index): the selection finds the threshold key, and the caller
// breaks ties at it by position.

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "fastprune/common.hpp"

namespace fastprune {

template <class T>
using KeyOf = std::conditional_t<sizeof(T) == 4, std::uint32_t, std::uint64_t>;

// key(a) < key(b) exactly when a < b, for every non-NaN a, b (−inf < finite < +inf); −0.0 and
// +0.0 get the same key, as they compare equal.
template <class T>
inline KeyOf<T> order_key(T x) {
  using Key = KeyOf<T>;
  constexpr int top = static_cast<int>(sizeof(Key)) * 8 - 1;
  x += T(0);  // -0.0 + 0.0 == +0.0 (exact in round-to-nearest)
  Key bits;
  std::memcpy(&bits, &x, sizeof bits);
  // Negative numbers: flip every bit (larger magnitude = smaller); others: set the sign bit.
  const Key negative = static_cast<Key>(0) - (bits >> top);
  return bits ^ (negative | (static_cast<Key>(1) << top));
}

namespace detail {

template <class Key>
int bit_width(Key v) {
  int w = 0;
  for (; v != 0; v >>= 1) ++w;
  return w;
}

}  // namespace detail

// The key of rank `rank` (from 0) among [first, last), all of them in [lo, hi], with the number
// of keys below it (`below`) and equal to it (`equal`); the keys are reordered and overwritten.
// A radix selection: each pass histograms the keys' offsets from lo (at most 2048 bins, 16 KiB,
// which stay in L1; fewer for fewer keys, so a short pass does not clear a large histogram),
// keeps the keys of the bin holding the rank, compacted in place, and narrows [lo, hi] to that
// bin. When few keys are left, nth_element finishes. O(n) work in all.
template <class Key>
Key select_rank(Key* first, Key* last, Index rank, Key lo, Key hi, Index& below, Index& equal) {
  constexpr int kMaxBits = 11;
  constexpr Index kFew = 256;
  below = 0;
  while (last - first > kFew && lo < hi) {
    const int digits =
        std::clamp(detail::bit_width(static_cast<std::uint64_t>(last - first)), 4, kMaxBits);
    const int shift = std::max(0, detail::bit_width(Key(hi - lo)) - digits);
    Index bins[Index(1) << kMaxBits];
    const Index used = static_cast<Index>(Key(hi - lo) >> shift) + 1;
    std::fill(bins, bins + used, Index(0));
    for (const Key* k = first; k != last; ++k) ++bins[Key(*k - lo) >> shift];
    Index bin = 0;
    while (rank >= bins[bin]) {
      rank -= bins[bin];
      below += bins[bin];
      ++bin;
    }
    Key* kept = first;
    for (const Key* k = first; k != last; ++k) {
      const Key key = *k;
      *kept = key;  // kept <= k: compaction in place is safe
      kept += Index(Key(key - lo) >> shift) == bin ? 1 : 0;
    }
    last = kept;
    lo = Key(lo + (Key(bin) << shift));  // the bin's range, within the old one
    hi = Key(lo + std::min<Key>(Key(hi - lo), Key((Key(1) << shift) - 1)));
  }
  std::nth_element(first, first + rank, last);
  const Key key = first[rank];
  below += std::count_if(first, last, [&](Key k) { return k < key; });
  equal = std::count(first, last, key);
  return key;
}

}  // namespace fastprune
