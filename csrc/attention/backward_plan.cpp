#include "attention/backward_plan.h"

#include <algorithm>
#include <stdexcept>
#include <utility>
#include <vector>

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

  // dQ: packed GQA rows as in the forward; a short query block shrinks the threadgroup.
  const int64_t block_q = std::min<int64_t>(blocks.dq_block_q, round_up(rows * group, 8));
  // dQ is cut into column slices (one threadgroup each) only where it passes the limit with both operands streamed;
  // operands stay in registers while they fit under the limit: the larger one is streamed first.
  const AttentionTileShape shape = attention_tile_shape(prob, 0);
  const uint32_t dq_dim = widest_fitting_slice(
      shape.head_dim, [&](uint32_t width) { return dq_registers(shape, true, true, width) <= kRegisterLimit; });
  const Streamed dq_streamed = first_within_limit(
      shape, [&](Streamed s) { return dq_registers(shape, s.first, s.second, dq_dim); });
  const uint64_t element_bytes = uint64_t(attention_element_bytes(prob));  // the tiles are staged in the input type
  // The K and V tiles, unless they pass the threadgroup memory: then dP reads V from device memory (float inputs of
  // E + Ev past 1016 only).
  const bool dq_dp_from_device = uint64_t(blocks.dq_block_k) * dims * element_bytes > kThreadgroupMemoryLimit;
  const uint64_t v_tile_dim = dq_dp_from_device ? 0 : shape.value_dim;
  Launch dq = attention_kernel_launch(
      prob, "attention_backward_dq",
      {{"MFA_BLOCK_Q", std::to_string(block_q)}, {"MFA_BLOCK_K", std::to_string(blocks.dq_block_k)},
       {"MFA_SLICE_DIM", std::to_string(dq_dim)}, {"MFA_MASK_GRAD", mask_grad ? "1" : "0"},
       {"MFA_STREAM_Q", dq_streamed.first ? "1" : "0"}, {"MFA_STREAM_DO", dq_streamed.second ? "1" : "0"},
       {"MFA_DP_FROM_DEVICE", dq_dp_from_device ? "1" : "0"}},
      {uint64_t(ceil_div(rows * group, block_q) * ceil_div(shape.head_dim, dq_dim)), uint64_t(prob.kv_heads),
       uint64_t(sequences)},
      block_q);
  dq.registers = dq_registers(shape, dq_streamed.first, dq_streamed.second, dq_dim);
  dq.threadgroup_memory = uint64_t(blocks.dq_block_k) * (shape.head_dim + v_tile_dim) * element_bytes;
  dq.arguments = attention_kernel_arguments(prob, params, "stats", "tile_count_dq");
  dq.arguments.insert(dq.arguments.end(), {tensor_argument(MFA_ATTN_GRAD_OUT, "grad_out"),
                                           tensor_argument(MFA_ATTN_DELTA, "delta"), tensor_argument(MFA_ATTN_DQ, "dq"),
                                           tensor_argument(MFA_ATTN_DMASK, bound_or_q(mask_grad, "dmask"))});
  plan.launches.push_back(dq);

  // dK/dV: a short key range shrinks the threadgroup too (8 keys per SIMD-group).
  const int64_t block_kv = std::min<int64_t>(blocks.dkdv_block_kv, std::max<int64_t>(16, round_up(keys, 8)));
  // dK and dV in one launch where their accumulators and operands fit under the limit, else one launch each, whose
  // accumulator is cut into column slices (one threadgroup each) where it passes the limit with K and V streamed.
  const uint32_t both = MFA_DKDV_DK | MFA_DKDV_DV, whole = std::max(shape.head_dim, shape.value_dim);
  auto dkdv_streamed = [&](uint32_t outputs, uint32_t slice) {
    return first_within_limit(
        shape, [&](Streamed s) { return dkdv_registers(shape, outputs, s.first, s.second, slice); });
  };
  const Streamed together = dkdv_streamed(both, whole);
  const bool one_launch = dkdv_registers(shape, both, together.first, together.second, whole) <= kRegisterLimit;
  for (uint32_t outputs : one_launch ? std::vector<uint32_t>{both} : std::vector<uint32_t>{MFA_DKDV_DV, MFA_DKDV_DK}) {
    const uint32_t columns = outputs == both ? whole : outputs == MFA_DKDV_DK ? shape.head_dim : shape.value_dim;
    const uint32_t slice = outputs == both ? whole : widest_fitting_slice(columns, [&](uint32_t width) {
      return dkdv_registers(shape, outputs, true, true, width) <= kRegisterLimit;
    });
    const Streamed streamed = dkdv_streamed(outputs, slice);
    // The Q and dO tiles (a dV launch: its slice of dO), unless they pass the threadgroup memory: then a dK launch's
    // dP reads dO from device memory (float inputs of E + Ev past 1016 only).
    const uint64_t row_bytes = 3 * sizeof(float);  // each query's softmax max, 1 / sum and D
    const uint64_t do_dim = outputs & MFA_DKDV_DK ? shape.value_dim : slice;
    const bool dp_from_device =
        blocks.dkdv_block_q * ((shape.head_dim + do_dim) * element_bytes + row_bytes) > kThreadgroupMemoryLimit;
    const uint64_t do_tile_dim = dp_from_device ? 0 : do_dim;
    Launch dkdv = attention_kernel_launch(
        prob, "attention_backward_dkdv",
        {{"MFA_BLOCK_KV", std::to_string(block_kv)}, {"MFA_BLOCK_Q", std::to_string(blocks.dkdv_block_q)},
         {"MFA_SLICE_DIM", std::to_string(slice)}, {"MFA_DKDV_OUTPUTS", std::to_string(outputs)},
         {"MFA_STREAM_K", streamed.first ? "1" : "0"}, {"MFA_STREAM_V", streamed.second ? "1" : "0"},
         {"MFA_DP_FROM_DEVICE", dp_from_device ? "1" : "0"}},
        {uint64_t(ceil_div(keys, block_kv) * ceil_div(columns, slice)), uint64_t(prob.kv_heads), uint64_t(sequences)},
        block_kv);
    dkdv.registers = dkdv_registers(shape, outputs, streamed.first, streamed.second, slice);
    dkdv.threadgroup_memory = blocks.dkdv_block_q * ((shape.head_dim + do_tile_dim) * element_bytes + row_bytes);
    dkdv.arguments = attention_kernel_arguments(prob, params, "stats", "tile_count_dkdv");
    dkdv.arguments.insert(dkdv.arguments.end(),
                          {tensor_argument(MFA_ATTN_GRAD_OUT, "grad_out"), tensor_argument(MFA_ATTN_DELTA, "delta"),
                           tensor_argument(MFA_ATTN_DK, "dk"), tensor_argument(MFA_ATTN_DV, "dv"),
                           tensor_argument(MFA_ATTN_MASK_Q_LISTS, bound_or_q(prob.mask == "blocks", "mask_q_lists"))});
    plan.launches.push_back(dkdv);
  }

  if (prob.count_tiles) {
    const Launch& dkdv = plan.launches.back();  // every dK/dV launch has the same grid
    plan.temporaries.push_back({"tile_count_dq", "int32", int64_t(dq.threadgroups[0] * dq.threadgroups[1] *
                                                                  dq.threadgroups[2])});
    plan.temporaries.push_back({"tile_count_dkdv", "int32", int64_t(dkdv.threadgroups[0] * dkdv.threadgroups[1] *
                                                                    dkdv.threadgroups[2])});
  }
  return plan;
}

}  // namespace mfa
