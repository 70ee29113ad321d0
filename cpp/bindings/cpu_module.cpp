// fastprune._cpu: which instruction-set levels this CPU and OS allow, and which were compiled.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <string>
#include <vector>

#include "fastprune/cpu_features.hpp"

namespace py = pybind11;

PYBIND11_MODULE(_cpu, m) {
  m.doc() = "CPU feature detection (cpuid + xgetbv) for choosing fastprune's compiled core.";
  m.def(
      "levels",
      [] {
        std::vector<py::tuple> out;
        for (const auto& level : fastprune::cpu::detect_levels()) {
          out.push_back(py::make_tuple(level.name, level.supported, level.reason));
        }
        return out;
      },
      "[(name, supported, reason)] for every instruction-set level, best first.");
  m.def("brand", &fastprune::cpu::brand, "The CPU's brand string.");
  m.attr("compiled") = std::string(FASTPRUNE_COMPILED_ISAS);
}
