#include "fastprune/blas.hpp"

#include <dlfcn.h>
#include <omp.h>

#include <Eigen/Cholesky>
#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <mutex>
#include <vector>

namespace fastprune::blas {
namespace {

// --- the external library ------------------------------------------------------------------

// The Fortran BLAS/LAPACK interface; character arguments carry hidden lengths at the end.
using fint = int;
template <class T>
using gemm_fn = void (*)(const char*, const char*, const fint*, const fint*, const fint*, const T*,
                         const T*, const fint*, const T*, const fint*, const T*, T*, const fint*,
                         std::size_t, std::size_t);
template <class T>
using syrk_fn = void (*)(const char*, const char*, const fint*, const fint*, const T*, const T*,
                         const fint*, const T*, T*, const fint*, std::size_t, std::size_t);
template <class T>
using potrf_fn = void (*)(const char*, const fint*, T*, const fint*, fint*, std::size_t);
template <class T>
using trtri_fn = void (*)(const char*, const char*, const fint*, T*, const fint*, fint*,
                          std::size_t, std::size_t);
// side, uplo, transa, diag, m, n, alpha, A, lda, B, ldb.
template <class T>
using trmm_fn = void (*)(const char*, const char*, const char*, const char*, const fint*,
                         const fint*, const T*, const T*, const fint*, T*, const fint*, std::size_t,
                         std::size_t, std::size_t, std::size_t);

template <class T>
struct Routines {
  gemm_fn<T> gemm = nullptr;
  syrk_fn<T> syrk = nullptr;
  potrf_fn<T> potrf = nullptr;
  trtri_fn<T> trtri = nullptr;
  trmm_fn<T> trmm = nullptr;
};

struct Library {
  void* handle = nullptr;
  Routines<float> s;
  Routines<double> d;
  std::string config;
};

Library lib;
std::mutex lib_mutex;

template <class T>
const Routines<T>& routines() {
  if constexpr (std::is_same_v<T, float>) {
    return lib.s;
  } else {
    return lib.d;
  }
}

template <class F>
F symbol(void* handle, const std::string& name) {
  void* p = dlsym(handle, name.c_str());
  if (p == nullptr) invalid("OpenBLAS library lacks " + name);
  return reinterpret_cast<F>(p);
}

template <class T>
Routines<T> load_routines(void* handle, const std::string& prefix, char t) {
  const std::string p = prefix + t;
  return {symbol<gemm_fn<T>>(handle, p + "gemm_"), symbol<syrk_fn<T>>(handle, p + "syrk_"),
          symbol<potrf_fn<T>>(handle, p + "potrf_"), symbol<trtri_fn<T>>(handle, p + "trtri_"),
          symbol<trmm_fn<T>>(handle, p + "trmm_")};
}

fint to_fint(Index v) {
  if (v > static_cast<Index>(0x7fffffff)) invalid("matrix dimension too large for 32-bit BLAS");
  return static_cast<fint>(v);
}

fint ld(Index stride) { return to_fint(std::max<Index>(stride, 1)); }

// --- one call on the calling thread ----------------------------------------------------------
//
// A row-major matrix is the column-major transpose of itself, so every Fortran call below is the
// routine applied to the transposed problem; the lower triangle of a row-major matrix is the
// upper triangle ("U") of the column-major one.

template <class T>
MatrixView<T> sub(MatrixView<T> a, Index row, Index col, Index rows, Index cols) {
  return {a.data + row * a.stride + col, rows, cols, a.stride};
}

template <class T>
ConstMatrixView<T> read_only(MatrixView<T> a) {
  return {a.data, a.rows, a.cols, a.stride};
}

template <class T>
void gemm1(bool trans_a, bool trans_b, T alpha, ConstMatrixView<T> a, ConstMatrixView<T> b, T beta,
           MatrixView<T> c) {
  const Index k = trans_a ? a.rows : a.cols;
  if (c.rows == 0 || c.cols == 0) return;
  if (const auto& r = routines<T>(); r.gemm != nullptr && k > 0) {
    // C^T = op(B)^T op(A)^T in column-major terms.
    const fint m = to_fint(c.cols), n = to_fint(c.rows), kk = to_fint(k);
    const fint lda = ld(b.stride), ldb = ld(a.stride), ldc = ld(c.stride);
    r.gemm(trans_b ? "T" : "N", trans_a ? "T" : "N", &m, &n, &kk, &alpha, b.data, &lda, a.data,
           &ldb, &beta, c.data, &ldc, 1, 1);
    return;
  }
  auto C = eigen_map(c);
  auto A = eigen_map(a);
  auto B = eigen_map(b);
  if (beta == T(0)) {
    C.setZero();
  } else if (beta != T(1)) {
    C *= beta;
  }
  if (k == 0) return;
  if (!trans_a && !trans_b) {
    C.noalias() += alpha * A * B;
  } else if (trans_a && !trans_b) {
    C.noalias() += alpha * A.transpose() * B;
  } else if (!trans_a && trans_b) {
    C.noalias() += alpha * A * B.transpose();
  } else {
    C.noalias() += alpha * A.transpose() * B.transpose();
  }
}

template <class T>
void syrk1(bool a_t_a, T alpha, ConstMatrixView<T> a, T beta, MatrixView<T> c) {
  const Index k = a_t_a ? a.rows : a.cols;
  if (c.rows == 0) return;
  if (const auto& r = routines<T>(); r.syrk != nullptr && k > 0) {
    const fint n = to_fint(c.rows), kk = to_fint(k), lda = ld(a.stride), ldc = ld(c.stride);
    r.syrk("U", a_t_a ? "N" : "T", &n, &kk, &alpha, a.data, &lda, &beta, c.data, &ldc, 1, 1);
    return;
  }
  auto C = eigen_map(c);
  auto A = eigen_map(a);
  if (beta != T(1)) C.template triangularView<Eigen::Lower>() *= beta;
  if (k == 0) return;
  if (a_t_a) {
    C.template selfadjointView<Eigen::Lower>().rankUpdate(A.transpose(), alpha);
  } else {
    C.template selfadjointView<Eigen::Lower>().rankUpdate(A, alpha);
  }
}

template <class T>
bool potrf1(MatrixView<T> a) {
  if (const auto& r = routines<T>(); r.potrf != nullptr) {
    const fint n = to_fint(a.rows), lda = ld(a.stride);
    fint info = 0;
    r.potrf("U", &n, a.data, &lda, &info, 1);
    return info == 0;
  }
  auto A = eigen_map(a);
  Eigen::LLT<Eigen::Ref<RowMajor<T>, 0, Eigen::OuterStride<>>, Eigen::Lower> llt(A);
  return llt.info() == Eigen::Success;
}

template <class T>
void trtri1(MatrixView<T> a) {
  if (const auto& r = routines<T>(); r.trtri != nullptr) {
    const fint n = to_fint(a.rows), lda = ld(a.stride);
    fint info = 0;
    r.trtri("U", "N", &n, a.data, &lda, &info, 1, 1);
    if (info != 0) invalid("triangular inverse of a singular factor");
    return;
  }
  auto A = eigen_map(a);
  RowMajor<T> inverse = RowMajor<T>::Identity(a.rows, a.cols);
  A.template triangularView<Eigen::Lower>().solveInPlace(inverse);
  A.template triangularView<Eigen::Lower>() = inverse;
}

// B = alpha · op(L) · B (left) or alpha · B · op(L) (right), L triangular (lower, or upper when
// `upper`) and op(L) = Lᵀ when `transposed`.
template <class T>
void multiply_triangular1(bool left, bool upper, bool transposed, T alpha, ConstMatrixView<T> l,
                          MatrixView<T> b) {
  if (b.rows == 0 || b.cols == 0) return;
  if (const auto& r = routines<T>(); r.trmm != nullptr) {
    // Column-major: B^T = alpha · B^T · op(L)^T (left) or alpha · op(L)^T · B^T (right), with
    // L^T the other triangle.
    const fint m = to_fint(b.cols), n = to_fint(b.rows), lda = ld(l.stride), ldb = ld(b.stride);
    r.trmm(left ? "R" : "L", upper ? "L" : "U", transposed ? "T" : "N", "N", &m, &n, &alpha, l.data,
           &lda, b.data, &ldb, 1, 1, 1, 1);
    return;
  }
  auto B = eigen_map(b);
  const auto product_with = [&](const auto& L) {
    if (left) return transposed ? RowMajor<T>(L.transpose() * B) : RowMajor<T>(L * B);
    return transposed ? RowMajor<T>(B * L.transpose()) : RowMajor<T>(B * L);
  };
  RowMajor<T> product = upper ? product_with(eigen_map(l).template triangularView<Eigen::Upper>())
                              : product_with(eigen_map(l).template triangularView<Eigen::Lower>());
  if (alpha != T(1)) product *= alpha;
  B = product;
}

// --- tiles -------------------------------------------------------------------------------------

// Side of the tiles of the symmetric and triangular routines, and of the square tiles of a GEMM's
// output (each tile repacks its operands: bigger tiles pack less, smaller ones share better).
// Fixed, so that a result never depends on the thread count.
constexpr Index kTile = 256;
constexpr Index kGemmTile = 512;
// Largest triangle whose SYRK may take a second, uninitialised n x n buffer (16 MiB in float32).
constexpr Index kMaxLaneSide = 2048;
// Floating-point operations worth a thread of their own.
constexpr double kGrain = double(1 << 22);

Index count(Index n, Index tile) { return (n + tile - 1) / tile; }

// body(t) for every t in [0, tiles), tile by tile on as many threads as the work is worth. Each
// tile runs on one thread, and products inside it stay on that thread: Eigen would otherwise
// start its own team when ours has a single thread.
template <class F>
void for_tiles(Index tiles, double flops, F&& body) {
  const int threads =
      static_cast<int>(std::min<Index>(std::max<Index>(tiles, 1), threads_for(flops, kGrain)));
#pragma omp parallel num_threads(threads)
  {
    omp_set_num_threads(1);
#pragma omp for schedule(dynamic, 1)
    for (Index t = 0; t < tiles; ++t) body(t);
  }
}

}  // namespace

void load_openblas(const std::string& path, const std::string& prefix) {
  std::lock_guard<std::mutex> guard(lib_mutex);
  void* handle = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (handle == nullptr) invalid("cannot open " + path + ": " + dlerror());
  Library next;
  next.handle = handle;
  next.s = load_routines<float>(handle, prefix, 's');
  next.d = load_routines<double>(handle, prefix, 'd');
  auto config = symbol<const char* (*)()>(handle, prefix + "openblas_get_config");
  next.config = config();
  // Our tiles are the parallelism; OpenBLAS threads would compete with them for the cores and
  // round differently for different thread counts.
  symbol<void (*)(int)>(handle, prefix + "openblas_set_num_threads")(1);
  lib = next;
}

void unload() {
  std::lock_guard<std::mutex> guard(lib_mutex);
  lib = Library{};  // the library stays mapped: other code may hold its routines
}

std::string backend() { return lib.handle == nullptr ? "eigen" : lib.config; }

template <class T>
void gemm(bool trans_a, bool trans_b, T alpha, ConstMatrixView<T> a, ConstMatrixView<T> b, T beta,
          MatrixView<T> c) {
  const Index k = trans_a ? a.rows : a.cols;
  if ((trans_a ? a.cols : a.rows) != c.rows || (trans_b ? b.rows : b.cols) != c.cols ||
      (trans_b ? b.cols : b.rows) != k) {
    invalid("gemm: shapes do not match");
  }
  const Index row_tiles = count(c.rows, kGemmTile), col_tiles = count(c.cols, kGemmTile);
  const double flops = 2.0 * double(c.rows) * double(c.cols) * double(k);
  for_tiles(row_tiles * col_tiles, flops, [&](Index t) {
    const Index r0 = (t / col_tiles) * kGemmTile, c0 = (t % col_tiles) * kGemmTile;
    const Index rb = std::min(kGemmTile, c.rows - r0), cb = std::min(kGemmTile, c.cols - c0);
    const ConstMatrixView<T> at = trans_a ? sub(a, 0, r0, k, rb) : sub(a, r0, 0, rb, k);
    const ConstMatrixView<T> bt = trans_b ? sub(b, c0, 0, cb, k) : sub(b, 0, c0, k, cb);
    gemm1(trans_a, trans_b, alpha, at, bt, beta, sub(c, r0, c0, rb, cb));
  });
}

// A long, narrow A (many more tokens than features, and work for two threads) is cut along k
// into two halves, each a whole SYRK of its own on one thread, and the second half's triangle is
// added to the first's. Whole SYRKs run near the GEMM rate; the row strips of a small triangle
// do not. The split depends on the shapes alone, so the result does not depend on the thread
// count. (Eigen's rank update of a whole triangle runs slower than its GEMMs on strips, so the
// Eigen-only build keeps the strips.)
namespace {

bool lanes_pay(Index n, Index k, bool have_syrk) {
  return have_syrk && n <= kMaxLaneSide && k >= 2 * n &&
         double(n) * double(n) * double(k) >= 2 * kGrain;
}

// first = alpha op(A_1)ᵀop(A_1) + beta first and second = alpha op(A_2)ᵀop(A_2) (lower
// triangles), A_1 and A_2 the two halves of A along k, each on a thread of its own.
template <class T>
void syrk_halves(bool a_t_a, T alpha, ConstMatrixView<T> a, T beta, MatrixView<T> first,
                 MatrixView<T> second) {
  const Index n = first.rows, k = a_t_a ? a.rows : a.cols, half = k / 2;
  const auto part = [&](Index k0, Index kn) {
    return a_t_a ? sub(a, k0, 0, kn, n) : sub(a, 0, k0, n, kn);
  };
  for_tiles(2, double(n) * double(n) * double(k), [&](Index lane) {
    if (lane == 0) {
      syrk1(a_t_a, alpha, part(0, half), beta, first);
    } else {
      syrk1(a_t_a, alpha, part(half, k - half), T(0), second);
    }
  });
}

// c += x + y (c += x when y is null) on the lower triangle, in row strips; y has x's stride.
template <class T>
void add_lower(MatrixView<T> c, ConstMatrixView<T> x, const T* y) {
  const Index n = c.rows, strips = count(n, kTile);
  for_tiles(strips, double(n) * double(n) / 2, [&](Index t) {
    for (Index i = t * kTile; i < std::min(n, (t + 1) * kTile); ++i) {
      T* out = c.row(i);
      const T* in = x.row(i);
      if (y == nullptr) {
        for (Index j = 0; j <= i; ++j) out[j] += in[j];
      } else {
        const T* other = y + i * x.stride;
        for (Index j = 0; j <= i; ++j) out[j] += in[j] + other[j];
      }
    }
  });
}

template <class T>
void check_syrk_shapes(bool a_t_a, ConstMatrixView<T> a, MatrixView<T> c) {
  if (c.cols != c.rows || (a_t_a ? a.cols : a.rows) != c.rows) {
    invalid("syrk: shapes do not match");
  }
}

}  // namespace

template <class T>
void syrk_lower(bool a_t_a, T alpha, ConstMatrixView<T> a, T beta, MatrixView<T> c) {
  check_syrk_shapes(a_t_a, a, c);
  const Index n = c.rows, k = a_t_a ? a.rows : a.cols;
  if (lanes_pay(n, k, routines<T>().syrk != nullptr)) {
    CachedBuffer<T> second(static_cast<std::size_t>(n * n));
    const MatrixView<T> other{second.data(), n, n, n};
    syrk_halves(a_t_a, alpha, a, beta, c, other);
    add_lower(c, read_only(other), static_cast<const T*>(nullptr));
    return;
  }
  // Row strip i of the lower triangle is one task: the part left of the diagonal tile in one
  // GEMM, the diagonal tile in one SYRK. The longest strips go first.
  const Index tiles = count(n, kTile);
  const auto slice = [&](Index i0, Index ni) {
    return a_t_a ? sub(a, 0, i0, k, ni) : sub(a, i0, 0, ni, k);
  };
  const double flops = double(n) * double(n) * double(k);
  for_tiles(tiles, flops, [&](Index t) {
    const Index i0 = (tiles - 1 - t) * kTile, ni = std::min(kTile, n - i0);
    if (i0 > 0) {
      gemm1(a_t_a, !a_t_a, alpha, slice(i0, ni), slice(0, i0), beta, sub(c, i0, 0, ni, i0));
    }
    syrk1(a_t_a, alpha, slice(i0, ni), beta, sub(c, i0, i0, ni, ni));
  });
}

template <class T>
bool syrk_lower_add_split_if_finite(bool a_t_a, T alpha, ConstMatrixView<T> a, MatrixView<T> c) {
  check_syrk_shapes(a_t_a, a, c);
  const Index n = c.rows, k = a_t_a ? a.rows : a.cols;
  if (!lanes_pay(n, k, routines<T>().syrk != nullptr)) return false;
  CachedBuffer<T> buffers(static_cast<std::size_t>(2 * n * n));
  const MatrixView<T> first{buffers.data(), n, n, n}, second{buffers.data() + n * n, n, n, n};
  syrk_halves(a_t_a, alpha, a, T(0), first, second);
  for (Index i = 0; i < n; ++i) {
    if (!std::isfinite(first(i, i) + second(i, i))) return false;
  }
  add_lower(c, read_only(first), second.data);
  return true;
}

// Right-looking blocked Cholesky: factor a diagonal tile, solve the panel below it, subtract the
// panel's outer product from the trailing matrix. Almost all the work is in that last,
// GEMM-shaped step (a triangular solve with a large triangle would run slower). The panel is
// solved as panel · L_kk^-T, a product with the inverse of the factored tile: OpenBLAS's
// triangular products run about four times as fast as its triangular solves at these sizes.
template <class T>
bool cholesky_lower(MatrixView<T> a) {
  const Index n = a.rows;
  std::vector<T> inverse_storage(static_cast<size_t>(std::min(kTile, n) * std::min(kTile, n)));
  for (Index k0 = 0; k0 < n; k0 += kTile) {
    const Index kb = std::min(kTile, n - k0), k1 = k0 + kb, rest = n - k1;
    const MatrixView<T> diagonal = sub(a, k0, k0, kb, kb);
    if (!potrf1(diagonal)) return false;
    if (rest == 0) break;
    const MatrixView<T> inverse{inverse_storage.data(), kb, kb, kb};
    for (Index i = 0; i < kb; ++i) std::copy_n(diagonal.row(i), i + 1, inverse.row(i));
    invert_lower(inverse);
    const MatrixView<T> panel = sub(a, k1, k0, rest, kb);
    for_tiles(count(rest, kTile), double(rest) * double(kb) * double(kb), [&](Index t) {
      const Index r0 = t * kTile;
      multiply_triangular1<T>(false, false, true, T(1), read_only(inverse),
                              sub(panel, r0, 0, std::min(kTile, rest - r0), kb));
    });
    syrk_lower<T>(false, T(-1), read_only(panel), T(1), sub(a, k1, k1, rest, rest));
  }
  return true;
}

// Recursive inversion: with L = [L11 0; L21 L22], invert L11 and L22, then L21 becomes
// −L22^-1 · L21 · L11^-1 by two triangular products done in place, the first on column strips of
// L21, the second on row strips (each strip is independent of the others). Blocks split into
// whole tiles while they are larger than a tile, then into whole leaves of kLeaf, which go to
// the library's own inverse. That inverse is slow (OpenBLAS's: about 12 GFLOP/s for a 256-wide
// triangle, 5 for a 64-wide one, where the products run near 100 on one thread), so the leaves
// are kept small enough to hold a negligible share of the work. The recursion runs level by
// level from the bottom, all the leaves at once and then every block of a level together, so
// that the many small blocks share the threads as the few large ones do (one block at a time,
// a level of 512-wide blocks would have a single strip to share).
constexpr Index kLeaf = 64;

// A diagonal block of the recursion: rows and columns [offset, offset + size), `depth` splits
// below the whole matrix.
struct Block {
  Index offset = 0, size = 0, depth = 0;
};

Index split_point(Index n) {
  const Index unit = n > kTile ? kTile : kLeaf;
  return count(n / 2, unit) * unit;
}

void plan_inverse(Block block, std::vector<Block>& inner, std::vector<Block>& leaves) {
  if (block.size <= kLeaf) {
    if (block.size > 0) leaves.push_back(block);
    return;
  }
  inner.push_back(block);
  const Index n1 = split_point(block.size);
  plan_inverse({block.offset, n1, block.depth + 1}, inner, leaves);
  plan_inverse({block.offset + n1, block.size - n1, block.depth + 1}, inner, leaves);
}

// One strip of a level's products: column strip `part` of L21 (first product) or row strip
// `part` (second product) of `block`.
struct Strip {
  Block block;
  Index part = 0;
};

template <class T>
void invert_lower(MatrixView<T> a) {
  std::vector<Block> inner, leaves;
  plan_inverse({0, a.rows, 0}, inner, leaves);
  const auto cube = [](Index n) { return double(n) * double(n) * double(n); };
  double leaf_flops = 0.0;
  for (const Block& b : leaves) leaf_flops += cube(b.size) / 3.0;
  for_tiles(static_cast<Index>(leaves.size()), leaf_flops, [&](Index t) {
    const Block& b = leaves[static_cast<size_t>(t)];
    trtri1(sub(a, b.offset, b.offset, b.size, b.size));
  });
  Index depth = -1;
  for (const Block& b : inner) depth = std::max(depth, b.depth);
  std::vector<Strip> strips;
  for (; depth >= 0; --depth) {
    for (const bool second : {false, true}) {
      strips.clear();
      double flops = 0.0;
      for (const Block& b : inner) {
        if (b.depth != depth) continue;
        const Index n1 = split_point(b.size), n2 = b.size - n1;
        for (Index p = 0; p < count(second ? n2 : n1, kTile); ++p) strips.push_back({b, p});
        flops += double(n1) * double(n2) * double(second ? n1 : n2);
      }
      for_tiles(static_cast<Index>(strips.size()), flops, [&](Index t) {
        const Strip& s = strips[static_cast<size_t>(t)];
        const Index o = s.block.offset, n1 = split_point(s.block.size), n2 = s.block.size - n1;
        const MatrixView<T> l21 = sub(a, o + n1, o, n2, n1);
        const Index start = s.part * kTile;
        if (!second) {
          multiply_triangular1<T>(true, false, false, T(1),
                                  read_only(sub(a, o + n1, o + n1, n2, n2)),
                                  sub(l21, 0, start, n2, std::min(kTile, n1 - start)));
        } else {
          multiply_triangular1<T>(false, false, false, T(-1), read_only(sub(a, o, o, n1, n1)),
                                  sub(l21, start, 0, std::min(kTile, n2 - start), n1));
        }
      });
    }
  }
}

template <class T>
void multiply_upper_right(ConstMatrixView<T> u, MatrixView<T> b) {
  if (u.rows != u.cols || u.rows != b.cols) invalid("multiply_upper_right: shapes do not match");
  for_tiles(count(b.rows, kTile), double(b.rows) * double(b.cols) * double(b.cols), [&](Index t) {
    const Index r0 = t * kTile;
    multiply_triangular1<T>(false, true, false, T(1), u,
                            sub(b, r0, 0, std::min(kTile, b.rows - r0), b.cols));
  });
}

#define FASTPRUNE_INSTANTIATE(T)                                                                  \
  template void gemm<T>(bool, bool, T, ConstMatrixView<T>, ConstMatrixView<T>, T, MatrixView<T>); \
  template void syrk_lower<T>(bool, T, ConstMatrixView<T>, T, MatrixView<T>);                     \
  template bool syrk_lower_add_split_if_finite<T>(bool, T, ConstMatrixView<T>, MatrixView<T>);    \
  template bool cholesky_lower<T>(MatrixView<T>);                                                 \
  template void invert_lower<T>(MatrixView<T>);                                                   \
  template void multiply_upper_right<T>(ConstMatrixView<T>, MatrixView<T>);
FASTPRUNE_INSTANTIATE(float)
FASTPRUNE_INSTANTIATE(double)
#undef FASTPRUNE_INSTANTIATE

}  // namespace fastprune::blas
