#include "fastprune/blas.hpp"

#include <dlfcn.h>

#include <Eigen/Cholesky>
#include <Eigen/Core>
#include <cstddef>
#include <mutex>

namespace fastprune::blas {
namespace {

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

template <class T>
struct Routines {
  gemm_fn<T> gemm = nullptr;
  syrk_fn<T> syrk = nullptr;
  potrf_fn<T> potrf = nullptr;
  trtri_fn<T> trtri = nullptr;
};

struct Library {
  void* handle = nullptr;
  Routines<float> s;
  Routines<double> d;
  void (*set_threads)(int) = nullptr;
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

fint to_fint(Index v) {
  if (v > static_cast<Index>(0x7fffffff)) invalid("matrix dimension too large for 32-bit BLAS");
  return static_cast<fint>(v);
}

}  // namespace

void load_openblas(const std::string& path, const std::string& prefix) {
  std::lock_guard<std::mutex> guard(lib_mutex);
  void* handle = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (handle == nullptr) invalid("cannot open " + path + ": " + dlerror());
  Library next;
  next.handle = handle;
  next.s = {symbol<gemm_fn<float>>(handle, prefix + "sgemm_"),
            symbol<syrk_fn<float>>(handle, prefix + "ssyrk_"),
            symbol<potrf_fn<float>>(handle, prefix + "spotrf_"),
            symbol<trtri_fn<float>>(handle, prefix + "strtri_")};
  next.d = {symbol<gemm_fn<double>>(handle, prefix + "dgemm_"),
            symbol<syrk_fn<double>>(handle, prefix + "dsyrk_"),
            symbol<potrf_fn<double>>(handle, prefix + "dpotrf_"),
            symbol<trtri_fn<double>>(handle, prefix + "dtrtri_")};
  next.set_threads = symbol<void (*)(int)>(handle, prefix + "openblas_set_num_threads");
  auto config = symbol<const char* (*)()>(handle, prefix + "openblas_get_config");
  next.config = config();
  lib = next;
  lib.set_threads(get_num_threads());
}

void unload() {
  std::lock_guard<std::mutex> guard(lib_mutex);
  lib = Library{};  // the library stays mapped: other code may hold its routines
}

std::string backend() { return lib.handle == nullptr ? "eigen" : lib.config; }

void set_num_threads(int n) {
  if (lib.set_threads != nullptr) lib.set_threads(n);
}

// Row-major matrices are column-major transposes, so every call below is the Fortran routine
// applied to the transposed problem.

template <class T>
void gemm(bool trans_a, bool trans_b, T alpha, ConstMatrixView<T> a, ConstMatrixView<T> b, T beta,
          MatrixView<T> c) {
  const Index k = trans_a ? a.rows : a.cols;
  if (c.rows == 0 || c.cols == 0) return;
  if (const auto& r = routines<T>(); r.gemm != nullptr && k > 0) {
    // C^T = op(B)^T op(A)^T in column-major terms.
    const fint m = to_fint(c.cols), n = to_fint(c.rows), kk = to_fint(k);
    const fint lda = to_fint(std::max<Index>(b.stride, 1)),
               ldb = to_fint(std::max<Index>(a.stride, 1));
    const fint ldc = to_fint(std::max<Index>(c.stride, 1));
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
void syrk_lower_at_a(T alpha, ConstMatrixView<T> a, T beta, MatrixView<T> c) {
  if (c.rows == 0) return;
  if (const auto& r = routines<T>(); r.syrk != nullptr) {
    // Row-major lower of C is column-major upper of C^T = C; A^T A with A row-major (k x n) is
    // column-major A' A' ^T where A' (n x k) is A's buffer read column-major.
    const fint n = to_fint(c.rows), k = to_fint(a.rows);
    const fint lda = to_fint(std::max<Index>(a.stride, 1)), ldc = to_fint(c.stride);
    r.syrk("U", "N", &n, &k, &alpha, a.data, &lda, &beta, c.data, &ldc, 1, 1);
    return;
  }
  auto C = eigen_map(c);
  auto A = eigen_map(a);
  if (beta != T(1)) C.template triangularView<Eigen::Lower>() *= beta;
  C.template selfadjointView<Eigen::Lower>().rankUpdate(A.transpose(), alpha);
}

template <class T>
bool cholesky_lower(MatrixView<T> a) {
  if (a.rows == 0) return true;
  if (const auto& r = routines<T>(); r.potrf != nullptr) {
    const fint n = to_fint(a.rows), lda = to_fint(a.stride);
    fint info = 0;
    r.potrf("U", &n, a.data, &lda, &info, 1);
    return info == 0;
  }
  auto A = eigen_map(a);
  Eigen::LLT<Eigen::Ref<RowMajor<T>, 0, Eigen::OuterStride<>>, Eigen::Lower> llt(A);
  return llt.info() == Eigen::Success;
}

template <class T>
void invert_lower(MatrixView<T> a) {
  if (a.rows == 0) return;
  if (const auto& r = routines<T>(); r.trtri != nullptr) {
    const fint n = to_fint(a.rows), lda = to_fint(a.stride);
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

#define FASTPRUNE_INSTANTIATE(T)                                                                  \
  template void gemm<T>(bool, bool, T, ConstMatrixView<T>, ConstMatrixView<T>, T, MatrixView<T>); \
  template void syrk_lower_at_a<T>(T, ConstMatrixView<T>, T, MatrixView<T>);                      \
  template bool cholesky_lower<T>(MatrixView<T>);                                                 \
  template void invert_lower<T>(MatrixView<T>);
FASTPRUNE_INSTANTIATE(float)
FASTPRUNE_INSTANTIATE(double)
#undef FASTPRUNE_INSTANTIATE

}  // namespace fastprune::blas
