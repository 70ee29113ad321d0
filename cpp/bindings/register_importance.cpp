// Bindings of fastprune::importance. Each function takes float32 or float64 arrays with
// contiguous rows (the Python layer converts and checks them), returns a new array of the same
// dtype, and runs the kernel without the GIL.
#include <string>

#include "arrays.hpp"
#include "fastprune/importance.hpp"
#include "submodules.hpp"

namespace fastprune::bindings {

namespace {

importance::Norm parse_norm(const std::string& norm) {
  if (norm == "l1") return importance::Norm::L1;
  if (norm == "l2") return importance::Norm::L2;
  if (norm == "linf") return importance::Norm::Linf;
  throw std::invalid_argument("norm: expected 'l1', 'l2' or 'linf', got '" + norm + "'");
}

void require_same_shape(const py::array& a, const py::array& b, const char* name_a,
                        const char* name_b) {
  if (a.ndim() != b.ndim() || a.shape(0) != b.shape(0) || a.shape(1) != b.shape(1)) {
    throw std::invalid_argument(std::string(name_b) + ": shape " + shape_text(b) +
                                " does not match " + name_a + " shape " + shape_text(a));
  }
}

py::array magnitude(const py::array& weight, const std::string& norm) {
  const auto n = parse_norm(norm);
  return with_float(weight, "weight", [&](auto tag) -> py::array {
    using T = typename decltype(tag)::type;
    const auto w = matrix<T>(weight, "weight");
    auto out = empty<T>({w.rows, w.cols});
    auto o = view_of(out);
    py::gil_scoped_release release;
    importance::magnitude<T>(w, n, o);
    return out;
  });
}

py::array block_norms(const py::array& weight, Index block_rows, Index block_cols,
                      const std::string& norm) {
  const auto n = parse_norm(norm);
  return with_float(weight, "weight", [&](auto tag) -> py::array {
    using T = typename decltype(tag)::type;
    const auto w = matrix<T>(weight, "weight");
    if (block_rows < 1 || block_cols < 1 || w.rows % block_rows != 0 || w.cols % block_cols != 0) {
      throw std::invalid_argument("block (" + std::to_string(block_rows) + ", " +
                                  std::to_string(block_cols) +
                                  ") does not divide the weight shape " + shape_text(weight));
    }
    auto out = empty<T>({w.rows / block_rows, w.cols / block_cols});
    auto o = view_of(out);
    py::gil_scoped_release release;
    importance::block_norms<T>(w, block_rows, block_cols, n, o);
    return out;
  });
}

py::array wanda(const py::array& weight, const py::array& act_sq) {
  return with_float(weight, "weight", [&](auto tag) -> py::array {
    using T = typename decltype(tag)::type;
    const auto w = matrix<T>(weight, "weight");
    const T* a = vector<T>(act_sq, "act_sq", w.cols);
    auto out = empty<T>({w.rows, w.cols});
    auto o = view_of(out);
    py::gil_scoped_release release;
    importance::wanda<T>(w, a, o);
    return out;
  });
}

py::array taylor(const py::array& weight, const py::array& grad) {
  return with_float(weight, "weight", [&](auto tag) -> py::array {
    using T = typename decltype(tag)::type;
    const auto w = matrix<T>(weight, "weight");
    const auto g = matrix<T>(grad, "grad");
    require_same_shape(weight, grad, "weight", "grad");
    auto out = empty<T>({w.rows, w.cols});
    auto o = view_of(out);
    py::gil_scoped_release release;
    importance::taylor<T>(w, g, o);
    return out;
  });
}

py::array taylor_channels(const py::array& weight, const py::array& grad, bool multivariable) {
  return with_float(weight, "weight", [&](auto tag) -> py::array {
    using T = typename decltype(tag)::type;
    const auto w = matrix<T>(weight, "weight");
    const auto g = matrix<T>(grad, "grad");
    require_same_shape(weight, grad, "weight", "grad");
    auto out = py::array_t<T>(w.rows);
    T* o = out.mutable_data();
    py::gil_scoped_release release;
    importance::taylor_channels<T>(w, g, multivariable, o);
    return out;
  });
}

}  // namespace

void register_importance(py::module_ m) {
  m.def("magnitude", &magnitude, py::arg("weight"), py::arg("norm"),
        "|w| ('l1', 'linf') or w² ('l2') per weight.");
  m.def("block_norms", &block_norms, py::arg("weight"), py::arg("block_rows"),
        py::arg("block_cols"), py::arg("norm"),
        "The 'l1', 'l2' or 'linf' norm of every block_rows x block_cols block.");
  m.def("wanda", &wanda, py::arg("weight"), py::arg("act_sq"),
        "|w_ij| * sqrt(act_sq_j) per weight.");
  m.def("taylor", &taylor, py::arg("weight"), py::arg("grad"), "|w * g| per weight.");
  m.def("taylor_channels", &taylor_channels, py::arg("weight"), py::arg("grad"),
        py::arg("multivariable"), "Per row: sum |w * g|, or |sum w * g| when multivariable.");
}

}  // namespace fastprune::bindings
