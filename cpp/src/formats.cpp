// Conversion and validation kernels of the sparse formats (see formats.hpp for what each does).
#include "fastprune/formats.hpp"

#include <algorithm>
#include <limits>
#include <vector>

namespace fastprune::formats {

namespace {

constexpr std::int64_t kNone = std::numeric_limits<std::int64_t>::max();

// Threads for a pass touching `elements` elements.
int threads(Index elements) { return threads_for(static_cast<double>(elements)); }

std::int64_t none_to_minus_one(std::int64_t first) { return first == kNone ? -1 : first; }

}  // namespace

// --- CSR ---------------------------------------------------------------------------------

template <class S>
void count_row_nonzeros(ConstMatrixView<S> x, std::int64_t* counts) {
#pragma omp parallel for schedule(static) num_threads(threads(x.size()))
  for (Index i = 0; i < x.rows; ++i) {
    const S* row = x.row(i);
    std::int64_t c = 0;
    for (Index j = 0; j < x.cols; ++j) c += is_nonzero(row[j]);
    counts[i] = c;
  }
}

template <class S, class I>
void dense_to_csr(ConstMatrixView<S> x, const I* indptr, I* indices, S* data) {
#pragma omp parallel for schedule(static) num_threads(threads(x.size()))
  for (Index i = 0; i < x.rows; ++i) {
    const S* row = x.row(i);
    // 32 elements at a time: a bit per non-zero (comparisons the compiler vectorises), then
    // one step per set bit, so all-zero runs cost one test and no branch depends on a value.
    Index k = indptr[i];
    Index j = 0;
    for (; j + 32 <= x.cols; j += 32) {
      std::uint32_t bits = 0;
      for (int b = 0; b < 32; ++b) bits |= static_cast<std::uint32_t>(is_nonzero(row[j + b])) << b;
      for (; bits != 0; bits &= bits - 1) {
        const Index c = j + __builtin_ctz(bits);
        indices[k] = static_cast<I>(c);
        data[k] = row[c];
        ++k;
      }
    }
    for (; j < x.cols; ++j) {
      if (!is_nonzero(row[j])) continue;
      indices[k] = static_cast<I>(j);
      data[k] = row[j];
      ++k;
    }
  }
}

template <class S, class I>
void csr_to_dense(const I* indptr, const I* indices, const S* data, MatrixView<S> out) {
#pragma omp parallel for schedule(static) num_threads(threads(out.size()))
  for (Index i = 0; i < out.rows; ++i) {
    S* row = out.row(i);
    std::fill(row, row + out.cols, S{});
    for (Index k = indptr[i]; k < indptr[i + 1]; ++k) row[indices[k]] = data[k];
  }
}

template <class P, class I>
CsrCheck check_csr(const P* indptr, const I* indices, Index rows, Index cols, Index nnz) {
  if (indptr[0] != 0) return {0, CsrProblem::indptr_start};
  for (Index i = 0; i < rows; ++i) {
    if (indptr[i + 1] < indptr[i]) return {i, CsrProblem::indptr_decreasing};
  }
  if (indptr[rows] != nnz) return {rows, CsrProblem::indptr_end};
  std::int64_t first = kNone;
  CsrProblem problem = CsrProblem::ok;
#pragma omp parallel num_threads(threads(nnz + rows))
  {
    std::int64_t my_first = kNone;
    CsrProblem my_problem = CsrProblem::ok;
#pragma omp for schedule(static) nowait
    for (Index i = 0; i < rows; ++i) {
      if (i >= my_first) continue;
      for (Index k = indptr[i]; k < indptr[i + 1]; ++k) {
        if (static_cast<Index>(indices[k]) < 0 || static_cast<Index>(indices[k]) >= cols) {
          my_first = i;
          my_problem = CsrProblem::index_range;
          break;
        }
        if (k > indptr[i] && indices[k] <= indices[k - 1]) {
          my_first = i;
          my_problem = CsrProblem::index_order;
          break;
        }
      }
    }
#pragma omp critical
    if (my_first < first) {
      first = my_first;
      problem = my_problem;
    }
  }
  return first == kNone ? CsrCheck{} : CsrCheck{first, problem};
}

// --- COO ---------------------------------------------------------------------------------

template <class I>
void expand_indptr(const I* indptr, Index rows, I* row) {
#pragma omp parallel for schedule(static) num_threads(threads(indptr[rows] + rows))
  for (Index i = 0; i < rows; ++i)
    std::fill(row + indptr[i], row + indptr[i + 1], static_cast<I>(i));
}

template <class I>
std::int64_t check_coo(const I* row, const I* col, Index nnz, Index rows, Index cols) {
  std::int64_t first = kNone;
#pragma omp parallel for schedule(static) reduction(min : first) num_threads(threads(nnz))
  for (Index k = 0; k < nnz; ++k) {
    const bool in_range = row[k] >= 0 && row[k] < rows && col[k] >= 0 && col[k] < cols;
    const bool ascending =
        k == 0 || row[k - 1] < row[k] || (row[k - 1] == row[k] && col[k - 1] < col[k]);
    if (!(in_range && ascending)) first = std::min<std::int64_t>(first, k);
  }
  return none_to_minus_one(first);
}

template <class I>
void compress_rows(const I* row, Index nnz, Index rows, I* indptr) {
#pragma omp parallel for schedule(static) num_threads(threads(rows * 16))
  for (Index i = 0; i <= rows; ++i) {
    indptr[i] = static_cast<I>(std::lower_bound(row, row + nnz, static_cast<I>(i)) - row);
  }
}

// --- BSR ---------------------------------------------------------------------------------

namespace {

// occupied[c] = whether block column c of block row b holds a non-zero.
template <class S>
void occupied_blocks(ConstMatrixView<S> x, Index b, Index h, Index w, std::vector<char>& occupied) {
  std::fill(occupied.begin(), occupied.end(), 0);
  const Index block_cols = x.cols / w;
  for (Index r = b * h; r < (b + 1) * h; ++r) {
    const S* row = x.row(r);
    for (Index c = 0; c < block_cols; ++c) {
      if (occupied[c]) continue;
      bool any = false;
      for (Index j = c * w; j < (c + 1) * w; ++j) any |= is_nonzero(row[j]);
      occupied[c] = any;
    }
  }
}

}  // namespace

template <class S>
void count_block_row_nonzeros(ConstMatrixView<S> x, Index h, Index w, std::int64_t* counts) {
  const Index block_rows = x.rows / h;
#pragma omp parallel num_threads(threads(x.size()))
  {
    std::vector<char> occupied(static_cast<std::size_t>(x.cols / w));
#pragma omp for schedule(static)
    for (Index b = 0; b < block_rows; ++b) {
      occupied_blocks(x, b, h, w, occupied);
      counts[b] = std::count(occupied.begin(), occupied.end(), 1);
    }
  }
}

template <class S, class I>
void dense_to_bsr(ConstMatrixView<S> x, Index h, Index w, const I* indptr, I* indices, S* blocks) {
  const Index block_rows = x.rows / h;
  const Index block_cols = x.cols / w;
#pragma omp parallel num_threads(threads(x.size()))
  {
    std::vector<char> occupied(static_cast<std::size_t>(block_cols));
#pragma omp for schedule(static)
    for (Index b = 0; b < block_rows; ++b) {
      occupied_blocks(x, b, h, w, occupied);
      Index k = indptr[b];
      for (Index c = 0; c < block_cols; ++c) {
        if (!occupied[c]) continue;
        indices[k] = static_cast<I>(c);
        S* block = blocks + k * h * w;
        for (Index r = 0; r < h; ++r) {
          const S* src = x.row(b * h + r) + c * w;
          std::copy(src, src + w, block + r * w);
        }
        ++k;
      }
    }
  }
}

template <class S, class I>
void bsr_to_dense(const I* indptr, const I* indices, const S* blocks, Index h, Index w,
                  MatrixView<S> out) {
  const Index block_rows = out.rows / h;
#pragma omp parallel for schedule(static) num_threads(threads(out.size()))
  for (Index b = 0; b < block_rows; ++b) {
    for (Index r = b * h; r < (b + 1) * h; ++r) std::fill(out.row(r), out.row(r) + out.cols, S{});
    for (Index k = indptr[b]; k < indptr[b + 1]; ++k) {
      const S* block = blocks + k * h * w;
      for (Index r = 0; r < h; ++r) {
        std::copy(block + r * w, block + (r + 1) * w, out.row(b * h + r) + indices[k] * w);
      }
    }
  }
}

template <class S, class I>
void count_bsr_row_nonzeros(const I* indptr, const S* blocks, Index block_rows, Index h, Index w,
                            std::int64_t* counts) {
#pragma omp parallel for schedule(static) num_threads(threads(indptr[block_rows] * h * w))
  for (Index b = 0; b < block_rows; ++b) {
    for (Index r = 0; r < h; ++r) {
      std::int64_t c = 0;
      for (Index k = indptr[b]; k < indptr[b + 1]; ++k) {
        const S* block_row = blocks + (k * h + r) * w;
        for (Index j = 0; j < w; ++j) c += is_nonzero(block_row[j]);
      }
      counts[b * h + r] = c;
    }
  }
}

template <class S, class I, class J>
void bsr_to_csr(const I* indptr, const I* indices, const S* blocks, Index block_rows, Index h,
                Index w, const J* csr_indptr, J* csr_indices, S* csr_data) {
#pragma omp parallel for schedule(static) num_threads(threads(indptr[block_rows] * h * w))
  for (Index b = 0; b < block_rows; ++b) {
    for (Index r = 0; r < h; ++r) {
      Index out = csr_indptr[b * h + r];
      for (Index k = indptr[b]; k < indptr[b + 1]; ++k) {
        const S* block_row = blocks + (k * h + r) * w;
        for (Index j = 0; j < w; ++j) {
          if (!is_nonzero(block_row[j])) continue;
          csr_indices[out] = static_cast<J>(indices[k] * w + j);
          csr_data[out] = block_row[j];
          ++out;
        }
      }
    }
  }
}

// --- N:M -----------------------------------------------------------------------------------

int nm_index_bits(int m) {
  if (m < 1 || m > 256) invalid("m must be in [1, 256], got " + std::to_string(m));
  return m <= 2 ? 1 : m <= 4 ? 2 : m <= 16 ? 4 : 8;
}

namespace {

// Position `j` of a packed row.
inline int packed_position(const std::uint8_t* packed, Index j, int bits) {
  const Index bit = j * bits;
  return (packed[bit >> 3] >> (bit & 7)) & ((1 << bits) - 1);
}

}  // namespace

template <class S>
std::int64_t dense_to_nm(ConstMatrixView<S> x, int n, int m, MatrixView<S> values,
                         MatrixView<std::uint8_t> packed) {
  const int bits = nm_index_bits(m);
  const Index groups = x.cols / m;
  std::int64_t first = kNone;
#pragma omp parallel for schedule(static) reduction(min : first) num_threads(threads(x.size()))
  for (Index i = 0; i < x.rows; ++i) {
    const S* row = x.row(i);
    S* out = values.row(i);
    std::uint8_t* pos = packed.row(i);
    std::fill(pos, pos + packed.cols, std::uint8_t{0});
    Index j = 0;
    for (Index g = 0; g < groups; ++g) {
      const S* group = row + g * m;
      int nonzeros = 0;
      for (int p = 0; p < m; ++p) nonzeros += is_nonzero(group[p]);
      if (nonzeros > n) {
        first = std::min<std::int64_t>(first, i * groups + g);
        break;
      }
      if (m <= 32) {
        // The kept positions as bits: the non-zeros, plus the lowest free positions until
        // there are n; then exactly n steps, each taking the lowest remaining bit.
        std::uint32_t keep = 0;
        for (int p = 0; p < m; ++p) keep |= static_cast<std::uint32_t>(is_nonzero(group[p])) << p;
        for (int padding = n - nonzeros; padding > 0; --padding) keep |= ~keep & (keep + 1);
        for (int q = 0; q < n; ++q, ++j, keep &= keep - 1) {
          const int p = __builtin_ctz(keep);
          out[j] = group[p];
          const Index bit = j * bits;
          pos[bit >> 3] = static_cast<std::uint8_t>(pos[bit >> 3] | (p << (bit & 7)));
        }
        continue;
      }
      // Keep every non-zero and pad with the lowest zero positions, in position order.
      int padding = n - nonzeros;
      for (int p = 0; p < m; ++p) {
        bool keep = is_nonzero(group[p]);
        if (!keep && padding > 0) {
          keep = true;
          --padding;
        }
        if (!keep) continue;
        out[j] = group[p];
        const Index bit = j * bits;
        pos[bit >> 3] = static_cast<std::uint8_t>(pos[bit >> 3] | (p << (bit & 7)));
        ++j;
      }
    }
  }
  return none_to_minus_one(first);
}

std::int64_t check_nm(ConstMatrixView<std::uint8_t> packed, Index cols, int n, int m) {
  const int bits = nm_index_bits(m);
  const Index kept = cols / m * n;
  std::int64_t first = kNone;
#pragma omp parallel for schedule(static) reduction(min : first) \
    num_threads(threads(packed.size() * 4))
  for (Index i = 0; i < packed.rows; ++i) {
    const std::uint8_t* pos = packed.row(i);
    bool ok = true;
    for (Index j = 0; j < kept && ok; ++j) {
      const int p = packed_position(pos, j, bits);
      ok = p < m && (j % n == 0 || packed_position(pos, j - 1, bits) < p);
    }
    for (Index j = kept; j < packed.cols * 8 / bits && ok; ++j)
      ok = packed_position(pos, j, bits) == 0;
    if (!ok) first = std::min<std::int64_t>(first, i);
  }
  return none_to_minus_one(first);
}

template <class S>
void nm_to_dense(ConstMatrixView<S> values, ConstMatrixView<std::uint8_t> packed, int n, int m,
                 MatrixView<S> out) {
  const int bits = nm_index_bits(m);
#pragma omp parallel for schedule(static) num_threads(threads(out.size()))
  for (Index i = 0; i < out.rows; ++i) {
    S* row = out.row(i);
    std::fill(row, row + out.cols, S{});
    const S* kept = values.row(i);
    const std::uint8_t* pos = packed.row(i);
    for (Index j = 0; j < values.cols; ++j) {
      row[(j / n) * m + packed_position(pos, j, bits)] = kept[j];
    }
  }
}

// --- Bitmask -------------------------------------------------------------------------------

std::int64_t bitmask_row_counts(ConstMatrixView<std::uint8_t> mask, Index cols,
                                std::int64_t* counts) {
  const auto padding = static_cast<unsigned>((8 - cols % 8) % 8);
  const unsigned padding_bits = (1u << padding) - 1u;
  std::int64_t first = kNone;
#pragma omp parallel for schedule(static) reduction(min : first) \
    num_threads(threads(mask.size() * 4))
  for (Index i = 0; i < mask.rows; ++i) {
    const std::uint8_t* row = mask.row(i);
    std::int64_t c = 0;
    for (Index b = 0; b < mask.cols; ++b) c += __builtin_popcount(row[b]);
    counts[i] = c;
    if (mask.cols > 0 && (row[mask.cols - 1] & padding_bits) != 0) {
      first = std::min<std::int64_t>(first, i);
    }
  }
  return none_to_minus_one(first);
}

template <class S>
void dense_to_bitmask(ConstMatrixView<S> x, const std::int64_t* offsets,
                      MatrixView<std::uint8_t> mask, S* data) {
#pragma omp parallel for schedule(static) num_threads(threads(x.size()))
  for (Index i = 0; i < x.rows; ++i) {
    const S* row = x.row(i);
    std::uint8_t* bits = mask.row(i);
    std::fill(bits, bits + mask.cols, std::uint8_t{0});
    std::int64_t k = offsets[i];
    for (Index j = 0; j < x.cols; ++j) {
      if (!is_nonzero(row[j])) continue;
      bits[j >> 3] = static_cast<std::uint8_t>(bits[j >> 3] | (0x80u >> (j & 7)));
      data[k++] = row[j];
    }
  }
}

template <class S>
void bitmask_to_dense(ConstMatrixView<std::uint8_t> mask, const std::int64_t* offsets,
                      const S* data, MatrixView<S> out) {
#pragma omp parallel for schedule(static) num_threads(threads(out.size()))
  for (Index i = 0; i < out.rows; ++i) {
    S* row = out.row(i);
    const std::uint8_t* bits = mask.row(i);
    std::int64_t k = offsets[i];
    for (Index j = 0; j < out.cols; ++j) {
      row[j] = (bits[j >> 3] & (0x80u >> (j & 7))) ? data[k++] : S{};
    }
  }
}

template <class I>
void bitmask_to_csr_indices(ConstMatrixView<std::uint8_t> mask, Index cols, const I* indptr,
                            I* indices) {
#pragma omp parallel for schedule(static) num_threads(threads(mask.size() * 8))
  for (Index i = 0; i < mask.rows; ++i) {
    const std::uint8_t* bits = mask.row(i);
    Index k = indptr[i];
    for (Index j = 0; j < cols; ++j) {
      if (bits[j >> 3] & (0x80u >> (j & 7))) indices[k++] = static_cast<I>(j);
    }
  }
}

template <class I>
void csr_to_bitmask(const I* indptr, const I* indices, Index rows, MatrixView<std::uint8_t> mask) {
#pragma omp parallel for schedule(static) num_threads(threads(mask.size() + indptr[rows]))
  for (Index i = 0; i < rows; ++i) {
    std::uint8_t* bits = mask.row(i);
    std::fill(bits, bits + mask.cols, std::uint8_t{0});
    for (Index k = indptr[i]; k < indptr[i + 1]; ++k) {
      const Index j = indices[k];
      bits[j >> 3] = static_cast<std::uint8_t>(bits[j >> 3] | (0x80u >> (j & 7)));
    }
  }
}

// --- instantiations ------------------------------------------------------------------------

#define FASTPRUNE_FOR_STORAGE(S)                                                                  \
  template void count_row_nonzeros<S>(ConstMatrixView<S>, std::int64_t*);                         \
  template void count_block_row_nonzeros<S>(ConstMatrixView<S>, Index, Index, std::int64_t*);     \
  template std::int64_t dense_to_nm<S>(ConstMatrixView<S>, int, int, MatrixView<S>,               \
                                       MatrixView<std::uint8_t>);                                 \
  template void nm_to_dense<S>(ConstMatrixView<S>, ConstMatrixView<std::uint8_t>, int, int,       \
                               MatrixView<S>);                                                    \
  template void dense_to_bitmask<S>(ConstMatrixView<S>, const std::int64_t*,                      \
                                    MatrixView<std::uint8_t>, S*);                                \
  template void bitmask_to_dense<S>(ConstMatrixView<std::uint8_t>, const std::int64_t*, const S*, \
                                    MatrixView<S>);

#define FASTPRUNE_FOR_STORAGE_INDEX(S, I)                                                         \
  template void dense_to_csr<S, I>(ConstMatrixView<S>, const I*, I*, S*);                         \
  template void csr_to_dense<S, I>(const I*, const I*, const S*, MatrixView<S>);                  \
  template void dense_to_bsr<S, I>(ConstMatrixView<S>, Index, Index, const I*, I*, S*);           \
  template void bsr_to_dense<S, I>(const I*, const I*, const S*, Index, Index, MatrixView<S>);    \
  template void count_bsr_row_nonzeros<S, I>(const I*, const S*, Index, Index, Index,             \
                                             std::int64_t*);                                      \
  template void bsr_to_csr<S, I, std::int32_t>(const I*, const I*, const S*, Index, Index, Index, \
                                               const std::int32_t*, std::int32_t*, S*);           \
  template void bsr_to_csr<S, I, std::int64_t>(const I*, const I*, const S*, Index, Index, Index, \
                                               const std::int64_t*, std::int64_t*, S*);

#define FASTPRUNE_FOR_INDEX(I)                                                                 \
  template CsrCheck check_csr<I, I>(const I*, const I*, Index, Index, Index);                  \
  template void expand_indptr<I>(const I*, Index, I*);                                         \
  template std::int64_t check_coo<I>(const I*, const I*, Index, Index, Index);                 \
  template void compress_rows<I>(const I*, Index, Index, I*);                                  \
  template void bitmask_to_csr_indices<I>(ConstMatrixView<std::uint8_t>, Index, const I*, I*); \
  template void csr_to_bitmask<I>(const I*, const I*, Index, MatrixView<std::uint8_t>);

FASTPRUNE_FOR_STORAGE(std::uint16_t)
FASTPRUNE_FOR_STORAGE(float)
FASTPRUNE_FOR_STORAGE(double)
FASTPRUNE_FOR_STORAGE_INDEX(std::uint16_t, std::int32_t)
FASTPRUNE_FOR_STORAGE_INDEX(std::uint16_t, std::int64_t)
FASTPRUNE_FOR_STORAGE_INDEX(float, std::int32_t)
FASTPRUNE_FOR_STORAGE_INDEX(float, std::int64_t)
FASTPRUNE_FOR_STORAGE_INDEX(double, std::int32_t)
FASTPRUNE_FOR_STORAGE_INDEX(double, std::int64_t)
FASTPRUNE_FOR_INDEX(std::int32_t)
FASTPRUNE_FOR_INDEX(std::int64_t)
// The 16-bit column indices of sparse_linear's index layout.
template CsrCheck check_csr<std::int64_t, std::uint16_t>(const std::int64_t*, const std::uint16_t*,
                                                         Index, Index, Index);

}  // namespace fastprune::formats
