#include "attention/forward_plan.h"

#include <algorithm>

#include "attention/block_table.h"
#include "gpu_family.h"

namespace mfa {

Plan plan_attention_forward(const AttentionProblem& prob) {
  validate_attention_problem(prob);
  Plan plan;
  const bool varlen = prob.num_sequences > 0;
  const auto [sequences, rows, keys, group] = attention_extent(prob);  // rows, keys: the longest sequence's
  if (sequences == 0 || prob.kv_heads == 0 || rows == 0) return plan;  // nothing to compute

  const int64_t tile_dim = round_up(std::max(prob.head_dim, prob.value_dim), 8);
  const uint32_t element_bytes = uint32_t(attention_element_bytes(prob));
  AttentionBlocks blocks = attention_forward_blocks(parse_gpu_family(prob.family), uint32_t(tile_dim), element_bytes);
  // O stays whole in one SIMD-group's registers (Q streamed if need be) unless that passes the limit even with Q
  // streamed: then each row group's O is cut into column slices, one SIMD-group each, with the sliced kernels' blocks.
  AttentionTileShape shape = attention_tile_shape(prob, blocks.block_k);
  const bool sliced = forward_registers(shape, true, shape.value_dim) > kRegisterLimit;
  if (sliced) blocks = attention_sliced_blocks(parse_gpu_family(prob.family));
  // A block mask's key blocks shorter than the table's: key blocks of the largest power of two within them (at
  // least 32 keys), so a skipped tile is a skipped mask block instead of the union of several.
  while (prob.mask == "blocks" && blocks.block_k > 32 && blocks.block_k > uint32_t(prob.mask_block_k)) blocks.block_k /= 2;
  shape.block_k = blocks.block_k;
  const auto [out_dim, stream_q] =
      sliced ? forward_slices(shape)
             : std::pair{shape.value_dim, forward_registers(shape, false, shape.value_dim) > kRegisterLimit};
  const uint32_t slices = uint32_t(ceil_div(shape.value_dim, out_dim));
  // Decoding: fewer packed rows (queries x GQA group) than a block gets a smaller threadgroup.
  const int64_t packed_rows = rows * group;
  const int64_t block_q = std::min<int64_t>(blocks.block_q / slices, round_up(packed_rows, 8));
  const int64_t query_blocks = ceil_div(packed_rows, block_q);
  const int64_t key_blocks = std::max<int64_t>(1, ceil_div(keys, blocks.block_k));
  // K is staged in chunks of its head dim and V in runs of keys, each at most kForwardTileBytes.
  const uint32_t k_chunks = staged_k_chunks(shape.head_dim, blocks.block_k, element_bytes);
  const uint32_t k_chunk = staged_k_chunk_width(shape.head_dim, k_chunks);
  const uint32_t v_rows = staged_v_rows(slices * out_dim, blocks.block_k, element_bytes);

  // Flash-decoding: too few threadgroups for the GPU and long keys -> split the keys and combine.
  int64_t splits = 1, blocks_per_split = key_blocks;
  const int64_t threadgroups = sequences * prob.kv_heads * query_blocks;
  if (prob.num_splits > 0) {  // the caller's count (FlashAttention's num_splits), at most one per key block
    splits = std::min(prob.num_splits, key_blocks);
  } else if (threadgroups < kAttentionTargetThreadgroups && key_blocks >= 2 * kAttentionMinBlocksPerSplit) {
    splits = std::min(ceil_div(kAttentionTargetThreadgroups, threadgroups), key_blocks / kAttentionMinBlocksPerSplit);
  }
  blocks_per_split = ceil_div(key_blocks, splits);
  splits = ceil_div(key_blocks, blocks_per_split);

  const AttentionParams params = attention_params(prob, splits, blocks_per_split);
  const std::string type = attention_metal_type(prob.dtype, "q");
  const bool split = splits > 1;
  const char* const sinks = prob.has_sinks ? "1" : "0";
  const Argument sinks_argument = tensor_argument(MFA_ATTN_SINKS, bound_or_q(prob.has_sinks, "sinks"));
  if (split) {
    const int64_t partial_rows = prob.batch * prob.q_heads * prob.q_len * splits;
    plan.temporaries.push_back({"partial_out", "float32", partial_rows * prob.value_dim});
    plan.temporaries.push_back({"partial_stats", "float32", 2 * partial_rows});
  }
  Launch forward = attention_kernel_launch(
      prob, "attention_forward",
      {{"MFA_BLOCK_Q", std::to_string(block_q)}, {"MFA_BLOCK_K", std::to_string(blocks.block_k)},
       {"MFA_SLICE_DIM", std::to_string(out_dim)}, {"MFA_K_CHUNKS", std::to_string(k_chunks)},
       {"MFA_V_ROWS", std::to_string(v_rows)}, {"MFA_SPLIT_KV", split ? "1" : "0"},
       {"MFA_STREAM_Q", stream_q ? "1" : "0"}, {"MFA_SINKS", sinks}, {"MFA_PAGED_KV", prob.paged ? "1" : "0"}},
      {uint64_t(query_blocks), uint64_t(prob.kv_heads), uint64_t(sequences * splits)}, block_q * slices);
  forward.registers = forward_registers(shape, stream_q, out_dim);
  // the K chunk or the V rows, in the input type; with slices, the block's P and each slice's row maxima (float)
  forward.threadgroup_memory =
      uint64_t(std::max(blocks.block_k * k_chunk, v_rows * slices * out_dim)) * element_bytes +
      (slices > 1 ? uint64_t(block_q) * (blocks.block_k + slices) * sizeof(float) : 0);
  if (prob.count_tiles) {
    plan.temporaries.push_back({"tile_count", "int32",
                                int64_t(query_blocks * prob.kv_heads * sequences * splits)});
  }
  forward.arguments = attention_kernel_arguments(prob, params, split ? "partial_stats" : "stats", "tile_count");
  forward.arguments.push_back(tensor_argument(MFA_ATTN_OUT, split ? "partial_out" : "out"));
  forward.arguments.push_back(sinks_argument);
  forward.arguments.push_back(tensor_argument(MFA_ATTN_BLOCK_TABLE, bound_or_q(prob.paged, "block_table")));
  forward.arguments.push_back(tensor_argument(MFA_ATTN_KV_SPANS, bound_or_q(prob.paged, "kv_spans")));
  plan.launches.push_back(forward);

  if (split) {
    Launch combine;
    combine.shader = "attention_combine.metal";
    combine.kernel = "attention_combine";
    combine.defines = {{"MFA_T", type}, {"MFA_SINKS", sinks}};
    combine.threadgroups = {uint64_t(rows), uint64_t(prob.q_heads), uint64_t(sequences)};
    combine.threads_per_threadgroup = {32, 1, 1};
    combine.arguments = {tensor_argument(MFA_ATTN_PARTIAL_OUT, "partial_out"),
                         tensor_argument(MFA_ATTN_PARTIAL_STATS, "partial_stats"),
                         tensor_argument(MFA_ATTN_CU_Q, bound_or_q(varlen, "cu_seqlens_q")),
                         tensor_argument(MFA_ATTN_OUT, "out"),
                         tensor_argument(MFA_ATTN_STATS, "stats"),
                         bytes_argument(MFA_ATTN_PARAMS, params),
                         sinks_argument};
    plan.launches.push_back(combine);
  }
  return plan;
}

}  // namespace mfa
