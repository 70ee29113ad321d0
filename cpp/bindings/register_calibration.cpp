// Bindings of fastprune::calibration. The Python layer owns the running sum (a C-contiguous
// float32/float64 array) and hands over token matrices of the same dtype whose features or
// tokens are contiguous (16-bit floats as uint16 views of their bits); the kernels run without
// the GIL.
#include <cstdint>
#include <string>

#include "arrays.hpp"
#include "fastprune/calibration.hpp"
#include "submodules.hpp"

namespace fastprune::bindings {

namespace {

// A view of a 2-D (tokens, features) array with positive strides, one of them unit.
template <class T>
calibration::TokenMatrix<T> token_matrix(const py::array& x, const char* name) {
  require_dtype<T>(x, name);
  if (x.ndim() != 2) {
    throw std::invalid_argument(std::string(name) +
                                ": expected a 2-D (tokens, features) array, "
                                "got shape " +
                                shape_text(x));
  }
  const auto item = static_cast<py::ssize_t>(sizeof(T));
  const py::ssize_t tokens = x.shape(0), features = x.shape(1);
  const py::ssize_t s0 = x.strides(0), s1 = x.strides(1);
  if (s0 < 0 || s1 < 0 || s0 % item != 0 || s1 % item != 0) {
    throw std::invalid_argument(std::string(name) +
                                ": strides must be positive multiples of the "
                                "item size");
  }
  calibration::TokenMatrix<T> m;
  m.data = static_cast<const T*>(x.data());
  m.tokens = tokens;
  m.features = features;
  if (features <= 1 || s1 == item) {
    m.feature_stride = 1;
    m.token_stride = tokens > 1 ? s0 / item : features;
  } else if (tokens <= 1 || s0 == item) {
    m.token_stride = 1;
    m.feature_stride = s1 / item;
  } else {
    throw std::invalid_argument(std::string(name) +
                                ": the features of a token or the tokens of a feature must be "
                                "contiguous");
  }
  return m;
}

template <class T>
ConstMatrixView<T> square_gram(const py::array& gram) {
  const auto g = matrix<T>(gram, "gram");
  if (g.rows != g.cols || (g.rows > 1 && g.stride != g.cols)) {
    throw std::invalid_argument("gram: expected a C-contiguous square array, got shape " +
                                shape_text(gram));
  }
  return g;
}

// gram += the update of x (lower triangle); with `if_finite`, only when x is free of NaN and Inf
// (the result says whether it was added).
template <class T>
bool add_gram_lower_typed(py::array& gram, const py::array& x, bool if_finite) {
  square_gram<T>(gram);
  auto g = mutable_matrix<T>(gram, "gram");
  const auto tokens = token_matrix<T>(x, "x");
  if (tokens.features != g.rows) {
    throw std::invalid_argument("x: expected " + std::to_string(g.rows) + " features, got shape " +
                                shape_text(x));
  }
  py::gil_scoped_release release;
  if (if_finite) return calibration::add_gram_lower_if_finite<T>(g, tokens);
  calibration::add_gram_lower<T>(g, tokens);
  return true;
}

bool add_gram_lower_dispatch(py::array gram, const py::array& x, bool if_finite) {
  return with_float(gram, "gram", [&](auto tag) {
    return add_gram_lower_typed<typename decltype(tag)::type>(gram, x, if_finite);
  });
}

void add_gram_lower(py::array gram, const py::array& x) { add_gram_lower_dispatch(gram, x, false); }

bool add_gram_lower_if_finite(py::array gram, const py::array& x) {
  return add_gram_lower_dispatch(gram, x, true);
}

template <class T>
bool all_finite_typed(const py::array& x) {
  const auto tokens = token_matrix<T>(x, "x");
  py::gil_scoped_release release;
  return calibration::all_finite<T>(tokens);
}

bool all_finite(const py::array& x) {
  return with_float(x, "x",
                    [&](auto tag) { return all_finite_typed<typename decltype(tag)::type>(x); });
}

template <class T>
py::tuple copy_finite_typed(const py::array& x) {
  const auto source = matrix<T>(x, "x");
  auto out = empty<T>({source.rows, source.cols});
  auto o = view_of(out);
  bool finite = false;
  {
    py::gil_scoped_release release;
    finite = calibration::copy_finite<T>(source, o);
  }
  return py::make_tuple(out, finite);
}

py::tuple copy_finite(const py::array& x) {
  return with_float(x, "x",
                    [&](auto tag) { return copy_finite_typed<typename decltype(tag)::type>(x); });
}

bool halves_finite(const py::array& bits, bool brain) {
  const auto x = token_matrix<std::uint16_t>(bits, "bits");
  py::gil_scoped_release release;
  return calibration::halves_finite(x, brain);
}

bool add_gram_lower_widened(py::array gram, const py::array& bits, bool brain) {
  square_gram<float>(gram);
  auto g = mutable_matrix<float>(gram, "gram");
  const auto x = matrix<std::uint16_t>(bits, "bits");
  if (x.cols != g.rows) {
    throw std::invalid_argument("bits: expected " + std::to_string(g.rows) +
                                " features, got shape " + shape_text(bits));
  }
  py::gil_scoped_release release;
  return calibration::add_gram_lower_widened(g, x, brain);
}

py::tuple widen_finite(const py::array& bits, bool brain) {
  const auto source = matrix<std::uint16_t>(bits, "bits");
  auto out = empty<float>({source.rows, source.cols});
  auto o = view_of(out);
  bool finite = false;
  {
    py::gil_scoped_release release;
    finite = calibration::widen_finite(source, brain, o);
  }
  return py::make_tuple(out, finite);
}

template <class T>
py::array symmetric_from_lower_typed(py::array gram, double scale) {
  const auto g = square_gram<T>(gram);
  auto out = empty<T>({g.rows, g.cols});
  auto o = view_of(out);
  py::gil_scoped_release release;
  calibration::symmetric_from_lower<T>(g, static_cast<T>(scale), o);
  return out;
}

py::array symmetric_from_lower(py::array gram, double scale) {
  return with_float(gram, "gram", [&](auto tag) {
    return symmetric_from_lower_typed<typename decltype(tag)::type>(gram, scale);
  });
}

}  // namespace

void register_calibration(py::module_ m) {
  m.def("add_gram_lower", &add_gram_lower, py::arg("gram"), py::arg("x"),
        "gram[i, j] += sum_t x[t, i] x[t, j] for i >= j, in place (lower triangle only).");
  m.def("add_gram_lower_if_finite", &add_gram_lower_if_finite, py::arg("gram"), py::arg("x"),
        "add_gram_lower when x is free of NaN and Inf, and True; otherwise False, gram unchanged.");
  m.def("all_finite", &all_finite, py::arg("x"),
        "Whether a 2-D (tokens, features) array is free of NaN and Inf.");
  m.def("copy_finite", &copy_finite, py::arg("x"),
        "(copy, finite): a new C-ordered copy of a 2-D array with contiguous rows, made on every "
        "thread, and whether x is free of NaN and Inf.");
  m.def("halves_finite", &halves_finite, py::arg("bits"), py::arg("brain"),
        "Whether the 16-bit floats (float16, or bfloat16 when `brain`) whose bits are the 2-D "
        "uint16 array `bits` are free of NaN and Inf.");
  m.def("add_gram_lower_widened", &add_gram_lower_widened, py::arg("gram"), py::arg("bits"),
        py::arg("brain"),
        "add_gram_lower of the 16-bit floats (float16, or bfloat16 when `brain`) whose bits are "
        "the 2-D uint16 array `bits` (contiguous rows), widened exactly to float32, when they are "
        "free of NaN and Inf, and True; otherwise False, gram unchanged. gram is float32.");
  m.def("widen_finite", &widen_finite, py::arg("bits"), py::arg("brain"),
        "(float32 copy, finite): the 16-bit floats whose bits are the 2-D uint16 array `bits` "
        "(contiguous rows) widened exactly, on every thread, and whether they are free of NaN "
        "and Inf.");
  m.def("symmetric_from_lower", &symmetric_from_lower, py::arg("gram"), py::arg("scale"),
        "A new array: scale * the symmetric matrix whose lower triangle gram holds.");
}

}  // namespace fastprune::bindings
