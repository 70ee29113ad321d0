// Bindings of fastprune._core.formats: convert and check arrays, release the GIL, call the core.
//
// The Python layer (python/fastprune/formats.py) allocates every output array and hands over
// arrays of exact dtypes: values as float32, float64 or, for float16/bfloat16, their raw bits
// viewed as uint16; indices as int32 or int64. Sizes are checked here again, and the index arrays
// by the core's checks (formats.hpp), so that no call can make a kernel read or write out of
// bounds.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <string>
#include <utility>

#include "arrays.hpp"
#include "fastprune/formats.hpp"
#include "submodules.hpp"

namespace fastprune::bindings {

namespace {

namespace fmt = fastprune::formats;

// Value arrays: float32, float64, or 16-bit floats as their bits (uint16).
template <class F>
decltype(auto) with_storage(const py::array& a, const char* name, F&& f) {
  return with_dtype<float, double, std::uint16_t>(a, name, f);
}

// Index arrays.
template <class F>
decltype(auto) with_index(const py::array& a, const char* name, F&& f) {
  return with_dtype<std::int32_t, std::int64_t>(a, name, f);
}

// Calls f(Tag<S>{}, Tag<I>{}) for the storage type of `values` and the type of `index`.
template <class F>
decltype(auto) with_storage_index(const py::array& values, const char* values_name,
                                  const py::array& index, const char* index_name, F&& f) {
  return with_storage(values, values_name, [&](auto s) {
    return with_index(index, index_name, [&](auto i) { return f(s, i); });
  });
}

// Calls f(Tag<Codec>{}) for a value kind named by the Python layer.
template <class F>
decltype(auto) with_codec(const std::string& kind, F&& f) {
  if (kind == "float32") return f(Tag<fmt::Native<float>>{});
  if (kind == "float64") return f(Tag<fmt::Native<double>>{});
  if (kind == "float16") return f(Tag<fmt::Float16>{});
  if (kind == "bfloat16") return f(Tag<fmt::BFloat16>{});
  throw std::invalid_argument("kind: expected float16, bfloat16, float32 or float64, got " + kind);
}

// Calls f(Tag<Codec>{}, Tag<I>{}) for a value kind and the type of `index`.
template <class F>
void with_codec_index(const std::string& kind, const py::array& index, const char* index_name,
                      F&& f) {
  with_codec(kind, [&](auto c) { with_index(index, index_name, [&](auto i) { f(c, i); }); });
}

// Throws std::invalid_argument(message) when !ok; the message is built only on failure.
template <class Message>
void require(bool ok, const Message& message) {
  if (!ok) throw std::invalid_argument(std::string(message));
}

py::ssize_t length(const py::array& a) { return a.ndim() == 1 ? a.shape(0) : -1; }

template <class T>
T* out_vector(py::array& a, const char* name, py::ssize_t size) {
  if (!a.writeable()) throw std::invalid_argument(std::string(name) + ": array is read-only");
  return const_cast<T*>(vector<T>(a, name, size));
}

py::array_t<std::int64_t> new_counts(Index n) { return py::array_t<std::int64_t>(n); }

// --- CSR / COO -----------------------------------------------------------------------------

py::array_t<std::int64_t> row_nonzeros(const py::array& x) {
  return with_storage(x, "x", [&](auto s) {
    using S = typename decltype(s)::type;
    const auto xv = matrix<S>(x, "x");
    auto counts = new_counts(xv.rows);
    std::int64_t* c = counts.mutable_data();
    py::gil_scoped_release release;
    fmt::count_row_nonzeros<S>(xv, c);
    return counts;
  });
}

// The indptr (rows + 1 entries), checked against the length of the arrays it indexes (an
// internal call only ever passes a valid one; this keeps a wrong one from reaching memory).
template <class I>
const I* valid_indptr(const py::array& indptr, Index rows, py::ssize_t nnz) {
  const I* p = vector<I>(indptr, "indptr", rows + 1);
  fmt::check_indptr(p, rows, nnz);
  return p;
}

void dense_to_csr(const py::array& x, const py::array& indptr, py::array& indices,
                  py::array& data) {
  with_storage_index(x, "x", indptr, "indptr", [&](auto s, auto i) {
    using S = typename decltype(s)::type;
    using I = typename decltype(i)::type;
    const auto xv = matrix<S>(x, "x");
    const I* p = valid_indptr<I>(indptr, xv.rows, length(data));
    I* idx = out_vector<I>(indices, "indices", p[xv.rows]);
    S* d = out_vector<S>(data, "data", p[xv.rows]);
    py::gil_scoped_release release;
    fmt::dense_to_csr<S, I>(xv, p, idx, d);
  });
}

void csr_to_dense(const py::array& indptr, const py::array& indices, const py::array& data,
                  py::array& out) {
  with_storage_index(data, "data", indptr, "indptr", [&](auto s, auto i) {
    using S = typename decltype(s)::type;
    using I = typename decltype(i)::type;
    auto ov = mutable_matrix<S>(out, "out");
    const I* p = valid_indptr<I>(indptr, ov.rows, length(data));
    const I* idx = vector<I>(indices, "indices", p[ov.rows]);
    const S* d = vector<S>(data, "data");
    py::gil_scoped_release release;
    fmt::check_columns(idx, p[ov.rows], ov.cols);
    fmt::csr_to_dense<S, I>(p, idx, d, ov);
  });
}

py::tuple check_csr(const py::array& indptr, const py::array& indices, Index rows, Index cols) {
  return with_index(indptr, "indptr", [&](auto i) {
    using I = typename decltype(i)::type;
    require(rows >= 0 && cols >= 0, "shape: must be non-negative");
    const I* p = vector<I>(indptr, "indptr", rows + 1);
    const I* idx = vector<I>(indices, "indices");
    const Index nnz = length(indices);
    fmt::CsrCheck result;
    {
      py::gil_scoped_release release;
      result = fmt::check_csr<I>(p, idx, rows, cols, nnz);
    }
    return py::make_tuple(result.row, static_cast<int>(result.problem));
  });
}

void expand_indptr(const py::array& indptr, py::array& row) {
  with_index(indptr, "indptr", [&](auto i) {
    using I = typename decltype(i)::type;
    const Index rows = length(indptr) - 1;
    require(rows >= 0, "indptr: expected a 1-D array of rows + 1 entries");
    const I* p = valid_indptr<I>(indptr, rows, length(row));
    I* r = out_vector<I>(row, "row", p[rows]);
    py::gil_scoped_release release;
    fmt::expand_indptr<I>(p, rows, r);
  });
}

std::int64_t check_coo(const py::array& row, const py::array& col, Index rows, Index cols) {
  return with_index(row, "row", [&](auto i) {
    using I = typename decltype(i)::type;
    const I* r = vector<I>(row, "row");
    const I* c = vector<I>(col, "col", length(row));
    py::gil_scoped_release release;
    return fmt::check_coo<I>(r, c, length(row), rows, cols);
  });
}

void compress_rows(const py::array& row, Index rows, py::array& indptr) {
  with_index(row, "row", [&](auto i) {
    using I = typename decltype(i)::type;
    const I* r = vector<I>(row, "row");
    I* p = out_vector<I>(indptr, "indptr", rows + 1);
    py::gil_scoped_release release;
    fmt::compress_rows<I>(r, length(row), rows, p);
  });
}

// --- BSR -----------------------------------------------------------------------------------

void require_blocks(Index rows, Index cols, Index h, Index w) {
  require(h >= 1 && w >= 1 && rows % h == 0 && cols % w == 0,
          "block: must divide the shape exactly");
}

py::array_t<std::int64_t> block_row_nonzeros(const py::array& x, Index h, Index w) {
  return with_storage(x, "x", [&](auto s) {
    using S = typename decltype(s)::type;
    const auto xv = matrix<S>(x, "x");
    require_blocks(xv.rows, xv.cols, h, w);
    auto counts = new_counts(xv.rows / h);
    std::int64_t* c = counts.mutable_data();
    py::gil_scoped_release release;
    fmt::count_block_row_nonzeros<S>(xv, h, w, c);
    return counts;
  });
}

void dense_to_bsr(const py::array& x, Index h, Index w, const py::array& indptr, py::array& indices,
                  py::array& blocks) {
  with_storage_index(x, "x", indptr, "indptr", [&](auto s, auto i) {
    using S = typename decltype(s)::type;
    using I = typename decltype(i)::type;
    const auto xv = matrix<S>(x, "x");
    require_blocks(xv.rows, xv.cols, h, w);
    const I* p = valid_indptr<I>(indptr, xv.rows / h, length(indices));
    I* idx = out_vector<I>(indices, "indices", p[xv.rows / h]);
    S* b = out_vector<S>(blocks, "blocks", p[xv.rows / h] * h * w);
    py::gil_scoped_release release;
    fmt::dense_to_bsr<S, I>(xv, h, w, p, idx, b);
  });
}

void bsr_to_dense(const py::array& indptr, const py::array& indices, const py::array& blocks,
                  Index h, Index w, py::array& out) {
  with_storage_index(blocks, "blocks", indptr, "indptr", [&](auto s, auto i) {
    using S = typename decltype(s)::type;
    using I = typename decltype(i)::type;
    auto ov = mutable_matrix<S>(out, "out");
    require_blocks(ov.rows, ov.cols, h, w);
    const I* p = valid_indptr<I>(indptr, ov.rows / h, length(indices));
    const I* idx = vector<I>(indices, "indices");
    const S* b = vector<S>(blocks, "blocks", p[ov.rows / h] * h * w);
    py::gil_scoped_release release;
    fmt::check_columns(idx, p[ov.rows / h], ov.cols / w);
    fmt::bsr_to_dense<S, I>(p, idx, b, h, w, ov);
  });
}

py::array_t<std::int64_t> bsr_row_nonzeros(const py::array& indptr, const py::array& blocks,
                                           Index h, Index w) {
  return with_storage_index(blocks, "blocks", indptr, "indptr", [&](auto s, auto i) {
    using S = typename decltype(s)::type;
    using I = typename decltype(i)::type;
    require(h >= 1 && w >= 1, "block: must be positive");
    const Index block_rows = length(indptr) - 1;
    require(block_rows >= 0, "indptr: expected a 1-D array");
    const I* p = valid_indptr<I>(indptr, block_rows, length(blocks) / (h * w));
    const S* b = vector<S>(blocks, "blocks", p[block_rows] * h * w);
    auto counts = new_counts(block_rows * h);
    std::int64_t* c = counts.mutable_data();
    py::gil_scoped_release release;
    fmt::count_bsr_row_nonzeros<S, I>(p, b, block_rows, h, w, c);
    return counts;
  });
}

void bsr_to_csr(const py::array& indptr, const py::array& indices, const py::array& blocks, Index h,
                Index w, Index cols, const py::array& csr_indptr, py::array& csr_indices,
                py::array& csr_data) {
  with_storage_index(blocks, "blocks", indptr, "indptr", [&](auto s, auto i) {
    using S = typename decltype(s)::type;
    using I = typename decltype(i)::type;
    with_index(csr_indptr, "csr_indptr", [&](auto j) {
      using J = typename decltype(j)::type;
      require(h >= 1 && w >= 1, "block: must be positive");
      const Index block_rows = length(indptr) - 1;
      require(block_rows >= 0, "indptr: expected a 1-D array");
      const I* p = valid_indptr<I>(indptr, block_rows, length(indices));
      const I* idx = vector<I>(indices, "indices");
      const S* b = vector<S>(blocks, "blocks", p[block_rows] * h * w);
      const J* cp = valid_indptr<J>(csr_indptr, block_rows * h, length(csr_indices));
      J* ci = out_vector<J>(csr_indices, "csr_indices", cp[block_rows * h]);
      S* cd = out_vector<S>(csr_data, "csr_data", cp[block_rows * h]);
      py::gil_scoped_release release;
      fmt::check_columns(idx, p[block_rows], cols / w);
      fmt::bsr_to_csr<S, I, J>(p, idx, b, block_rows, h, w, cp, ci, cd);
    });
  });
}

// --- N:M -----------------------------------------------------------------------------------

void require_nm(Index cols, int n, int m) {
  fmt::nm_index_bits(m);
  require(n >= 1 && n <= m && cols % m == 0, "n, m: need 1 <= n <= m and m dividing cols");
}

std::int64_t dense_to_nm(const py::array& x, int n, int m, py::array& values, py::array& packed) {
  return with_storage(x, "x", [&](auto s) {
    using S = typename decltype(s)::type;
    const auto xv = matrix<S>(x, "x");
    require_nm(xv.cols, n, m);
    auto vv = mutable_matrix<S>(values, "values");
    auto pv = mutable_matrix<std::uint8_t>(packed, "indices");
    require(vv.rows == xv.rows && vv.cols == xv.cols / m * n, "values: wrong shape");
    require(pv.rows == xv.rows && pv.cols == fmt::nm_row_bytes(xv.cols, n, m),
            "indices: wrong shape");
    py::gil_scoped_release release;
    return fmt::dense_to_nm<S>(xv, n, m, vv, pv);
  });
}

std::int64_t check_nm(const py::array& packed, Index cols, int n, int m) {
  const auto pv = matrix<std::uint8_t>(packed, "indices");
  require_nm(cols, n, m);
  require(pv.cols == fmt::nm_row_bytes(cols, n, m), "indices: wrong shape");
  py::gil_scoped_release release;
  return fmt::check_nm(pv, cols, n, m);
}

void nm_to_dense(const py::array& values, const py::array& packed, int n, int m, py::array& out) {
  with_storage(values, "values", [&](auto s) {
    using S = typename decltype(s)::type;
    const auto vv = matrix<S>(values, "values");
    const auto pv = matrix<std::uint8_t>(packed, "indices");
    auto ov = mutable_matrix<S>(out, "out");
    require_nm(ov.cols, n, m);
    require(vv.rows == ov.rows && vv.cols == ov.cols / m * n, "values: wrong shape");
    require(pv.rows == ov.rows && pv.cols == fmt::nm_row_bytes(ov.cols, n, m),
            "indices: wrong shape");
    py::gil_scoped_release release;
    fmt::nm_to_dense<S>(vv, pv, n, m, ov);
  });
}

// --- Bitmask -------------------------------------------------------------------------------

py::tuple bitmask_row_counts(const py::array& mask, Index cols) {
  const auto mv = matrix<std::uint8_t>(mask, "mask");
  require(mv.cols == fmt::bitmask_row_bytes(cols), "mask: wrong number of bytes per row");
  auto counts = new_counts(mv.rows);
  std::int64_t* c = counts.mutable_data();
  std::int64_t bad;
  {
    py::gil_scoped_release release;
    bad = fmt::bitmask_row_counts(mv, cols, c);
  }
  return py::make_tuple(counts, bad);
}

// Row offsets (rows + 1) into the value array of a bitmask, consistent with the mask.
const std::int64_t* valid_offsets(const py::array& offsets, ConstMatrixView<std::uint8_t> mask,
                                  py::ssize_t nnz) {
  const std::int64_t* o = valid_indptr<std::int64_t>(offsets, mask.rows, nnz);
  fmt::check_mask_counts(mask, o, "offsets: do not match the mask");
  return o;
}

void dense_to_bitmask(const py::array& x, const py::array& offsets, py::array& mask,
                      py::array& data) {
  with_storage(x, "x", [&](auto s) {
    using S = typename decltype(s)::type;
    const auto xv = matrix<S>(x, "x");
    auto mv = mutable_matrix<std::uint8_t>(mask, "mask");
    require(mv.rows == xv.rows && mv.cols == fmt::bitmask_row_bytes(xv.cols), "mask: wrong shape");
    const std::int64_t* o = valid_indptr<std::int64_t>(offsets, xv.rows, length(data));
    S* d = out_vector<S>(data, "data", o[xv.rows]);
    py::gil_scoped_release release;
    fmt::dense_to_bitmask<S>(xv, o, mv, d);
  });
}

void bitmask_to_dense(const py::array& mask, const py::array& offsets, const py::array& data,
                      py::array& out) {
  with_storage(data, "data", [&](auto s) {
    using S = typename decltype(s)::type;
    const auto mv = matrix<std::uint8_t>(mask, "mask");
    auto ov = mutable_matrix<S>(out, "out");
    require(mv.rows == ov.rows && mv.cols == fmt::bitmask_row_bytes(ov.cols), "mask: wrong shape");
    const S* d = vector<S>(data, "data");
    const std::int64_t* o = valid_offsets(offsets, mv, length(data));
    py::gil_scoped_release release;
    fmt::bitmask_to_dense<S>(mv, o, d, ov);
  });
}

void bitmask_to_csr_indices(const py::array& mask, Index cols, const py::array& indptr,
                            py::array& indices) {
  with_index(indptr, "indptr", [&](auto i) {
    using I = typename decltype(i)::type;
    const auto mv = matrix<std::uint8_t>(mask, "mask");
    require(mv.cols == fmt::bitmask_row_bytes(cols), "mask: wrong number of bytes per row");
    const I* p = valid_indptr<I>(indptr, mv.rows, length(indices));
    fmt::check_mask_counts(mv, p, "indptr: does not match the mask");
    I* idx = out_vector<I>(indices, "indices", p[mv.rows]);
    py::gil_scoped_release release;
    fmt::bitmask_to_csr_indices<I>(mv, cols, p, idx);
  });
}

void csr_to_bitmask(const py::array& indptr, const py::array& indices, py::array& mask) {
  with_index(indptr, "indptr", [&](auto i) {
    using I = typename decltype(i)::type;
    auto mv = mutable_matrix<std::uint8_t>(mask, "mask");
    const I* p = valid_indptr<I>(indptr, mv.rows, length(indices));
    const I* idx = vector<I>(indices, "indices");
    py::gil_scoped_release release;
    fmt::check_columns(idx, p[mv.rows], mv.cols * 8);
    fmt::csr_to_bitmask<I>(p, idx, mv.rows, mv);
  });
}

// --- matmul --------------------------------------------------------------------------------

template <class C>
std::pair<ConstMatrixView<C>, MatrixView<C>> matmul_operands(const py::array& x, py::array& y,
                                                             Index rows, Index cols) {
  const auto xv = matrix<C>(x, "x");
  auto yv = mutable_matrix<C>(y, "out");
  require(xv.rows == cols, "x: has " + std::to_string(xv.rows) + " rows, the matrix " +
                               std::to_string(cols) + " columns");
  require(yv.rows == rows && yv.cols == xv.cols, "out: wrong shape");
  return {xv, yv};
}

void csr_matmul(const py::array& indptr, const py::array& indices, const py::array& data,
                const std::string& kind, Index cols, const py::array& x, py::array& out) {
  with_codec_index(kind, indptr, "indptr", [&](auto c, auto i) {
    using V = typename decltype(c)::type;
    using S = typename V::Storage;
    using C = typename V::Compute;
    using I = typename decltype(i)::type;
    const Index rows = length(indptr) - 1;
    require(rows >= 0, "indptr: expected a 1-D array");
    auto [xv, yv] = matmul_operands<C>(x, out, rows, cols);
    const I* p = valid_indptr<I>(indptr, rows, length(indices));
    const I* idx = vector<I>(indices, "indices");
    const S* d = vector<S>(data, "data", p[rows]);
    py::gil_scoped_release release;
    require(fmt::csr_matmul<V, I>(p, idx, d, xv, yv), "indices: column index out of range");
  });
}

void bsr_matmul(const py::array& indptr, const py::array& indices, const py::array& blocks, Index h,
                Index w, const std::string& kind, Index cols, const py::array& x, py::array& out) {
  with_codec_index(kind, indptr, "indptr", [&](auto c, auto i) {
    using V = typename decltype(c)::type;
    using S = typename V::Storage;
    using C = typename V::Compute;
    using I = typename decltype(i)::type;
    require(h >= 1 && w >= 1, "block: must be positive");
    const Index block_rows = length(indptr) - 1;
    require(block_rows >= 0, "indptr: expected a 1-D array");
    require_blocks(block_rows * h, cols, h, w);
    auto [xv, yv] = matmul_operands<C>(x, out, block_rows * h, cols);
    const I* p = valid_indptr<I>(indptr, block_rows, length(indices));
    const I* idx = vector<I>(indices, "indices");
    const S* b = vector<S>(blocks, "blocks", p[block_rows] * h * w);
    py::gil_scoped_release release;
    fmt::check_columns(idx, p[block_rows], cols / w);
    fmt::bsr_matmul<V, I>(p, idx, b, h, w, xv, yv);
  });
}

void nm_matmul(const py::array& values, const py::array& packed, int n, int m,
               const std::string& kind, Index cols, const py::array& x, py::array& out) {
  with_codec(kind, [&](auto c) {
    using V = typename decltype(c)::type;
    using S = typename V::Storage;
    using C = typename V::Compute;
    const auto vv = matrix<S>(values, "values");
    const auto pv = matrix<std::uint8_t>(packed, "indices");
    require_nm(cols, n, m);
    require(cols <= INT32_MAX, "cols: N:M matmul needs fewer than 2**31 columns");
    require(vv.cols == cols / m * n, "values: wrong shape");
    require(pv.rows == vv.rows && pv.cols == fmt::nm_row_bytes(cols, n, m), "indices: wrong shape");
    auto [xv, yv] = matmul_operands<C>(x, out, vv.rows, cols);
    py::gil_scoped_release release;
    // With m a power of two every packed position is < m; otherwise one could point past its
    // group (a user may have changed the array after it was validated), so check.
    if ((1 << fmt::nm_index_bits(m)) != m) {
      require(fmt::check_nm(pv, cols, n, m) < 0, "indices: invalid packed positions");
    }
    fmt::nm_matmul<V>(vv, pv, n, m, xv, yv);
  });
}

}  // namespace

void register_formats(py::module_ m) {
  m.def("row_nonzeros", &row_nonzeros, py::arg("x"), "Non-zeros per row of a dense matrix.");
  m.def("dense_to_csr", &dense_to_csr, py::arg("x"), py::arg("indptr"), py::arg("indices"),
        py::arg("data"), "Fill CSR indices and data of x given its indptr.");
  m.def("csr_to_dense", &csr_to_dense, py::arg("indptr"), py::arg("indices"), py::arg("data"),
        py::arg("out"), "Write the dense matrix of a CSR matrix into out.");
  m.def("check_csr", &check_csr, py::arg("indptr"), py::arg("indices"), py::arg("rows"),
        py::arg("cols"), "(first bad row or -1, problem code) of a CSR structure.");
  m.def("expand_indptr", &expand_indptr, py::arg("indptr"), py::arg("row"),
        "Row index of every stored entry.");
  m.def("check_coo", &check_coo, py::arg("row"), py::arg("col"), py::arg("rows"), py::arg("cols"),
        "First entry out of range or out of canonical order, or -1.");
  m.def("compress_rows", &compress_rows, py::arg("row"), py::arg("rows"), py::arg("indptr"),
        "indptr of sorted row indices.");
  m.def("block_row_nonzeros", &block_row_nonzeros, py::arg("x"), py::arg("h"), py::arg("w"),
        "Non-zero blocks per block row of a dense matrix.");
  m.def("dense_to_bsr", &dense_to_bsr, py::arg("x"), py::arg("h"), py::arg("w"), py::arg("indptr"),
        py::arg("indices"), py::arg("blocks"),
        "Fill BSR indices and blocks of x given its indptr.");
  m.def("bsr_to_dense", &bsr_to_dense, py::arg("indptr"), py::arg("indices"), py::arg("blocks"),
        py::arg("h"), py::arg("w"), py::arg("out"), "Write the dense matrix of a BSR matrix.");
  m.def("bsr_row_nonzeros", &bsr_row_nonzeros, py::arg("indptr"), py::arg("blocks"), py::arg("h"),
        py::arg("w"), "Non-zero elements per row of a BSR matrix.");
  m.def("bsr_to_csr", &bsr_to_csr, py::arg("indptr"), py::arg("indices"), py::arg("blocks"),
        py::arg("h"), py::arg("w"), py::arg("cols"), py::arg("csr_indptr"), py::arg("csr_indices"),
        py::arg("csr_data"), "Fill the CSR arrays of a BSR matrix.");
  m.def("nm_index_bits", &fmt::nm_index_bits, py::arg("m"),
        "Bits per packed in-group position for groups of m.");
  m.def("dense_to_nm", &dense_to_nm, py::arg("x"), py::arg("n"), py::arg("m"), py::arg("values"),
        py::arg("indices"), "Compress x to N:M; returns -1 or the first overfull group.");
  m.def("check_nm", &check_nm, py::arg("indices"), py::arg("cols"), py::arg("n"), py::arg("m"),
        "First row with invalid packed positions, or -1.");
  m.def("nm_to_dense", &nm_to_dense, py::arg("values"), py::arg("indices"), py::arg("n"),
        py::arg("m"), py::arg("out"), "Write the dense matrix of an N:M matrix.");
  m.def("bitmask_row_bytes", &fmt::bitmask_row_bytes, py::arg("cols"),
        "Bytes of a bitmask row of `cols` bits.");
  m.def("nm_row_bytes", &fmt::nm_row_bytes, py::arg("cols"), py::arg("n"), py::arg("m"),
        "Bytes of a row of packed N:M in-group positions for `cols` columns.");
  m.def("bitmask_row_counts", &bitmask_row_counts, py::arg("mask"), py::arg("cols"),
        "(set bits per row, first row with padding bits set or -1).");
  m.def("dense_to_bitmask", &dense_to_bitmask, py::arg("x"), py::arg("offsets"), py::arg("mask"),
        py::arg("data"), "Fill the mask and values of x.");
  m.def("bitmask_to_dense", &bitmask_to_dense, py::arg("mask"), py::arg("offsets"), py::arg("data"),
        py::arg("out"), "Write the dense matrix of a bitmask.");
  m.def("bitmask_to_csr_indices", &bitmask_to_csr_indices, py::arg("mask"), py::arg("cols"),
        py::arg("indptr"), py::arg("indices"), "CSR column indices of a bitmask.");
  m.def("csr_to_bitmask", &csr_to_bitmask, py::arg("indptr"), py::arg("indices"), py::arg("mask"),
        "Write the bitmask of a CSR pattern.");
  m.def("csr_matmul", &csr_matmul, py::arg("indptr"), py::arg("indices"), py::arg("data"),
        py::arg("kind"), py::arg("cols"), py::arg("x"), py::arg("out"), "out = A @ x for CSR A.");
  m.def("bsr_matmul", &bsr_matmul, py::arg("indptr"), py::arg("indices"), py::arg("blocks"),
        py::arg("h"), py::arg("w"), py::arg("kind"), py::arg("cols"), py::arg("x"), py::arg("out"),
        "out = A @ x for BSR A.");
  m.def("nm_matmul", &nm_matmul, py::arg("values"), py::arg("indices"), py::arg("n"), py::arg("m"),
        py::arg("kind"), py::arg("cols"), py::arg("x"), py::arg("out"),
        "out = A @ x for N:M compressed A.");
}

}  // namespace fastprune::bindings
