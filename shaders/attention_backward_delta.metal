// Attention backward, first pass: D = rowsum(dO * O) for every query row, in float. The dQ and dK/dV kernels read
// it instead of recomputing it per tile.
//
// D is formed by the matrix unit exactly as those kernels form dP = dO V^T (dO rows times transposed rows of float
// tiles, accumulated over the value dim in 8-column steps from 0): the diagonal of dO O^T. So where a row's output is
// one value row (one allowed key, or a one-hot softmax: O = V_j bit for bit) D equals dP_ij bit for bit and
// dS = P (dP - D) is exactly 0, as in PyTorch's math backward; a differently ordered sum would leave a rounding
// residue there, which the gradients multiply by K and Q.
//
// Grid: x = blocks of 32 rows of the (B, Hq, Lq) row space; each of the 4 SIMD-groups owns 8 rows.
#include <metal_stdlib>
using namespace metal;
#include "attention_params.h"
#include "attention_tiles.h"

[[max_total_threads_per_threadgroup(128)]]
kernel void attention_backward_delta(device const MFA_T* grad_out [[buffer(MFA_ATTN_GRAD_OUT)]],
                                     device const MFA_T* out [[buffer(MFA_ATTN_OUT)]],
                                     device float* delta [[buffer(MFA_ATTN_DELTA)]],
                                     constant AttentionParams& p [[buffer(MFA_ATTN_PARAMS)]],
                                     uint group [[threadgroup_position_in_grid]],
                                     ushort sg [[simdgroup_index_in_threadgroup]],
                                     ushort lane [[thread_index_in_simdgroup]]) {
  const long rows = long(p.varlen ? 1 : p.batch) * p.q_heads * p.q_len;
  const long row0 = long(group) * 32 + sg * 8;
  if (row0 >= rows) return;  // the whole SIMD-group: it holds no row
  const int valid_rows = int(min(rows - row0, long(8)));
  const uint r = mfa_tile_row(lane), c = mfa_tile_col(lane);

  simdgroup_float8x8 products = make_filled_simdgroup_matrix<float, 8, 8>(0.0f);
  #pragma clang loop unroll(full)
  for (uint d = 0; d < MFA_VALUE_DIM / 8; d++) {  // one dO tile at a time: Ev / 8 held tiles would spill at Ev = 512
    simdgroup_float8x8 do_t, o_t;
    mfa_load_row_tiles<8>(&do_t, grad_out + (row0 + r) * p.value_dim + d * 8, int(r) < valid_rows,
                          p.value_dim - d * 8, lane, false);
    mfa_load_transposed_tile(o_t, out + row0 * p.value_dim, valid_rows, p.value_dim, d, lane);
    simdgroup_multiply_accumulate(products, do_t, o_t, products);
  }
  // Each diagonal element (r, r) sits in exactly one lane.
  const float2 e = products.thread_elements();
  if (int(r) < valid_rows && (r == c || r == c + 1)) delta[row0 + r] = r == c ? e.x : e.y;
}
