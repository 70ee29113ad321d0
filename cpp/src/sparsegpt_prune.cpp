// The SparseGPT pruning loop (sparsegpt.hpp: prune from U, prune_from from T): superblocks of
// columns held column-major, row tiles in parallel, panels of a few columns, and the GEMMs that
// carry each level's errors to the columns after it. The masks are chosen by
// sparsegpt_selection.hpp.
#include <omp.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "fastprune/blas.hpp"
#include "fastprune/simd.hpp"
#include "fastprune/sparsegpt.hpp"
#include "sparsegpt_internal.hpp"
#include "sparsegpt_selection.hpp"

namespace fastprune::sparsegpt {
namespace {

using namespace detail;  // NOLINT: the solver's own shared helpers
using simd::kSquare;
using simd::transpose8;
using simd::transpose8_mask;

// --- the pruning loop ---------------------------------------------------------------------
//
// Four levels of laziness, all exact: inside a panel of a few columns each pruned weight's
// update reaches the rest of the panel as an axpy along the rows; a panel's errors reach the
// rest of its block as one small GEMM; a block's errors reach the rest of its superblock as one
// GEMM; and a superblock's errors reach every column after it as one large GEMM. A block (the
// unit of mask selection) is fully updated before its mask is chosen, as in the reference.

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
  const CachedBuffer<T> sb_weights(superblock_size), sb_errors(superblock_size),
      sb_keep(superblock_size);
  const bool unstructured = options.m == 0;
  using Key = KeyOf<T>;
  const CachedBuffer<Key> gathered(static_cast<size_t>(unstructured ? rows * bmax : 0));
  const CachedBuffer<Key> samples(
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

}  // namespace

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
  const CachedBuffer<T> u_diagonal(static_cast<size_t>(smax * smax)),
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

#define FASTPRUNE_INSTANTIATE(T)                                                           \
  template double prune<T>(MatrixView<T>, ConstMatrixView<T>, const bool*, const Options&, \
                           ConstMatrixView<bool>, MatrixView<bool>);                       \
  template double prune_from<T>(ConstMatrixView<T>, ConstMatrixView<T>, const bool*,       \
                                const Options&, ConstMatrixView<bool>, MatrixView<T>,      \
                                MatrixView<bool>);
FASTPRUNE_INSTANTIATE(float)
FASTPRUNE_INSTANTIATE(double)
#undef FASTPRUNE_INSTANTIATE

}  // namespace fastprune::sparsegpt
