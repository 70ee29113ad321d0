// fastprune._core.masks: mask selection on float32/float64 score matrices. The Python layer
// (fastprune.masks) validates patterns and sparsities and converts dtypes; these functions
// take arrays of the exact dtype with contiguous rows, return new bool masks (True = kept),
// and raise ValueError naming `scores` when a score is NaN or Inf.
#include <pybind11/stl.h>

#include <string>
#include <type_traits>
#include <vector>

#include "arrays.hpp"
#include "fastprune/masks.hpp"
#include "submodules.hpp"

namespace fastprune::bindings {

namespace {

void require_finite(bool finite, const std::string& name) {
  if (!finite) throw std::invalid_argument(name + ": contains NaN or Inf values");
}

// Calls kernel(view, keep) with the GIL released on the scores' dtype, into a new mask.
template <class Kernel>
py::array_t<bool> new_mask(const py::array& scores, Kernel&& kernel) {
  return with_float(scores, "scores", [&](auto tag) {
    using T = typename decltype(tag)::type;
    const ConstMatrixView<T> view = matrix<T>(scores, "scores");
    py::array_t<bool> out = empty<bool>({view.rows, view.cols});
    const MatrixView<bool> keep = view_of(out);
    bool finite = false;
    {
      py::gil_scoped_release release;
      finite = kernel(view, keep);
    }
    require_finite(finite, "scores");
    return out;
  });
}

template <class T>
std::vector<py::array_t<bool>> smallest_overall_typed(const std::vector<py::array>& scores,
                                                      Index pruned) {
  std::vector<ConstMatrixView<T>> views;
  std::vector<py::array_t<bool>> masks;
  std::vector<MatrixView<bool>> keeps;
  for (std::size_t i = 0; i < scores.size(); ++i) {
    const std::string name = "scores[" + std::to_string(i) + "]";
    views.push_back(matrix<T>(scores[i], name.c_str()));
    masks.push_back(empty<bool>({views.back().rows, views.back().cols}));
    keeps.push_back(view_of(masks.back()));
  }
  std::vector<char> finite;
  {
    py::gil_scoped_release release;
    masks::mask_smallest_overall(views, pruned, keeps, finite);
  }
  for (std::size_t i = 0; i < finite.size(); ++i) {
    require_finite(finite[i] != 0, "scores[" + std::to_string(i) + "]");
  }
  return masks;
}

std::vector<py::array_t<bool>> smallest_overall(const std::vector<py::array>& scores,
                                                Index pruned) {
  if (scores.empty()) return {};
  return with_float(scores[0], "scores[0]", [&](auto tag) {
    return smallest_overall_typed<typename decltype(tag)::type>(scores, pruned);
  });
}

}  // namespace

void register_masks(py::module_ module) {
  module.def(
      "per_row",
      [](const py::array& scores, Index pruned_per_row) {
        return new_mask(scores, [&](auto view, MatrixView<bool> keep) {
          return masks::mask_per_row(view, pruned_per_row, keep);
        });
      },
      py::arg("scores"), py::arg("pruned_per_row"),
      "Unstructured mask: exactly `pruned_per_row` smallest scores of every row pruned.");
  module.def(
      "n_of_m",
      [](const py::array& scores, int n, int m) {
        return new_mask(scores, [&](auto view, MatrixView<bool> keep) {
          return masks::mask_n_of_m(view, n, m, keep);
        });
      },
      py::arg("scores"), py::arg("n"), py::arg("m"),
      "N:M mask: the n largest of every m consecutive scores of a row kept.");
  module.def(
      "blocks",
      [](const py::array& scores, Index h, Index w, Index pruned_blocks) {
        return new_mask(scores, [&](auto view, MatrixView<bool> keep) {
          return masks::mask_blocks(view, h, w, pruned_blocks, keep);
        });
      },
      py::arg("scores"), py::arg("h"), py::arg("w"), py::arg("pruned_blocks"),
      "Block mask: the `pruned_blocks` h x w blocks of smallest summed score pruned.");
  module.def(
      "per_layer",
      [](const py::array& scores, Index pruned) {
        return new_mask(scores, [&](auto view, MatrixView<bool> keep) {
          using T = std::remove_const_t<std::remove_pointer_t<decltype(view.data)>>;
          std::vector<char> finite;
          masks::mask_smallest_overall<T>({view}, pruned, {keep}, finite);
          return finite[0] != 0;
        });
      },
      py::arg("scores"), py::arg("pruned"),
      "Unstructured mask over the whole matrix: exactly `pruned` smallest scores pruned.");
  module.def("smallest_overall", &smallest_overall, py::arg("scores"), py::arg("pruned"),
             "Unstructured masks of several matrices ranked together (concatenated row-major in "
             "order): exactly `pruned` smallest scores pruned in total. All of one dtype.");
}

}  // namespace fastprune::bindings
