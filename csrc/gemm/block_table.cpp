// Why these sizes (facts/metal.md, metal-flash-attention's GEMM tables). Each threadgroup has 2 x 2 SIMD-groups.
// M1/M2 (Apple7/8): MFA's 48 x 48 output blocks, each SIMD-group holding a 24 x 24 sub-tile (9 accumulators), with
// MFA's K blocks of 24 (float32) or 32 (16-bit inputs read half the device bytes per element); staged as float the
// tiles take 9 or 12 KiB of the 32 KiB of threadgroup memory.
// M3 and later (Apple9+): MFA's 32 x 32 blocks (16 x 16 per SIMD-group), which spare registers for occupancy. MFA
// pairs them with K = 8 because it loads M3 operands straight from device memory; this kernel stages every K block
// through threadgroup memory (the one path that zero-pads edges and reads any strides), where each block costs two
// barriers, so it takes K = 32 to amortise them (8 KiB of tiles).
#include "gemm/block_table.h"

namespace mfa {

// Indexed by [M3 or later][16-bit inputs].
constexpr GemmBlocks kBlocks[2][2] = {{{48, 48, 24}, {48, 48, 32}}, {{32, 32, 32}, {32, 32, 32}}};

GemmBlocks gemm_blocks(GpuFamily family, bool sixteen_bit) { return kBlocks[has_dynamic_caching(family)][sixteen_bit]; }

}  // namespace mfa
