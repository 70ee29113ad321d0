// The direct refit of SparseGPT's kept weights (sparsegpt.hpp, `refit_direct`): one Cholesky
// factorisation of the damped Hessian restricted to each row's kept columns.
#include <omp.h>

#include <Eigen/Cholesky>
#include <Eigen/Core>
#include <algorithm>
#include <vector>

#include "fastprune/sparsegpt.hpp"

namespace fastprune::sparsegpt {

bool refit_direct(ConstMatrixView<double> damped, ConstMatrixView<double> gram_target,
                  ConstMatrixView<bool> mask, const bool* dead, MatrixView<double> out) {
  const Index rows = gram_target.rows;
  const Index c = damped.cols;
  Index widest = 0;
  for (Index r = 0; r < rows; ++r) {
    const bool* m = mask.row(r);
    Index n = 0;
    for (Index j = 0; j < c; ++j) n += (m[j] && !dead[j]) ? 1 : 0;
    widest = std::max(widest, n);
  }
  // A row's factorisation is about |S|³/3 multiply-adds: a team pays from a few rows of 64. Each
  // thread holds a widest × widest buffer; the team is cut so that the buffers together stay
  // within 2 c² doubles (twice the Hessian's size) however many cores there are.
  const double buffer = std::max(1.0, double(widest) * double(widest));
  const int fits = static_cast<int>(std::max(1.0, 2.0 * double(c) * double(c) / buffer));
  const int threads =
      std::min(threads_for(double(rows) * double(c) * double(c), double(1 << 18)), fits);
  bool positive_definite = true;
#pragma omp parallel num_threads(threads)
  {
    std::vector<Index> kept;
    kept.reserve(static_cast<std::size_t>(c));
    // One buffer per thread, big enough for any row: no allocation per row.
    Eigen::VectorXd storage(widest * widest);
    Eigen::VectorXd rhs(c);
#pragma omp for schedule(dynamic, 1)
    for (Index r = 0; r < rows; ++r) {
      double* o = out.row(r);
      std::fill_n(o, c, 0.0);
      kept.clear();
      const bool* m = mask.row(r);
      for (Index j = 0; j < c; ++j) {
        if (m[j] && !dead[j]) kept.push_back(j);
      }
      const Index n = static_cast<Index>(kept.size());
      if (n == 0) continue;
      Eigen::Map<Eigen::MatrixXd> a(storage.data(), n, n);
      // The lower triangle of H_SS, column q from row kept[q] of the symmetric H.
      for (Index q = 0; q < n; ++q) {
        const double* h = damped.row(kept[q]);
        for (Index p = q; p < n; ++p) a(p, q) = h[kept[p]];
        rhs[q] = gram_target(r, kept[q]);
      }
      Eigen::Ref<Eigen::MatrixXd> in_place(a);
      const Eigen::LLT<Eigen::Ref<Eigen::MatrixXd>, Eigen::Lower> llt(in_place);
      if (llt.info() != Eigen::Success) {
#pragma omp atomic write
        positive_definite = false;
        continue;
      }
      auto solution = rhs.head(n);
      llt.solveInPlace(solution);
      for (Index q = 0; q < n; ++q) o[kept[q]] = solution[q];
    }
  }
  return positive_definite;
}

}  // namespace fastprune::sparsegpt
