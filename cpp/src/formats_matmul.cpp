// Sparse x dense matmul kernels (see formats.hpp).
//
// Every format reduces to the same inner kernel: one output row is a weighted sum of rows of x,
// y[i, :] = sum_e a_e * x[col_e, :] over the row's stored entries e. The k columns of x are
// processed in tiles of 1, 2 or 4 SIMD registers whose accumulators stay in registers, and
// several independent accumulator sets take consecutive entries in turn so that the
// multiply-adds of a narrow tile (k = 1: a gather-dot; k = 8: one vector) do not wait on each
// other. The sets are added in a fixed order at the end, so an output element depends
// only on the row's entries, never on the thread that computed it.
#include <cstring>
#include <type_traits>
#include <vector>

#include "fastprune/formats.hpp"
#include "fastprune/simd.hpp"

namespace fastprune::formats {

namespace {

// SIMD registers of 32 bytes where AVX is available, 16 bytes otherwise. Wider AVX-512 registers
// would leave the common k = 8 case without a full tile and gain nothing in this memory-bound
// gather.
constexpr int kVectorBytes = simd::kWidestBytes < 32 ? simd::kWidestBytes : 32;
template <class C>
using Vec = simd::Vec<C, kVectorBytes>;
template <class C>
constexpr int kLanes = kVectorBytes / static_cast<int>(sizeof(C));

// y[0 : R * lanes] = sum over entries e < count of value(e) * x[col(e) * x_stride + ...]:
// R vector accumulators per set, U sets taking consecutive entries in turn.
template <int R, int U, class C, class Value, class Column>
inline void vector_tile(Index count, Value value, Column col, const C* x, Index x_stride, C* y) {
  constexpr int L = kLanes<C>;
  Vec<C> acc[U][R] = {};
  Index e = 0;
  for (; e + U <= count; e += U) {
    for (int u = 0; u < U; ++u) {
      const Vec<C> a = Vec<C>{} + value(e + u);
      const C* xr = x + col(e + u) * x_stride;
      for (int r = 0; r < R; ++r) acc[u][r] += a * simd::load<kVectorBytes>(xr + r * L);
    }
  }
  for (; e < count; ++e) {
    const Vec<C> a = Vec<C>{} + value(e);
    const C* xr = x + col(e) * x_stride;
    for (int r = 0; r < R; ++r) acc[0][r] += a * simd::load<kVectorBytes>(xr + r * L);
  }
  for (int r = 0; r < R; ++r) {
    Vec<C> sum = acc[0][r];
    for (int u = 1; u < U; ++u) sum += acc[u][r];
    std::memcpy(y + r * L, &sum, sizeof sum);
  }
}

// The same for KB < lanes columns with scalar accumulators (k = 1: a gather-dot with U
// independent partial sums).
template <int KB, int U, class C, class Value, class Column>
inline void scalar_tile(Index count, Value value, Column col, const C* x, Index x_stride, C* y) {
  C acc[U][KB] = {};
  Index e = 0;
  for (; e + U <= count; e += U) {
    for (int u = 0; u < U; ++u) {
      const C a = value(e + u);
      const C* xr = x + col(e + u) * x_stride;
      for (int t = 0; t < KB; ++t) acc[u][t] += a * xr[t];
    }
  }
  for (; e < count; ++e) {
    const C a = value(e);
    const C* xr = x + col(e) * x_stride;
    for (int t = 0; t < KB; ++t) acc[0][t] += a * xr[t];
  }
  for (int t = 0; t < KB; ++t) {
    C sum = acc[0][t];
    for (int u = 1; u < U; ++u) sum += acc[u][t];
    y[t] = sum;
  }
}

template <int N>
using Int = std::integral_constant<int, N>;

// One output row, all k columns: tiles of 4, 2 and 1 vector registers (8 accumulators each),
// then the columns left over in scalar tiles of 4, 2 and 1.
template <class C, class Value, class Column>
void sparse_row(Index count, Value value, Column col, ConstMatrixView<C> x, C* y) {
  constexpr int L = kLanes<C>;
  const Index k = x.cols;
  Index t = 0;
  auto vectors = [&](auto registers) {
    constexpr int R = decltype(registers)::value;
    for (; t + R * L <= k; t += R * L) {
      vector_tile<R, 8 / R>(count, value, col, x.data + t, x.stride, y + t);
    }
  };
  auto scalars = [&](auto width) {
    constexpr int KB = decltype(width)::value;
    for (; t + KB <= k; t += KB) scalar_tile<KB, 8>(count, value, col, x.data + t, x.stride, y + t);
  };
  vectors(Int<4>{});
  vectors(Int<2>{});
  vectors(Int<1>{});
  if constexpr (L > 4) scalars(Int<4>{});
  scalars(Int<2>{});
  scalars(Int<1>{});
}

// column[j] = the column of x that kept value j of a row multiplies: (j / n) * m plus its
// packed position. When n divides 8 and positions take at most 4 bits, eight positions fill
// `bits` whole bytes and share one pattern of group starts, so they are decoded together with
// vector shifts.
void decode_columns(const std::uint8_t* packed, Index kept, int n, int m, int bits,
                    std::int32_t* column) {
  typedef std::int32_t Lanes8 __attribute__((vector_size(32)));
  const auto field = static_cast<std::int32_t>((1u << bits) - 1u);
  Index j = 0;
  if (8 % n == 0 && bits <= 4) {
    Lanes8 shift, group;
    for (int q = 0; q < 8; ++q) {
      shift[q] = q * bits;
      group[q] = (q / n) * m;
    }
    const auto chunk_columns = static_cast<std::int32_t>(8 / n * m);
    std::int32_t base = 0;
    for (; j + 8 <= kept; j += 8, base += chunk_columns) {
      // The `bits` bytes of these eight positions, assembled in a register (a short memcpy
      // through memory would stall on store forwarding).
      const std::uint8_t* bytes = packed + j * bits / 8;
      std::uint32_t word = 0;
      for (int b = 0; b < bits; ++b) word |= static_cast<std::uint32_t>(bytes[b]) << (8 * b);
      const Lanes8 positions = ((Lanes8{} + static_cast<std::int32_t>(word)) >> shift) & field;
      const Lanes8 columns = positions + group + base;
      std::memcpy(column + j, &columns, sizeof columns);
    }
  }
  for (; j < kept; ++j) {
    const Index bit = j * bits;
    const auto position = static_cast<std::int32_t>((packed[bit >> 3] >> (bit & 7)) & field);
    column[j] = static_cast<std::int32_t>((j / n) * m) + position;
  }
}

int matmul_threads(double multiply_adds) { return threads_for(multiply_adds, 1 << 18); }

}  // namespace

template <class V, class I>
bool csr_matmul(const I* indptr, const I* indices, const typename V::Storage* data,
                ConstMatrixView<typename V::Compute> x, MatrixView<typename V::Compute> y) {
  using C = typename V::Compute;
  const double work = static_cast<double>(indptr[y.rows]) * static_cast<double>(x.cols) +
                      static_cast<double>(y.rows);
  bool all_in_range = true;
#pragma omp parallel for schedule(dynamic, 16) reduction(&& : all_in_range) \
    num_threads(matmul_threads(work))
  for (Index i = 0; i < y.rows; ++i) {
    const I* cols = indices + indptr[i];
    const auto* vals = data + indptr[i];
    const Index count = indptr[i + 1] - indptr[i];
    // The row's indices are checked on the way into cache, where the product reads them next
    // (one unsigned comparison each, so that negative ones fail too, OR-reduced in vectors).
    using Unsigned = std::make_unsigned_t<I>;
    Unsigned out_of_range = 0;
    for (Index e = 0; e < count; ++e) {
      out_of_range |=
          static_cast<Unsigned>(static_cast<Unsigned>(cols[e]) >= static_cast<Unsigned>(x.rows));
    }
    if (out_of_range != 0) {
      all_in_range = false;
      continue;
    }
    sparse_row<C>(
        count, [vals](Index e) { return static_cast<C>(V::decode(vals[e])); },
        [cols](Index e) { return static_cast<Index>(cols[e]); }, x, y.row(i));
  }
  return all_in_range;
}

template <class V, class I>
void bsr_matmul(const I* indptr, const I* indices, const typename V::Storage* blocks, Index h,
                Index w, ConstMatrixView<typename V::Compute> x,
                MatrixView<typename V::Compute> y) {
  using C = typename V::Compute;
  const Index block_rows = y.rows / h;
  const double work =
      static_cast<double>(indptr[block_rows]) * static_cast<double>(h * w * x.cols) +
      static_cast<double>(y.rows);
#pragma omp parallel num_threads(matmul_threads(work))
  {
    // The entries of one block row, flattened: entry e is column `column[e]` of x, and its
    // value for row r of the block row sits at blocks[offset[e] + r * w].
    std::vector<Index> column, offset;
#pragma omp for schedule(dynamic, 1)
    for (Index b = 0; b < block_rows; ++b) {
      column.clear();
      offset.clear();
      for (Index k = indptr[b]; k < indptr[b + 1]; ++k) {
        for (Index c = 0; c < w; ++c) {
          column.push_back(static_cast<Index>(indices[k]) * w + c);
          offset.push_back(k * h * w + c);
        }
      }
      const Index* cols = column.data();
      const Index* offs = offset.data();
      for (Index r = 0; r < h; ++r) {
        const auto* vals = blocks + r * w;
        sparse_row<C>(
            static_cast<Index>(column.size()),
            [vals, offs](Index e) { return static_cast<C>(V::decode(vals[offs[e]])); },
            [cols](Index e) { return cols[e]; }, x, y.row(b * h + r));
      }
    }
  }
}

template <class V>
void nm_matmul(ConstMatrixView<typename V::Storage> values, ConstMatrixView<std::uint8_t> packed,
               int n, int m, ConstMatrixView<typename V::Compute> x,
               MatrixView<typename V::Compute> y) {
  using C = typename V::Compute;
  const int bits = nm_index_bits(m);
  const double work = static_cast<double>(values.size()) * static_cast<double>(x.cols) +
                      static_cast<double>(y.rows);
#pragma omp parallel num_threads(matmul_threads(work))
  {
    std::vector<std::int32_t> column(static_cast<std::size_t>(values.cols));
#pragma omp for schedule(dynamic, 16)
    for (Index i = 0; i < y.rows; ++i) {
      // Decode the row's packed positions into columns of x once; the kernel then gathers.
      decode_columns(packed.row(i), values.cols, n, m, bits, column.data());
      const auto* vals = values.row(i);
      const std::int32_t* cols = column.data();
      sparse_row<C>(
          values.cols, [vals](Index e) { return static_cast<C>(V::decode(vals[e])); },
          [cols](Index e) { return static_cast<Index>(cols[e]); }, x, y.row(i));
    }
  }
}

#define FASTPRUNE_MATMUL(V)                                                                        \
  template bool csr_matmul<V, std::int32_t>(const std::int32_t*, const std::int32_t*,              \
                                            const V::Storage*, ConstMatrixView<V::Compute>,        \
                                            MatrixView<V::Compute>);                               \
  template bool csr_matmul<V, std::int64_t>(const std::int64_t*, const std::int64_t*,              \
                                            const V::Storage*, ConstMatrixView<V::Compute>,        \
                                            MatrixView<V::Compute>);                               \
  template void bsr_matmul<V, std::int32_t>(const std::int32_t*, const std::int32_t*,              \
                                            const V::Storage*, Index, Index,                       \
                                            ConstMatrixView<V::Compute>, MatrixView<V::Compute>);  \
  template void bsr_matmul<V, std::int64_t>(const std::int64_t*, const std::int64_t*,              \
                                            const V::Storage*, Index, Index,                       \
                                            ConstMatrixView<V::Compute>, MatrixView<V::Compute>);  \
  template void nm_matmul<V>(ConstMatrixView<V::Storage>, ConstMatrixView<std::uint8_t>, int, int, \
                             ConstMatrixView<V::Compute>, MatrixView<V::Compute>);

FASTPRUNE_MATMUL(Float16)
FASTPRUNE_MATMUL(BFloat16)
FASTPRUNE_MATMUL(Native<float>)
FASTPRUNE_MATMUL(Native<double>)

}  // namespace fastprune::formats
