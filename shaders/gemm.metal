// GEMM: C = A x B (+ C) (+ bias) with fp32 accumulation, scheduled by Stream-K.
//
// A threadgroup (2 x 2 SIMD-groups) computes MFA_BLOCK_M x MFA_BLOCK_N blocks of C ("tiles"); each SIMD-group keeps
// its quarter in SG_M / 8 x SG_N / 8 float accumulators. The work is U = tiles x k_blocks units of one tile and one
// MFA_BLOCK_K block of K, in tile order, and threadgroup w of p.workers takes the units [start(w), start(w + 1))
// (gemm_params.h): with one worker per tile that is plain data-parallel tiling; with fewer or more, every worker
// does the same work however the tiles divide over the GPU (Stream-K). A worker writes a tile it covers whole
// through the epilogue, and the part of a tile it shares with other workers to its partial slot (0 for the first
// tile of its range, 1 for the last); gemm_reduce sums a shared tile's slots in worker order, so the result does not
// depend on timing.
//
// Interior steps (a whole tile and a whole K block) read the operands the block table keeps in device memory
// (MFA_A_FROM_DEVICE, MFA_B_FROM_DEVICE) straight into register fragments with 4-element accesses, and stage the
// others through threadgroup memory in the input type; edge steps stage both, zero past the ends of M, N and K, so
// any sizes and strides take the same two paths. Fragments interleave K and N as gemm_tiles.h says.
//
// Defines (chosen by csrc/gemm/plan.cpp): MFA_T (input and output type), MFA_BLOCK_M / _N / _K (SIMD-group tiles of
// whole 8x8 rows and 16-column pairs; K blocks of whole 16-deep chunks), MFA_A_FROM_DEVICE, MFA_B_FROM_DEVICE,
// MFA_BFLOAT_AS_FLOAT (operand_tiles.h).
#include <metal_stdlib>
using namespace metal;
#include "gemm_params.h"
#include "gemm_tiles.h"

constant constexpr uint THREADS = MFA_GEMM_SIMDGROUPS_M * MFA_GEMM_SIMDGROUPS_N * 32;
constant constexpr uint SG_M = MFA_BLOCK_M / MFA_GEMM_SIMDGROUPS_M;  // rows and columns of one SIMD-group's C
constant constexpr uint SG_N = MFA_BLOCK_N / MFA_GEMM_SIMDGROUPS_N;
constant constexpr uint ROW_TILES = SG_M / 8, PAIRS = SG_N / 16, COL_TILES = 2 * PAIRS;
constant constexpr uint TILE_ELEMENTS = MFA_BLOCK_M * MFA_BLOCK_N;
static_assert(SG_M % 8 == 0 && SG_N % 16 == 0 && MFA_BLOCK_K % 16 == 0, "whole row tiles, column pairs, K chunks");

typedef vec<MFA_T, 4> mfa_vec4;

// First unit of worker w.
inline ulong worker_start(uint w, constant GemmParams& p) { return w * p.units_per_worker + min(w, p.longer_workers); }

// The worker whose range holds `unit`.
inline uint worker_of(ulong unit, constant GemmParams& p) {
  const ulong longer = (p.units_per_worker + 1) * p.longer_workers;  // units of the workers that take one more
  return unit < longer ? uint(unit / (p.units_per_worker + 1))
                       : p.longer_workers + uint((unit - longer) / p.units_per_worker);
}

// Tile t (column blocks fastest, then row blocks, then batch): its place and how much of it lies inside C.
struct GemmTile {
  uint batch, row0, col0, rows, cols;
};
inline GemmTile gemm_tile(ulong t, constant GemmParams& p) {
  GemmTile tile;
  tile.col0 = uint(t % p.col_blocks) * MFA_BLOCK_N;
  tile.row0 = uint(t / p.col_blocks % p.row_blocks) * MFA_BLOCK_M;
  tile.batch = uint(t / p.col_blocks / p.row_blocks);
  tile.rows = min(uint(MFA_BLOCK_M), p.m - tile.row0);
  tile.cols = min(uint(MFA_BLOCK_N), p.n - tile.col0);
  return tile;
}

// Adds K block `block` of the tile to this SIMD-group's accumulators. A_DEVICE / B_DEVICE: that operand is read
// straight from device memory (interior steps only); the others are staged first.
template <bool A_DEVICE, bool B_DEVICE>
inline void multiply_block(thread simdgroup_float8x8* acc, device const MFA_T* a, device const MFA_T* b,
                           threadgroup MFA_T* a_tile, threadgroup MFA_T* b_tile, constant GemmParams& p,
                           GemmTile tile, uint block, uint sg_row, uint sg_col, ushort lane, ushort tid) {
  const uint k0 = block * MFA_BLOCK_K, depth = min(uint(MFA_BLOCK_K), p.k - k0);
  device const MFA_T* a_block = a + long(tile.batch) * p.a_strides[0] + long(tile.row0) * p.a_strides[1] +
                                long(k0) * p.a_strides[2];
  device const MFA_T* b_block = b + long(tile.batch) * p.b_strides[0] + long(k0) * p.b_strides[1] +
                                long(tile.col0) * p.b_strides[2];
  if (!A_DEVICE || !B_DEVICE) {
    threadgroup_barrier(mem_flags::mem_threadgroup);  // every SIMD-group is done with the previous tiles
    if (!A_DEVICE) {
      mfa_stage_block<MFA_BLOCK_M, MFA_BLOCK_K, THREADS>(a_tile, a_block, p.a_strides[1], p.a_strides[2], tile.rows,
                                                         depth, tid, p.copy_modes & 3);
    }
    if (!B_DEVICE) {
      mfa_stage_block<MFA_BLOCK_K, MFA_BLOCK_N, THREADS>(b_tile, b_block, p.b_strides[1], p.b_strides[2], depth,
                                                         tile.cols, tid, p.copy_modes >> 2 & 3);
    }
    threadgroup_barrier(mem_flags::mem_threadgroup);
  }
  for (uint kk = 0; kk < depth; kk += 16) {  // chunks past `depth` would multiply the tiles' zeros
    mfa_operand_tile a_frag[ROW_TILES * 2], b_frag[2 * COL_TILES];
    if (A_DEVICE) {
      mfa_load_a_chunk<ROW_TILES>(a_frag, reinterpret_cast<device const mfa_vec4*>(a_block + long(sg_row) * p.a_strides[1] + kk),
                                  ulong(p.a_strides[1] / 4), lane);
    } else {
      mfa_load_a_chunk<ROW_TILES>(a_frag, reinterpret_cast<threadgroup const mfa_vec4*>(a_tile + sg_row * MFA_BLOCK_K + kk),
                                  MFA_BLOCK_K / 4, lane);
    }
    if (B_DEVICE) {
      mfa_load_b_chunk<PAIRS>(b_frag, reinterpret_cast<device const mfa_vec4*>(b_block + long(kk) * p.b_strides[1] + sg_col),
                              ulong(p.b_strides[1] / 4), lane);
    } else {
      mfa_load_b_chunk<PAIRS>(b_frag, reinterpret_cast<threadgroup const mfa_vec4*>(b_tile + kk * MFA_BLOCK_N + sg_col),
                              MFA_BLOCK_N / 4, lane);
    }
    #pragma clang loop unroll(full)
    for (uint f = 0; f < 2; f++) {
      #pragma clang loop unroll(full)
      for (uint i = 0; i < ROW_TILES; i++) {
        #pragma clang loop unroll(full)
        for (uint j = 0; j < COL_TILES; j++) {
          simdgroup_multiply_accumulate(acc[i * COL_TILES + j], a_frag[2 * i + f], b_frag[f * COL_TILES + j],
                                        acc[i * COL_TILES + j]);
        }
      }
    }
  }
}

[[max_total_threads_per_threadgroup(MFA_GEMM_SIMDGROUPS_M * MFA_GEMM_SIMDGROUPS_N * 32)]]
kernel void gemm(device const MFA_T* a [[buffer(MFA_GEMM_A)]],
                 device const MFA_T* b [[buffer(MFA_GEMM_B)]],
                 device const MFA_T* bias [[buffer(MFA_GEMM_BIAS)]],
                 device MFA_T* c [[buffer(MFA_GEMM_C)]],
                 constant GemmParams& p [[buffer(MFA_GEMM_PARAMS)]],
                 device float* partial [[buffer(MFA_GEMM_PARTIAL)]],
                 uint worker [[threadgroup_position_in_grid]],
                 ushort sg [[simdgroup_index_in_threadgroup]],
                 ushort lane [[thread_index_in_simdgroup]],
                 ushort tid [[thread_index_in_threadgroup]]) {
  // Staged tiles in the input type; uint4 storage keeps them on 16 bytes for the 4-element fragment reads.
  threadgroup uint4 a_storage[MFA_BLOCK_M * MFA_BLOCK_K * sizeof(MFA_T) / 16];
  threadgroup uint4 b_storage[MFA_BLOCK_K * MFA_BLOCK_N * sizeof(MFA_T) / 16];
  threadgroup MFA_T* a_tile = reinterpret_cast<threadgroup MFA_T*>(a_storage);
  threadgroup MFA_T* b_tile = reinterpret_cast<threadgroup MFA_T*>(b_storage);
  const uint sg_row = sg / MFA_GEMM_SIMDGROUPS_N * SG_M, sg_col = sg % MFA_GEMM_SIMDGROUPS_N * SG_N;
  const uint tile_row = mfa_tile_row(lane), tile_col = mfa_tile_col(lane);

  const ulong first = worker_start(worker, p), end = worker_start(worker + 1, p);
  for (ulong unit = first; unit < end;) {  // one tile of the range a pass
    const ulong t = unit / p.k_blocks;
    const uint block_begin = uint(unit % p.k_blocks);
    const uint block_end = uint(min(ulong(p.k_blocks), block_begin + (end - unit)));
    const GemmTile tile = gemm_tile(t, p);
    const bool whole_tile = tile.rows == MFA_BLOCK_M && tile.cols == MFA_BLOCK_N;

    simdgroup_float8x8 acc[ROW_TILES * COL_TILES];
    #pragma clang loop unroll(full)
    for (uint i = 0; i < ROW_TILES * COL_TILES; i++) acc[i] = make_filled_simdgroup_matrix<float, 8, 8>(0.0f);
    for (uint block = block_begin; block < block_end; block++) {
      if (whole_tile && (block + 1) * MFA_BLOCK_K <= p.k) {  // uniform over the threadgroup
        multiply_block<MFA_A_FROM_DEVICE, MFA_B_FROM_DEVICE>(acc, a, b, a_tile, b_tile, p, tile, block, sg_row,
                                                             sg_col, lane, tid);
      } else {
        multiply_block<false, false>(acc, a, b, a_tile, b_tile, p, tile, block, sg_row, sg_col, lane, tid);
      }
    }

    if (block_begin == 0 && block_end == p.k_blocks) {  // the whole tile: the epilogue
      #pragma clang loop unroll(full)
      for (uint i = 0; i < ROW_TILES; i++) {
        const uint row = sg_row + i * 8 + tile_row;
        if (row >= tile.rows) continue;
        #pragma clang loop unroll(full)
        for (uint q = 0; q < PAIRS; q++) {
          const uint col = sg_col + q * 16 + 2 * tile_col;
          if (col >= tile.cols) continue;
          const long index = (long(tile.batch) * p.m + tile.row0 + row) * p.n + tile.col0 + col;
          mfa_store_c4(c, bias, p, index, tile.col0 + col, tile.cols - col,
                       mfa_pair_elements(acc[i * COL_TILES + 2 * q], acc[i * COL_TILES + 2 * q + 1]));
        }
      }
    } else {  // part of a shared tile: this worker's slot
      device float* slot = partial + (ulong(worker) * 2 + (unit == first ? 0 : 1)) * TILE_ELEMENTS;
      #pragma clang loop unroll(full)
      for (uint i = 0; i < ROW_TILES; i++) {
        #pragma clang loop unroll(full)
        for (uint q = 0; q < PAIRS; q++) {
          const uint index = (sg_row + i * 8 + tile_row) * MFA_BLOCK_N + sg_col + q * 16 + 2 * tile_col;
          *reinterpret_cast<device float4*>(slot + index) =
              mfa_pair_elements(acc[i * COL_TILES + 2 * q], acc[i * COL_TILES + 2 * q + 1]);
        }
      }
    }
    unit += block_end - block_begin;
  }
}

// One threadgroup per boundary between workers (w - 1, w), w = 1 + boundary: the tile the boundary falls inside, if
// any, is summed by the first boundary inside it, over its workers' slots in worker order, then the epilogue.
[[max_total_threads_per_threadgroup(MFA_GEMM_REDUCE_THREADS)]]
kernel void gemm_reduce(device const float* partial [[buffer(MFA_GEMM_PARTIAL)]],
                        device const MFA_T* bias [[buffer(MFA_GEMM_BIAS)]],
                        device MFA_T* c [[buffer(MFA_GEMM_C)]],
                        constant GemmParams& p [[buffer(MFA_GEMM_PARAMS)]],
                        uint boundary [[threadgroup_position_in_grid]],
                        ushort tid [[thread_index_in_threadgroup]]) {
  const uint w = boundary + 1;
  const ulong start = worker_start(w, p), t = start / p.k_blocks, tile_start = t * p.k_blocks;
  if (start == tile_start || worker_start(w - 1, p) > tile_start) return;  // on a tile edge, or not the first
  const uint first = worker_of(tile_start, p), last = worker_of(tile_start + p.k_blocks - 1, p);
  const GemmTile tile = gemm_tile(t, p);
  for (uint e = tid; e < TILE_ELEMENTS / 4; e += MFA_GEMM_REDUCE_THREADS) {
    const uint row = e / (MFA_BLOCK_N / 4), col = e % (MFA_BLOCK_N / 4) * 4;
    if (row >= tile.rows || col >= tile.cols) continue;
    float4 sum = 0.0f;
    for (uint v = first; v <= last; v++) {
      const uint slot = worker_start(v, p) / p.k_blocks == t ? 0 : 1;
      sum += *reinterpret_cast<device const float4*>(partial + (ulong(v) * 2 + slot) * TILE_ELEMENTS +
                                                     row * MFA_BLOCK_N + col);
    }
    const long index = (long(tile.batch) * p.m + tile.row0 + row) * p.n + tile.col0 + col;
    mfa_store_c4(c, bias, p, index, tile.col0 + col, tile.cols - col, sum);
  }
}
