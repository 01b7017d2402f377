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

}  // namespace

Plan plan_gemm(const GemmProblem& prob) {
  validate(prob);
  Plan plan;
  if (prob.batch == 0 || prob.m == 0 || prob.n == 0) return plan;  // C is empty

  const std::string type = kernel_type(prob.dtype);
  const GemmBlocks blocks = gemm_blocks(parse_gpu_family(prob.family), type != "float");
  const int64_t row_blocks = ceil_div(prob.m, blocks.block_m), col_blocks = ceil_div(prob.n, blocks.block_n);
  const int64_t k_blocks = ceil_div(prob.k, blocks.block_k);

  // Split-K: an output with too few tiles to fill the GPU and a long K gets more threadgroups along K.
  int64_t splits = 1, blocks_per_split = k_blocks;
  const int64_t threadgroups = prob.batch * row_blocks * col_blocks;
  if (threadgroups < kGemmTargetThreadgroups && k_blocks >= 2 * kGemmMinBlocksPerSplit) {
    splits = std::min(ceil_div(kGemmTargetThreadgroups, threadgroups), k_blocks / kGemmMinBlocksPerSplit);
    blocks_per_split = ceil_div(k_blocks, splits);
    splits = ceil_div(k_blocks, blocks_per_split);  // no empty split
  }
  const bool split = splits > 1;

  GemmParams params{};
  for (int i = 0; i < 3; i++) {
    params.a_strides[i] = prob.a_strides[i];
    params.b_strides[i] = prob.b_strides[i];
  }
  params.batch = mfa_u32(prob.batch);
  params.m = mfa_u32(prob.m);
  params.n = mfa_u32(prob.n);
  params.k = mfa_u32(prob.k);
  params.has_bias = prob.has_bias;
  params.accumulate = prob.accumulate;
  params.num_splits = mfa_u32(splits);
  params.blocks_per_split = mfa_u32(blocks_per_split);

  // Buffers a launch never reads are bound to c: Metal wants every declared buffer bound, and an empty a or b
  // (k = 0) may have no buffer at all.
  const std::string a = prob.k > 0 ? "a" : "c", b = prob.k > 0 ? "b" : "c", bias = prob.has_bias ? "bias" : "c";
  const int64_t outputs = prob.batch * prob.m * prob.n;
  if (split) plan.temporaries.push_back({"partial", "float32", splits * outputs});

  Launch gemm;
  gemm.shader = "gemm.metal";
  gemm.kernel = "gemm";
  gemm.defines = {{"MFA_T", type},
                  {"MFA_BLOCK_M", std::to_string(blocks.block_m)},
                  {"MFA_BLOCK_N", std::to_string(blocks.block_n)},
                  {"MFA_BLOCK_K", std::to_string(blocks.block_k)},
                  {"MFA_SPLIT_K", split ? "1" : "0"}};
  gemm.threadgroups = {uint64_t(col_blocks), uint64_t(row_blocks), uint64_t(prob.batch * splits)};
  gemm.threads_per_threadgroup = {MFA_GEMM_SIMDGROUPS_M * MFA_GEMM_SIMDGROUPS_N * 32, 1, 1};
  gemm.threadgroup_memory = uint64_t(blocks.block_k) * (blocks.block_m + blocks.block_n) * sizeof(float);
  gemm.arguments = {tensor_argument(MFA_GEMM_A, a), tensor_argument(MFA_GEMM_B, b),
                    tensor_argument(MFA_GEMM_BIAS, bias), tensor_argument(MFA_GEMM_C, split ? "partial" : "c"),
                    bytes_argument(MFA_GEMM_PARAMS, params)};
  plan.launches.push_back(gemm);

  if (split) {
    Launch reduce;
    reduce.shader = gemm.shader;
    reduce.kernel = "gemm_reduce";
    reduce.defines = gemm.defines;  // the same compiled library as the gemm launch
    reduce.threadgroups = {uint64_t(ceil_div(outputs, MFA_GEMM_REDUCE_THREADS)), 1, 1};
    reduce.threads_per_threadgroup = {MFA_GEMM_REDUCE_THREADS, 1, 1};
    reduce.arguments = {tensor_argument(MFA_GEMM_PARTIAL, "partial"), tensor_argument(MFA_GEMM_BIAS, bias),
                        tensor_argument(MFA_GEMM_C, "c"), bytes_argument(MFA_GEMM_PARAMS, params)};
    plan.launches.push_back(reduce);
  }
  return plan;
}

}  // namespace mfa
