#include "attention/forward_plan.h"

#include <algorithm>
#include <limits>
#include <stdexcept>

#include "attention/block_table.h"
#include "attention_params.h"
#include "dropout_rng.h"
#include "gpu_family.h"

namespace mfa {
namespace {

int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }
int64_t ceil_div(int64_t x, int64_t m) { return (x + m - 1) / m; }

void require(bool ok, const std::string& message) {
  if (!ok) throw std::invalid_argument(message);
}

std::string metal_type(const std::string& dtype, const char* what) {
  if (dtype == "float32") return "float";
  if (dtype == "float16") return "half";
  if (dtype == "bfloat16") return "bfloat";
  throw std::invalid_argument(std::string(what) + " must be float32, float16 or bfloat16 for the Metal kernels, got " +
                              dtype);
}

void validate(const AttentionProblem& p) {
  metal_type(p.dtype, "q");
  for (auto [name, dim] : {std::pair{"head_dim", p.head_dim}, std::pair{"value_dim", p.value_dim}}) {
    require(dim >= 1 && dim <= MFA_ATTN_MAX_HEAD_DIM,
            std::string(name) + " must be in [1, 256] for the Metal kernels, got " + std::to_string(dim));
  }
  require(p.batch >= 0 && p.q_heads >= 0 && p.kv_heads >= 0 && p.q_len >= 0 && p.kv_len >= 0, "sizes must be >= 0");
  require(p.kv_heads == 0 ? p.q_heads == 0 : p.q_heads % p.kv_heads == 0, "q_heads must be a multiple of kv_heads");
  constexpr int64_t kMax = std::numeric_limits<int32_t>::max();  // positions and counts are 32-bit in the kernels
  for (auto [name, n] : {std::pair{"batch", p.batch}, std::pair{"q_heads", p.q_heads}, std::pair{"q_len", p.q_len},
                         std::pair{"kv_len", p.kv_len}, std::pair{"max_seqlen_q", p.max_seqlen_q},
                         std::pair{"max_seqlen_k", p.max_seqlen_k}}) {
    require(n <= kMax, std::string(name) + " must be below 2^31 for the Metal kernels, got " + std::to_string(n));
  }
  require(p.q_len * p.q_heads <= kMax, "q_len * q_heads must be below 2^31 (packed GQA rows are 32-bit)");
  if (p.mask != "none" && p.mask != "bool") metal_type(p.mask, "mask");
  require(p.num_sequences == 0 || p.batch == 1, "varlen problems must have batch 1");
  require(p.num_sequences == 0 || p.mask == "none", "mask is not supported together with cu_seqlens");
  require(p.dropout_p >= 0.0 && p.dropout_p < 1.0, "dropout_p must be in [0, 1)");
  parse_gpu_family(p.family);
}

}  // namespace

Plan plan_attention_forward(const AttentionProblem& prob) {
  validate(prob);
  Plan plan;
  const bool varlen = prob.num_sequences > 0;
  const int64_t sequences = varlen ? prob.num_sequences : prob.batch;
  const int64_t rows = varlen ? prob.max_seqlen_q : prob.q_len;  // the longest sequence's queries
  const int64_t keys = varlen ? prob.max_seqlen_k : prob.kv_len;
  const int64_t group = prob.kv_heads ? prob.q_heads / prob.kv_heads : 1;
  if (sequences == 0 || prob.kv_heads == 0 || rows == 0) return plan;  // nothing to compute

  const int64_t head_dim = round_up(prob.head_dim, 8), value_dim = round_up(prob.value_dim, 8);
  const int64_t tile_dim = std::max(head_dim, value_dim);
  AttentionBlocks blocks = attention_forward_blocks(parse_gpu_family(prob.family), uint32_t(tile_dim));
  // Decoding: fewer packed rows (queries x GQA group) than a block gets a smaller threadgroup.
  const int64_t packed_rows = rows * group;
  const int64_t block_q = std::min<int64_t>(blocks.block_q, round_up(packed_rows, 8));
  const int64_t query_blocks = ceil_div(packed_rows, block_q);
  const int64_t key_blocks = std::max<int64_t>(1, ceil_div(keys, blocks.block_k));

  // Flash-decoding: too few threadgroups for the GPU and long keys -> split the keys and combine.
  int64_t splits = 1, blocks_per_split = key_blocks;
  const int64_t threadgroups = sequences * prob.kv_heads * query_blocks;
  if (threadgroups < kAttentionTargetThreadgroups && key_blocks >= 2 * kAttentionMinBlocksPerSplit) {
    splits = std::min(ceil_div(kAttentionTargetThreadgroups, threadgroups), key_blocks / kAttentionMinBlocksPerSplit);
    blocks_per_split = ceil_div(key_blocks, splits);
    splits = ceil_div(key_blocks, blocks_per_split);
  }

  AttentionParams params{};
  for (int i = 0; i < 4; i++) params.mask_strides[i] = prob.mask_strides[i];
  params.dropout_offset = prob.dropout_offset;
  params.batch = mfa_u32(sequences);
  params.q_heads = mfa_u32(prob.q_heads);
  params.kv_heads = mfa_u32(prob.kv_heads);
  params.group = mfa_u32(group);
  params.q_len = mfa_u32(prob.q_len);
  params.kv_len = mfa_u32(prob.kv_len);
  params.head_dim = mfa_u32(prob.head_dim);
  params.value_dim = mfa_u32(prob.value_dim);
  params.window_left = mfa_i32(std::clamp<int64_t>(prob.window_left, -1, std::numeric_limits<int32_t>::max()));
  params.window_right = mfa_i32(std::clamp<int64_t>(prob.window_right, -1, std::numeric_limits<int32_t>::max()));
  params.bottom_right = prob.bottom_right;
  params.varlen = varlen;
  params.has_alibi = prob.has_alibi;
  params.alibi_batch_stride = mfa_u32(prob.alibi_batch_stride);
  params.scale = float(prob.scale);
  params.softcap = float(prob.softcap);
  params.has_dropout = prob.dropout_p > 0.0;
  params.dropout_threshold = mfa_u32(prob.dropout_p * 4294967296.0);
  params.dropout_key_lo = mfa_dropout_key_lo(mfa_u64(prob.dropout_seed));
  params.dropout_key_hi = mfa_dropout_key_hi(mfa_u64(prob.dropout_seed));
  params.dropout_scale = prob.dropout_p > 0.0 ? float(1.0 / (1.0 - prob.dropout_p)) : 1.0f;
  params.dropout_rows = mfa_u32(rows);
  params.dropout_cols = mfa_u32(keys);
  params.num_splits = mfa_u32(splits);
  params.blocks_per_split = mfa_u32(blocks_per_split);
  params.max_seqlen_q = mfa_u32(rows);

  const std::string type = metal_type(prob.dtype, "q");
  const bool split = splits > 1;
  if (split) {
    const int64_t partial_rows = prob.batch * prob.q_heads * prob.q_len * splits;
    plan.temporaries.push_back({"partial_out", "float32", partial_rows * prob.value_dim});
    plan.temporaries.push_back({"partial_lse", "float32", partial_rows});
  }
  Launch forward;
  forward.shader = "attention_forward.metal";
  forward.kernel = "attention_forward";
  const int mask_kind = prob.mask == "none" ? MFA_MASK_NONE : prob.mask == "bool" ? MFA_MASK_BOOL : MFA_MASK_FLOAT;
  forward.defines = {{"MFA_T", type},
                     {"MFA_HEAD_DIM", std::to_string(head_dim)},
                     {"MFA_VALUE_DIM", std::to_string(value_dim)},
                     {"MFA_BLOCK_Q", std::to_string(block_q)},
                     {"MFA_BLOCK_K", std::to_string(blocks.block_k)},
                     {"MFA_MASK_KIND", std::to_string(mask_kind)},
                     {"MFA_SPLIT_KV", split ? "1" : "0"},
                     {"MFA_COUNT_TILES", prob.count_tiles ? "1" : "0"}};
  if (mask_kind != MFA_MASK_NONE) {
    forward.defines.push_back({"MFA_MASK_T", mask_kind == MFA_MASK_BOOL ? "uchar" : metal_type(prob.mask, "mask")});
  }
  forward.threadgroups = {uint64_t(query_blocks), uint64_t(prob.kv_heads), uint64_t(sequences * splits)};
  forward.threads_per_threadgroup = {uint64_t(block_q / 8 * 32), 1, 1};
  forward.threadgroup_memory = uint64_t(blocks.block_k * tile_dim * sizeof(float));
  if (prob.count_tiles) {
    plan.temporaries.push_back({"tile_count", "int32", int64_t(query_blocks * prob.kv_heads * sequences * splits)});
  }
  // Buffers a variant never reads are bound to q: Metal wants every declared buffer bound.
  auto optional = [](bool present, const char* name) { return std::string(present ? name : "q"); };
  forward.arguments = {tensor_argument(MFA_ATTN_Q, "q"),
                       tensor_argument(MFA_ATTN_K, "k"),
                       tensor_argument(MFA_ATTN_V, "v"),
                       tensor_argument(MFA_ATTN_MASK, optional(mask_kind != MFA_MASK_NONE, "mask")),
                       tensor_argument(MFA_ATTN_ALIBI, optional(prob.has_alibi, "alibi")),
                       tensor_argument(MFA_ATTN_CU_Q, optional(varlen, "cu_seqlens_q")),
                       tensor_argument(MFA_ATTN_CU_K, optional(varlen, "cu_seqlens_k")),
                       tensor_argument(MFA_ATTN_OUT, split ? "partial_out" : "out"),
                       tensor_argument(MFA_ATTN_LSE, split ? "partial_lse" : "lse"),
                       bytes_argument(MFA_ATTN_PARAMS, params),
                       tensor_argument(MFA_ATTN_TILE_COUNT, optional(prob.count_tiles, "tile_count"))};
  plan.launches.push_back(forward);

  if (split) {
    Launch combine;
    combine.shader = "attention_combine.metal";
    combine.kernel = "attention_combine";
    combine.defines = {{"MFA_T", type}};
    combine.threadgroups = {uint64_t(rows), uint64_t(prob.q_heads), uint64_t(sequences)};
    combine.threads_per_threadgroup = {32, 1, 1};
    combine.arguments = {tensor_argument(MFA_ATTN_PARTIAL_OUT, "partial_out"),
                         tensor_argument(MFA_ATTN_PARTIAL_LSE, "partial_lse"),
                         tensor_argument(MFA_ATTN_CU_Q, optional(varlen, "cu_seqlens_q")),
                         tensor_argument(MFA_ATTN_OUT, "out"),
                         tensor_argument(MFA_ATTN_LSE, "lse"),
                         bytes_argument(MFA_ATTN_PARAMS, params)};
    plan.launches.push_back(combine);
  }
  return plan;
}

}  // namespace mfa
