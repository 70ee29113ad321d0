// The SparseGPT solver's one entry point (sparsegpt.hpp, `solve`): read (and check) the weight,
// factorise the Hessian when given one, choose the route (from T or from U) and mark the dead
// columns pruned.
#include <omp.h>

#include <algorithm>
#include <string>

#include "fastprune/calibration.hpp"
#include "fastprune/sparsegpt.hpp"
#include "sparsegpt_internal.hpp"

namespace fastprune::sparsegpt {
namespace {

// out = weight, rows in parallel; with `check`, in the same pass whether the weight is free of
// NaN and Inf (true without it).
template <class T>
bool copy_weight(ConstMatrixView<T> weight, MatrixView<T> out, bool check) {
  if (check) return calibration::copy_finite(weight, out);
  const int threads = threads_for(double(weight.rows) * double(weight.cols), detail::kCopyGrain);
#pragma omp parallel for schedule(static) num_threads(threads)
  for (Index r = 0; r < weight.rows; ++r) std::copy_n(weight.row(r), weight.cols, out.row(r));
  return true;
}

// Whether the weight is free of NaN and Inf, rows on every thread.
template <class T>
bool weight_finite(ConstMatrixView<T> weight) {
  calibration::TokenMatrix<T> x;
  x.data = weight.data;
  x.tokens = weight.rows;
  x.features = weight.cols;
  x.token_stride = weight.rows > 1 ? weight.stride : weight.cols;
  x.feature_stride = 1;
  return calibration::all_finite(x);
}

std::string shape(Index rows, Index cols) {
  return "(" + std::to_string(rows) + ", " + std::to_string(cols) + ")";
}

}  // namespace

template <class T>
Outcome solve(ConstMatrixView<T> weight, const Source<T>& source, const Options& options,
              Route route, ConstMatrixView<bool> allowed, MatrixView<T> out, MatrixView<bool> mask,
              bool check_weight) {
  const Index rows = weight.rows, c = weight.cols;
  if (out.rows != rows || out.cols != c) invalid("out: expected the shape of the weight");
  const bool in_place = out.data == weight.data;
  const bool from_t = !in_place && (route == Route::from_t ||
                                    (route == Route::automatic && rows * kFromTRows <= c * c));
  const auto size = static_cast<std::size_t>(c * c);
  Outcome outcome;
  // The weight first, before any factorisation: from U the pruning works in place on `out`, so
  // the weight is copied there (unless it is there already); from T it is read where it lies.
  // Either way it is checked for NaN and Inf when asked, in the pass that reads it.
  if (!from_t && !in_place) {
    outcome.weight_finite = copy_weight(weight, out, check_weight);
  } else if (check_weight) {
    outcome.weight_finite = weight_finite(weight);
  }
  if (!outcome.weight_finite) return outcome;
  if (source.from_hessian) {
    const ConstMatrixView<T> h = source.hessian;
    if (h.rows != c || h.cols != c) {
      invalid("hessian: expected shape " + shape(c, c) + ", got " + shape(h.rows, h.cols));
    }
    const CachedBuffer<T> factor(size);
    const CachedBuffer<bool> dead(static_cast<std::size_t>(c));
    const MatrixView<T> f{factor.data(), c, c, c};
    const ConstMatrixView<T> read{factor.data(), c, c, c};
    if (from_t) {
      outcome.damp_used = hessian_factor(h, source.damp, source.max_tries, f, dead.data());
      outcome.loss = prune_from(weight, read, dead.data(), options, allowed, out, mask);
    } else {
      outcome.damp_used = inverse_hessian_factor(h, source.damp, source.max_tries, f, dead.data());
      outcome.loss = prune(out, read, dead.data(), options, allowed, mask);
    }
    detail::prune_dead_columns(dead.data(), mask);
    return outcome;
  }
  const ConstMatrixView<T> t = source.t;
  if (t.rows != c || t.cols != c) invalid("factor: expected shape (in_features, in_features)");
  if (source.u.data != nullptr && (source.u.rows != c || source.u.cols != c)) {
    invalid("u: expected the shape of the factor");
  }
  if (from_t) {
    outcome.loss = prune_from(weight, t, source.dead, options, allowed, out, mask);
  } else if (source.u_known) {
    const ConstMatrixView<T> u{source.u.data, c, c, source.u.stride};
    outcome.loss = prune(out, u, source.dead, options, allowed, mask);
  } else {
    const CachedBuffer<T> room(source.u.data == nullptr ? size : 0);
    const MatrixView<T> u =
        source.u.data == nullptr ? MatrixView<T>{room.data(), c, c, c} : source.u;
    for (Index i = 0; i < c; ++i) std::copy_n(t.row(i), c, u.row(i));
    if (!invert_factor(u)) invalid("factor: its inverse U is not finite");
    outcome.formed_u = source.u.data != nullptr;
    outcome.loss =
        prune(out, ConstMatrixView<T>{u.data, c, c, u.stride}, source.dead, options, allowed, mask);
  }
  detail::prune_dead_columns(source.dead, mask);
  return outcome;
}

#define FASTPRUNE_INSTANTIATE(T)                                                         \
  template Outcome solve<T>(ConstMatrixView<T>, const Source<T>&, const Options&, Route, \
                            ConstMatrixView<bool>, MatrixView<T>, MatrixView<bool>, bool);
FASTPRUNE_INSTANTIATE(float)
FASTPRUNE_INSTANTIATE(double)
#undef FASTPRUNE_INSTANTIATE

}  // namespace fastprune::sparsegpt
