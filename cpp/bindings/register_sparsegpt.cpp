// Bindings of the SparseGPT solver: the inverse-Hessian factor and the pruning loop, for float32
// and float64 (the Python layer hands over arrays of the right dtype and layout).
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <algorithm>
#include <memory>

#include "arrays.hpp"
#include "fastprune/sparsegpt.hpp"
#include "submodules.hpp"

namespace fastprune::bindings {

namespace {

template <class T>
py::tuple factor_as(const py::array& hessian, double damp, int max_tries, bool inverse) {
  const auto h = matrix<T>(hessian, "hessian");
  if (h.rows != h.cols) {
    throw std::invalid_argument("hessian: expected a square matrix, got shape " +
                                shape_text(hessian));
  }
  auto factor = empty<T>({h.rows, h.cols});
  py::array_t<bool> dead(h.rows);
  double used = 0.0;
  {
    py::gil_scoped_release release;
    used = inverse ? sparsegpt::inverse_hessian_factor(h, damp, max_tries, view_of(factor),
                                                       dead.mutable_data())
                   : sparsegpt::hessian_factor(h, damp, max_tries, view_of(factor),
                                               dead.mutable_data());
  }
  return py::make_tuple(factor, dead, used);
}

py::tuple inverse_hessian_factor(const py::array& hessian, double damp, int max_tries) {
  if (has_dtype<double>(hessian)) return factor_as<double>(hessian, damp, max_tries, true);
  return factor_as<float>(hessian, damp, max_tries, true);
}

py::tuple hessian_factor(const py::array& hessian, double damp, int max_tries) {
  if (has_dtype<double>(hessian)) return factor_as<double>(hessian, damp, max_tries, false);
  return factor_as<float>(hessian, damp, max_tries, false);
}

template <class T>
py::array invert_factor_as(const py::array& t) {
  const auto factor = matrix<T>(t, "t");
  if (factor.rows != factor.cols) {
    throw std::invalid_argument("t: expected a square matrix, got shape " + shape_text(t));
  }
  auto u = empty<T>({factor.rows, factor.cols});
  const MatrixView<T> out = view_of(u);
  bool finite = false;
  {
    py::gil_scoped_release release;
    for (Index i = 0; i < factor.rows; ++i) std::copy_n(factor.row(i), factor.cols, out.row(i));
    finite = sparsegpt::invert_factor(out);
  }
  if (!finite) throw std::invalid_argument("factor: its inverse U is not finite");
  return u;
}

py::array invert_factor(const py::array& t) {
  if (has_dtype<double>(t)) return invert_factor_as<double>(t);
  return invert_factor_as<float>(t);
}

// The weights that may be kept (all of them when `keep_mask` is None).
ConstMatrixView<bool> allowed_weights(const py::object& keep_mask) {
  if (keep_mask.is_none()) return {};
  return matrix<bool>(keep_mask.cast<py::array>(), "keep_mask");
}

template <class T>
py::tuple prune_as(py::array& weight, const py::array& u, const py::array& dead,
                   const sparsegpt::Options& options, const py::object& keep_mask) {
  const auto w = mutable_matrix<T>(weight, "weight");
  const auto factor = matrix<T>(u, "u");
  const bool* dead_columns = vector<bool>(dead, "dead", w.cols);
  const ConstMatrixView<bool> allowed = allowed_weights(keep_mask);
  auto mask = empty<bool>({w.rows, w.cols});
  double loss = 0.0;
  {
    py::gil_scoped_release release;
    loss = sparsegpt::prune(w, factor, dead_columns, options, allowed, view_of(mask));
  }
  return py::make_tuple(mask, loss);
}

py::tuple prune(py::array& weight, const py::array& u, const py::array& dead, double sparsity,
                int n, int m, Index blocksize, const py::object& keep_mask) {
  const sparsegpt::Options options{sparsity, n, m, blocksize};
  if (has_dtype<double>(weight)) {
    return prune_as<double>(weight, u, dead, options, keep_mask);
  }
  return prune_as<float>(weight, u, dead, options, keep_mask);
}

// The Hessian of a layer with `cols` inputs: (cols, cols).
template <class T>
ConstMatrixView<T> layer_hessian(const py::array& hessian, Index cols) {
  const auto h = matrix<T>(hessian, "hessian");
  if (h.rows != h.cols || h.rows != cols) {
    throw std::invalid_argument("hessian: expected shape (" + std::to_string(cols) + ", " +
                                std::to_string(cols) + "), got " + shape_text(hessian));
  }
  return h;
}

// The factor of a one-off solve lives in scratch memory, which later solves of the same width
// reuse, rather than in a fresh array that the caller never sees.
template <class T>
py::tuple solve_as(py::array& weight, const py::array& hessian, double damp, int max_tries,
                   const sparsegpt::Options& options, const py::object& keep_mask) {
  const auto w = mutable_matrix<T>(weight, "weight");
  const auto h = layer_hessian<T>(hessian, w.cols);
  const ConstMatrixView<bool> allowed = allowed_weights(keep_mask);
  auto mask = empty<bool>({w.rows, w.cols});
  double loss = 0.0, used = 0.0;
  {
    py::gil_scoped_release release;
    const Index c = h.rows;
    const Scratch<T> u(static_cast<std::size_t>(c * c));
    const Scratch<bool> dead(static_cast<std::size_t>(c));
    used = sparsegpt::inverse_hessian_factor(h, damp, max_tries, {u.data(), c, c, c}, dead.data());
    loss = sparsegpt::prune(w, ConstMatrixView<T>{u.data(), c, c, c}, dead.data(), options, allowed,
                            view_of(mask));
  }
  return py::make_tuple(mask, loss, used);
}

py::tuple solve(py::array& weight, const py::array& hessian, double damp, int max_tries,
                double sparsity, int n, int m, Index blocksize, const py::object& keep_mask) {
  const sparsegpt::Options options{sparsity, n, m, blocksize};
  if (has_dtype<double>(weight)) {
    return solve_as<double>(weight, hessian, damp, max_tries, options, keep_mask);
  }
  return solve_as<float>(weight, hessian, damp, max_tries, options, keep_mask);
}

template <class T>
py::tuple prune_from_as(const py::array& original, const py::array& t, const py::array& dead,
                        const sparsegpt::Options& options, const py::object& keep_mask) {
  const auto w = matrix<T>(original, "weight");
  const auto factor = matrix<T>(t, "t");
  const bool* dead_columns = vector<bool>(dead, "dead", w.cols);
  const ConstMatrixView<bool> allowed = allowed_weights(keep_mask);
  auto out = empty<T>({w.rows, w.cols});
  auto mask = empty<bool>({w.rows, w.cols});
  double loss = 0.0;
  {
    py::gil_scoped_release release;
    loss = sparsegpt::prune_from(w, factor, dead_columns, options, allowed, view_of(out),
                                 view_of(mask));
  }
  return py::make_tuple(out, mask, loss);
}

py::tuple prune_from(const py::array& original, const py::array& t, const py::array& dead,
                     double sparsity, int n, int m, Index blocksize, const py::object& keep_mask) {
  const sparsegpt::Options options{sparsity, n, m, blocksize};
  if (has_dtype<double>(original)) {
    return prune_from_as<double>(original, t, dead, options, keep_mask);
  }
  return prune_from_as<float>(original, t, dead, options, keep_mask);
}

template <class T>
py::tuple solve_from_as(const py::array& original, const py::array& hessian, double damp,
                        int max_tries, const sparsegpt::Options& options,
                        const py::object& keep_mask) {
  const auto w = matrix<T>(original, "weight");
  const auto h = layer_hessian<T>(hessian, w.cols);
  const ConstMatrixView<bool> allowed = allowed_weights(keep_mask);
  auto out = empty<T>({w.rows, w.cols});
  auto mask = empty<bool>({w.rows, w.cols});
  double loss = 0.0, used = 0.0;
  {
    py::gil_scoped_release release;
    const Index c = h.rows;
    const Scratch<T> t(static_cast<std::size_t>(c * c));
    const Scratch<bool> dead(static_cast<std::size_t>(c));
    used = sparsegpt::hessian_factor(h, damp, max_tries, {t.data(), c, c, c}, dead.data());
    loss = sparsegpt::prune_from(w, ConstMatrixView<T>{t.data(), c, c, c}, dead.data(), options,
                                 allowed, view_of(out), view_of(mask));
  }
  return py::make_tuple(out, mask, loss, used);
}

py::tuple solve_from(const py::array& original, const py::array& hessian, double damp,
                     int max_tries, double sparsity, int n, int m, Index blocksize,
                     const py::object& keep_mask) {
  const sparsegpt::Options options{sparsity, n, m, blocksize};
  if (has_dtype<double>(original)) {
    return solve_from_as<double>(original, hessian, damp, max_tries, options, keep_mask);
  }
  return solve_from_as<float>(original, hessian, damp, max_tries, options, keep_mask);
}

}  // namespace

void register_sparsegpt(pybind11::module_ m) {
  m.def("inverse_hessian_factor", &inverse_hessian_factor, py::arg("hessian"), py::arg("damp"),
        py::arg("max_tries"),
        "(u, dead, damp_used): U, the upper Cholesky factor of the damped inverse Hessian "
        "(H^-1 = U^T U), computed as J chol(J H J)^-1 J; dead marks columns with H_jj == 0.");
  m.def("hessian_factor", &hessian_factor, py::arg("hessian"), py::arg("damp"),
        py::arg("max_tries"),
        "(t, dead, damp_used): T = J chol(J H J) J, upper triangular with H = T T^T (the damped "
        "Hessian), so that U = T^-1.");
  m.def("invert_factor", &invert_factor, py::arg("t"), "U = T^-1, a new array.");
  m.def("prune", &prune, py::arg("weight"), py::arg("u"), py::arg("dead"), py::arg("sparsity"),
        py::arg("n"), py::arg("m"), py::arg("blocksize"), py::arg("keep_mask") = py::none(),
        "(mask, loss): prunes `weight` in place with SparseGPT; m == 0 is unstructured, else "
        "n kept of every m.");
  m.def("prune_from", &prune_from, py::arg("weight"), py::arg("t"), py::arg("dead"),
        py::arg("sparsity"), py::arg("n"), py::arg("m"), py::arg("blocksize"),
        py::arg("keep_mask") = py::none(),
        "(pruned, mask, loss): prunes a copy of `weight` with SparseGPT from the factor T, "
        "without inverting it; `weight` is not modified.");
  m.def("solve", &solve, py::arg("weight"), py::arg("hessian"), py::arg("damp"),
        py::arg("max_tries"), py::arg("sparsity"), py::arg("n"), py::arg("m"), py::arg("blocksize"),
        py::arg("keep_mask") = py::none(),
        "(mask, loss, damp_used): inverse_hessian_factor then prune, the factor held in scratch "
        "memory.");
  m.def("solve_from", &solve_from, py::arg("weight"), py::arg("hessian"), py::arg("damp"),
        py::arg("max_tries"), py::arg("sparsity"), py::arg("n"), py::arg("m"), py::arg("blocksize"),
        py::arg("keep_mask") = py::none(),
        "(pruned, mask, loss, damp_used): hessian_factor then prune_from, the factor held in "
        "scratch memory; `weight` is not modified.");
}

}  // namespace fastprune::bindings
