// One copy of fastprune's compiled core, built for one instruction-set level. CMake compiles
// this module once per level (as _core_baseline, _core_avx2, _core_avx512); the Python package
// imports the best one the CPU supports. Each submodule's bindings live in register_<name>.cpp.
#include <pybind11/pybind11.h>

#include <string>

#include "fastprune/blas.hpp"
#include "fastprune/common.hpp"
#include "submodules.hpp"

namespace py = pybind11;

namespace {

std::string compiler() {
#if defined(__clang__)
  return std::string("clang ") + __clang_version__;
#elif defined(__GNUC__)
  return std::string("gcc ") + __VERSION__;
#else
  return "unknown";
#endif
}

py::dict build_info() {
  py::dict d;
  d["isa"] = FASTPRUNE_ISA_NAME;
  d["version"] = FASTPRUNE_VERSION;
  d["compiler"] = compiler();
  d["build_type"] = FASTPRUNE_BUILD_TYPE;
  d["flags"] = FASTPRUNE_BUILD_FLAGS;
  d["eigen"] = std::to_string(EIGEN_WORLD_VERSION) + "." + std::to_string(EIGEN_MAJOR_VERSION) +
               "." + std::to_string(EIGEN_MINOR_VERSION);
  d["eigen_simd"] = Eigen::SimdInstructionSetsInUse();
  d["openmp"] = _OPENMP;
  d["sanitized"] = static_cast<bool>(FASTPRUNE_SANITIZED);
  d["blas"] = fastprune::blas::backend();
  d["cuda"] = false;
  return d;
}

}  // namespace

PYBIND11_MODULE(FASTPRUNE_MODULE_NAME, m) {
  m.doc() = "fastprune's compiled core for one instruction-set level.";
  m.def("build_info", &build_info, "How this copy of the core was built.");
  m.def("set_num_threads", &fastprune::set_num_threads, py::arg("n"),
        "Set the number of threads kernels may use.");
  m.def("load_openblas", &fastprune::blas::load_openblas, py::arg("path"), py::arg("prefix"),
        "Run the single-threaded dense kernels on the OpenBLAS library at `path`.");
  m.def("unload_blas", &fastprune::blas::unload, "Use Eigen for all dense linear algebra.");
  m.def("get_num_threads", &fastprune::get_num_threads, "The number of threads kernels may use.");
  m.def("set_memory_cache_limit", &fastprune::set_memory_cache_limit, py::arg("bytes"),
        "Keep at most `bytes` of freed memory-cache blocks for reuse (0 keeps none).");
  m.def("release_memory_cache", &fastprune::release_memory_cache,
        "Free every block the memory cache holds.");
  m.def(
      "memory_cache",
      [] {
        const auto c = fastprune::memory_cache();
        return py::make_tuple(c.held, c.limit);
      },
      "(bytes held, limit) of the memory cache.");

  using namespace fastprune::bindings;
  register_importance(m.def_submodule("importance", "Importance-score kernels."));
  register_masks(m.def_submodule("masks", "Sparsity-mask selection kernels."));
  register_calibration(m.def_submodule("calibration", "Streaming calibration statistics."));
  register_sparsegpt(m.def_submodule("sparsegpt", "The SparseGPT solver."));
  register_formats(m.def_submodule("formats", "Sparse storage formats and sparse matmul."));
  register_sparse_linear(
      m.def_submodule("sparse_linear", "Linear layers with packed-bitmask sparse weights."));
}
