#include "attention/backward_plan.h"

#include <algorithm>
#include <stdexcept>
#include <utility>

#include "attention/block_table.h"
#include "gpu_family.h"

namespace mfa {
namespace {

// Which of a kernel's two operands (Q and dO, or K and V) are streamed from device memory instead of held.
using Streamed = std::pair<bool, bool>;

// The first choice whose estimate is within the register limit, holding as much as possible: neither streamed, then
// the operand of the larger head dim, then both (the last even when it does not fit).
template <typename Registers>
Streamed first_within_limit(const AttentionTileShape& shape, Registers registers) {
  const bool first_larger = shape.head_dim >= shape.value_dim;
  for (Streamed s : {Streamed{false, false}, Streamed{first_larger, !first_larger}}) {
    if (registers(s) <= kRegisterLimit) return s;
  }
  return {true, true};
}

}  // namespace

Plan plan_attention_backward(const AttentionProblem& prob, bool mask_grad) {
  validate_attention_problem(prob);
  if (mask_grad && (prob.mask == "none" || prob.mask == "bool" || prob.mask == "blocks")) {
    throw std::invalid_argument("mask_grad needs a floating mask");
  }
  if (prob.paged) throw std::invalid_argument("a paged K/V cache has no backward (inference only)");
  Plan plan;
  const auto [sequences, rows, keys, group] = attention_extent(prob);
  if (sequences == 0 || prob.kv_heads == 0 || rows == 0 || keys == 0) return plan;  // all gradients are zero

  const uint32_t dims = uint32_t(round_up(prob.head_dim, 8) + round_up(prob.value_dim, 8));
  const AttentionBackwardBlocks blocks = attention_backward_blocks(parse_gpu_family(prob.family), dims);
  const AttentionParams params = attention_params(prob, 1, 1);
  const int64_t q_rows = prob.batch * prob.q_heads * prob.q_len;  // rows of the q tensor
  plan.temporaries.push_back({"delta", "float32", q_rows});

  Launch delta;
  delta.shader = "attention_backward_delta.metal";
  delta.kernel = "attention_backward_delta";
  delta.defines = {{"MFA_T", attention_metal_type(prob.dtype, "q")},
                   {"MFA_VALUE_DIM", std::to_string(round_up(prob.value_dim, 8))}};
  delta.threadgroups = {uint64_t(ceil_div(q_rows, 32)), 1, 1};  // 4 SIMD-groups of 8 rows
  delta.threads_per_threadgroup = {128, 1, 1};
  delta.arguments = {tensor_argument(MFA_ATTN_GRAD_OUT, "grad_out"), tensor_argument(MFA_ATTN_OUT, "out"),
                     tensor_argument(MFA_ATTN_DELTA, "delta"), bytes_argument(MFA_ATTN_PARAMS, params)};
  if (q_rows > 0) plan.launches.push_back(delta);

  // dQ: packed GQA rows as in the forward. dQ stays whole in one SIMD-group's registers (Q, dO streamed as needed)
  // unless that passes the limit with both streamed: then each row group's dQ is cut into column slices, one
  // SIMD-group each, sharing dS, with the sliced kernels' blocks and K and V staged in chunks of their head dims.
  AttentionTileShape shape = attention_tile_shape(prob, blocks.dq_block_k);
  const bool dq_sliced = dq_registers(shape, true, true, shape.head_dim) > kRegisterLimit;
  const AttentionBlocks dq_blocks =
      dq_sliced ? attention_sliced_blocks(parse_gpu_family(prob.family))
                : AttentionBlocks{blocks.dq_block_q, blocks.dq_block_k};
  shape.block_k = dq_blocks.block_k;
  const Streamed whole_dq_streamed = first_within_limit(
      shape, [&](Streamed s) { return dq_registers(shape, s.first, s.second, shape.head_dim); });
  const DqSlices dq_slicing =
      dq_sliced ? dq_slices(shape) : DqSlices{shape.head_dim, whole_dq_streamed.first, whole_dq_streamed.second};
  const uint32_t dq_slice_count = uint32_t(ceil_div(shape.head_dim, dq_slicing.dq_dim));
  const int64_t block_q = std::min<int64_t>(dq_blocks.block_q / dq_slice_count, round_up(rows * group, 8));
  const uint32_t element_bytes = uint32_t(attention_element_bytes(prob));  // the tiles are staged in the input type
  const uint32_t k_chunks = dq_sliced ? staged_k_chunks(shape.head_dim, dq_blocks.block_k, element_bytes) : 1;
  const uint32_t v_chunks = dq_sliced ? staged_k_chunks(shape.value_dim, dq_blocks.block_k, element_bytes) : 1;
  // Sliced: a chunk of K or V and the block's dS (float); else the whole K and V tiles.
  const uint64_t dq_tile_bytes =
      dq_sliced ? uint64_t(dq_blocks.block_k) * std::max(staged_k_chunk_width(shape.head_dim, k_chunks),
                                                         staged_k_chunk_width(shape.value_dim, v_chunks)) *
                          element_bytes + uint64_t(block_q) * dq_blocks.block_k * sizeof(float)
                : uint64_t(dq_blocks.block_k) * dims * element_bytes;
  if (dq_tile_bytes > kThreadgroupMemoryLimit) {  // unsliced dQ comes with E <= 392 (tests/test_attention_plan.py)
    throw std::logic_error("attention backward: the dQ tiles pass the threadgroup memory");
  }
  Launch dq = attention_kernel_launch(
      prob, "attention_backward_dq",
      {{"MFA_BLOCK_Q", std::to_string(block_q)}, {"MFA_BLOCK_K", std::to_string(dq_blocks.block_k)},
       {"MFA_SLICE_DIM", std::to_string(dq_slicing.dq_dim)}, {"MFA_K_CHUNKS", std::to_string(k_chunks)},
       {"MFA_V_CHUNKS", std::to_string(v_chunks)}, {"MFA_MASK_GRAD", mask_grad ? "1" : "0"},
       {"MFA_STREAM_Q", dq_slicing.stream_q ? "1" : "0"}, {"MFA_STREAM_DO", dq_slicing.stream_do ? "1" : "0"}},
      {uint64_t(ceil_div(rows * group, block_q)), uint64_t(prob.kv_heads), uint64_t(sequences)},
      block_q * dq_slice_count);
  dq.registers = dq_registers(shape, dq_slicing.stream_q, dq_slicing.stream_do, dq_slicing.dq_dim);
  dq.threadgroup_memory = dq_tile_bytes;
  dq.arguments = attention_kernel_arguments(prob, params, "stats", "tile_count_dq");
  dq.arguments.insert(dq.arguments.end(), {tensor_argument(MFA_ATTN_GRAD_OUT, "grad_out"),
                                           tensor_argument(MFA_ATTN_DELTA, "delta"), tensor_argument(MFA_ATTN_DQ, "dq"),
                                           tensor_argument(MFA_ATTN_DMASK, bound_or_q(mask_grad, "dmask"))});
  plan.launches.push_back(dq);

  // dK/dV: one SIMD-group per 8 keys with both accumulators whole (K and V streamed as needed; a short key range
  // shrinks the threadgroup too), unless that passes the limit with both streamed: then each row group's dK and dV
  // are cut into column slices, one SIMD-group each, sharing P^T and dS^T, with the sliced kernels' blocks (a block of
  // queries, keys to fill 8 SIMD-groups) and Q and dO staged in chunks of their head dims.
  const bool dkdv_sliced = dkdv_registers(shape, true, true, 1) > kRegisterLimit;
  const AttentionBlocks sliced_blocks = attention_sliced_blocks(parse_gpu_family(prob.family));
  shape.block_k = dkdv_sliced ? sliced_blocks.block_k : blocks.dkdv_block_q;
  const Streamed whole_dkdv_streamed =
      first_within_limit(shape, [&](Streamed s) { return dkdv_registers(shape, s.first, s.second, 1); });
  const DkDvSlices dkdv_slicing =
      dkdv_sliced ? dkdv_slices(shape) : DkDvSlices{1, whole_dkdv_streamed.first, whole_dkdv_streamed.second};
  const int64_t dkdv_block_q = shape.block_k;
  const int64_t block_kv = std::min<int64_t>(
      dkdv_sliced ? sliced_blocks.block_q / dkdv_slicing.slices : blocks.dkdv_block_kv,
      std::max<int64_t>(dkdv_sliced ? 8 : 16, round_up(keys, 8)));
  const uint64_t row_bytes = 3 * sizeof(float);  // each query's softmax max, 1 / sum and D
  const uint64_t scores_bytes = uint64_t(block_kv) * dkdv_block_q * sizeof(float);  // sliced: P^T, then dS^T
  const uint32_t chunk_budget = uint32_t(kDkDvThreadgroupBytes - scores_bytes - dkdv_block_q * row_bytes);
  const uint32_t q_chunks =
      dkdv_sliced ? staged_chunks(shape.head_dim, uint32_t(dkdv_block_q), element_bytes, chunk_budget) : 1;
  const uint32_t do_chunks =
      dkdv_sliced ? staged_chunks(shape.value_dim, uint32_t(dkdv_block_q), element_bytes, chunk_budget) : 1;
  // Sliced: a chunk of Q or dO and the block's P^T or dS^T (float); else the whole Q and dO tiles.
  const uint64_t dkdv_tile_bytes =
      dkdv_sliced ? uint64_t(dkdv_block_q) * std::max(staged_k_chunk_width(shape.head_dim, q_chunks),
                                                      staged_k_chunk_width(shape.value_dim, do_chunks)) *
                            element_bytes + scores_bytes
                  : uint64_t(dkdv_block_q) * dims * element_bytes;
  Launch dkdv = attention_kernel_launch(
      prob, "attention_backward_dkdv",
      {{"MFA_BLOCK_KV", std::to_string(block_kv)}, {"MFA_BLOCK_Q", std::to_string(dkdv_block_q)},
       {"MFA_SLICES", std::to_string(dkdv_slicing.slices)}, {"MFA_Q_CHUNKS", std::to_string(q_chunks)},
       {"MFA_DO_CHUNKS", std::to_string(do_chunks)}, {"MFA_STREAM_K", dkdv_slicing.stream_k ? "1" : "0"},
       {"MFA_STREAM_V", dkdv_slicing.stream_v ? "1" : "0"}},
      {uint64_t(ceil_div(keys, block_kv)), uint64_t(prob.kv_heads), uint64_t(sequences)},
      block_kv * dkdv_slicing.slices);
  dkdv.registers = dkdv_registers(shape, dkdv_slicing.stream_k, dkdv_slicing.stream_v, dkdv_slicing.slices);
  dkdv.threadgroup_memory = dkdv_tile_bytes + dkdv_block_q * row_bytes;
  if (dkdv.threadgroup_memory > kThreadgroupMemoryLimit) {  // unsliced dK/dV comes with E + Ev <= 392
    throw std::logic_error("attention backward: the dK/dV tiles pass the threadgroup memory");
  }
  dkdv.arguments = attention_kernel_arguments(prob, params, "stats", "tile_count_dkdv");
  dkdv.arguments.insert(dkdv.arguments.end(),
                        {tensor_argument(MFA_ATTN_GRAD_OUT, "grad_out"), tensor_argument(MFA_ATTN_DELTA, "delta"),
                         tensor_argument(MFA_ATTN_DK, "dk"), tensor_argument(MFA_ATTN_DV, "dv"),
                         tensor_argument(MFA_ATTN_MASK_Q_LISTS, bound_or_q(prob.mask == "blocks", "mask_q_lists"))});
  plan.launches.push_back(dkdv);

  if (prob.count_tiles) {
    plan.temporaries.push_back({"tile_count_dq", "int32", int64_t(dq.threadgroups[0] * dq.threadgroups[1] *
                                                                  dq.threadgroups[2])});
    plan.temporaries.push_back({"tile_count_dkdv", "int32", int64_t(dkdv.threadgroups[0] * dkdv.threadgroups[1] *
                                                                    dkdv.threadgroups[2])});
  }
  return plan;
}

}  // namespace mfa
