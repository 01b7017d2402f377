#include "attention/problem.h"

#include <algorithm>
#include <limits>
#include <stdexcept>
#include <tuple>
#include <utility>

#include "dropout_rng.h"
#include "gpu_family.h"

namespace mfa {
namespace {

void require(bool ok, const std::string& message) {
  if (!ok) throw std::invalid_argument(message);
}

std::array<int64_t, 4> contiguous_strides(int64_t heads, int64_t rows, int64_t dim) {
  return {heads * rows * dim, rows * dim, dim, 1};
}

std::string to_string(const std::array<int64_t, 4>& values) {
  return "[" + std::to_string(values[0]) + ", " + std::to_string(values[1]) + ", " + std::to_string(values[2]) +
         ", " + std::to_string(values[3]) + "]";
}

// The kernels read q, k, v rows through 64-bit element offsets, scaled to bytes (at most 4 per element): the largest
// offset a tensor's strides reach must stay below 2^61. Overlapping rows (stride 0 included) are only read: allowed.
void validate_input_strides(const std::string& name, const std::array<int64_t, 4>& sizes,
                            const std::array<int64_t, 4>& strides) {
  const std::string what = name + "_strides " + to_string(strides);
  for (int64_t s : strides) require(s >= 0, what + ": strides must be >= 0");
  require(strides[3] == 1, what + ": the last (head dim) stride must be 1");
  for (int64_t n : sizes) {
    if (n == 0) return;  // nothing is read
  }
  constexpr int64_t kMaxOffset = int64_t(1) << 61;
  int64_t last = 0;
  for (int i = 0; i < 4; i++) {
    int64_t step = 0;
    const bool overflow = __builtin_mul_overflow(sizes[i] - 1, strides[i], &step) ||
                          __builtin_add_overflow(last, step, &last);
    require(!overflow && last < kMaxOffset,
            what + " with sizes " + to_string(sizes) + ": element offsets must stay below 2^61 for the Metal kernels");
  }
}

}  // namespace

int64_t round_up(int64_t x, int64_t multiple) { return (x + multiple - 1) / multiple * multiple; }
int64_t ceil_div(int64_t x, int64_t divisor) { return (x + divisor - 1) / divisor; }

std::string attention_metal_type(const std::string& dtype, const char* what) {
  if (dtype == "float32") return "float";
  if (dtype == "float16") return "half";
  if (dtype == "bfloat16") return "bfloat";
  throw std::invalid_argument(std::string(what) + " must be float32, float16 or bfloat16 for the Metal kernels, got " +
                              dtype);
}

AttentionInputStrides attention_input_strides(const AttentionProblem& p) {
  return {p.q_strides.value_or(contiguous_strides(p.q_heads, p.q_len, p.head_dim)),
          p.k_strides.value_or(contiguous_strides(p.kv_heads, p.kv_len, p.head_dim)),
          p.v_strides.value_or(contiguous_strides(p.kv_heads, p.kv_len, p.value_dim))};
}

void validate_attention_problem(const AttentionProblem& p) {
  attention_metal_type(p.dtype, "q");
  for (auto [name, dim, most] : {std::tuple{"head_dim", p.head_dim, MFA_ATTN_MAX_HEAD_DIM},
                                 std::tuple{"value_dim", p.value_dim, MFA_ATTN_MAX_VALUE_DIM}}) {
    require(dim >= 1 && dim <= most, std::string(name) + " must be in [1, " + std::to_string(most) +
                                         "] for the Metal kernels, got " + std::to_string(dim));
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
  if (p.mask == "blocks") {
    require(p.mask_block_q >= 1 && p.mask_block_k >= 1 && p.mask_block_q <= kMax && p.mask_block_k <= kMax,
            "mask_block_q and mask_block_k must be in [1, 2^31)");
  } else if (p.mask != "none" && p.mask != "bool") {
    attention_metal_type(p.mask, "mask");
  }
  require(p.num_sequences == 0 || p.batch == 1, "varlen problems must have batch 1");
  require(p.num_sequences == 0 || p.mask == "none", "mask is not supported together with cu_seqlens");
  require(p.dropout_p >= 0.0 && p.dropout_p < 1.0, "dropout_p must be in [0, 1)");
  if (p.paged) {
    require(p.mask == "none" && p.dropout_p == 0.0, "a paged K/V cache takes no mask, block mask or dropout");
    require(p.pages >= 0 && p.pages <= kMax && p.max_pages >= 0 && p.max_pages <= kMax,
            "pages and max_pages must be in [0, 2^31)");
    require(p.kv_len * p.max_pages <= kMax, "a sequence's cache positions (max_pages * page size) must be below 2^31");
  }
  require(p.num_splits >= 0, "num_splits must be >= 0 (0: the planner's choice)");
  const AttentionInputStrides strides = attention_input_strides(p);
  const int64_t kv_batch = attention_kv_batch(p);
  validate_input_strides("q", {p.batch, p.q_heads, p.q_len, p.head_dim}, strides.q);
  validate_input_strides("k", {kv_batch, p.kv_heads, p.kv_len, p.head_dim}, strides.k);
  validate_input_strides("v", {kv_batch, p.kv_heads, p.kv_len, p.value_dim}, strides.v);
  parse_gpu_family(p.family);
}

AttentionExtent attention_extent(const AttentionProblem& p) {
  const bool varlen = p.num_sequences > 0;
  return {varlen ? p.num_sequences : p.batch, varlen ? p.max_seqlen_q : p.q_len,
          varlen || p.paged ? p.max_seqlen_k : p.kv_len, p.kv_heads ? p.q_heads / p.kv_heads : 1};
}

int64_t attention_kv_batch(const AttentionProblem& p) { return p.paged ? p.pages : p.batch; }

int attention_mask_kind(const AttentionProblem& p) {
  return p.mask == "none"     ? MFA_MASK_NONE
         : p.mask == "bool"   ? MFA_MASK_BOOL
         : p.mask == "blocks" ? MFA_MASK_BLOCKS
                              : MFA_MASK_FLOAT;
}

// AttentionParams::wide_rows: for q, k, v and the dense dO, whether each row (any batch, head and row index) begins on
// 16 bytes and its head dim fills whole 16-byte chunks.
static mfa_u32 attention_wide_rows(const AttentionProblem& p, const AttentionInputStrides& strides) {
  const int64_t chunk = 16 / attention_element_bytes(p);  // elements per 16 bytes
  auto wide = [&](bool aligned, const std::array<int64_t, 4>& s, int64_t batch, int64_t heads, int64_t rows,
                  int64_t dim) {
    const std::array<int64_t, 3> sizes{batch, heads, rows};
    bool ok = aligned && dim % chunk == 0;
    for (int i = 0; i < 3; i++) ok = ok && (sizes[i] <= 1 || s[i] % chunk == 0);  // a size-1 dim's stride is unused
    return mfa_u32(ok);
  };
  const int64_t batch = p.num_sequences > 0 ? 1 : p.batch;
  const int64_t kv_batch = p.num_sequences > 0 && !p.paged ? 1 : attention_kv_batch(p);
  return wide(p.q_aligned, strides.q, batch, p.q_heads, p.q_len, p.head_dim) |
         wide(p.k_aligned, strides.k, kv_batch, p.kv_heads, p.kv_len, p.head_dim) << 1 |
         wide(p.v_aligned, strides.v, kv_batch, p.kv_heads, p.kv_len, p.value_dim) << 2 |
         mfa_u32(p.grad_out_aligned && p.value_dim % chunk == 0) << 3;
}

AttentionParams attention_params(const AttentionProblem& prob, int64_t splits, int64_t blocks_per_split) {
  const AttentionExtent extent = attention_extent(prob);
  AttentionParams params{};
  for (int i = 0; i < 4; i++) params.mask_strides[i] = prob.mask_strides[i];
  const AttentionInputStrides strides = attention_input_strides(prob);
  for (int i = 0; i < 3; i++) {
    params.q_strides[i] = strides.q[i];
    params.k_strides[i] = strides.k[i];
    params.v_strides[i] = strides.v[i];
  }
  params.dropout_offset = prob.dropout_offset;
  params.batch = mfa_u32(extent.sequences);
  params.q_heads = mfa_u32(prob.q_heads);
  params.kv_heads = mfa_u32(prob.kv_heads);
  params.group = mfa_u32(extent.group);
  params.q_len = mfa_u32(prob.q_len);
  params.kv_len = mfa_u32(prob.kv_len);
  params.head_dim = mfa_u32(prob.head_dim);
  params.value_dim = mfa_u32(prob.value_dim);
  params.window_left = mfa_i32(std::clamp<int64_t>(prob.window_left, -1, std::numeric_limits<int32_t>::max()));
  params.window_right = mfa_i32(std::clamp<int64_t>(prob.window_right, -1, std::numeric_limits<int32_t>::max()));
  params.bottom_right = prob.bottom_right;
  params.varlen = prob.num_sequences > 0;
  params.alibi_batch_stride = mfa_u32(prob.alibi_batch_stride);
  params.scale = float(prob.scale);
  params.softcap = float(prob.softcap);
  params.dropout_threshold = mfa_u32(prob.dropout_p * 4294967296.0);
  params.dropout_key_lo = mfa_dropout_key_lo(mfa_u64(prob.dropout_seed));
  params.dropout_key_hi = mfa_dropout_key_hi(mfa_u64(prob.dropout_seed));
  params.dropout_scale = prob.dropout_p > 0.0 ? float(1.0 / (1.0 - prob.dropout_p)) : 1.0f;
  params.dropout_rows = mfa_u32(extent.rows);
  params.dropout_cols = mfa_u32(extent.keys);
  params.num_splits = mfa_u32(splits);
  params.blocks_per_split = mfa_u32(blocks_per_split);
  params.max_seqlen_q = mfa_u32(extent.rows);
  params.wide_rows = attention_wide_rows(prob, strides);
  params.mask_block_q = mfa_u32(prob.mask_block_q);
  params.mask_block_k = mfa_u32(prob.mask_block_k);
  params.max_pages = mfa_u32(prob.max_pages);
  return params;
}

AttentionTileShape attention_tile_shape(const AttentionProblem& p, uint32_t block_k) {
  const bool widened = p.dtype == "bfloat16" && !has_bfloat_arithmetic(parse_gpu_family(p.family));
  AttentionTileShape shape;
  shape.head_dim = uint32_t(round_up(p.head_dim, 8));
  shape.value_dim = uint32_t(round_up(p.value_dim, 8));
  shape.operand_registers = p.dtype == "float32" || widened ? 2 : 1;
  shape.held_registers = p.dtype == "float32" ? 2 : 1;
  shape.widened_bfloat = widened;
  shape.block_k = block_k;
  return shape;
}

int attention_score_features(const AttentionProblem& p) {
  return (p.softcap > 0.0 ? MFA_SCORE_SOFTCAP : 0) | (p.has_alibi ? MFA_SCORE_ALIBI : 0) |
         (p.dropout_p > 0.0 ? MFA_SCORE_DROPOUT : 0);
}

std::vector<std::pair<std::string, std::string>> attention_kernel_defines(const AttentionProblem& p) {
  const int mask_kind = attention_mask_kind(p);
  std::vector<std::pair<std::string, std::string>> defines = {
      {"MFA_T", attention_metal_type(p.dtype, "q")},
      {"MFA_HEAD_DIM", std::to_string(round_up(p.head_dim, 8))},
      {"MFA_VALUE_DIM", std::to_string(round_up(p.value_dim, 8))},
      {"MFA_MASK_KIND", std::to_string(mask_kind)},
      {"MFA_SCORE_FEATURES", std::to_string(attention_score_features(p))},
      {"MFA_COUNT_TILES", p.count_tiles ? "1" : "0"},
      // bfloat tiles become float where the matrix unit computes them, before Apple9
      {"MFA_BFLOAT_AS_FLOAT", p.dtype == "bfloat16" && !has_bfloat_arithmetic(parse_gpu_family(p.family)) ? "1" : "0"}};
  if (mask_kind != MFA_MASK_NONE) {
    defines.push_back({"MFA_MASK_T", mask_kind == MFA_MASK_BOOL     ? "uchar"
                                     : mask_kind == MFA_MASK_BLOCKS ? "int"
                                                                    : attention_metal_type(p.mask, "mask")});
  }
  return defines;
}

Launch attention_kernel_launch(const AttentionProblem& p, const std::string& name,
                               const std::vector<std::pair<std::string, std::string>>& defines,
                               const std::array<uint64_t, 3>& threadgroups, int64_t rows) {
  Launch launch;
  launch.shader = name + ".metal";
  launch.kernel = name;
  launch.defines = attention_kernel_defines(p);
  launch.defines.insert(launch.defines.end(), defines.begin(), defines.end());
  launch.threadgroups = threadgroups;
  launch.threads_per_threadgroup = {uint64_t(rows / 8 * 32), 1, 1};
  return launch;
}

std::vector<Argument> attention_kernel_arguments(const AttentionProblem& p, const AttentionParams& params,
                                                 const std::string& stats, const std::string& tile_count) {
  const bool varlen = p.num_sequences > 0;
  return {tensor_argument(MFA_ATTN_Q, "q"),
          tensor_argument(MFA_ATTN_K, "k"),
          tensor_argument(MFA_ATTN_V, "v"),
          tensor_argument(MFA_ATTN_MASK, bound_or_q(p.mask != "none", "mask")),
          tensor_argument(MFA_ATTN_ALIBI, bound_or_q(p.has_alibi, "alibi")),
          tensor_argument(MFA_ATTN_CU_Q, bound_or_q(varlen, "cu_seqlens_q")),
          tensor_argument(MFA_ATTN_CU_K, bound_or_q(varlen && !p.paged, "cu_seqlens_k")),
          tensor_argument(MFA_ATTN_STATS, stats),
          bytes_argument(MFA_ATTN_PARAMS, params),
          tensor_argument(MFA_ATTN_TILE_COUNT, bound_or_q(p.count_tiles, tile_count.c_str())),
          tensor_argument(MFA_ATTN_MASK_BITS, bound_or_q(p.mask == "blocks", "mask_bits"))};
}

}  // namespace mfa
