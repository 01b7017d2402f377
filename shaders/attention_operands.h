// The matrix unit's operand tiles of the input type MFA_T, loaded from threadgroup memory: MFA_T itself, or, for
// bfloat before Apple9 (MFA_BFLOAT_AS_FLOAT, where bfloat arithmetic is slow), converted to float on load.
#pragma once
#include <metal_stdlib>

// mfa_load_operand: an 8x8 tile at `src` (`stride` elements per row), transposed or not, origin 0.
#if MFA_BFLOAT_AS_FLOAT
typedef metal::simdgroup_float8x8 mfa_operand_tile;
inline void mfa_load_operand(thread mfa_operand_tile& tile, threadgroup const bfloat* src, ulong stride, bool transpose) {
  metal::simdgroup_bfloat8x8 narrow;
  simdgroup_load(narrow, src, stride, ulong2(0, 0), transpose);
  tile.thread_elements() = float2(narrow.thread_elements());
}
#else
typedef metal::simdgroup_matrix<MFA_T, 8, 8> mfa_operand_tile;
inline void mfa_load_operand(thread mfa_operand_tile& tile, threadgroup const MFA_T* src, ulong stride, bool transpose) {
  simdgroup_load(tile, src, stride, ulong2(0, 0), transpose);
}
#endif
