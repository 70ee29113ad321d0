// Bindings of fastprune._core.sparse_linear: the packed-bitmask and index layouts of
// sparse_linear.hpp.
//
// The Python layer (python/fastprune/sparse.py) builds the arrays, checks them once with
// `check` and allocates the output; sizes are checked here again and every row against its
// offsets inside the kernel, so that no call can make a kernel read or write out of bounds.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <string>

#include "arrays.hpp"
#include "fastprune/formats.hpp"
#include "fastprune/sparse_linear.hpp"
#include "submodules.hpp"

namespace fastprune::bindings {

namespace {

namespace sl = fastprune::sparse_linear;

void require(bool ok, const std::string& message) {
  if (!ok) throw std::invalid_argument(message);
}

// The mask and offsets of a W with `cols` columns, sizes checked.
std::pair<ConstMatrixView<std::uint16_t>, const std::int64_t*> layout(const py::array& mask,
                                                                      const py::array& offsets,
                                                                      Index cols) {
  require(cols >= 0, "cols: must be >= 0");
  const auto mv = matrix<std::uint16_t>(mask, "mask");
  require(mv.cols == sl::blocks_for(cols), "mask: expected " +
                                               std::to_string(sl::blocks_for(cols)) +
                                               " words per row, got " + std::to_string(mv.cols));
  const std::int64_t* o = vector<std::int64_t>(offsets, "offsets", mv.rows + 1);
  return {mv, o};
}

// Calls f(values pointer, total kept) for float32 or bfloat16-bit values, sizes checked:
// offsets[rows] + slack of them.
template <class F>
void with_values(const py::array& values, const std::int64_t* offsets, Index rows, Index slack,
                 F&& f) {
  const Index total = offsets[rows];
  require(total >= 0 && values.ndim() == 1 && values.shape(0) == total + slack,
          "values: expected offsets[-1] + " + std::to_string(slack) + " elements");
  with_dtype<float, std::uint16_t>(values, "values", [&](auto tag) {
    f(vector<typename decltype(tag)::type>(values, "values"), total);
  });
}

std::int64_t check(const py::array& mask, const py::array& offsets, Index cols) {
  auto [mv, o] = layout(mask, offsets, cols);
  py::gil_scoped_release release;
  return sl::check_layout(mv, o, cols);
}

void linear(const py::array& mask, const py::array& offsets, const py::array& values, Index cols,
            const py::array& x, py::array& out, Index gemm_from) {
  auto [mv, o] = layout(mask, offsets, cols);
  const auto xv = matrix<float>(x, "x");
  auto yv = mutable_matrix<float>(out, "out");
  require(xv.cols == cols,
          "x: has " + std::to_string(xv.cols) + " features, the weight " + std::to_string(cols));
  require(yv.rows == xv.rows && yv.cols == mv.rows, "out: wrong shape");
  with_values(values, o, mv.rows, sl::kSlack, [&](const auto* v, Index total) {
    bool ok;
    {
      py::gil_scoped_release release;
      ok = sl::linear(mv, o, v, total, cols, xv, yv, gemm_from);
    }
    require(ok, "mask: does not match offsets (changed after it was checked?)");
  });
}

void to_dense(const py::array& mask, const py::array& offsets, const py::array& values,
              py::array& out) {
  auto yv = mutable_matrix<float>(out, "out");
  auto [mv, o] = layout(mask, offsets, yv.cols);
  require(yv.rows == mv.rows, "out: wrong shape");
  with_values(values, o, mv.rows, sl::kSlack, [&](const auto* v, Index total) {
    bool ok;
    {
      py::gil_scoped_release release;
      ok = sl::to_dense(mv, o, v, total, yv);
    }
    require(ok, "mask: does not match offsets (changed after it was checked?)");
  });
}

// The offsets and indices of an index-layout W with `rows` rows, sizes checked: offsets[rows]
// indices (the kernels check each row's offsets and every index again as they read them).
std::pair<const std::int64_t*, const std::uint16_t*> indexed(const py::array& offsets,
                                                             const py::array& indices, Index rows) {
  require(rows >= 0, "offsets: expected at least one entry");
  const std::int64_t* o = vector<std::int64_t>(offsets, "offsets", rows + 1);
  require(o[rows] >= 0, "offsets: offsets[-1] must be >= 0");
  return {o, vector<std::uint16_t>(indices, "indices", o[rows])};
}

py::tuple check_indices(const py::array& offsets, const py::array& indices, Index cols) {
  require(cols >= 0, "cols: must be >= 0");
  const std::int64_t* o = vector<std::int64_t>(offsets, "offsets");
  const Index rows = offsets.shape(0) - 1;
  require(rows >= 0, "offsets: expected at least one entry");
  const std::uint16_t* idx = vector<std::uint16_t>(indices, "indices");
  const Index nnz = indices.shape(0);
  fastprune::formats::CsrCheck result;
  {
    py::gil_scoped_release release;
    result = fastprune::formats::check_csr(o, idx, rows, cols, nnz);
  }
  return py::make_tuple(result.row, static_cast<int>(result.problem));
}

void linear_indices(const py::array& offsets, const py::array& indices, const py::array& values,
                    Index cols, const py::array& x, py::array& out, Index gemm_from) {
  require(cols >= 0, "cols: must be >= 0");
  const auto xv = matrix<float>(x, "x");
  auto yv = mutable_matrix<float>(out, "out");
  auto [o, idx] = indexed(offsets, indices, yv.cols);
  require(xv.cols == cols,
          "x: has " + std::to_string(xv.cols) + " features, the weight " + std::to_string(cols));
  require(yv.rows == xv.rows, "out: wrong shape");
  with_values(values, o, yv.cols, 0, [&](const auto* v, Index total) {
    bool ok;
    {
      py::gil_scoped_release release;
      ok = sl::indexed_linear(o, idx, v, yv.cols, total, cols, xv, yv, gemm_from);
    }
    require(ok, "indices: out of range or offsets inconsistent (changed after they were checked?)");
  });
}

void to_dense_indices(const py::array& offsets, const py::array& indices, const py::array& values,
                      py::array& out) {
  auto yv = mutable_matrix<float>(out, "out");
  auto [o, idx] = indexed(offsets, indices, yv.rows);
  with_values(values, o, yv.rows, 0, [&](const auto* v, Index total) {
    bool ok;
    {
      py::gil_scoped_release release;
      ok = sl::indexed_to_dense(o, idx, v, total, yv);
    }
    require(ok, "indices: out of range or offsets inconsistent (changed after they were checked?)");
  });
}

}  // namespace

void register_sparse_linear(py::module_ m) {
  m.attr("BLOCK") = sl::kBlock;
  m.attr("SLACK") = sl::kSlack;
  m.attr("GEMM_COLUMNS") = sl::kGemmColumns;
  m.def("check", &check, py::arg("mask"), py::arg("offsets"), py::arg("cols"),
        "-1, or the first row whose mask and offsets disagree.");
  m.def("linear", &linear, py::arg("mask"), py::arg("offsets"), py::arg("values"), py::arg("cols"),
        py::arg("x"), py::arg("out"), py::arg("gemm_from") = sl::kGemmColumns,
        "out = x @ W.T for a packed-bitmask W; from gemm_from rows of x on, by tiles and GEMM.");
  m.def("to_dense", &to_dense, py::arg("mask"), py::arg("offsets"), py::arg("values"),
        py::arg("out"), "out = W as dense float32.");
  m.def("check_indices", &check_indices, py::arg("offsets"), py::arg("indices"), py::arg("cols"),
        "(row, problem) of the index layout as formats.check_csr: (-1, 0) when valid.");
  m.def("linear_indices", &linear_indices, py::arg("offsets"), py::arg("indices"),
        py::arg("values"), py::arg("cols"), py::arg("x"), py::arg("out"),
        py::arg("gemm_from") = sl::kGemmColumns,
        "out = x @ W.T for an index-layout W; from gemm_from rows of x on, by tiles and GEMM.");
  m.def("byte_compress", &sl::byte_compress,
        "Whether rows that are not N:M-like are read in windows listed by vpcompressb "
        "(AVX-512 VBMI2), summed in another order than on the levels without it.");
  m.def("to_dense_indices", &to_dense_indices, py::arg("offsets"), py::arg("indices"),
        py::arg("values"), py::arg("out"), "out = W (index layout) as dense float32.");
}

}  // namespace fastprune::bindings
