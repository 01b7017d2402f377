// Block sizes of the GEMM per GPU family and dtype, and where its operands come from: data, not code (DESIGN
// section 8).
#pragma once

#include <cstdint>

#include "gpu_family.h"

namespace mfa {

struct GemmBlocks {
  uint32_t block_m;  // rows of C per threadgroup: a multiple of 8 * MFA_GEMM_SIMDGROUPS_M
  uint32_t block_n;  // columns of C per threadgroup: a multiple of 16 * MFA_GEMM_SIMDGROUPS_N (column tile pairs)
  uint32_t block_k;  // depth of a K block (a unit of Stream-K work, staged at once): a multiple of 16
  bool a_from_device;  // interior blocks read A straight from device memory (when its layout allows) ...
  bool b_from_device;  // ... and B; otherwise through threadgroup memory
};

// `sixteen_bit`: float16 or bfloat16 inputs.
GemmBlocks gemm_blocks(GpuFamily family, bool sixteen_bit);

// Stream-K: threadgroups the largest chips of a family run at once (model: 32-40 GPU cores x 4 resident threadgroups
// of 128 threads). Outputs of fewer tiles, or of a few waves with a part-filled last one, are spread over this many
// workers ...
constexpr int64_t kGemmConcurrentThreadgroups = 128;
// ... for outputs of fewer than this many waves (past it, a part-filled last wave costs little) ...
constexpr int64_t kGemmStreamKWaves = 4;
// ... and, with fewer tiles than workers, each worker keeps at least this many K blocks, so the partial tiles it
// writes stay small next to its work.
constexpr int64_t kGemmMinBlocksPerWorker = 8;

}  // namespace mfa
