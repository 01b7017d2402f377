// The canonical attention call of csrc/ops.cpp described as plain data, its validation, and the params struct every
// attention kernel reads (shaders/attention_params.h). Shared by the forward and backward planners.
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "attention_params.h"
#include "attention/registers.h"
#include "launch_plan.h"

namespace mfa {

// The canonical attention call of csrc/ops.cpp, described by sizes and options only.
struct AttentionProblem {
  std::string dtype = "float32";  // of q, k, v and out: "float32", "float16" or "bfloat16"
  int64_t batch = 0, q_heads = 0, kv_heads = 0, q_len = 0, kv_len = 0, head_dim = 0, value_dim = 0;
  // "none", "bool", the float mask's dtype ("float32", "float16", "bfloat16"), or "blocks" (a FlexAttention block
  // mask: int32 states "mask" and bits "mask_bits", shaders/attention_params.h)
  std::string mask = "none";
  std::array<int64_t, 4> mask_strides{};  // element strides over (B, Hq, L, S) (blocks: over their blocks), 0 on
                                          // broadcast dims
  int64_t mask_block_q = 0, mask_block_k = 0;  // "blocks": queries and keys per mask block
  // Element strides of q, k, v over (B, H, rows, head dim), the last 1 (views are read in place); unset = contiguous.
  std::optional<std::array<int64_t, 4>> q_strides, k_strides, v_strides;
  // Whether q, k, v begin on a 16-byte boundary (their storage offsets: allocations are aligned). Rows that all begin
  // on one and hold whole 16-byte chunks are copied 16 bytes per access (AttentionParams::wide_rows).
  bool q_aligned = false, k_aligned = false, v_aligned = false;
  bool grad_out_aligned = false;  // the backward's dO (dense (B, Hq, L, Ev))
  bool has_alibi = false;
  int64_t alibi_batch_stride = 0;
  bool has_sinks = false;  // "sinks" (Hq,) float: the forward adds them to every row's softmax (MFA_SINKS)
  int64_t num_sequences = 0;  // > 0: varlen (batch 1, cu_seqlens with num_sequences + 1 entries)
  int64_t max_seqlen_q = 0, max_seqlen_k = 0;
  // A paged K/V cache (forward only; shaders/attention_pages.h): k and v are pools of `pages` pages (pages, Hk,
  // kv_len, D) of kv_len rows each; "block_table" (sequences, max_pages) int32 holds each sequence's pages and
  // "kv_spans" (sequences, 2) int32 its first cache position and key count (at most max_seqlen_k). With varlen the
  // queries come from cu_seqlens_q and there is no cu_seqlens_k.
  bool paged = false;
  int64_t pages = 0, max_pages = 0;
  int64_t num_splits = 0;  // the forward's key splits: 0 = the planner's choice
  double scale = 1.0;
  int64_t window_left = -1, window_right = -1;
  bool bottom_right = false;
  double softcap = 0.0;
  double dropout_p = 0.0;
  int64_t dropout_seed = 0, dropout_offset = 0;
  std::string family = "apple9";
  bool count_tiles = false;  // debug: the plan adds the int32 temporary "tile_count", one entry per threadgroup
};

// Throws std::invalid_argument naming the argument for problems the kernels do not take.
void validate_attention_problem(const AttentionProblem& problem);

// Bytes of one element of q, k and v (the type the kernels stage their tiles in): 4 for float32, else 2.
inline int64_t attention_element_bytes(const AttentionProblem& problem) { return problem.dtype == "float32" ? 4 : 2; }

// The tile shapes the register estimates of csrc/attention/registers.h take, for a forward key block of `block_k`.
AttentionTileShape attention_tile_shape(const AttentionProblem& problem, uint32_t block_k);

// The Metal type name of a dtype ("float32" -> "float", ...); `what` names the argument in the error.
std::string attention_metal_type(const std::string& dtype, const char* what);

// The strides of q, k and v the kernels read: the problem's, or those of contiguous tensors where unset.
struct AttentionInputStrides {
  std::array<int64_t, 4> q, k, v;
};
AttentionInputStrides attention_input_strides(const AttentionProblem& problem);

// The longest sequence's query and key counts (varlen: max_seqlen_q / max_seqlen_k), sequences, and the GQA group.
struct AttentionExtent {
  int64_t sequences, rows, keys, group;
};
AttentionExtent attention_extent(const AttentionProblem& problem);

// The first dim of k and v: the batch, or the pages of a paged cache.
int64_t attention_kv_batch(const AttentionProblem& problem);

// The params struct for a plan with `splits` key splits of `blocks_per_split` key blocks each.
AttentionParams attention_params(const AttentionProblem& problem, int64_t splits, int64_t blocks_per_split);

// The MFA_MASK_KIND of the problem's mask and the defines naming its element type.
int attention_mask_kind(const AttentionProblem& problem);

// A tensor name, or "q" for a buffer the variant never reads (Metal wants every declared buffer bound).
inline std::string bound_or_q(bool present, const char* name) { return present ? name : "q"; }

// The MFA_SCORE_FEATURES of the problem: the score features (softcap, ALiBi, dropout) its variants compile in.
int attention_score_features(const AttentionProblem& problem);

// What every fused attention kernel (forward, backward dQ and dK/dV) shares: the defines naming the input type, the
// padded head dims, the mask, the score features and the tile counter, and the bindings of q, k, v, mask, ALiBi,
// cu_seqlens, stats, the params and the tile counter ("tile_count" when counting, itself a temporary the caller adds).
std::vector<std::pair<std::string, std::string>> attention_kernel_defines(const AttentionProblem& problem);
std::vector<Argument> attention_kernel_arguments(const AttentionProblem& problem, const AttentionParams& params,
                                                 const std::string& stats, const std::string& tile_count);

// A launch of the fused kernel `name` (shaders/<name>.metal): the shared defines plus `defines`, the grid, and
// threadgroups of `rows` rows (8 per SIMD-group).
Launch attention_kernel_launch(const AttentionProblem& problem, const std::string& name,
                               const std::vector<std::pair<std::string, std::string>>& defines,
                               const std::array<uint64_t, 3>& threadgroups, int64_t rows);

int64_t round_up(int64_t x, int64_t multiple);
int64_t ceil_div(int64_t x, int64_t divisor);

}  // namespace mfa
