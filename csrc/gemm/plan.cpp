#include "gemm/plan.h"

#include <algorithm>
#include <limits>
#include <stdexcept>

#include "gemm/block_table.h"
#include "gemm_params.h"
#include "gpu_family.h"

namespace mfa {
namespace {

int64_t ceil_div(int64_t x, int64_t m) { return (x + m - 1) / m; }

void require(bool ok, const std::string& message) {
  if (!ok) throw std::invalid_argument(message);
}

// The MSL type of a tensor dtype.
std::string kernel_type(const std::string& dtype) {
  if (dtype == "float32") return "float";
  if (dtype == "float16") return "half";
  if (dtype == "bfloat16") return "bfloat";
  throw std::invalid_argument("dtype must be float32, float16 or bfloat16 for the Metal GEMM, got " + dtype);
}

void validate(const GemmProblem& p) {
  kernel_type(p.dtype);
  parse_gpu_family(p.family);
  constexpr int64_t kMax = std::numeric_limits<int32_t>::max();  // sizes are 32-bit in the kernels
  for (auto [name, n] : {std::pair{"batch", p.batch}, std::pair{"m", p.m}, std::pair{"n", p.n}, std::pair{"k", p.k}}) {
    require(n >= 0 && n <= kMax,
            std::string(name) + " must be in [0, 2^31) for the Metal GEMM, got " + std::to_string(n));
  }
  for (auto [name, strides] : {std::pair{"a_strides", p.a_strides}, std::pair{"b_strides", p.b_strides}}) {
    for (int64_t s : strides) require(s >= 0, std::string(name) + " must be >= 0, got " + std::to_string(s));
  }
}

// How an operand with element strides (batch, rows, cols) that begins on 16 bytes (`aligned`) is staged: 16 bytes
// along rows need contiguous rows on 16 bytes, 4 elements down columns contiguous columns on 4 elements.
mfa_u32 copy_mode(const std::array<int64_t, 3>& s, bool aligned, int64_t element_bytes) {
  auto on = [&](int64_t stride, int64_t bytes) { return stride * element_bytes % bytes == 0; };
  if (!aligned || !on(s[0], 16)) return MFA_GEMM_COPY_SCALAR;
  if (s[2] == 1 && on(s[1], 16)) return MFA_GEMM_COPY_ROWS;
  if (s[1] == 1 && s[2] % 4 == 0) return MFA_GEMM_COPY_COLUMNS;
  return MFA_GEMM_COPY_SCALAR;
}

// Whether fragments can be read straight from an operand: contiguous rows whose 4-element groups are aligned.
bool reads_rows_of_4(const std::array<int64_t, 3>& s, bool aligned) {
  return aligned && s[2] == 1 && s[1] % 4 == 0 && s[0] % 4 == 0;
}

// The first unit of each worker, as gemm.metal computes it.
int64_t worker_start(int64_t w, int64_t per_worker, int64_t longer) { return w * per_worker + std::min(w, longer); }

}  // namespace

Plan plan_gemm(const GemmProblem& prob) {
  validate(prob);
  Plan plan;
  if (prob.batch == 0 || prob.m == 0 || prob.n == 0) return plan;  // C is empty

  const std::string type = kernel_type(prob.dtype);
  const int64_t element_bytes = type == "float" ? 4 : 2;
  const GpuFamily family = parse_gpu_family(prob.family);
  const GemmBlocks blocks = gemm_blocks(family, element_bytes == 2);
  const int64_t row_blocks = ceil_div(prob.m, blocks.block_m), col_blocks = ceil_div(prob.n, blocks.block_n);
  const int64_t k_blocks = std::max<int64_t>(1, ceil_div(prob.k, blocks.block_k));
  const int64_t tiles = prob.batch * row_blocks * col_blocks, units = tiles * k_blocks;
  require(tiles < (int64_t(1) << 32), "the output has too many tiles for the Metal GEMM's grid: batch x ceil(m / " +
                                          std::to_string(blocks.block_m) + ") x ceil(n / " +
                                          std::to_string(blocks.block_n) + ") must be < 2^32");

  // Stream-K: an output that leaves the GPU partly idle (fewer tiles than it runs at once, or a few waves with a
  // part-filled last one) is spread evenly over kGemmConcurrentThreadgroups workers; otherwise a worker per tile.
  int64_t workers = tiles;
  constexpr int64_t kConcurrent = kGemmConcurrentThreadgroups;
  if (tiles % kConcurrent != 0 && tiles < kGemmStreamKWaves * kConcurrent) {
    const int64_t stream = tiles < kConcurrent ? std::min(kConcurrent, units / kGemmMinBlocksPerWorker) : kConcurrent;
    if (stream > tiles || tiles > kConcurrent) workers = stream;
  }
  const int64_t per_worker = units / workers, longer = units % workers;
  bool shared_tiles = false;  // a worker boundary inside a tile: partials and gemm_reduce
  for (int64_t w = 1; w < workers && !shared_tiles; w++) {
    shared_tiles = worker_start(w, per_worker, longer) % k_blocks != 0;
  }

  GemmParams params{};
  for (int i = 0; i < 3; i++) {
    params.a_strides[i] = prob.a_strides[i];
    params.b_strides[i] = prob.b_strides[i];
  }
  params.units_per_worker = mfa_u64(per_worker);
  params.longer_workers = mfa_u32(longer);
  params.workers = mfa_u32(workers);
  params.batch = mfa_u32(prob.batch);
  params.m = mfa_u32(prob.m);
  params.n = mfa_u32(prob.n);
  params.k = mfa_u32(prob.k);
  params.row_blocks = mfa_u32(row_blocks);
  params.col_blocks = mfa_u32(col_blocks);
  params.k_blocks = mfa_u32(k_blocks);
  params.has_bias = prob.has_bias;
  params.accumulate = prob.accumulate;
  params.copy_modes = copy_mode(prob.a_strides, prob.a_aligned, element_bytes) |
                      copy_mode(prob.b_strides, prob.b_aligned, element_bytes) << 2;
  params.vector_c = prob.c_aligned && prob.n % 4 == 0 && (!prob.has_bias || prob.bias_aligned);

  // Buffers a launch never reads are bound to c: Metal wants every declared buffer bound, and an empty a or b
  // (k = 0) may have no buffer at all.
  const std::string a = prob.k > 0 ? "a" : "c", b = prob.k > 0 ? "b" : "c", bias = prob.has_bias ? "bias" : "c";
  const std::string partial = shared_tiles ? "partial" : "c";
  if (shared_tiles) {
    plan.temporaries.push_back({"partial", "float32", workers * 2 * int64_t(blocks.block_m) * blocks.block_n});
  }

  Launch gemm;
  gemm.shader = "gemm.metal";
  gemm.kernel = "gemm";
  gemm.defines = {{"MFA_T", type},
                  {"MFA_BLOCK_M", std::to_string(blocks.block_m)},
                  {"MFA_BLOCK_N", std::to_string(blocks.block_n)},
                  {"MFA_BLOCK_K", std::to_string(blocks.block_k)},
                  {"MFA_A_FROM_DEVICE", blocks.a_from_device && reads_rows_of_4(prob.a_strides, prob.a_aligned) ? "1" : "0"},
                  {"MFA_B_FROM_DEVICE", blocks.b_from_device && reads_rows_of_4(prob.b_strides, prob.b_aligned) ? "1" : "0"},
                  {"MFA_BFLOAT_AS_FLOAT", type == "bfloat" && !has_bfloat_arithmetic(family) ? "1" : "0"}};
  gemm.threadgroups = {uint64_t(workers), 1, 1};
  gemm.threads_per_threadgroup = {MFA_GEMM_SIMDGROUPS_M * MFA_GEMM_SIMDGROUPS_N * 32, 1, 1};
  gemm.threadgroup_memory = uint64_t(blocks.block_k) * (blocks.block_m + blocks.block_n) * element_bytes;
  gemm.arguments = {tensor_argument(MFA_GEMM_A, a), tensor_argument(MFA_GEMM_B, b),
                    tensor_argument(MFA_GEMM_BIAS, bias), tensor_argument(MFA_GEMM_C, "c"),
                    bytes_argument(MFA_GEMM_PARAMS, params), tensor_argument(MFA_GEMM_PARTIAL, partial)};
  plan.launches.push_back(gemm);

  if (shared_tiles) {
    Launch reduce;
    reduce.shader = gemm.shader;
    reduce.kernel = "gemm_reduce";
    reduce.defines = gemm.defines;  // the same compiled library as the gemm launch
    reduce.threadgroups = {uint64_t(workers - 1), 1, 1};  // one per boundary between workers
    reduce.threads_per_threadgroup = {MFA_GEMM_REDUCE_THREADS, 1, 1};
    reduce.arguments = {tensor_argument(MFA_GEMM_PARTIAL, "partial"), tensor_argument(MFA_GEMM_BIAS, bias),
                        tensor_argument(MFA_GEMM_C, "c"), bytes_argument(MFA_GEMM_PARAMS, params)};
    plan.launches.push_back(reduce);
  }
  return plan;
}

}  // namespace mfa
