#include "mps/bindings.h"

#include <pybind11/stl.h>

#include "mps/gpu_family.h"
#include "mps/plan_executor.h"

namespace mfa {

void bind_mps_executor(pybind11::module& m) {
  m.def("run_plan_on_mps", &run_plan_on_mps, pybind11::call_guard<pybind11::gil_scoped_release>(),
        "Run a launch plan on PyTorch's current MPS stream; tensors maps the plan's names to MPS tensors.");
  m.def("compile_launch_on_mps", &compile_launch_on_mps, pybind11::call_guard<pybind11::gil_scoped_release>(),
        "Compile a launch's variant and kernel pipeline as its first run would, without running it.");
  m.def("mps_gpu_family", &mps_gpu_family, "The Apple GPU family of the MPS device.");
}

}  // namespace mfa
