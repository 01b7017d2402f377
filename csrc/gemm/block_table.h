// Block sizes of the GEMM per GPU family and dtype: data, not code (DESIGN section 8).
#pragma once

#include <cstdint>

#include "gpu_family.h"

namespace mfa {

struct GemmBlocks {
  uint32_t block_m;  // rows of C per threadgroup: a multiple of 8 * MFA_GEMM_SIMDGROUPS_M
  uint32_t block_n;  // columns of C per threadgroup: a multiple of 8 * MFA_GEMM_SIMDGROUPS_N
  uint32_t block_k;  // depth of the A and B tiles staged per step: a multiple of 8
};

// `sixteen_bit`: float16 or bfloat16 inputs (they stream half the bytes of float32 per K step).
GemmBlocks gemm_blocks(GpuFamily family, bool sixteen_bit);

// K splits are added while the output has fewer threadgroups than this ...
constexpr uint32_t kGemmTargetThreadgroups = 128;
// ... and each split keeps at least this many K blocks, so the partials' traffic stays small next to the work.
constexpr uint32_t kGemmMinBlocksPerSplit = 8;

}  // namespace mfa
