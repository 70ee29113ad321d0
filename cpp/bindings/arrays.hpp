// Conversion of NumPy arrays to core views. No silent copies: an array of the wrong dtype or
// layout is a TypeError/ValueError here; the Python layer decides what to convert and says so.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <algorithm>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "fastprune/common.hpp"

namespace fastprune::bindings {

namespace py = pybind11;

inline std::string shape_text(const py::array& a) {
  std::string s = "(";
  for (py::ssize_t i = 0; i < a.ndim(); ++i) {
    s += std::to_string(a.shape(i));
    if (i + 1 < a.ndim() || a.ndim() == 1) s += a.ndim() == 1 ? "," : ", ";
  }
  return s + ")";
}

// Whether `a` holds elements of type T. Equivalence, not identity: an equal dtype need not be
// NumPy's own object (a dtype with metadata, one read from a file); a byte-swapped one differs.
template <class T>
bool has_dtype(const py::array& a) {
  return py::array_t<T>::check_(a);
}

// The dtype names of Ts, as a message lists them: "float32", "float32 or float64", ...
template <class... Ts>
std::string dtype_names() {
  const std::string names[] = {std::string(py::str(py::dtype::of<Ts>()))...};
  std::string text;
  for (std::size_t i = 0; i < sizeof...(Ts); ++i) {
    if (i > 0) text += i + 1 == sizeof...(Ts) ? " or " : ", ";
    text += names[i];
  }
  return text;
}

template <class T>
struct Tag {
  using type = T;
};

template <class... Ts>
struct Dispatch {
  template <class F>
  static decltype(auto) call(const py::array& a, const char* name, F& f) {
    return step<Ts...>(a, name, f);
  }

 private:
  template <class T, class... Rest, class F>
  static decltype(auto) step(const py::array& a, const char* name, F& f) {
    if constexpr (sizeof...(Rest) == 0) {
      if (!has_dtype<T>(a)) {
        throw py::type_error(std::string(name) + ": expected dtype " + dtype_names<Ts...>() +
                             ", got " + std::string(py::str(a.dtype())));
      }
      return f(Tag<T>{});
    } else {
      if (has_dtype<T>(a)) return f(Tag<T>{});
      return step<Rest...>(a, name, f);
    }
  }
};

// The one dtype dispatch of the bindings: calls f(Tag<T>{}) for the first T of Ts that `a`
// holds (`typename decltype(tag)::type` inside f), so that a binding is written once for every
// instantiation of its kernel; any other dtype is a TypeError naming `name`.
template <class... Ts, class F>
decltype(auto) with_dtype(const py::array& a, const char* name, F&& f) {
  return Dispatch<Ts...>::call(a, name, f);
}

// The kernels' float instantiations.
template <class F>
decltype(auto) with_float(const py::array& a, const char* name, F&& f) {
  return with_dtype<float, double>(a, name, f);
}

template <class T>
void require_dtype(const py::array& a, const char* name) {
  if (!has_dtype<T>(a)) {
    throw py::type_error(std::string(name) + ": expected dtype " +
                         std::string(py::str(py::dtype::of<T>())) + ", got " +
                         std::string(py::str(a.dtype())));
  }
}

// A 2-D array whose rows are contiguous (any row stride >= 0).
template <class T>
ConstMatrixView<T> matrix(const py::array& a, const char* name) {
  require_dtype<T>(a, name);
  if (a.ndim() != 2) {
    throw std::invalid_argument(std::string(name) + ": expected a 2-D array, got shape " +
                                shape_text(a));
  }
  const auto item = static_cast<py::ssize_t>(sizeof(T));
  const py::ssize_t rows = a.shape(0), cols = a.shape(1);
  // NumPy gives zero-size arrays arbitrary (often zero) strides; nothing is read through them.
  if (rows * cols > 0 &&
      ((cols > 1 && a.strides(1) != item) || a.strides(0) < 0 || a.strides(0) % item != 0)) {
    throw std::invalid_argument(std::string(name) +
                                ": rows must be contiguous (pass np.ascontiguousarray)");
  }
  const Index stride = rows > 1 ? static_cast<Index>(a.strides(0) / item) : cols;
  return {static_cast<const T*>(a.data()), rows, cols, stride};
}

template <class T>
MatrixView<T> mutable_matrix(py::array& a, const char* name) {
  if (!a.writeable()) throw std::invalid_argument(std::string(name) + ": array is read-only");
  const auto v = matrix<T>(a, name);
  return {static_cast<T*>(a.mutable_data()), v.rows, v.cols, v.stride};
}

// A contiguous 1-D array.
template <class T>
const T* vector(const py::array& a, const char* name, py::ssize_t expected_size = -1) {
  require_dtype<T>(a, name);
  if (a.ndim() != 1 || (a.shape(0) > 1 && a.strides(0) != static_cast<py::ssize_t>(sizeof(T)))) {
    throw std::invalid_argument(std::string(name) +
                                ": expected a contiguous 1-D array, got shape " + shape_text(a));
  }
  if (expected_size >= 0 && a.shape(0) != expected_size) {
    throw std::invalid_argument(std::string(name) + ": expected length " +
                                std::to_string(expected_size) + ", got " +
                                std::to_string(a.shape(0)));
  }
  return static_cast<const T*>(a.data());
}

// A new C-contiguous array, uninitialised, from the memory cache (common.hpp): when NumPy frees it,
// a block of 2 MB or more goes back to the memory cache, and the next large result of about its
// size (a layer's pruned weights and mask, the next layer's) is written into memory that is
// already mapped rather than memory fresh from the system, a page fault per page.
struct CachedOwner {
  void operator()(CachedBlock* block) const noexcept {
    free_cached(*block);
    delete block;
  }
};

template <class T>
py::array_t<T> empty(std::vector<py::ssize_t> shape) {
  std::size_t count = 1;
  for (const py::ssize_t extent : shape) count *= static_cast<std::size_t>(extent);
  std::unique_ptr<CachedBlock, CachedOwner> block(new CachedBlock{nullptr, 0});
  *block = allocate_cached(std::max<std::size_t>(count, 1) * sizeof(T));
  T* data = static_cast<T*>(block->data);
  py::capsule owner(block.get(), [](void* p) { CachedOwner{}(static_cast<CachedBlock*>(p)); });
  block.release();  // the capsule owns it now
  return py::array_t<T>(std::move(shape), data, owner);
}

// A view of a C-contiguous 2-D array.
template <class T>
MatrixView<T> view_of(py::array_t<T>& a) {
  return {a.mutable_data(), a.shape(0), a.shape(1), a.shape(1)};
}

}  // namespace fastprune::bindings
