#include "fastprune/masks.hpp"

#include <omp.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <limits>
#include <memory>
#include <type_traits>
#include <vector>

#if defined(__SSE2__)
#include <immintrin.h>
#endif

namespace fastprune::masks {

namespace {

// Whether all n values are finite (exponent field not all ones).
template <class T>
bool all_finite(const T* values, Index n) {
  using U = KeyOf<T>;
  constexpr U exponent = sizeof(T) == 4 ? U(0x7F800000u) : U(0x7FF0000000000000ull);
  U bad = 0;
  for (Index i = 0; i < n; ++i) {
    U u;
    std::memcpy(&u, values + i, sizeof u);
    bad |= static_cast<U>((u & exponent) == exponent);
  }
  return bad == 0;
}

constexpr int kMaxDigitBits = 11;  // histograms of at most 2048 bins (16 KiB) stay in L1

// Prunes every score whose key is below the threshold and the first `k - #(key < threshold)`
// of those equal to it (lower index first). One vectorizable pass writes key > threshold and
// counts; only when some entries equal to the threshold stay kept (ties straddling the cut)
// does a second, short pass from the end restore the last of them.
template <class T>
void prune_below_and_first_ties(const T* scores, Index n, Index k, KeyOf<T> threshold, bool* keep) {
  Index below = 0, equal = 0;
  for (Index i = 0; i < n; ++i) {
    const KeyOf<T> key = order_key(scores[i]);
    keep[i] = key > threshold;
    below += key < threshold;
    equal += key == threshold;
  }
  Index tied_kept = equal - (k - below);
  for (Index i = n - 1; tied_kept > 0; --i) {
    if (order_key(scores[i]) == threshold) {
      keep[i] = true;
      --tied_kept;
    }
  }
}

// --- N:M by rank counting --------------------------------------------------------------------
// Entry i of a group ranks by (score, index): its rank is the number of entries j that come
// before it, s_j < s_i or (s_j == s_i and j < i). The m - n lowest ranks are pruned.

template <class T>
void keep_n_of_m_generic(const T* scores, Index cols, int n, int m, bool* keep) {
  const int pruned = m - n;
  for (Index g = 0; g < cols; g += m) {
    const T* s = scores + g;
    for (int i = 0; i < m; ++i) {
      int rank = 0;
      for (int j = 0; j < m; ++j) rank += (s[j] < s[i]) | ((s[j] == s[i]) & (j < i));
      keep[g + i] = rank >= pruned;
    }
  }
}

// SIMD versions for float and m = 4 or 8: one vector holds whole groups; rotating the lanes
// of each group by r = 1 .. m-1 lines every entry up with each other entry j = (i + r) mod m of
// its group. j < i exactly in the lanes where the rotation wrapped (i + r >= m); there a tie
// counts as "before" (<=), elsewhere only a smaller score (<). Each returns the number of
// leading columns it handled (a multiple of the vector width); the caller finishes the rest.

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__)

template <int M>
Index keep_n_of_m_simd(const float* scores, Index cols, int n, bool* keep) {
  static_assert(M == 4 || M == 8);
  const __m512i pruned = _mm512_set1_epi32(M - n);
  const __m512i one = _mm512_set1_epi32(1);
  const __m128i true_bytes = _mm_set1_epi8(1);
  __m512i rotate[M];
  __mmask16 wrapped[M];
  for (int r = 1; r < M; ++r) {
    alignas(64) std::int32_t index[16];
    unsigned wrap = 0;
    for (int lane = 0; lane < 16; ++lane) {
      const int i = lane % M;
      index[lane] = lane - i + (i + r) % M;
      wrap |= static_cast<unsigned>(i + r >= M) << lane;
    }
    rotate[r] = _mm512_load_si512(index);
    wrapped[r] = static_cast<__mmask16>(wrap);
  }
  Index c = 0;
  for (; c + 16 <= cols; c += 16) {
    const __m512 s = _mm512_loadu_ps(scores + c);
    __m512i rank = _mm512_setzero_si512();
    for (int r = 1; r < M; ++r) {
      const __m512 other = _mm512_permutexvar_ps(rotate[r], s);
      const __mmask16 before =
          _mm512_mask_cmp_ps_mask(static_cast<__mmask16>(~wrapped[r]), other, s, _CMP_LT_OQ) |
          _mm512_mask_cmp_ps_mask(wrapped[r], other, s, _CMP_LE_OQ);
      rank = _mm512_mask_add_epi32(rank, before, rank, one);
    }
    const __mmask16 kept = _mm512_cmpge_epi32_mask(rank, pruned);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(keep + c), _mm_maskz_mov_epi8(kept, true_bytes));
  }
  return c;
}

#elif defined(__AVX2__) && defined(__BMI2__)

template <int M>
Index keep_n_of_m_simd(const float* scores, Index cols, int n, bool* keep) {
  static_assert(M == 4 || M == 8);
  const __m256i not_enough = _mm256_set1_epi32(M - n - 1);  // rank > m - n - 1: kept
  __m256i rotate[M];
  __m256 wrapped[M];
  for (int r = 1; r < M; ++r) {
    alignas(32) std::int32_t index[8];
    alignas(32) std::int32_t wrap[8];
    for (int lane = 0; lane < 8; ++lane) {
      const int i = lane % M;
      index[lane] = lane - i + (i + r) % M;
      wrap[lane] = i + r >= M ? -1 : 0;
    }
    rotate[r] = _mm256_load_si256(reinterpret_cast<const __m256i*>(index));
    wrapped[r] = _mm256_castsi256_ps(_mm256_load_si256(reinterpret_cast<const __m256i*>(wrap)));
  }
  Index c = 0;
  for (; c + 8 <= cols; c += 8) {
    const __m256 s = _mm256_loadu_ps(scores + c);
    __m256i rank = _mm256_setzero_si256();
    for (int r = 1; r < M; ++r) {
      const __m256 other = _mm256_permutevar8x32_ps(s, rotate[r]);
      const __m256 before = _mm256_blendv_ps(_mm256_cmp_ps(other, s, _CMP_LT_OQ),
                                             _mm256_cmp_ps(other, s, _CMP_LE_OQ), wrapped[r]);
      rank = _mm256_sub_epi32(rank, _mm256_castps_si256(before));  // before = -1 where true
    }
    const __m256 kept = _mm256_castsi256_ps(_mm256_cmpgt_epi32(rank, not_enough));
    const auto bits = static_cast<std::uint64_t>(_mm256_movemask_ps(kept));
    const std::uint64_t bytes = _pdep_u64(bits, 0x0101010101010101ull);
    std::memcpy(keep + c, &bytes, 8);
  }
  return c;
}

#endif

#if defined(__SSE2__) && !defined(__AVX2__)

// Plain x86-64 (SSE2): one group of 4 per vector, m = 4 only; the masks are blended with
// and/andnot/or (no blendv before SSE4.1).
template <int M>
Index keep_n_of_m_simd(const float* scores, Index cols, int n, bool* keep) {
  static_assert(M == 4);
  const __m128i not_enough = _mm_set1_epi32(M - n - 1);  // rank > m - n - 1: kept
  const __m128 wrapped1 = _mm_castsi128_ps(_mm_setr_epi32(0, 0, 0, -1));
  const __m128 wrapped2 = _mm_castsi128_ps(_mm_setr_epi32(0, 0, -1, -1));
  const __m128 wrapped3 = _mm_castsi128_ps(_mm_setr_epi32(0, -1, -1, -1));
  const auto before = [](__m128 other, __m128 s, __m128 wrapped) {
    return _mm_or_ps(_mm_andnot_ps(wrapped, _mm_cmplt_ps(other, s)),
                     _mm_and_ps(wrapped, _mm_cmple_ps(other, s)));
  };
  Index c = 0;
  for (; c + 4 <= cols; c += 4) {
    const __m128 s = _mm_loadu_ps(scores + c);
    // rotations by 1, 2, 3: lane i meets lane (i + r) mod 4
    const __m128 b1 = before(_mm_shuffle_ps(s, s, _MM_SHUFFLE(0, 3, 2, 1)), s, wrapped1);
    const __m128 b2 = before(_mm_shuffle_ps(s, s, _MM_SHUFFLE(1, 0, 3, 2)), s, wrapped2);
    const __m128 b3 = before(_mm_shuffle_ps(s, s, _MM_SHUFFLE(2, 1, 0, 3)), s, wrapped3);
    __m128i rank = _mm_sub_epi32(_mm_setzero_si128(), _mm_castps_si128(b1));
    rank = _mm_sub_epi32(rank, _mm_castps_si128(b2));
    rank = _mm_sub_epi32(rank, _mm_castps_si128(b3));
    const auto bits = static_cast<std::uint32_t>(
        _mm_movemask_ps(_mm_castsi128_ps(_mm_cmpgt_epi32(rank, not_enough))));
    // bit j of `bits` -> byte j (0 or 1)
    const std::uint32_t bytes = (bits * 0x00204081u) & 0x01010101u;
    std::memcpy(keep + c, &bytes, 4);
  }
  return c;
}

#endif

// The leading columns a SIMD path handled (float, m = 4 or 8 where this level has one).
template <class T>
Index keep_n_of_m_vectorized(const T* scores, Index cols, int n, int m, bool* keep) {
#if (defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__)) || \
    (defined(__AVX2__) && defined(__BMI2__))
  if constexpr (std::is_same_v<T, float>) {
    if (m == 4) return keep_n_of_m_simd<4>(scores, cols, n, keep);
    if (m == 8) return keep_n_of_m_simd<8>(scores, cols, n, keep);
  }
#elif defined(__SSE2__)
  if constexpr (std::is_same_v<T, float>) {
    if (m == 4) return keep_n_of_m_simd<4>(scores, cols, n, keep);
  }
#endif
  (void)scores, (void)cols, (void)n, (void)m, (void)keep;
  return 0;
}

// --- selection over many rows ranked together --------------------------------------------

template <class T>
struct RowRef {
  const T* scores;
  Index cols;
  bool* keep;
};

}  // namespace

// --- row-level primitives ------------------------------------------------------------------

template <class T>
void prune_smallest(const T* scores, Index n, Index k, bool* keep, KeyOf<T>* scratch) {
  if (k <= 0) {
    std::fill(keep, keep + n, true);
    return;
  }
  if (k >= n) {
    std::fill(keep, keep + n, false);
    return;
  }
  KeyOf<T> lo = std::numeric_limits<KeyOf<T>>::max(), hi = 0;
  for (Index i = 0; i < n; ++i) {
    scratch[i] = order_key(scores[i]);
    lo = std::min(lo, scratch[i]);
    hi = std::max(hi, scratch[i]);
  }
  Index below = 0, equal = 0;
  const KeyOf<T> threshold = select_rank(scratch, scratch + n, k - 1, lo, hi, below, equal);
  prune_below_and_first_ties(scores, n, k, threshold, keep);
}

template <class T>
void keep_n_of_m(const T* scores, Index cols, int n, int m, bool* keep) {
  const Index done = keep_n_of_m_vectorized(scores, cols, n, m, keep);
  keep_n_of_m_generic(scores + done, cols - done, n, m, keep + done);
}

// --- matrix-level kernels ------------------------------------------------------------------

template <class T>
bool mask_per_row(ConstMatrixView<T> scores, Index pruned_per_row, MatrixView<bool> keep) {
  if (pruned_per_row < 0 || pruned_per_row > scores.cols) {
    invalid("pruned_per_row must be in [0, cols]");
  }
  int finite = 1;
  const int threads = threads_for(static_cast<double>(scores.size()));
#pragma omp parallel num_threads(threads) reduction(&& : finite)
  {
    std::vector<KeyOf<T>> scratch(static_cast<std::size_t>(scores.cols));
#pragma omp for schedule(static)
    for (Index r = 0; r < scores.rows; ++r) {
      const T* row = scores.row(r);
      const bool ok = all_finite(row, scores.cols);
      finite = finite && ok;
      if (ok) prune_smallest(row, scores.cols, pruned_per_row, keep.row(r), scratch.data());
    }
  }
  return finite != 0;
}

template <class T>
bool mask_n_of_m(ConstMatrixView<T> scores, int n, int m, MatrixView<bool> keep) {
  if (m < 1 || n < 1 || n > m || scores.cols % m != 0) {
    invalid("N:M needs 1 <= n <= m and cols divisible by m");
  }
  int finite = 1;
  const int threads = threads_for(static_cast<double>(scores.size()));
#pragma omp parallel for num_threads(threads) schedule(static) reduction(&& : finite)
  for (Index r = 0; r < scores.rows; ++r) {
    const T* row = scores.row(r);
    keep_n_of_m(row, scores.cols, n, m, keep.row(r));
    finite = finite && all_finite(row, scores.cols);
  }
  return finite != 0;
}

template <class T>
void mask_smallest_overall(const std::vector<ConstMatrixView<T>>& scores, Index pruned,
                           const std::vector<MatrixView<bool>>& keep, std::vector<char>& finite) {
  using U = KeyOf<T>;
  if (keep.size() != scores.size()) invalid("one keep matrix per score matrix is needed");
  std::vector<RowRef<T>> rows;
  std::vector<std::size_t> matrix_of_row;
  Index total = 0;
  for (std::size_t i = 0; i < scores.size(); ++i) {
    const auto& s = scores[i];
    if (keep[i].rows != s.rows || keep[i].cols != s.cols) invalid("keep shape mismatch");
    for (Index r = 0; r < s.rows; ++r) {
      rows.push_back({s.row(r), s.cols, keep[i].row(r)});
      matrix_of_row.push_back(i);
    }
    total += s.size();
  }
  if (pruned < 0 || pruned > total) invalid("pruned must be in [0, total size]");
  const auto nrows = static_cast<Index>(rows.size());
  const int threads = threads_for(static_cast<double>(total));

  // Pass 1: finiteness of every row and the range of all keys.
  std::vector<char> row_finite(rows.size());
  U lo = std::numeric_limits<U>::max(), hi = 0;
#pragma omp parallel for num_threads(threads) schedule(static) reduction(min : lo) \
    reduction(max : hi)
  for (Index r = 0; r < nrows; ++r) {
    const RowRef<T>& row = rows[r];
    row_finite[r] = all_finite(row.scores, row.cols);
    for (Index j = 0; j < row.cols; ++j) {
      const U key = order_key(row.scores[j]);
      lo = std::min(lo, key);
      hi = std::max(hi, key);
    }
  }
  finite.assign(scores.size(), 1);
  for (Index r = 0; r < nrows; ++r) finite[matrix_of_row[r]] &= row_finite[r];
  if (std::find(finite.begin(), finite.end(), 0) != finite.end()) return;

  // Radix passes over all rows, narrowing [lo, hi] to the key of the pruned-th smallest.
  // Every pass re-reads the scores (no candidate copies), at most ceil(bits / 11) passes.
  U threshold = lo;
  if (pruned > 0 && pruned < total) {
    Index k = pruned;
    while (lo != hi) {
      const int shift = std::max(0, detail::bit_width(static_cast<U>(hi - lo)) - kMaxDigitBits);
      const auto bins = static_cast<Index>((hi - lo) >> shift) + 1;
      std::vector<Index> hist(static_cast<std::size_t>(bins * threads), 0);
#pragma omp parallel num_threads(threads)
      {
        Index* mine = hist.data() + bins * omp_get_thread_num();
#pragma omp for schedule(static)
        for (Index r = 0; r < nrows; ++r) {
          const RowRef<T>& row = rows[r];
          for (Index j = 0; j < row.cols; ++j) {
            const U offset = order_key(row.scores[j]) - lo;
            if (offset <= static_cast<U>(hi - lo)) ++mine[offset >> shift];
          }
        }
      }
      for (int t = 1; t < threads; ++t) {
        for (Index b = 0; b < bins; ++b) hist[b] += hist[t * bins + b];
      }
      Index bucket = 0;
      for (; hist[bucket] < k; ++bucket) k -= hist[bucket];
      lo += static_cast<U>(bucket) << shift;
      if (shift == 0) break;
      hi = std::min(hi, static_cast<U>(lo + ((static_cast<U>(1) << shift) - 1)));
    }
    threshold = lo;
  }

  // Per row: how many keys fall below the threshold and how many equal it; the ties pruned
  // are the first ones in row-major order across all matrices.
  std::vector<Index> below(rows.size()), equal(rows.size());
#pragma omp parallel for num_threads(threads) schedule(static)
  for (Index r = 0; r < nrows; ++r) {
    const RowRef<T>& row = rows[r];
    Index b = 0, e = 0;
    for (Index j = 0; j < row.cols; ++j) {
      const U key = order_key(row.scores[j]);
      b += key < threshold;
      e += key == threshold;
    }
    below[r] = b;
    equal[r] = e;
  }
  Index ties_left = pruned;
  for (Index r = 0; r < nrows; ++r) ties_left -= below[r];
  std::vector<Index> ties_in_row(rows.size());
  for (Index r = 0; r < nrows; ++r) {
    ties_in_row[r] = std::min(ties_left, equal[r]);
    ties_left -= ties_in_row[r];
  }
#pragma omp parallel for num_threads(threads) schedule(static)
  for (Index r = 0; r < nrows; ++r) {
    const RowRef<T>& row = rows[r];
    if (pruned == total) {
      std::fill(row.keep, row.keep + row.cols, false);
      continue;
    }
    Index ties = ties_in_row[r];
    for (Index j = 0; j < row.cols; ++j) {
      const U key = order_key(row.scores[j]);
      const bool tie_pruned = key == threshold && ties > 0;
      ties -= tie_pruned;
      row.keep[j] = key >= threshold && !tie_pruned;
    }
  }
}

// Σ p[0..n) in double, with four independent accumulators.
template <class T>
double segment_sum(const T* p, Index n) {
  double s0 = 0, s1 = 0, s2 = 0, s3 = 0;
  Index c = 0;
  for (; c + 4 <= n; c += 4) {
    s0 += static_cast<double>(p[c]);
    s1 += static_cast<double>(p[c + 1]);
    s2 += static_cast<double>(p[c + 2]);
    s3 += static_cast<double>(p[c + 3]);
  }
  for (; c < n; ++c) s0 += static_cast<double>(p[c]);
  return (s0 + s1) + (s2 + s3);
}

template <class T>
bool mask_blocks(ConstMatrixView<T> scores, Index h, Index w, Index pruned_blocks,
                 MatrixView<bool> keep) {
  if (h < 1 || w < 1 || scores.rows % h != 0 || scores.cols % w != 0) {
    invalid("block shape must divide the matrix shape");
  }
  const Index block_rows = scores.rows / h, block_cols = scores.cols / w;
  RowMajor<double> sums = RowMajor<double>::Zero(block_rows, block_cols);
  int finite = 1;
  const int threads = threads_for(static_cast<double>(scores.size()));
  // Work is split into (block row, run of block columns) tasks so that tall blocks (a Column
  // pattern has one block row) still spread over the threads. Each block is summed by one
  // task, row by row, each row's segment with four accumulators: a fixed order whatever the
  // thread count.
  const Index chunks = std::min<Index>(
      block_cols,
      std::max<Index>(1, (4 * threads + block_rows - 1) / std::max<Index>(block_rows, 1)));
  const Index per_chunk = chunks > 0 ? (block_cols + chunks - 1) / chunks : 0;
#pragma omp parallel for collapse(2) num_threads(threads) schedule(static) reduction(&& : finite)
  for (Index bi = 0; bi < block_rows; ++bi) {
    for (Index chunk = 0; chunk < chunks; ++chunk) {
      const Index b0 = chunk * per_chunk, b1 = std::min(block_cols, b0 + per_chunk);
      double* sum = sums.data() + bi * block_cols;
      for (Index r = bi * h; r < (bi + 1) * h && b0 < b1; ++r) {
        const T* row = scores.row(r);
        finite = finite && all_finite(row + b0 * w, (b1 - b0) * w);
        for (Index b = b0; b < b1; ++b) sum[b] += segment_sum(row + b * w, w);
      }
    }
  }
  if (!finite) return false;

  // Sums of finite scores may still overflow to +-Inf in double; Inf has a key like any other
  // value, so the ranking stays exact and only the scores' own finiteness is reported.
  const Index nblocks = sums.size();
  std::unique_ptr<bool[]> block_keep(new bool[static_cast<std::size_t>(nblocks)]);
  std::vector<char> sums_finite;
  mask_smallest_overall<double>(
      {ConstMatrixView<double>{sums.data(), 1, nblocks, nblocks}}, pruned_blocks,
      {MatrixView<bool>{block_keep.get(), 1, nblocks, nblocks}}, sums_finite);
#pragma omp parallel for num_threads(threads) schedule(static)
  for (Index r = 0; r < scores.rows; ++r) {
    const bool* blocks = block_keep.get() + (r / h) * block_cols;
    bool* out = keep.row(r);
    for (Index b = 0; b < block_cols; ++b) std::fill(out + b * w, out + (b + 1) * w, blocks[b]);
  }
  return true;
}

#define FASTPRUNE_MASKS_INSTANTIATE(T)                                                  \
  template void prune_smallest<T>(const T*, Index, Index, bool*, KeyOf<T>*);            \
  template void keep_n_of_m<T>(const T*, Index, int, int, bool*);                       \
  template bool mask_per_row<T>(ConstMatrixView<T>, Index, MatrixView<bool>);           \
  template bool mask_n_of_m<T>(ConstMatrixView<T>, int, int, MatrixView<bool>);         \
  template void mask_smallest_overall<T>(const std::vector<ConstMatrixView<T>>&, Index, \
                                         const std::vector<MatrixView<bool>>&,          \
                                         std::vector<char>&);                           \
  template bool mask_blocks<T>(ConstMatrixView<T>, Index, Index, Index, MatrixView<bool>);

FASTPRUNE_MASKS_INSTANTIATE(float)
FASTPRUNE_MASKS_INSTANTIATE(double)

#undef FASTPRUNE_MASKS_INSTANTIATE

}  // namespace fastprune::masks
