// The mask selection of the SparseGPT pruning loop (sparsegpt_prune.cpp), on the column-major
// superblock: one exact-count selection per block for unstructured masks, N of every M per row
// for N:M. The order key and the radix selection are those of the masks (order_key.hpp).
#pragma once

#include <omp.h>

#include <algorithm>
#include <vector>

#include "fastprune/order_key.hpp"
#include "sparsegpt_internal.hpp"

namespace fastprune::sparsegpt::detail {

// --- exact-count selection, in parallel --------------------------------------------------

// Unstructured: the mask of a block, one exact-count selection over all rows × block columns by
// saliency w² / U_jj²: the k smallest by (score, row-major index within the block) are pruned,
// the rule of masks::prune_smallest; weights that may not be kept rank below every other.
//
// Scores are never stored: every pass recomputes them from the block's weights (the same
// expression, so the same bits), which costs less than writing and rereading an array of them.
// While a row tile still holds the block in cache (right after loading it, or after pruning the
// block before it), a fixed sample of about kSamples scores, spread over rows and columns, is
// taken. The sample brackets the threshold: one pass counts the scores below the bracket and
// gathers those inside it, and a radix selection finds the threshold among the gathered ones (a
// sample that misses it costs a second pass, never a wrong answer). Keys below the threshold are
// pruned, keys above it kept, and keys equal to it pruned when all of them fit the budget (the
// usual case), else the first ones in row-major order. Each row tile then marks its own part of
// the block before pruning it. Nothing depends on the thread count.
constexpr Index kSamples = 8192;

// Which scores of a block of `rows` × `cols` are sampled: in column j, rows r with
// (r + j · kSkew) % step == 0 (one per `step` rows, staggered from column to column), stored at
// slot j · per_column + r / step.
struct SamplePlan {
  static constexpr Index kSkew = 37;
  Index rows = 0, cols = 0, step = 1, per_column = 0;
  SamplePlan(Index rows_, Index cols_)
      : rows(rows_),
        cols(cols_),
        step(std::max<Index>(1, rows_ * cols_ / kSamples)),
        per_column((rows_ + step - 1) / step) {}
  // Room for the samples of any block of these rows and at most `cols` columns: with step 1 the
  // whole block, else fewer than 1.5 · kSamples + cols (step > 2/3 of rows · cols / kSamples).
  static Index capacity(Index rows, Index cols) {
    return std::min(rows * cols, 2 * kSamples + cols);
  }
  // The first sampled row of column j at or after row r.
  Index first_row(Index j, Index r) const {
    const Index phase = (r + j * kSkew) % step;
    return phase == 0 ? r : r + step - phase;
  }
};

// Where a block's threshold falls: weights scoring below `threshold` are pruned, and so are those
// equal to it whose row-major index within the block (r · cols + j) is below `tie_end`.
template <class Key>
struct Cut {
  Key threshold = 0;
  Index tie_end = 0;
  // Without branches (the comparisons go either way at random).
  bool pruned(Key key, Index position) const {
    return (key < threshold) | ((key == threshold) & (position < tie_end));
  }
};

// The selection keys of rows [r0, r0 + count) of superblock column `col`: order_key(w² / U_jj²),
// and the key of −inf where the weight may not be kept.
template <class T>
void column_keys(const Superblock<T>& sb, ConstMatrixView<bool> allowed, Index col, Index r0,
                 Index count, KeyOf<T>* keys) {
  const T* w = sb.column(sb.weights, col) + r0;
  const T d2 = sb.u(col, col) * sb.u(col, col);
  for (Index r = 0; r < count; ++r) keys[r] = order_key(w[r] * w[r] / d2);
  if (allowed.data != nullptr) {
    const auto lowest = order_key(-std::numeric_limits<T>::infinity());
    for (Index r = 0; r < count; ++r) {
      if (!allowed(r0 + r, col)) keys[r] = lowest;
    }
  }
}

// Rows of a column whose keys are worked out at once (on the stack).
constexpr Index kKeyChunk = 256;

// The planned samples of rows [r0, r0 + rb) of block [i1, i1 + bc) into `samples`, and the
// weights that may not be kept counted in `forced`.
template <class T>
void sample_rows(const Superblock<T>& sb, ConstMatrixView<bool> allowed, Index i1, Index bc,
                 Index r0, Index rb, KeyOf<T>* samples, Index& forced) {
  const SamplePlan plan(sb.rows, bc);
  for (Index j = 0; j < bc; ++j) {
    const Index col = i1 + j;
    for (Index r = plan.first_row(j, r0); r < r0 + rb; r += plan.step) {
      column_keys(sb, allowed, col, r, 1, &samples[j * plan.per_column + r / plan.step]);
    }
    if (allowed.data != nullptr) {
      for (Index r = r0; r < r0 + rb; ++r) forced += allowed(r, col) ? 0 : 1;
    }
  }
}

// The keys in [lo, hi] of block [i1, i1 + bc), gathered at the front of `gathered` (which has
// room for all of them), their end returned, and the number of keys below lo in `below`.
template <class T, class Key>
Key* gather_between(const Superblock<T>& sb, ConstMatrixView<bool> allowed, Index i1, Index bc,
                    Key lo, Key hi, Key* gathered, Index& below) {
  const Index rows = sb.rows;
  const int threads = static_cast<int>(std::min<Index>(bc, threads_for(double(rows * bc))));
  std::vector<Index> part_end(static_cast<size_t>(threads), 0);
  Index under = 0;
#pragma omp parallel num_threads(threads) reduction(+ : under)
  {
    const int t = omp_get_thread_num(), n = omp_get_num_threads();
    const Index j0 = bc * t / n, j1 = bc * (t + 1) / n;
    Key* out = gathered + j0 * rows;
    Key keys[kKeyChunk];
    for (Index j = j0; j < j1; ++j) {
      Index column_under = 0;
      for (Index r0 = 0; r0 < rows; r0 += kKeyChunk) {
        const Index count = std::min(kKeyChunk, rows - r0);
        column_keys(sb, allowed, i1 + j, r0, count, keys);
        for (Index r = 0; r < count; ++r) {
          // Every key is written and only those inside the bracket are kept: a branch on that
          // test would be mispredicted at random.
          const Key key = keys[r];
          column_under += key < lo ? 1 : 0;
          *out = key;
          out += Key(key - lo) <= Key(hi - lo) ? 1 : 0;
        }
      }
      under += column_under;
    }
    part_end[static_cast<size_t>(t)] = out - gathered;
  }
  below = under;
  Key* last = gathered + part_end[0];
  for (int t = 1; t < threads; ++t) {
    const Index j0 = bc * t / threads;
    last = std::copy(gathered + j0 * rows, gathered + part_end[static_cast<size_t>(t)], last);
  }
  return last;
}

template <class T>
Cut<KeyOf<T>> select_block(const Superblock<T>& sb, ConstMatrixView<bool> allowed, Index i1,
                           Index bc, double sparsity, KeyOf<T>* samples, Index forced,
                           KeyOf<T>* gathered) {
  using Key = KeyOf<T>;
  const Index rows = sb.rows, total = rows * bc;
  const Index k = std::max(static_cast<Index>(static_cast<double>(total) * sparsity), forced);
  if (k <= 0) return {Key(0), 0};                                   // nothing pruned
  if (k >= total) return {std::numeric_limits<Key>::max(), total};  // everything pruned
  // The sampled keys, and a bracket of them around the threshold's share, four standard
  // deviations of a sample's count wide on each side.
  const SamplePlan plan(rows, bc);
  Key* sample_end = samples;
  for (Index j = 0; j < bc; ++j) {
    for (Index r = plan.first_row(j, 0); r < rows; r += plan.step) {
      *sample_end++ = samples[j * plan.per_column + r / plan.step];
    }
  }
  const Index drawn = sample_end - samples;
  const double at = double(k - 1) * double(drawn) / double(total);
  const auto margin = static_cast<Index>(2.0 * std::sqrt(double(drawn))) + 16;
  const Index lo_rank = std::max<Index>(static_cast<Index>(at) - margin, 0);
  const Index hi_rank = std::min<Index>(static_cast<Index>(at) + margin, drawn - 1);
  std::nth_element(samples, samples + lo_rank, sample_end);
  Key lo = samples[lo_rank];
  std::nth_element(samples + lo_rank, samples + hi_rank, sample_end);
  Key hi = samples[hi_rank];
  if (lo_rank == 0) lo = 0;
  if (hi_rank == drawn - 1) hi = std::numeric_limits<Key>::max();
  Index below = 0;
  Key* last = gather_between(sb, allowed, i1, bc, lo, hi, gathered, below);
  if (k - 1 < below) {  // the threshold lies below the bracket
    hi = lo - 1;
    lo = 0;
    last = gather_between(sb, allowed, i1, bc, lo, hi, gathered, below);
  } else if (k - 1 >= below + (last - gathered)) {  // above it
    lo = hi + 1;
    hi = std::numeric_limits<Key>::max();
    last = gather_between(sb, allowed, i1, bc, lo, hi, gathered, below);
  }
  Index less = 0, equal = 0;
  const Key threshold = select_rank(gathered, last, k - 1 - below, lo, hi, less, equal);
  const Index ties_left = k - below - less;  // keys equal to the threshold that are pruned
  if (ties_left == equal) return {threshold, total};
  Index tie = 0;
  for (Index r = 0; r < rows; ++r) {
    for (Index j = 0; j < bc; ++j) {
      Key key;
      column_keys(sb, allowed, i1 + j, r, 1, &key);
      if (key == threshold && ++tie == ties_left) return {threshold, r * bc + j + 1};
    }
  }
  return {threshold, total};  // not reached: ties_left keys equal to the threshold exist
}

// The mask of rows [r0, r0 + rb) of block [i1, i1 + bc) from the block's cut.
template <class T>
void mark_rows(const Superblock<T>& sb, ConstMatrixView<bool> allowed, Index i1, Index bc, Index r0,
               Index rb, const Cut<KeyOf<T>>& cut) {
  KeyOf<T> keys[kKeyChunk];
  for (Index j = 0; j < bc; ++j) {
    T* keep = sb.column(sb.keep, i1 + j);
    for (Index r1 = r0; r1 < r0 + rb; r1 += kKeyChunk) {
      const Index count = std::min(kKeyChunk, r0 + rb - r1);
      column_keys(sb, allowed, i1 + j, r1, count, keys);
      for (Index r = 0; r < count; ++r) {
        keep[r1 + r] = cut.pruned(keys[r], (r1 + r) * bc + j) ? T(0) : T(1);
      }
    }
  }
}

// N:M: the mask of the group of m columns starting at `col`, for rows [r0, r0 + rb), from the
// already-updated weights, along the rows: a weight is kept when its rank by (score, column)
// within its group is at least m − n (the rule of masks::keep_n_of_m); weights that may not be
// kept score below every other and are never kept. `scores` has room for m · rb values.
template <class T>
void choose_groups(const Superblock<T>& sb, ConstMatrixView<bool> allowed, Index r0, Index rb,
                   Index col, const Options& options, T* scores) {
  const int m = options.m, pruned = options.m - options.n;
  for (int g = 0; g < m; ++g) {
    const T* w = sb.column(sb.weights, col + g) + r0;
    const T d2 = sb.u(col + g, col + g) * sb.u(col + g, col + g);
    T* s = scores + g * rb;
    for (Index r = 0; r < rb; ++r) s[r] = w[r] * w[r] / d2;
    if (allowed.data != nullptr) {
      for (Index r = 0; r < rb; ++r) {
        if (!allowed(r0 + r, col + g)) s[r] = -std::numeric_limits<T>::infinity();
      }
    }
  }
  for (int g = 0; g < m; ++g) {
    const T* s = scores + g * rb;
    T* keep = sb.column(sb.keep, col + g) + r0;
    for (Index r = 0; r < rb; ++r) keep[r] = T(0);  // rank of (s[r], g) in its group
    for (int h = 0; h < m; ++h) {
      const T* other = scores + h * rb;
      if (h < g) {
        for (Index r = 0; r < rb; ++r) keep[r] += other[r] <= s[r] ? T(1) : T(0);
      } else if (h > g) {
        for (Index r = 0; r < rb; ++r) keep[r] += other[r] < s[r] ? T(1) : T(0);
      }
    }
    for (Index r = 0; r < rb; ++r) {
      keep[r] = keep[r] >= T(pruned) && s[r] != -std::numeric_limits<T>::infinity() ? T(1) : T(0);
    }
  }
}

}  // namespace fastprune::sparsegpt::detail
