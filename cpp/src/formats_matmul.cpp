// Sparse x dense matmul kernels (see formats.hpp).
//
// Every format reduces to the same inner kernel: one output row is a weighted sum of rows of x,
// y[i, :] = sum_e a_e * x[col_e, :] over the row's stored entries e. The k columns of x are
// processed in tiles of KB (a power of two, up to 64 floats / 32 doubles) whose accumulators
// stay in registers, and U independent accumulator sets take consecutive entries in turn so
// that the multiply-adds of a narrow tile (k = 1: a gather-dot; k = 8: one vector) do not wait
// on each other. The sets are added in a fixed order at the end, so an output element depends
// only on the row's entries, never on the thread that computed it.
#include <algorithm>
#include <vector>

#include "fastprune/formats.hpp"

namespace fastprune::formats {

namespace {

// y[0:KB] = sum over entries e < count of value(e) * x[col(e) * x_stride + 0:KB].
template <int KB, int U, class C, class Value, class Column>
inline void row_tile(Index count, Value value, Column col, const C* x, Index x_stride, C* y) {
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

// One output row, all k columns: full tiles of the widest width, then the remainder in
// narrower power-of-two tiles.
template <class C, class Value, class Column>
void sparse_row(Index count, Value value, Column col, ConstMatrixView<C> x, C* y) {
  constexpr int widest = sizeof(C) == 4 ? 64 : 32;
  const Index k = x.cols;
  Index t = 0;
  auto run = [&](auto width, auto sets) {
    constexpr int KB = decltype(width)::value;
    constexpr int U = decltype(sets)::value;
    for (; t + KB <= k; t += KB) row_tile<KB, U>(count, value, col, x.data + t, x.stride, y + t);
  };
  run(std::integral_constant<int, widest>{}, std::integral_constant<int, 1>{});
  if constexpr (widest > 32) run(std::integral_constant<int, 32>{}, std::integral_constant<int, 1>{});
  run(std::integral_constant<int, 16>{}, std::integral_constant<int, 2>{});
  run(std::integral_constant<int, 8>{}, std::integral_constant<int, 4>{});
  run(std::integral_constant<int, 4>{}, std::integral_constant<int, 8>{});
  run(std::integral_constant<int, 2>{}, std::integral_constant<int, 8>{});
  run(std::integral_constant<int, 1>{}, std::integral_constant<int, 8>{});
}

int matmul_threads(double multiply_adds) { return threads_for(multiply_adds, 1 << 18); }

}  // namespace

template <class V, class I>
void csr_matmul(const I* indptr, const I* indices, const typename V::Storage* data,
                ConstMatrixView<typename V::Compute> x, MatrixView<typename V::Compute> y) {
  using C = typename V::Compute;
  const double work = static_cast<double>(indptr[y.rows]) * static_cast<double>(x.cols) + static_cast<double>(y.rows);
#pragma omp parallel for schedule(dynamic, 16) num_threads(matmul_threads(work))
  for (Index i = 0; i < y.rows; ++i) {
    const I* cols = indices + indptr[i];
    const auto* vals = data + indptr[i];
    sparse_row<C>(
        indptr[i + 1] - indptr[i], [vals](Index e) { return static_cast<C>(V::decode(vals[e])); },
        [cols](Index e) { return static_cast<Index>(cols[e]); }, x, y.row(i));
  }
}

template <class V, class I>
void bsr_matmul(const I* indptr, const I* indices, const typename V::Storage* blocks, Index h,
                Index w, ConstMatrixView<typename V::Compute> x,
                MatrixView<typename V::Compute> y) {
  using C = typename V::Compute;
  const Index block_rows = y.rows / h;
  const double work =
      static_cast<double>(indptr[block_rows]) * static_cast<double>(h * w * x.cols) + static_cast<double>(y.rows);
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
  const unsigned field = (1u << bits) - 1u;
  const double work = static_cast<double>(values.size()) * static_cast<double>(x.cols) + static_cast<double>(y.rows);
#pragma omp parallel num_threads(matmul_threads(work))
  {
    std::vector<std::int32_t> column(static_cast<std::size_t>(values.cols));
#pragma omp for schedule(dynamic, 16)
    for (Index i = 0; i < y.rows; ++i) {
      // Decode the row's packed positions into columns of x once; the kernel then gathers.
      const std::uint8_t* pos = packed.row(i);
      for (Index j = 0; j < values.cols; ++j) {
        const Index bit = j * bits;
        const auto p = static_cast<std::int32_t>((pos[bit >> 3] >> (bit & 7)) & field);
        column[j] = static_cast<std::int32_t>((j / n) * m) + p;
      }
      const auto* vals = values.row(i);
      const std::int32_t* cols = column.data();
      sparse_row<C>(
          values.cols, [vals](Index e) { return static_cast<C>(V::decode(vals[e])); },
          [cols](Index e) { return static_cast<Index>(cols[e]); }, x, y.row(i));
    }
  }
}

#define FASTPRUNE_MATMUL(V)                                                                    \
  template void csr_matmul<V, std::int32_t>(const std::int32_t*, const std::int32_t*,          \
                                            const V::Storage*, ConstMatrixView<V::Compute>,    \
                                            MatrixView<V::Compute>);                           \
  template void csr_matmul<V, std::int64_t>(const std::int64_t*, const std::int64_t*,          \
                                            const V::Storage*, ConstMatrixView<V::Compute>,    \
                                            MatrixView<V::Compute>);                           \
  template void bsr_matmul<V, std::int32_t>(const std::int32_t*, const std::int32_t*,          \
                                            const V::Storage*, Index, Index,                   \
                                            ConstMatrixView<V::Compute>, MatrixView<V::Compute>); \
  template void bsr_matmul<V, std::int64_t>(const std::int64_t*, const std::int64_t*,          \
                                            const V::Storage*, Index, Index,                   \
                                            ConstMatrixView<V::Compute>, MatrixView<V::Compute>); \
  template void nm_matmul<V>(ConstMatrixView<V::Storage>, ConstMatrixView<std::uint8_t>, int,  \
                             int, ConstMatrixView<V::Compute>, MatrixView<V::Compute>);

FASTPRUNE_MATMUL(Float16)
FASTPRUNE_MATMUL(BFloat16)
FASTPRUNE_MATMUL(Native<float>)
FASTPRUNE_MATMUL(Native<double>)

}  // namespace fastprune::formats
