#include "plan_bindings.h"

#include <pybind11/stl.h>

#include "attention/backward_plan.h"
#include "attention/forward_plan.h"
#include "gemm/plan.h"
#include "kv_cache/plan.h"
#include "launch_plan.h"
#include "shader_source.h"

namespace py = pybind11;

namespace mfa {

void bind_plans(py::module& m) {
  // The planners throw std::invalid_argument for requests they cannot plan: bad arguments, raised as an exception
  // that is a ValueError and a RuntimeError, like every argument error of mfa_torch (PyTorch's SDPA and
  // FlashAttention raise RuntimeError there, and code written for them catches that). The reference is never
  // released: the class lives as long as the process.
  static py::handle invalid_argument = PyErr_NewException(
      "mfa_torch._C.InvalidArgument", py::make_tuple(py::handle(PyExc_ValueError), py::handle(PyExc_RuntimeError)).ptr(),
      nullptr);
  m.attr("InvalidArgument") = invalid_argument;
  py::register_local_exception_translator([](std::exception_ptr thrown) {
    try {
      if (thrown) std::rethrow_exception(thrown);
    } catch (const std::invalid_argument& error) {
      PyErr_SetString(invalid_argument.ptr(), error.what());
    }
  });
  // Plans are built by the C++ planners; Python builds only fixed ones (the lane-layout self-test's plan, the
  // doctor's compile-only launches), which then run through the same executors.
  py::class_<Argument>(m, "Argument")
      .def(py::init<>())
      .def_readwrite("index", &Argument::index)
      .def_readwrite("tensor", &Argument::tensor)
      .def_property_readonly("bytes", [](const Argument& a) { return py::bytes(a.bytes); });
  py::class_<Temporary>(m, "Temporary")
      .def_readonly("name", &Temporary::name)
      .def_readonly("dtype", &Temporary::dtype)
      .def_readonly("numel", &Temporary::numel);
  py::class_<Launch>(m, "Launch")
      .def(py::init<>())
      .def_readwrite("shader", &Launch::shader)
      .def_readwrite("kernel", &Launch::kernel)
      .def_readwrite("defines", &Launch::defines)
      .def_readwrite("threadgroups", &Launch::threadgroups)
      .def_readwrite("threads_per_threadgroup", &Launch::threads_per_threadgroup)
      .def_readwrite("threadgroup_memory", &Launch::threadgroup_memory)
      .def_readwrite("registers", &Launch::registers)
      .def_readwrite("arguments", &Launch::arguments);
  py::class_<Plan>(m, "Plan")
      .def(py::init<>())
      .def_readonly("temporaries", &Plan::temporaries)
      .def_readwrite("launches", &Plan::launches);

  py::class_<AttentionProblem>(m, "AttentionProblem")
      .def(py::init<>())
      .def_readwrite("dtype", &AttentionProblem::dtype)
      .def_readwrite("batch", &AttentionProblem::batch)
      .def_readwrite("q_heads", &AttentionProblem::q_heads)
      .def_readwrite("kv_heads", &AttentionProblem::kv_heads)
      .def_readwrite("q_len", &AttentionProblem::q_len)
      .def_readwrite("kv_len", &AttentionProblem::kv_len)
      .def_readwrite("head_dim", &AttentionProblem::head_dim)
      .def_readwrite("value_dim", &AttentionProblem::value_dim)
      .def_readwrite("mask", &AttentionProblem::mask)
      .def_readwrite("mask_strides", &AttentionProblem::mask_strides)
      .def_readwrite("mask_block_q", &AttentionProblem::mask_block_q)
      .def_readwrite("mask_block_k", &AttentionProblem::mask_block_k)
      .def_readwrite("q_strides", &AttentionProblem::q_strides)
      .def_readwrite("k_strides", &AttentionProblem::k_strides)
      .def_readwrite("v_strides", &AttentionProblem::v_strides)
      .def_readwrite("has_alibi", &AttentionProblem::has_alibi)
      .def_readwrite("alibi_batch_stride", &AttentionProblem::alibi_batch_stride)
      .def_readwrite("has_sinks", &AttentionProblem::has_sinks)
      .def_readwrite("num_sequences", &AttentionProblem::num_sequences)
      .def_readwrite("max_seqlen_q", &AttentionProblem::max_seqlen_q)
      .def_readwrite("max_seqlen_k", &AttentionProblem::max_seqlen_k)
      .def_readwrite("paged", &AttentionProblem::paged)
      .def_readwrite("pages", &AttentionProblem::pages)
      .def_readwrite("max_pages", &AttentionProblem::max_pages)
      .def_readwrite("num_splits", &AttentionProblem::num_splits)
      .def_readwrite("scale", &AttentionProblem::scale)
      .def_readwrite("window_left", &AttentionProblem::window_left)
      .def_readwrite("window_right", &AttentionProblem::window_right)
      .def_readwrite("bottom_right", &AttentionProblem::bottom_right)
      .def_readwrite("softcap", &AttentionProblem::softcap)
      .def_readwrite("dropout_p", &AttentionProblem::dropout_p)
      .def_readwrite("dropout_seed", &AttentionProblem::dropout_seed)
      .def_readwrite("dropout_offset", &AttentionProblem::dropout_offset)
      .def_readwrite("family", &AttentionProblem::family)
      .def_readwrite("count_tiles", &AttentionProblem::count_tiles)
      .def_readwrite("q_aligned", &AttentionProblem::q_aligned)
      .def_readwrite("k_aligned", &AttentionProblem::k_aligned)
      .def_readwrite("v_aligned", &AttentionProblem::v_aligned)
      .def_readwrite("grad_out_aligned", &AttentionProblem::grad_out_aligned);
  m.def("plan_attention_forward", &plan_attention_forward, "The launch plan of one attention forward call.");
  m.def("plan_attention_backward", &plan_attention_backward, pybind11::arg("problem"), pybind11::arg("mask_grad"),
        "The launch plan of one attention backward call.");

  m.def("set_shader_directory", &set_shader_directory, "Where the .metal sources live (set by mfa_torch at import).");
  m.def("expanded_shader_source", &expanded_shader_source,
        "A shader's source with the project's headers inlined, as the MPS executor compiles it.");

  py::class_<GemmProblem>(m, "GemmProblem")
      .def(py::init<>())
      .def_readwrite("dtype", &GemmProblem::dtype)
      .def_readwrite("batch", &GemmProblem::batch)
      .def_readwrite("m", &GemmProblem::m)
      .def_readwrite("n", &GemmProblem::n)
      .def_readwrite("k", &GemmProblem::k)
      .def_readwrite("a_strides", &GemmProblem::a_strides)
      .def_readwrite("b_strides", &GemmProblem::b_strides)
      .def_readwrite("has_bias", &GemmProblem::has_bias)
      .def_readwrite("accumulate", &GemmProblem::accumulate)
      .def_readwrite("a_aligned", &GemmProblem::a_aligned)
      .def_readwrite("b_aligned", &GemmProblem::b_aligned)
      .def_readwrite("c_aligned", &GemmProblem::c_aligned)
      .def_readwrite("bias_aligned", &GemmProblem::bias_aligned)
      .def_readwrite("family", &GemmProblem::family);
  m.def("plan_gemm", &plan_gemm, "The launch plan of one GEMM call.");

  py::class_<RotaryTables>(m, "RotaryTables")
      .def(py::init<>())
      .def_readwrite("dtype", &RotaryTables::dtype)
      .def_readwrite("rotary_dim", &RotaryTables::rotary_dim)
      .def_readwrite("length", &RotaryTables::length)
      .def_readwrite("interleaved", &RotaryTables::interleaved)
      .def_readwrite("cos_strides", &RotaryTables::cos_strides)
      .def_readwrite("sin_strides", &RotaryTables::sin_strides);
  py::class_<KvCacheAppendProblem>(m, "KvCacheAppendProblem")
      .def(py::init<>())
      .def_readwrite("dtype", &KvCacheAppendProblem::dtype)
      .def_readwrite("batch", &KvCacheAppendProblem::batch)
      .def_readwrite("kv_heads", &KvCacheAppendProblem::kv_heads)
      .def_readwrite("new_len", &KvCacheAppendProblem::new_len)
      .def_readwrite("head_dim", &KvCacheAppendProblem::head_dim)
      .def_readwrite("value_dim", &KvCacheAppendProblem::value_dim)
      .def_readwrite("pages", &KvCacheAppendProblem::pages)
      .def_readwrite("page_size", &KvCacheAppendProblem::page_size)
      .def_readwrite("max_pages", &KvCacheAppendProblem::max_pages)
      .def_readwrite("k_cache_strides", &KvCacheAppendProblem::k_cache_strides)
      .def_readwrite("v_cache_strides", &KvCacheAppendProblem::v_cache_strides)
      .def_readwrite("k_strides", &KvCacheAppendProblem::k_strides)
      .def_readwrite("v_strides", &KvCacheAppendProblem::v_strides)
      .def_readwrite("block_table_strides", &KvCacheAppendProblem::block_table_strides)
      .def_readwrite("positions_stride", &KvCacheAppendProblem::positions_stride)
      .def_readwrite("rotary", &KvCacheAppendProblem::rotary);
  m.def("plan_kv_cache_append", &plan_kv_cache_append, "The launch plan of one KV-cache append.");
  py::class_<RotaryEmbeddingProblem>(m, "RotaryEmbeddingProblem")
      .def(py::init<>())
      .def_readwrite("dtype", &RotaryEmbeddingProblem::dtype)
      .def_readwrite("batch", &RotaryEmbeddingProblem::batch)
      .def_readwrite("heads", &RotaryEmbeddingProblem::heads)
      .def_readwrite("seq_len", &RotaryEmbeddingProblem::seq_len)
      .def_readwrite("head_dim", &RotaryEmbeddingProblem::head_dim)
      .def_readwrite("x_strides", &RotaryEmbeddingProblem::x_strides)
      .def_readwrite("positions_stride", &RotaryEmbeddingProblem::positions_stride)
      .def_readwrite("same_position", &RotaryEmbeddingProblem::same_position)
      .def_readwrite("rotary", &RotaryEmbeddingProblem::rotary);
  m.def("plan_rotary_embedding", &plan_rotary_embedding, "The launch plan of one rotary embedding.");
}

}  // namespace mfa
