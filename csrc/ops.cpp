// Schemas of the mfa ops: the one canonical argument form every kernel (reference, Metal, emulator) implements.
//
// Attention, canonical form:
//   q (B, Hq, L, E), k (B, Hk, S, E), v (B, Hk, S, Ev); Hq a multiple of Hk (GQA, never expanded). Any strides over
//         (B, H, L): views (e.g. of a packed (B, S, 3, H, D) qkv tensor) are read in place; a view whose last dim is
//         not unit-stride is copied once by the Metal route's entry (mfa_torch/metal/attention.py), never by callers.
//         The outputs (out, stats, dq, dk, dv, dmask) are contiguous.
//   mask: none, bool (true = attend) or float (added to the scores), 4-D with every dim either 1 or full
//         (B, Hq, L, S): broadcasting is read through the size-1 dims, never expanded.
//   alibi_slopes: (1 or B, Hq) fp32, adds -slope * |i + offset - j|.
//   window_left / window_right: query i attends keys j with i + offset - left <= j <= i + offset + right,
//         -1 = unbounded; causal is window_right = 0. offset = 0 (upper-left) or S - L (bottom_right).
//   cu_seqlens_q / cu_seqlens_k: varlen (B must be 1; each sequence attends within itself).
//   softcap > 0: scores = softcap * tanh(scores / softcap), before alibi and mask.
//   dropout_p with dropout_seed, an int64 CPU tensor (seed, offset) (a tensor so that torch.compile can trace
//         drawing it): a counter-based keep mask regenerated identically in the backward.
//   sinks (Hq,) in the stats' dtype (GPT-OSS's attention sinks): one extra logit per query head in every row's
//         softmax, with no value vector (its probability leaves the output). The stats include it, so the backward
//         needs no sinks; the gradient of the sinks is -sum over rows of p_sink * rowsum(dO * O) (mfa_torch/ops.py).
//   mask_blocks, mask_bits, mask_block_size (a FlexAttention block mask, mfa_torch/block_masks.py; not with mask or
//         cu_seqlens): int32 states (1 or B, 1 or Hq, ceil(L / bq), ceil(S / bk)) of the (bq, bk) = mask_block_size
//         blocks, -1 empty, -2 full, else the block's index in mask_bits, int32 (partial blocks, bq, ceil(bk / 32)):
//         bit c % 32 of word c // 32 of row r says whether element (r, c) of that block attends.
//   block_table with kv_spans (forward only; no mask, block mask or dropout): a paged K/V cache. k and v are pools of
//         pages (P, Hk, page_size, E / Ev), block_table (sequences, max_pages) int32 and kv_spans (sequences, 2) int32:
//         key j < kv_spans[b, 1] of sequence b is cache position c = kv_spans[b, 0] + j, row c % page_size of page
//         block_table[b, c // page_size]; max_seqlen_k bounds the key counts. Sequences are q's batch, or with
//         cu_seqlens_q its sequences (then no cu_seqlens_k). A contiguous cache is one page per sequence.
//   num_splits: the forward's key splits on the Metal route (0: the planner's choice); the result does not depend on it.
// Outputs: out (B, Hq, L, Ev) in q's dtype, and the softmax stats (B, Hq, L, 2) fp32 (fp64 for fp64 inputs): each
// row's max score m and sum l of exp(score - m) in natural units, the sink among the scores ((-inf, 0) for rows
// attending nothing, with no sink). The backward
// recomputes the probabilities as exp(score - m) / l from the same scores, as the forward formed them, so they agree
// at any score magnitude (a saved log-sum-exp m + log l would be rounded by |m| x 2^-24). lse = m + log l.
#include <torch/extension.h>

#include "plan_bindings.h"
#ifdef MFA_TORCH_WITH_MPS
#include "mps/bindings.h"
#endif

TORCH_LIBRARY(mfa, m) {
  m.def(
      "attention_forward(Tensor q, Tensor k, Tensor v, Tensor? mask, Tensor? alibi_slopes, "
      "Tensor? cu_seqlens_q, Tensor? cu_seqlens_k, int max_seqlen_q, int max_seqlen_k, float scale, "
      "int window_left, int window_right, bool bottom_right, float softcap, float dropout_p, "
      "Tensor? dropout_seed, Tensor? sinks=None, Tensor? mask_blocks=None, Tensor? mask_bits=None, "
      "int[] mask_block_size=[], Tensor? block_table=None, Tensor? kv_spans=None, int num_splits=0) -> "
      "(Tensor out, Tensor stats)");
  // dmask is the gradient of a float mask (same shape as mask) when mask_grad is true, else an empty tensor.
  m.def(
      "attention_backward(Tensor grad_out, Tensor q, Tensor k, Tensor v, Tensor out, Tensor stats, Tensor? mask, "
      "Tensor? alibi_slopes, Tensor? cu_seqlens_q, Tensor? cu_seqlens_k, int max_seqlen_q, int max_seqlen_k, "
      "float scale, int window_left, int window_right, bool bottom_right, float softcap, float dropout_p, "
      "Tensor? dropout_seed, bool mask_grad, Tensor? mask_blocks=None, Tensor? mask_bits=None, "
      "int[] mask_block_size=[]) -> (Tensor dq, Tensor dk, Tensor dv, Tensor dmask)");
  // GEMM, canonical form: a (Ba, M, K), b (Bb, K, N) with Ba, Bb in {1, B}; any strides (transposes are
  // read through them); bias (N,) or none. Result (B, M, N) in the inputs' dtype, fp32 accumulation.
  m.def("gemm(Tensor a, Tensor b, Tensor? bias) -> Tensor");
  // KV-cache append with fused rotary embeddings (mfa_torch/cache_ops.py), in place: k_cache (P, Hk, page_size, D)
  // and v_cache (P, Hk, page_size, Dv) (any strides over the first three dims, last dim dense), block_table
  // (B, max_pages) int32, new tokens k (B, Hk, Lnew, D), v (B, Hk, Lnew, Dv), positions (B,) int32: token t of
  // sequence b goes to cache position c = positions[b] + t, row c % page_size of page block_table[b, c // page_size],
  // its key rotated at c. rotary_cos / rotary_sin (seqlen_ro, rotary_dim / 2) in the inputs' dtype or float32, or
  // none: the first rotary_dim dims rotate (pairs (2i, 2i + 1) when rotary_interleaved, else (i, i + rotary_dim / 2)).
  m.def(
      "kv_cache_append(Tensor(a!) k_cache, Tensor(b!) v_cache, Tensor k, Tensor v, Tensor block_table, "
      "Tensor positions, Tensor? rotary_cos, Tensor? rotary_sin, bool rotary_interleaved) -> ()");
  // Rotary embedding: x (B, H, L, D) (any strides over the first three dims) -> contiguous (B, H, L, D), token t of
  // batch b rotated at positions[b] + t, or at positions[b] when same_position; tables as for kv_cache_append.
  m.def(
      "rotary_embedding(Tensor x, Tensor positions, Tensor rotary_cos, Tensor rotary_sin, bool interleaved, "
      "bool same_position) -> Tensor");
}

namespace {
bool has_mps_executor() {
#ifdef MFA_TORCH_WITH_MPS
  return true;
#else
  return false;
#endif
}
}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, module) {
  module.def("has_mps_executor", &has_mps_executor,
             "Whether this build contains the Metal executor for MPS tensors (macOS builds only).");
  mfa::bind_plans(module);
#ifdef MFA_TORCH_WITH_MPS
  mfa::bind_mps_executor(module);
#endif
}
