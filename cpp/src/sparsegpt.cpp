#include "fastprune/sparsegpt.hpp"

#include <omp.h>

#if defined(__AVX2__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <iomanip>
#include <iterator>
#include <limits>
#include <sstream>
#include <type_traits>
#include <vector>

#include "fastprune/blas.hpp"
#include "fastprune/order_key.hpp"
#include "fastprune/simd.hpp"

namespace fastprune::sparsegpt {
namespace {

// Side of the square tiles in which the Hessian is walked (both the tile and its mirror image
// stay cached).
constexpr Index kTile = 128;

// Elements worth a thread of their own in the passes that only move data (copies, transposes):
// below that, waking a second thread costs more than it saves.
constexpr double kCopyGrain = double(1 << 18);

// Rows per tile of the pruning loop's block step (panels, in-block and in-superblock GEMMs).
constexpr Index kRowTile = 128;

// An Eigen view of rows [row, row + rows) and columns [col, col + cols) of `a` (no copy).
template <class T>
auto block(const MatrixView<T>& a, Index row, Index col, Index rows, Index cols) {
  return eigen_map(MatrixView<T>{a.data + row * a.stride + col, rows, cols, a.stride});
}

// An Eigen view of `size` consecutive elements.
template <class T>
auto segment(T* data, Index size) {
  using Plain = Eigen::Matrix<std::remove_const_t<T>, 1, Eigen::Dynamic>;
  return Eigen::Map<std::conditional_t<std::is_const_v<T>, const Plain, Plain>>(data, size);
}

// Called first in a parallel region whose tiles run Eigen products: they then stay on the calling
// thread. Eigen would otherwise start its own team when the region has a single thread, with a
// blocking (and so a rounding) that depends on the thread count.
void keep_products_on_this_thread() { omp_set_num_threads(1); }

// Threads for `tiles` row tiles of the pruning loop: at least two tiles and 8 M flops each, so
// that small layers stay on fewer threads than would wait on one another.
int tile_threads(Index tiles, double flops_per_tile) {
  return std::min(static_cast<int>(std::max<Index>(tiles / 2, 1)),
                  threads_for(flops_per_tile * static_cast<double>(tiles), 1 << 23));
}

std::string number(double x) {
  std::ostringstream s;
  s << std::setprecision(6) << x;
  return s.str();
}

// --- T = J · chol(J·H·J) · J and U = T⁻¹ ---------------------------------------------

// Lower triangle of a = J · (H + Hᵀ)/2 · J, with dead diagonal entries set to 1 and `shift` added
// to the diagonal (the upper triangle of `a` is left as it was), and the largest |H_ij| and
// |H_ij − H_ji| met on the way. Rows of square tiles in parallel; a tile and its mirror image stay
// cached.
template <class T>
void load_reversed(ConstMatrixView<T> h, const bool* dead, double shift, MatrixView<T> a,
                   double& largest, double& defect) {
  const Index c = h.rows, tiles = (c + kTile - 1) / kTile;
  double big = 0.0, worst = 0.0;
#pragma omp parallel for schedule(dynamic, 1) reduction(max : big, worst) \
    num_threads(threads_for(double(c) * double(c) / 2.0, kCopyGrain))
  for (Index t = 0; t < tiles; ++t) {
    const Index i0 = (tiles - 1 - t) * kTile;  // the longest rows of tiles first
    for (Index j0 = 0; j0 <= i0; j0 += kTile) {
      for (Index i = i0; i < std::min(i0 + kTile, c); ++i) {
        for (Index j = j0; j < std::min(j0 + kTile, i + 1); ++j) {
          const Index hi = c - 1 - i, hj = c - 1 - j;
          const T x = h(hi, hj), y = h(hj, hi);
          a(i, j) = (x + y) / T(2);
          big = std::max({big, std::abs(double(x)), std::abs(double(y))});
          worst = std::max(worst, std::abs(double(x) - double(y)));
        }
      }
    }
  }
  largest = big;
  defect = worst;
  for (Index i = 0; i < c; ++i) {
    const Index hi = c - 1 - i;
    a(i, i) = static_cast<T>((dead[hi] ? 1.0 : static_cast<double>(a(i, i))) + shift);
  }
}

// a = J · a · J: element (i, j) trades places with (c−1−i, c−1−j), so that a lower triangle
// becomes an upper one and the other way round.
template <class T>
void half_turn(MatrixView<T> a) {
  const Index c = a.rows;
#pragma omp parallel for schedule(static) \
    num_threads(threads_for(double(c) * double(c), kCopyGrain))
  for (Index i = 0; i < c / 2; ++i) {
    T* top = a.row(i);
    T* bottom = a.row(c - 1 - i);
    std::swap_ranges(top, top + c, std::reverse_iterator<T*>(bottom + c));
  }
  if (c % 2 == 1) std::reverse(a.row(c / 2), a.row(c / 2) + c);
}

// Zeroes the strict lower triangle of `a`; false when its upper triangle is not finite with a
// positive diagonal.
template <class T>
bool zero_below_and_check(MatrixView<T> a) {
  const Index c = a.rows;
  bool ok = true;
#pragma omp parallel for schedule(static) reduction(&& : ok) \
    num_threads(threads_for(double(c) * double(c), kCopyGrain))
  for (Index i = 0; i < c; ++i) {
    T* r = a.row(i);
    std::fill(r, r + i, T(0));
    ok = ok && r[i] > T(0);
    for (Index j = i; j < c; ++j) ok = ok && std::isfinite(r[j]);
  }
  return ok;
}

// The factor J · a · J in the upper triangle of `a` (its lower triangle the factor until now,
// the rest zeroed); false when it is not finite with a positive diagonal.
template <class T>
bool reverse_into_upper(MatrixView<T> a) {
  half_turn(a);
  return zero_below_and_check(a);
}

// --- the pruning loop ---------------------------------------------------------------------
//
// Four levels of laziness, all exact: inside a panel of a few columns each pruned weight's
// update reaches the rest of the panel as an axpy along the rows; a panel's errors reach the
// rest of its block as one small GEMM; a block's errors reach the rest of its superblock as one
// GEMM; and a superblock's errors reach every column after it as one large GEMM. A block (the
// unit of mask selection) is fully updated before its mask is chosen, as in the reference.

// Columns per panel: a multiple of m, so that an N:M group never straddles two panels.
Index panel_width(const Options& options) {
  return options.m > 0 ? options.m * std::max(1, 32 / options.m) : 32;
}

// Columns per superblock: whole blocks, about 256 columns (a deep enough GEMM after each one, and
// less of the work inside superblocks, where it runs slower).
Index superblock_width(const Options& options) {
  return options.blocksize * std::max<Index>(1, 256 / options.blocksize);
}

// Distance between consecutive columns of a superblock: the rows rounded up to whole 64-byte
// lines, and an odd number of lines, so that the columns of a panel fall into different cache
// sets (4096 rows of floats, 16 KB apart, would all compete for the same few sets).
Index column_stride(Index rows) {
  Index ld = (rows + 15) / 16 * 16;
  if ((ld / 16) % 2 == 0) ld += 16;
  return ld;
}

template <class T>
using ColumnMajor = Eigen::Map<Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::ColMajor>,
                               Eigen::Unaligned, Eigen::OuterStride<>>;

// Columns [s1, s2) of the weights being pruned, their errors and their mask (1 kept, 0 pruned),
// held column-major (a column's rows are contiguous, columns `ld` apart) so that the per-column
// work runs along rows, and U[s1:s2, s1:s2], the part of U that the work inside the superblock
// reads. Columns are numbered as in the whole weight.
template <class T>
struct Superblock {
  Index rows = 0, ld = 0, s1 = 0, s2 = 0;
  T* weights = nullptr;
  T* errors = nullptr;
  T* keep = nullptr;
  ConstMatrixView<T> u_diagonal;

  T* column(T* base, Index j) const { return base + (j - s1) * ld; }
  ColumnMajor<T> view(T* base, Index r0, Index j0, Index rb, Index cols) const {
    return {column(base, j0) + r0, rb, cols, Eigen::OuterStride<>(ld)};
  }
  T u(Index i, Index j) const { return u_diagonal(i - s1, j - s1); }
  const T* u_ptr(Index i, Index j) const { return &u_diagonal(i - s1, j - s1); }
  Index u_stride() const { return u_diagonal.stride; }
  auto u_block(Index i, Index j, Index rb, Index cols) const {
    return block(u_diagonal, i - s1, j - s1, rb, cols);
  }
};

// 8 × 8 transposes of float tiles (dst(k, i) = src(i, k)): in AVX registers where the core is
// built for AVX2, element by element otherwise.
constexpr Index kSquare = 8;

#if defined(__AVX2__)
void transpose8(const float* src, Index src_stride, float* dst, Index dst_stride) {
  __m256 r[8], t[8];
  for (int i = 0; i < 8; ++i) r[i] = _mm256_loadu_ps(src + i * src_stride);
  for (int i = 0; i < 8; i += 2) {
    t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);
    t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
  }
  for (int i = 0; i < 8; i += 4) {
    r[i] = _mm256_shuffle_ps(t[i], t[i + 2], _MM_SHUFFLE(1, 0, 1, 0));
    r[i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], _MM_SHUFFLE(3, 2, 3, 2));
    r[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], _MM_SHUFFLE(1, 0, 1, 0));
    r[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], _MM_SHUFFLE(3, 2, 3, 2));
  }
  for (int i = 0; i < 4; ++i) {
    _mm256_storeu_ps(dst + i * dst_stride, _mm256_permute2f128_ps(r[i], r[i + 4], 0x20));
    _mm256_storeu_ps(dst + (i + 4) * dst_stride, _mm256_permute2f128_ps(r[i], r[i + 4], 0x31));
  }
}

// The mask of an 8 × 8 tile of column-major keep values (1 or 0) into row-major bools.
void transpose8_mask(const float* keep, Index keep_stride, bool* mask, Index mask_stride) {
  alignas(32) float tile[64];
  transpose8(keep, keep_stride, tile, 8);
  for (int i = 0; i < 8; ++i) {
    const auto bits = static_cast<unsigned>(_mm256_movemask_ps(
        _mm256_cmp_ps(_mm256_load_ps(tile + 8 * i), _mm256_setzero_ps(), _CMP_NEQ_UQ)));
    const std::uint64_t bytes = _pdep_u64(bits, 0x0101010101010101ULL);
    std::memcpy(mask + i * mask_stride, &bytes, 8);
  }
}
#else
void transpose8(const float* src, Index src_stride, float* dst, Index dst_stride) {
  for (Index i = 0; i < 8; ++i) {
    for (Index k = 0; k < 8; ++k) dst[k * dst_stride + i] = src[i * src_stride + k];
  }
}

void transpose8_mask(const float* keep, Index keep_stride, bool* mask, Index mask_stride) {
  for (Index i = 0; i < 8; ++i) {
    for (Index k = 0; k < 8; ++k) mask[i * mask_stride + k] = keep[k * keep_stride + i] != 0.0f;
  }
}
#endif

// Walks rows [r0, r0 + rb) of the superblock's columns in kSquare × kSquare float squares,
// kSquare rows at a time across all the columns: the row-major side is then read or written in
// a few long runs (a run per row) rather than in as many short ones as there are rows, and the
// column-major lines touched stay cached until the next kSquare rows complete them.
// `square(r, j0)` for every whole square, `element(r, j)` for the rest.
template <class T, class Square, class Element>
void walk_squares(const Superblock<T>& sb, Index r0, Index rb, Square&& square, Element&& element) {
  const Index whole =
      std::is_same_v<T, float> ? sb.s1 + (sb.s2 - sb.s1) / kSquare * kSquare : sb.s1;
  Index r = r0;
  if (whole > sb.s1) {
    for (; r + kSquare <= r0 + rb; r += kSquare) {
      for (Index j0 = sb.s1; j0 < whole; j0 += kSquare) square(r, j0);
    }
  }
  for (Index i = r0; i < r; ++i) {
    for (Index j = whole; j < sb.s2; ++j) element(i, j);
  }
  for (Index i = r; i < r0 + rb; ++i) {
    for (Index j = sb.s1; j < sb.s2; ++j) element(i, j);
  }
}

// Copies rows [r0, r0 + rb) of the superblock's columns from `source`, row-major, whose column
// 0 is the superblock's first, into the column-major superblock (dead columns as zeros).
template <class T>
void load_rows(ConstMatrixView<T> source, const bool* dead, const Superblock<T>& sb, Index r0,
               Index rb) {
  walk_squares(
      sb, r0, rb,
      [&](Index r, Index j0) {
        if constexpr (std::is_same_v<T, float>) {
          transpose8(&source(r, j0 - sb.s1), source.stride, sb.column(sb.weights, j0) + r, sb.ld);
        }
      },
      [&](Index r, Index j) { sb.column(sb.weights, j)[r] = source(r, j - sb.s1); });
  for (Index j = sb.s1; j < sb.s2; ++j) {
    if (dead[j]) std::fill_n(sb.column(sb.weights, j) + r0, rb, T(0));
  }
}

// Copies the pruned weights and the mask of rows [r0, r0 + rb) back to row-major, into `weight`
// and `mask` whose column 0 is the superblock's first.
template <class T>
void store_rows(MatrixView<T> weight, MatrixView<bool> mask, const Superblock<T>& sb, Index r0,
                Index rb) {
  walk_squares(
      sb, r0, rb,
      [&](Index r, Index j0) {
        if constexpr (std::is_same_v<T, float>) {
          transpose8(sb.column(sb.weights, j0) + r, sb.ld, &weight(r, j0 - sb.s1), weight.stride);
          transpose8_mask(sb.column(sb.keep, j0) + r, sb.ld, &mask(r, j0 - sb.s1), mask.stride);
        }
      },
      [&](Index r, Index j) {
        weight(r, j - sb.s1) = sb.column(sb.weights, j)[r];
        mask(r, j - sb.s1) = sb.column(sb.keep, j)[r] != T(0);
      });
}

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

// The SIMD registers of the panel updates: the widest of the build.
constexpr int kVectorBytes = simd::kWidestBytes;
template <class T>
using Vec = simd::Vec<T, kVectorBytes>;

// w[r] −= Σ_j u[j · u_stride] · e[j · e_stride + r] for r < rows, j < count, the terms taken in
// order of j (the order of the column-by-column updates it replaces, so the result is the same
// to the bit). R registers of consecutive rows are updated at once, their accumulators staying in
// registers while the errors stream past.
template <int R, class T>
Index subtract_errors_tiles(T* w, const T* e, Index e_stride, const T* u, Index u_stride,
                            Index count, Index r, Index rows) {
  constexpr Index L = kVectorBytes / sizeof(T);
  for (; r + R * L <= rows; r += R * L) {
    Vec<T> acc[R];
    for (int a = 0; a < R; ++a) acc[a] = simd::load<kVectorBytes>(w + r + a * L);
    for (Index j = 0; j < count; ++j) {
      const Vec<T> f = Vec<T>{} + u[j * u_stride];
      const T* ej = e + j * e_stride + r;
      for (int a = 0; a < R; ++a) acc[a] -= f * simd::load<kVectorBytes>(ej + a * L);
    }
    for (int a = 0; a < R; ++a) simd::store(w + r + a * L, acc[a]);
  }
  return r;
}

template <class T>
void subtract_errors(T* w, const T* e, Index e_stride, const T* u, Index u_stride, Index count,
                     Index rows) {
  if (count == 0) return;
  Index r = subtract_errors_tiles<8>(w, e, e_stride, u, u_stride, count, 0, rows);
  r = subtract_errors_tiles<1>(w, e, e_stride, u, u_stride, count, r, rows);
  for (; r < rows; ++r) {
    T x = w[r];
    for (Index j = 0; j < count; ++j) x -= u[j * u_stride] * e[j * e_stride + r];
    w[r] = x;
  }
}

// Rows [r0, r0 + rb) of panel [p1, p1 + pc), group by group (m columns for N:M, one column
// otherwise): bring the group's columns up to date with the errors of the panel's columns before
// it, choose (N:M) or read (unstructured) the mask, then column by column zero the pruned
// weights, record err = (w − q) / U_jj and update the rest of the group,
// W[:, j+1:g2] −= err · U[j, j+1:g2]. Every weight receives the same updates in the same order
// as in the column-by-column loop of the reference.
template <class T>
void prune_panel(const Superblock<T>& sb, ConstMatrixView<bool> allowed, Index r0, Index rb,
                 Index p1, Index pc, const Options& options, T* group_scores, double* row_loss) {
  const Index group = options.m > 0 ? options.m : 1;
  const T* panel_errors = sb.column(sb.errors, p1) + r0;
  for (Index g1 = p1; g1 < p1 + pc; g1 += group) {
    const Index g2 = g1 + group;
    for (Index k = g1; k < g2; ++k) {
      subtract_errors(sb.column(sb.weights, k) + r0, panel_errors, sb.ld, sb.u_ptr(p1, k),
                      sb.u_stride(), g1 - p1, rb);
    }
    if (options.m > 0) choose_groups(sb, allowed, r0, rb, g1, options, group_scores);
    for (Index col = g1; col < g2; ++col) {
      const T d = sb.u(col, col);
      T* w = sb.column(sb.weights, col) + r0;
      T* e = sb.column(sb.errors, col) + r0;
      const T* keep = sb.column(sb.keep, col) + r0;
      for (Index r = 0; r < rb; ++r) {
        const T q = keep[r] != T(0) ? w[r] : T(0);
        e[r] = (w[r] - q) / d;
        w[r] = q;
      }
      for (Index r = 0; r < rb; ++r) {
        row_loss[r0 + r] += static_cast<double>(e[r]) * static_cast<double>(e[r]);
      }
      for (Index k = col + 1; k < g2; ++k) {
        segment(sb.column(sb.weights, k) + r0, rb) -= sb.u(col, k) * segment(e, rb);
      }
    }
  }
}

// Everything rows [r0, r0 + rb) need for block [i1, i2): its panels one after the other, each
// followed by the GEMM that brings its errors to the rest of the block, then the GEMM that
// brings the block's errors to the rest of the superblock.
template <class T>
void prune_tile_of_block(const Superblock<T>& sb, ConstMatrixView<bool> allowed, Index r0, Index rb,
                         Index i1, Index i2, const Options& options, T* group_scores,
                         double* row_loss) {
  const Index panel = panel_width(options);
  for (Index p1 = i1; p1 < i2; p1 += panel) {
    const Index p2 = std::min(p1 + panel, i2);
    prune_panel(sb, allowed, r0, rb, p1, p2 - p1, options, group_scores, row_loss);
    if (p2 < i2) {
      sb.view(sb.weights, r0, p2, rb, i2 - p2).noalias() -=
          sb.view(sb.errors, r0, p1, rb, p2 - p1) * sb.u_block(p1, p2, p2 - p1, i2 - p2);
    }
  }
  if (i2 < sb.s2) {
    sb.view(sb.weights, r0, i2, rb, sb.s2 - i2).noalias() -=
        sb.view(sb.errors, r0, i1, rb, i2 - i1) * sb.u_block(i1, i2, i2 - i1, sb.s2 - i2);
  }
}

// W[:, s2:] −= Err[:, s1:s2] · U[s1:s2, s2:]: one GEMM (the column-major errors are the
// row-major (s2 − s1) × rows matrix Errᵀ).
template <class T>
void update_after_superblock(MatrixView<T> weight, ConstMatrixView<T> u, const Superblock<T>& sb) {
  const Index rows = weight.rows, c = weight.cols, sc = sb.s2 - sb.s1;
  const ConstMatrixView<T> errors_t{sb.errors, sc, rows, sb.ld};
  const ConstMatrixView<T> u_right{u.data + sb.s1 * u.stride + sb.s2, sc, c - sb.s2, u.stride};
  const MatrixView<T> weight_right{weight.data + sb.s2, rows, c - sb.s2, weight.stride};
  blas::gemm(true, false, T(-1), errors_t, u_right, T(1), weight_right);
}

// Columns [j0, j0 + count) of `a`.
template <class T>
MatrixView<T> columns(MatrixView<T> a, Index j0, Index count) {
  return {a.data + j0, a.rows, count, a.stride};
}
template <class T>
ConstMatrixView<T> read_columns(MatrixView<T> a, Index j0, Index count) {
  return {a.data + j0, a.rows, count, a.stride};
}

// The superblocks one after the other: `prepare(s1, s2)` brings the columns [s1, s2) up to date
// with the errors of the columns before them, or readies what `load` needs for that, and returns
// U[s1:s2, s1:s2]; `load(sb, r0, rb)` fills rows of the column-major superblock with their
// up-to-date weights, `store(sb, r0, rb)` writes them out once pruned, and `finish(sb)` runs
// after every row of the superblock is stored (its errors still in `sb.errors`). Returns
// Σ (w − q)² / U_jj² / 2.
template <class T, class Prepare, class Load, class Store, class Finish>
double prune_superblocks(Index rows, Index c, const Options& options, ConstMatrixView<bool> allowed,
                         Prepare&& prepare, Load&& load, Store&& store, Finish&& finish) {
  const Index bmax = std::min(options.blocksize, std::max<Index>(c, 1));
  const Index smax = std::min(superblock_width(options), std::max<Index>(c, 1));
  const auto superblock_size = static_cast<size_t>(column_stride(rows) * smax);
  const Scratch<T> sb_weights(superblock_size), sb_errors(superblock_size),
      sb_keep(superblock_size);
  const bool unstructured = options.m == 0;
  using Key = KeyOf<T>;
  const Scratch<Key> gathered(static_cast<size_t>(unstructured ? rows * bmax : 0));
  const Scratch<Key> samples(
      static_cast<size_t>(unstructured ? SamplePlan::capacity(rows, bmax) : 0));
  Index forced = 0;  // weights of the next block to select that may not be kept
  std::vector<double> row_loss(static_cast<size_t>(rows), 0.0);
  const Index tiles = (rows + kRowTile - 1) / kRowTile;
  const auto tile_rows = [&](Index t) { return std::min(kRowTile, rows - t * kRowTile); };
  const int copy_threads = threads_for(double(rows) * double(smax), kCopyGrain);

  for (Index s1 = 0; s1 < c; s1 += smax) {
    const Index s2 = std::min(s1 + smax, c);
    const Superblock<T> sb{
        rows,           column_stride(rows), s1, s2, sb_weights.data(), sb_errors.data(),
        sb_keep.data(), prepare(s1, s2)};
    if (!unstructured) {
      // N:M masks are chosen row by row, so nothing couples the row tiles: each is loaded,
      // pruned block by block and stored on its own, its columns cached throughout.
      double tile_flops = 0.0;
      for (Index i1 = s1; i1 < sb.s2; i1 += options.blocksize) {
        const Index bc = std::min(options.blocksize, sb.s2 - i1);
        tile_flops += double(kRowTile) * double(bc) * double(sb.s2 - i1);
      }
#pragma omp parallel num_threads(tile_threads(tiles, tile_flops))
      {
        keep_products_on_this_thread();
        std::vector<T> group_scores(static_cast<size_t>(options.m * kRowTile));
#pragma omp for schedule(static)
        for (Index t = 0; t < tiles; ++t) {
          const Index r0 = t * kRowTile, rb = tile_rows(t);
          load(sb, r0, rb);
          for (Index i1 = s1; i1 < sb.s2; i1 += options.blocksize) {
            prune_tile_of_block(sb, allowed, r0, rb, i1, std::min(i1 + options.blocksize, sb.s2),
                                options, group_scores.data(), row_loss.data());
          }
          store(sb, r0, rb);
        }
      }
    } else {
      // Each block's selection spans every row, so the row tiles meet before it: the tiles
      // sample the block's scores while they still hold it (after loading it, or after the
      // block before it), and the last block's tiles are stored as soon as they are pruned.
      const Index first_block = std::min(options.blocksize, sb.s2 - s1);
      forced = 0;
#pragma omp parallel for schedule(static) reduction(+ : forced) num_threads(copy_threads)
      for (Index t = 0; t < tiles; ++t) {
        load(sb, t * kRowTile, tile_rows(t));
        sample_rows(sb, allowed, s1, first_block, t * kRowTile, tile_rows(t), samples.data(),
                    forced);
      }
      for (Index i1 = s1; i1 < sb.s2; i1 += options.blocksize) {
        const Index i2 = std::min(i1 + options.blocksize, sb.s2);
        const Index next_block = std::min(options.blocksize, sb.s2 - i2);  // 0 after the last
        const auto cut = select_block(sb, allowed, i1, i2 - i1, options.sparsity, samples.data(),
                                      forced, gathered.data());
        forced = 0;
        const double tile_flops = double(kRowTile) * double(i2 - i1) * double(sb.s2 - i1);
#pragma omp parallel for schedule(static) reduction(+ : forced) \
    num_threads(tile_threads(tiles, tile_flops))
        for (Index t = 0; t < tiles; ++t) {
          keep_products_on_this_thread();
          const Index r0 = t * kRowTile, rb = tile_rows(t);
          mark_rows(sb, allowed, i1, i2 - i1, r0, rb, cut);
          prune_tile_of_block(sb, allowed, r0, rb, i1, i2, options, static_cast<T*>(nullptr),
                              row_loss.data());
          if (next_block > 0) {
            sample_rows(sb, allowed, i2, next_block, r0, rb, samples.data(), forced);
          } else {
            store(sb, r0, rb);
          }
        }
      }
    }
    finish(sb);
  }
  double loss = 0.0;
  for (const double l : row_loss) loss += l;
  return loss / 2.0;
}

void check_options(const Options& options) {
  if (options.blocksize < 1) invalid("blocksize: must be a positive integer");
  if (options.m > 0) {
    if (options.n < 1 || options.n > options.m) invalid("pattern: need 1 <= n <= m");
    if (options.blocksize % options.m != 0) invalid("blocksize: must be a multiple of m");
  } else if (!(options.sparsity >= 0.0 && options.sparsity < 1.0)) {
    invalid("sparsity: must be in [0, 1)");
  }
}

template <class T>
void check_shapes(Index rows, Index c, Index factor_rows, Index factor_cols, const Options& options,
                  ConstMatrixView<bool> allowed, MatrixView<bool> mask) {
  if (factor_rows != c || factor_cols != c) {
    invalid("factor: expected shape (in_features, in_features)");
  }
  if (mask.rows != rows || mask.cols != c) invalid("mask: expected the shape of the weight");
  if (allowed.data != nullptr && (allowed.rows != rows || allowed.cols != c)) {
    invalid("keep_mask: expected the shape of the weight");
  }
  check_options(options);
  if (options.m > 0 && c % options.m != 0) invalid("pattern: in_features must be a multiple of m");
}

// Which factor `factorise` writes: T, or U = T⁻¹ (one triangular inverse more). Loading, the
// symmetry check and the damping loop are the same for both.
enum class Factor { kUpper, kInverse };

template <class T>
double factorise(ConstMatrixView<T> hessian, double damp, int max_tries, Factor kind,
                 MatrixView<T> out, bool* dead) {
  const Index c = hessian.rows;
  if (hessian.cols != c) invalid("hessian: expected a square matrix");
  if (out.rows != c || out.cols != c) invalid("factor: expected the shape of the hessian");
  if (max_tries < 1) invalid("max_tries: must be >= 1");
  if (!(damp >= 0.0) || !std::isfinite(damp)) invalid("damp: must be a finite number >= 0");
  double diagonal_sum = 0.0;
  for (Index j = 0; j < c; ++j) {
    dead[j] = hessian(j, j) == T(0);
    diagonal_sum += dead[j] ? 1.0 : static_cast<double>(hessian(j, j));
  }
  const double mean_diagonal = c > 0 ? diagonal_sum / static_cast<double>(c) : 1.0;
  double relative = damp;
  for (int attempt = 0; attempt < max_tries; ++attempt) {
    if (attempt > 0) relative = relative > 0.0 ? relative * 10.0 : 1e-6;
    double largest = 0.0, defect = 0.0;
    load_reversed(hessian, dead, relative * mean_diagonal, out, largest, defect);
    if (defect > 1e-4 * largest) {
      invalid("hessian: not symmetric (largest |H - H^T| is " + number(defect) +
              ", more than 1e-4 of the largest |H| entry, " + number(largest) + ")");
    }
    if (!blas::cholesky_lower(out)) continue;
    if (kind == Factor::kInverse) blas::invert_lower(out);
    if (!reverse_into_upper(out)) continue;
    if (kind == Factor::kInverse) return relative;
    // U's diagonal is 1 / T's: T is kept only when that is finite too.
    bool reciprocals_finite = true;
    for (Index j = 0; j < c; ++j) reciprocals_finite &= std::isfinite(T(1) / out(j, j));
    if (reciprocals_finite) return relative;
  }
  invalid("hessian: not positive definite even with damping " + number(relative) +
          " (relative to the mean diagonal " + number(mean_diagonal) + ", " +
          std::to_string(max_tries) + " tries)");
}

}  // namespace

template <class T>
double inverse_hessian_factor(ConstMatrixView<T> hessian, double damp, int max_tries,
                              MatrixView<T> u, bool* dead) {
  return factorise(hessian, damp, max_tries, Factor::kInverse, u, dead);
}

template <class T>
double hessian_factor(ConstMatrixView<T> hessian, double damp, int max_tries, MatrixView<T> t,
                      bool* dead) {
  return factorise(hessian, damp, max_tries, Factor::kUpper, t, dead);
}

template <class T>
bool invert_factor(MatrixView<T> t) {
  if (t.cols != t.rows) invalid("factor: expected a square matrix");
  half_turn(t);  // J·T·J, lower triangular
  blas::invert_lower(t);
  half_turn(t);
  return zero_below_and_check(t);
}

template <class T>
double prune(MatrixView<T> weight, ConstMatrixView<T> u, const bool* dead, const Options& options,
             ConstMatrixView<bool> allowed, MatrixView<bool> mask) {
  const Index rows = weight.rows, c = weight.cols;
  check_shapes<T>(rows, c, u.rows, u.cols, options, allowed, mask);
  return prune_superblocks<T>(
      rows, c, options, allowed,
      [&](Index s1, Index s2) {
        return ConstMatrixView<T>{&u(s1, s1), s2 - s1, s2 - s1, u.stride};
      },
      [&](const Superblock<T>& sb, Index r0, Index rb) {
        load_rows(read_columns(weight, sb.s1, sb.s2 - sb.s1), dead, sb, r0, rb);
      },
      [&](const Superblock<T>& sb, Index r0, Index rb) {
        store_rows(columns(weight, sb.s1, sb.s2 - sb.s1), columns(mask, sb.s1, sb.s2 - sb.s1), sb,
                   r0, rb);
      },
      [&](const Superblock<T>& sb) {
        if (sb.s2 < c) update_after_superblock(weight, u, sb);
      });
}

template <class T>
double prune_from(ConstMatrixView<T> original, ConstMatrixView<T> t, const bool* dead,
                  const Options& options, ConstMatrixView<bool> allowed, MatrixView<T> out,
                  MatrixView<bool> mask) {
  const Index rows = original.rows, c = original.cols;
  check_shapes<T>(rows, c, t.rows, t.cols, options, allowed, mask);
  if (out.rows != rows || out.cols != c) invalid("out: expected the shape of the weight");
  const Index smax = std::min(superblock_width(options), std::max<Index>(c, 1));
  // U[s1:s2, s1:s2], T[:s1, s1:s2] · U[s1:s2, s1:s2], and the superblock's update from the
  // columns before it.
  const Scratch<T> u_diagonal(static_cast<size_t>(smax * smax)),
      strip(static_cast<size_t>(std::max<Index>(c - smax, 0) * smax)),
      update(static_cast<size_t>(rows * smax));
  // Dead columns are zero in W0, in Q and so in D: the passes below run along whole rows
  // without looking at them (vectorised), then zero them.
  std::vector<Index> dead_columns;
  for (Index j = 0; j < c; ++j) {
    if (dead[j]) dead_columns.push_back(j);
  }
  const auto zero_dead = [&](Index r, Index j0, Index j1) {
    for (const Index j : dead_columns) {
      if (j >= j0 && j < j1) out(r, j) = T(0);
    }
  };
  const int copy_threads = threads_for(double(rows) * double(c), kCopyGrain);
  Index last_s1 = 0;
  const double loss = prune_superblocks<T>(
      rows, c, options, allowed,
      [&](Index s1, Index s2) {
        const Index sc = s2 - s1;
        const MatrixView<T> u_kk{u_diagonal.data(), sc, sc, sc};
        for (Index i = 0; i < sc; ++i) std::copy_n(&t(s1 + i, s1), sc, u_kk.row(i));
        if (!invert_factor(u_kk)) {
          invalid("hessian: the inverse of its factor is not finite; use more damping");
        }
        last_s1 = s1;
        if (s1 > 0) {
          // Update = D[:, :s1] · T[:s1, s1:s2] · U[s1:s2, s1:s2], D = W0 − Q held in `out`.
          const MatrixView<T> v{strip.data(), s1, sc, sc};
          for (Index i = 0; i < s1; ++i) std::copy_n(&t(i, s1), sc, v.row(i));
          blas::multiply_upper_right(ConstMatrixView<T>{u_kk.data, sc, sc, sc}, v);
          blas::gemm(false, false, T(1), read_columns(out, 0, s1),
                     ConstMatrixView<T>{v.data, s1, sc, sc}, T(0),
                     MatrixView<T>{update.data(), rows, sc, sc});
        }
        return ConstMatrixView<T>{u_kk.data, sc, sc, sc};
      },
      [&](const Superblock<T>& sb, Index r0, Index rb) {
        const Index sc = sb.s2 - sb.s1;
        if (sb.s1 == 0) {
          load_rows(columns(original, 0, sc), dead, sb, r0, rb);
          return;
        }
        const MatrixView<T> up{update.data(), rows, sc, sc};
        for (Index r = r0; r < r0 + rb; ++r) {
          T* row = up.row(r);
          const T* w = &original(r, sb.s1);
          for (Index j = 0; j < sc; ++j) row[j] += w[j];
        }
        load_rows(ConstMatrixView<T>{update.data(), rows, sc, sc}, dead, sb, r0, rb);
      },
      [&](const Superblock<T>& sb, Index r0, Index rb) {
        const Index sc = sb.s2 - sb.s1;
        const MatrixView<T> q = columns(out, sb.s1, sc);
        store_rows(q, columns(mask, sb.s1, sc), sb, r0, rb);
        if (sb.s2 == c) return;  // the last superblock's weights stay as they are
        for (Index r = r0; r < r0 + rb; ++r) {
          T* d = &out(r, sb.s1);
          const T* w = &original(r, sb.s1);
          for (Index j = 0; j < sc; ++j) d[j] = w[j] - d[j];
          zero_dead(r, sb.s1, sb.s2);
        }
      },
      [](const Superblock<T>&) {});
  // Q = W0 − D where kept, 0 where pruned, in every superblock but the last.
#pragma omp parallel for schedule(static) num_threads(copy_threads)
  for (Index r = 0; r < rows; ++r) {
    T* q = out.row(r);
    const T* w = original.row(r);
    const bool* kept = mask.row(r);
    for (Index j = 0; j < last_s1; ++j) q[j] = kept[j] ? w[j] - q[j] : T(0);
    zero_dead(r, 0, last_s1);
  }
  return loss;
}

#define FASTPRUNE_INSTANTIATE(T)                                                            \
  template double inverse_hessian_factor<T>(ConstMatrixView<T>, double, int, MatrixView<T>, \
                                            bool*);                                         \
  template double hessian_factor<T>(ConstMatrixView<T>, double, int, MatrixView<T>, bool*); \
  template bool invert_factor<T>(MatrixView<T>);                                            \
  template double prune<T>(MatrixView<T>, ConstMatrixView<T>, const bool*, const Options&,  \
                           ConstMatrixView<bool>, MatrixView<bool>);                        \
  template double prune_from<T>(ConstMatrixView<T>, ConstMatrixView<T>, const bool*,        \
                                const Options&, ConstMatrixView<bool>, MatrixView<T>,       \
                                MatrixView<bool>);
FASTPRUNE_INSTANTIATE(float)
FASTPRUNE_INSTANTIATE(double)
#undef FASTPRUNE_INSTANTIATE

}  // namespace fastprune::sparsegpt
