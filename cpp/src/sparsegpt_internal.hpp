// What the parts of the SparseGPT solver share (sparsegpt_factor.cpp, sparsegpt_prune.cpp,
// sparsegpt_solve.cpp): how work is split into tiles and threads, and the column-major superblock
// that the pruning loop (sparsegpt_prune.cpp) and the mask selection (sparsegpt_selection.hpp)
// work on. Not part of the core's interface.
#pragma once

#include <omp.h>

#include <algorithm>
#include <type_traits>

#include "fastprune/common.hpp"
#include "fastprune/sparsegpt.hpp"

namespace fastprune::sparsegpt::detail {

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
inline void keep_products_on_this_thread() { omp_set_num_threads(1); }

// Threads for `tiles` row tiles of the pruning loop: at least two tiles and 8 M flops each, so
// that small layers stay on fewer threads than would wait on one another.
inline int tile_threads(Index tiles, double flops_per_tile) {
  return std::min(static_cast<int>(std::max<Index>(tiles / 2, 1)),
                  threads_for(flops_per_tile * static_cast<double>(tiles), 1 << 23));
}

// Columns per panel: a multiple of m, so that an N:M group never straddles two panels.
inline Index panel_width(const Options& options) {
  return options.m > 0 ? options.m * std::max(1, 32 / options.m) : 32;
}

// Columns per superblock: whole blocks, about 256 columns (a deep enough GEMM after each one, and
// less of the work inside superblocks, where it runs slower).
inline Index superblock_width(const Options& options) {
  return options.blocksize * std::max<Index>(1, 256 / options.blocksize);
}

// Distance between consecutive columns of a superblock: the rows rounded up to whole 64-byte
// lines, and an odd number of lines, so that the columns of a panel fall into different cache
// sets (4096 rows of floats, 16 KB apart, would all compete for the same few sets).
inline Index column_stride(Index rows) {
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

// Marks the weights of dead columns pruned: the solver sets them to 0 whatever the budget said.
inline void prune_dead_columns(const bool* dead, MatrixView<bool> mask) {
  for (Index j = 0; j < mask.cols; ++j) {
    if (!dead[j]) continue;
    for (Index r = 0; r < mask.rows; ++r) mask(r, j) = false;
  }
}

}  // namespace fastprune::sparsegpt::detail
