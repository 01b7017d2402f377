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
      "int[] mask_block_size=[]) -> (Tensor out, Tensor stats)");
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
