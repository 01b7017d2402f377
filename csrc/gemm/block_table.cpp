// Why these blocks (facts/apple-gpu-performance.md; metal-flash-attention's and MLX's GEMM tables). Every family
// takes 64 x 64 blocks of C over 2 x 2 SIMD-groups, each SIMD-group owning 32 x 32 (16 float accumulators, MLX's
// default; MFA holds 24 x 24 on M1 and 32 x 32 on M3), so each 16-deep K chunk loads 8 operand fragments for 32
// MMAs; 32-deep K blocks amortise the staging barriers, in 8 KiB (16-bit) or 16 KiB (float32) of tiles.
// M1/M2 (Apple7/8): operands staged through threadgroup memory (MFA's async-copy choice: no dynamic caching), except
//   float32's A, read from device: staging both as float would move 192 threadgroup bytes per MMA, A alone 96.
// M3 and later (Apple9+): interior blocks read A and B straight from device memory (MFA's M3 choice), no staging or
//   barriers; edge blocks are staged.
#include "gemm/block_table.h"

namespace mfa {

// Indexed by [M3 or later][16-bit inputs].
constexpr GemmBlocks kBlocks[2][2] = {{{64, 64, 32, true, false}, {64, 64, 32, false, false}},
                                      {{64, 64, 32, true, true}, {64, 64, 32, true, true}}};

GemmBlocks gemm_blocks(GpuFamily family, bool sixteen_bit) { return kBlocks[has_dynamic_caching(family)][sixteen_bit]; }

}  // namespace mfa
