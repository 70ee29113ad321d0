// Bindings of the SparseGPT solver: the Hessian's factor, its inverse, and the one solve (the
// core chooses its route), for float32 and float64 (the Python layer hands over arrays of the
// right dtype and layout).
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <algorithm>
#include <string>

#include "arrays.hpp"
#include "fastprune/sparsegpt.hpp"
#include "submodules.hpp"

namespace fastprune::bindings {

namespace {

// A square matrix argument.
template <class T>
ConstMatrixView<T> square(const py::array& a, const char* name) {
  const auto v = matrix<T>(a, name);
  if (v.rows != v.cols) {
    throw std::invalid_argument(std::string(name) + ": expected a square matrix, got shape " +
                                shape_text(a));
  }
  return v;
}

py::tuple hessian_factor(const py::array& hessian, double damp, int max_tries) {
  return with_float(hessian, "hessian", [&](auto tag) -> py::tuple {
    using T = typename decltype(tag)::type;
    const auto h = square<T>(hessian, "hessian");
    auto factor = empty<T>({h.rows, h.cols});
    py::array_t<bool> dead(h.rows);
    double used = 0.0;
    {
      py::gil_scoped_release release;
      used = sparsegpt::hessian_factor(h, damp, max_tries, view_of(factor), dead.mutable_data());
    }
    return py::make_tuple(factor, dead, used);
  });
}

py::array invert_factor(const py::array& t) {
  return with_float(t, "t", [&](auto tag) -> py::array {
    using T = typename decltype(tag)::type;
    const auto factor = square<T>(t, "t");
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
  });
}

py::tuple damped_hessian(const py::array& hessian, const py::array& dead, double damp) {
  return with_float(hessian, "hessian", [&](auto tag) -> py::tuple {
    using T = typename decltype(tag)::type;
    const auto h = square<T>(hessian, "hessian");
    const bool* d = vector<bool>(dead, "dead", h.rows);
    auto out = empty<double>({h.rows, h.cols});
    double shift = 0.0;
    {
      py::gil_scoped_release release;
      shift = sparsegpt::damped_hessian(h, d, damp, view_of(out));
    }
    return py::make_tuple(out, shift);
  });
}

sparsegpt::Route parse_route(const std::string& route) {
  if (route == "automatic") return sparsegpt::Route::automatic;
  if (route == "from_u") return sparsegpt::Route::from_u;
  if (route == "from_t") return sparsegpt::Route::from_t;
  throw std::invalid_argument("route: expected 'automatic', 'from_u' or 'from_t', got '" + route +
                              "'");
}

// `source` is the Hessian (an array) or a factor's (t, dead, u or None).
py::tuple solve(py::array& weight, const py::object& source, double damp, int max_tries,
                double sparsity, int n, int m, Index blocksize, const py::object& keep_mask,
                bool inplace, bool check_weight, const std::string& route) {
  const sparsegpt::Options options{sparsity, n, m, blocksize};
  const sparsegpt::Route chosen = parse_route(route);
  return with_float(weight, "weight", [&](auto tag) -> py::tuple {
    using T = typename decltype(tag)::type;
    const auto w = inplace ? mutable_matrix<T>(weight, "weight") : MatrixView<T>{};
    const ConstMatrixView<T> original = matrix<T>(weight, "weight");
    const ConstMatrixView<bool> allowed =
        keep_mask.is_none() ? ConstMatrixView<bool>{}
                            : matrix<bool>(keep_mask.cast<py::array>(), "keep_mask");
    sparsegpt::Source<T> from;
    py::object u_array = py::none();
    if (py::isinstance<py::array>(source)) {
      from.hessian = matrix<T>(source.cast<py::array>(), "hessian");
      from.damp = damp;
      from.max_tries = max_tries;
    } else {
      const auto factor = source.cast<py::tuple>();
      from.from_hessian = false;
      from.t = square<T>(factor[0].cast<py::array>(), "t");
      from.dead = vector<bool>(factor[1].cast<py::array>(), "dead", original.cols);
      if (factor[2].is_none()) {
        auto room = empty<T>({from.t.rows, from.t.cols});
        from.u = view_of(room);
        u_array = room;
      } else {
        auto known = factor[2].cast<py::array>();
        const auto u = square<T>(known, "u");
        from.u = {const_cast<T*>(u.data), u.rows, u.cols, u.stride};
        from.u_known = true;
      }
    }
    py::array_t<T> fresh;
    MatrixView<T> target = w;
    if (!inplace) {
      fresh = empty<T>({original.rows, original.cols});
      target = view_of(fresh);
    }
    const py::array out = inplace ? weight : fresh;
    auto mask = empty<bool>({original.rows, original.cols});
    sparsegpt::Outcome outcome;
    {
      py::gil_scoped_release release;
      outcome = sparsegpt::solve(original, from, options, chosen, allowed, target, view_of(mask),
                                 check_weight);
    }
    return py::make_tuple(out, mask, outcome.loss, outcome.damp_used,
                          outcome.formed_u ? u_array : py::none(), outcome.weight_finite);
  });
}

py::array refit_direct(const py::array& damped, const py::array& gram_target, const py::array& mask,
                       const py::array& dead) {
  const auto h = square<double>(damped, "damped");
  const auto g = matrix<double>(gram_target, "gram_target");
  const auto kept = matrix<bool>(mask, "mask");
  if (g.cols != h.cols || kept.rows != g.rows || kept.cols != g.cols) {
    throw std::invalid_argument("gram_target " + shape_text(gram_target) + " and mask " +
                                shape_text(mask) + ": expected both (out, " +
                                std::to_string(h.cols) + ") for a damped Hessian of that width");
  }
  const bool* d = vector<bool>(dead, "dead", h.rows);
  auto out = empty<double>({g.rows, g.cols});
  bool positive_definite = false;
  {
    py::gil_scoped_release release;
    positive_definite = sparsegpt::refit_direct(h, g, kept, d, view_of(out));
  }
  if (!positive_definite) {
    throw std::invalid_argument("damped: not positive definite on some row's kept columns");
  }
  return out;
}

}  // namespace

void register_sparsegpt(pybind11::module_ m) {
  m.def("hessian_factor", &hessian_factor, py::arg("hessian"), py::arg("damp"),
        py::arg("max_tries"),
        "(t, dead, damp_used): T = J chol(J H J) J, upper triangular with H = T T^T (the damped "
        "Hessian), so that U = T^-1; dead marks columns with H_jj == 0.");
  m.def("damped_hessian", &damped_hessian, py::arg("hessian"), py::arg("dead"), py::arg("damp"),
        "(damped, shift): the float64 matrix a factor with these dead columns and relative "
        "damping factorises (dead diagonal entries 1, plus shift on the diagonal).");
  m.def("invert_factor", &invert_factor, py::arg("t"), "U = T^-1, a new array.");
  m.def("refit_direct", &refit_direct, py::arg("damped"), py::arg("gram_target"), py::arg("mask"),
        py::arg("dead"),
        "Per row r, the kept live weights x solving damped[S, S] x = gram_target[r, S] (S the "
        "row's kept columns that are not dead), zero elsewhere: one Cholesky factorisation per "
        "row, float64.");
  m.def("solve", &solve, py::arg("weight"), py::arg("source"), py::arg("damp"),
        py::arg("max_tries"), py::arg("sparsity"), py::arg("n"), py::arg("m"), py::arg("blocksize"),
        py::arg("keep_mask"), py::arg("inplace"), py::arg("check_weight"),
        py::arg("route") = "automatic",
        "(pruned, mask, loss, damp_used, u, finite): SparseGPT on `weight` from the Hessian "
        "`source` or a "
        "factor's (t, dead, u or None), the route (from T or from U) chosen by the core; "
        "`pruned` is `weight` itself when `inplace`, else a new array; `u` is U when the solve "
        "formed it from the factor's T (to keep with the factor), else None; with check_weight, "
        "finite is False (and nothing pruned) when the weight holds a NaN or an Inf. m == 0 is "
        "unstructured, else n kept of every m.");
}

}  // namespace fastprune::bindings
