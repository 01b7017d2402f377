// Unit tests of the portable C++ (the planners and the shader-source expansion), built without torch or pybind by
// tests/test_portable_cpp.py with GCC and libstdc++ and with clang and libc++ (Apple's standard library), so that
// differences between the two libraries show on Linux. Expected plan values are worked out by hand from the block
// tables (csrc/attention/block_table.cpp, csrc/gemm/block_table.cpp) in the comments next to them.
//
// Usage: portable_test SHADER_DIR SCRATCH_DIR. Prints the standard library it was built with, then one line per
// failed check; exits non-zero if any check failed.
#include <array>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <exception>
#include <filesystem>
#include <fstream>
#include <functional>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "attention/backward_plan.h"
#include "attention/block_table.h"
#include "attention/forward_plan.h"
#include "attention/registers.h"
#include "gemm/block_table.h"
#include "gemm/plan.h"
#include "gemm_params.h"
#include "gpu_family.h"
#include "kv_cache/plan.h"
#include "kv_cache_params.h"
#include "launch_plan.h"
#include "shader_source.h"

namespace {

using namespace mfa;

int failures = 0;

void fail(const char* file, int line, const std::string& message) {
  ++failures;
  std::fprintf(stderr, "%s:%d: %s\n", file, line, message.c_str());
}

template <typename T>
std::string str(const T& value) {
  std::ostringstream out;
  out << value;
  return out.str();
}

std::string str(const std::array<uint64_t, 3>& v) {
  return "{" + str(v[0]) + ", " + str(v[1]) + ", " + str(v[2]) + "}";
}

template <typename A, typename B>
void check_eq(const A& actual, const B& expected, const char* what, const char* file, int line) {
  if (!(actual == expected)) {
    fail(file, line, std::string(what) + ": got " + str(actual) + ", expected " + str(expected));
  }
}

#define CHECK(cond)                                                     \
  do {                                                                  \
    if (!(cond)) fail(__FILE__, __LINE__, "CHECK failed: " #cond);      \
  } while (false)
#define CHECK_EQ(actual, expected) check_eq((actual), (expected), #actual, __FILE__, __LINE__)

// `call` throws an exception of type E whose message contains `part`.
template <typename E>
void check_throws(const std::function<void()>& call, const std::string& part, const char* file, int line) {
  try {
    call();
  } catch (const E& e) {
    if (std::string(e.what()).find(part) == std::string::npos) {
      fail(file, line, "message '" + std::string(e.what()) + "' lacks '" + part + "'");
    }
    return;
  } catch (const std::exception& e) {
    fail(file, line, "threw another exception type: " + std::string(e.what()));
    return;
  }
  fail(file, line, "did not throw (expected: " + part + ")");
}
#define CHECK_THROWS(type, call, part) check_throws<type>([&] { call; }, part, __FILE__, __LINE__)

using Grid = std::array<uint64_t, 3>;

std::string define(const Launch& launch, const std::string& name) {
  for (const auto& [key, value] : launch.defines) {
    if (key == name) return value;
  }
  return "<unset>";
}

// The tensor bound at [[buffer(index)]]; "<unbound>" if no argument has that index.
std::string bound_tensor(const Launch& launch, uint32_t index) {
  for (const Argument& a : launch.arguments) {
    if (a.index == index) return a.tensor;
  }
  return "<unbound>";
}

// The params struct a launch passes as bytes at [[buffer(index)]].
template <typename Params>
Params bound_params(const Launch& launch, uint32_t index) {
  Params params{};
  for (const Argument& a : launch.arguments) {
    if (a.index == index && a.tensor.empty() && a.bytes.size() == sizeof(Params)) {
      std::memcpy(&params, a.bytes.data(), sizeof(Params));
      return params;
    }
  }
  throw std::runtime_error("no params of the expected size at buffer " + std::to_string(index));
}

int64_t temporary_numel(const Plan& plan, const std::string& name) {
  for (const Temporary& t : plan.temporaries) {
    if (t.name == name) return t.numel;
  }
  return -1;
}

void test_gpu_family() {
  CHECK(parse_gpu_family("apple7") == GpuFamily::Apple7);
  CHECK(parse_gpu_family("apple10") == GpuFamily::Apple10);
  CHECK(!has_dynamic_caching(GpuFamily::Apple8));
  CHECK(has_dynamic_caching(GpuFamily::Apple9));
  CHECK_THROWS(std::invalid_argument, parse_gpu_family("apple6"), "gpu family must be one of");
}

void test_block_tables() {
  CHECK_EQ(attention_forward_blocks(GpuFamily::Apple7, 64, 2).block_k, 128u);
  CHECK_EQ(attention_forward_blocks(GpuFamily::Apple7, 64, 4).block_k, 64u);  // float: the tile stays 16 KiB
  CHECK_EQ(attention_forward_blocks(GpuFamily::Apple8, 72, 2).block_k, 64u);  // the 128 row
  CHECK_EQ(attention_forward_blocks(GpuFamily::Apple9, 32, 4).block_q, 16u);
  CHECK_EQ(attention_forward_blocks(GpuFamily::Apple9, 32, 4).block_k, 128u);
  CHECK_EQ(attention_forward_blocks(GpuFamily::Apple10, 256, 4).block_k, 16u);
  CHECK_EQ(attention_backward_blocks(GpuFamily::Apple9, 129).dq_block_k, 16u);  // the 256 row
  CHECK_EQ(attention_backward_blocks(GpuFamily::Apple7, 512).dkdv_block_q, 8u);
  CHECK_EQ(gemm_blocks(GpuFamily::Apple7, false).block_k, 32u);
  CHECK_EQ(gemm_blocks(GpuFamily::Apple8, true).block_m, 64u);
  CHECK(gemm_blocks(GpuFamily::Apple7, false).a_from_device && !gemm_blocks(GpuFamily::Apple7, true).a_from_device);
  CHECK(gemm_blocks(GpuFamily::Apple9, true).b_from_device && !gemm_blocks(GpuFamily::Apple8, false).b_from_device);
}

void test_register_estimates() {
  // float16, E = Ev = 128, everything held: 24 + K 16 + V 16 + dK 32 + dV 32 + S 2 + (dP 2 + dO 1) = 125.
  AttentionTileShape half128;
  half128.head_dim = half128.value_dim = 128;
  CHECK_EQ(dkdv_registers(half128, false, false, 1), 125u);
  CHECK_EQ(dkdv_registers(half128, true, true, 1), 24u + 32 + 32 + 2 + 2 + 1 + 1);  // a V and a dO tile in use
  // The forward with 64-key blocks: 24 + Q 16 + O 32 + S 16 + zeroing a score tile 2 = 90; Q streamed: 24 + O 32 +
  // S 16 + a Q and a K tile 2 = 74.
  half128.block_k = 64;
  CHECK_EQ(forward_registers(half128, false, 128), 90u);
  CHECK_EQ(forward_registers(half128, true, 128), 74u);
  // O in two column slices, a SIMD-group each: O 16 + the partial scores of the block's 64 keys 16 + a P and a V tile
  // 3 = 59.
  CHECK_EQ(forward_registers(half128, true, 64), 24u + 16 + 16 + 3);
  // float32 tiles take 2 registers; dQ: 24 + Q 32 + dO 32 + dQ 32 + S, dP 4 + K 2 = 126.
  AttentionTileShape float128 = half128;
  float128.operand_registers = float128.held_registers = 2;
  CHECK_EQ(dq_registers(float128, false, false, 128), 126u);
  // dQ in two column slices, Q and dO streamed: 24 + dQ 16 + dP of the slice's 32 keys 8 and the partial products of
  // the block's 64 keys 16 + a dO and a V tile 4 = 68.
  CHECK_EQ(dq_registers(float128, true, true, 64), 24u + 16 + 8 + 16 + 4);
}

void test_dq_slices() {
  // half, 64-key blocks, two slices of dQ. E = Ev = 512: the slice's alternate tiles of dO held would take 24 + dO 32
  // + dQ 64 + dP 8 + partial products 16 + a dS and a K tile 3 = 147, so both are streamed: 115.
  AttentionTileShape shape;
  shape.head_dim = shape.value_dim = 512;
  shape.block_k = 64;
  DqSlices slices = dq_slices(shape);
  CHECK_EQ(slices.dq_dim, 256u);
  CHECK(slices.stream_q && slices.stream_do);
  CHECK_EQ(dq_registers(shape, false, true, 256), 147u);
  CHECK_EQ(dq_registers(shape, true, true, 256), 115u);
  // E = Ev = 400: the larger (Q, as E = Ev) is streamed, dO held: 24 + dO 25 + dQ 50 + 24 + 3 = 126.
  shape.head_dim = shape.value_dim = 400;
  slices = dq_slices(shape);
  CHECK_EQ(slices.dq_dim, 200u);
  CHECK(slices.stream_q && !slices.stream_do);
  CHECK_EQ(dq_registers(shape, true, false, 200), 126u);
  // E = 576, Ev = 512: 2 slices of 288, both streamed: 24 + dQ 72 + 24 + 3 = 123.
  shape.head_dim = 576;
  shape.value_dim = 512;
  slices = dq_slices(shape);
  CHECK_EQ(slices.dq_dim, 288u);
  CHECK(slices.stream_q && slices.stream_do);
  CHECK_EQ(dq_registers(shape, true, true, 288), 123u);
}

void test_dkdv_slices() {
  // half, 64-query blocks: the fewest slices within the limit, K and V held while they fit.
  struct Case {
    uint32_t head_dim, value_dim, slices, registers;
  };
  const Case cases[] = {
      // 2 slices would take 24 + dK, dV 128 + S^T, P^T, dP^T 24 + a P^T and a Q tile 3 = 179 with K and V streamed,
      // so 4: 24 + dK, dV 64 + S^T, P^T, dP^T 12 + 3 = 103 (V held: + 64).
      {512, 512, 4, 103},
      // 2 slices with both streamed, before 4 holding V (24 + V 32 + 32 + 12 + 3 = 103).
      {256, 256, 2, 24 + 64 + 24 + 3},
      // 4 slices of 144 and 128 columns, both streamed: 24 + (18 + 16) x 2 + 12 + 3.
      {576, 512, 4, 107},
  };
  for (const Case& c : cases) {
    AttentionTileShape shape;
    shape.head_dim = c.head_dim;
    shape.value_dim = c.value_dim;
    shape.block_k = 64;
    const DkDvSlices slices = dkdv_slices(shape);
    CHECK_EQ(slices.slices, c.slices);
    CHECK(slices.stream_k && slices.stream_v);
    CHECK_EQ(dkdv_registers(shape, true, true, c.slices), c.registers);
  }
  CHECK_EQ(slice_width(576, 4), 144u);
  CHECK_EQ(slice_width(8, 2), 8u);  // the second of two slices of 8 columns holds none
}

void test_sliced_forward_tiles() {
  // K in the fewest chunks of whole tiles within 16 KiB; V in the longest run of key tiles dividing the block.
  CHECK_EQ(staged_k_chunks(128, 64, 2), 1u);  // 16 KiB whole
  CHECK_EQ(staged_k_chunks(512, 64, 2), 4u);
  CHECK_EQ(staged_k_chunks(576, 64, 2), 5u);
  CHECK_EQ(staged_k_chunk_width(576, 5), 120u);  // 4 chunks of 120 columns and one of 96
  CHECK_EQ(staged_k_chunk_width(328, 3), 112u);  // 41 tiles: 14, 14 and 13
  // Sliced dK/dV at 16 keys and 64 queries of half: 30000 - 4096 of scores - 768 of stats leave 25136 bytes, 196
  // columns: E = 576 in 3 chunks of 192, Ev = 512 in 3 of 176 (two of 176 and one of 160).
  CHECK_EQ(staged_chunks(576, 64, 2, 25136), 3u);
  CHECK_EQ(staged_chunks(512, 64, 2, 25136), 3u);
  CHECK_EQ(staged_k_chunk_width(512, 3), 176u);
  CHECK_EQ(staged_chunks(576, 64, 2, 24575), 4u);  // a byte short of 3 chunks of 192
  CHECK_EQ(staged_chunks(64, 64, 2, 100), 8u);     // none fits: chunks of one tile
  CHECK_EQ(staged_v_rows(512, 64, 2), 16u);
  CHECK_EQ(staged_v_rows(512, 64, 4), 8u);
  CHECK_EQ(staged_v_rows(64, 128, 2), 128u);
  // Two slices of O, Q's alternate tiles held where they fit. E = Ev = 512: held, 24 + Q 32 + O 64 + S 16 + a P and
  // a V tile 3 = 139, so Q is streamed: 107.
  AttentionTileShape shape;
  shape.head_dim = shape.value_dim = 512;
  shape.block_k = 64;
  CHECK_EQ(forward_registers(shape, false, 256), 139u);
  CHECK_EQ(forward_registers(shape, true, 256), 107u);
  CHECK_EQ(forward_slices(shape).first, 256u);
  CHECK_EQ(forward_slices(shape).second, true);
  shape.head_dim = 576;
  CHECK_EQ(forward_slices(shape).first, 256u);
  CHECK_EQ(forward_slices(shape).second, true);
  shape.head_dim = shape.value_dim = 320;  // 2 slices of 160 hold Q: 24 + Q 20 + O 40 + S 16 + 3 = 103
  CHECK_EQ(forward_registers(shape, false, 160), 103u);
  CHECK_EQ(forward_slices(shape).first, 160u);
  CHECK_EQ(forward_slices(shape).second, false);
}

void test_attention_forward_plan() {
  // Apple7, dims 96/128 -> tile dim 128 -> blocks {32, 32}. 100 rows -> 4 query blocks; 50 keys -> 2 key blocks,
  // too few to split.
  AttentionProblem p;
  p.family = "apple7";
  p.batch = 1, p.q_heads = 4, p.kv_heads = 4, p.q_len = 100, p.kv_len = 50, p.head_dim = 96, p.value_dim = 128;
  Plan plan = plan_attention_forward(p);
  CHECK_EQ(plan.launches.size(), 1u);
  CHECK(plan.temporaries.empty());
  const Launch& f = plan.launches.at(0);
  CHECK_EQ(f.shader, "attention_forward.metal");
  CHECK_EQ(f.kernel, "attention_forward");
  CHECK_EQ(f.threadgroups, (Grid{4, 4, 1}));
  CHECK_EQ(f.threads_per_threadgroup, (Grid{128, 1, 1}));  // 32 rows = 4 SIMD-groups
  CHECK_EQ(f.threadgroup_memory, 32u * 128 * 4);
  CHECK_EQ(define(f, "MFA_T"), "float");
  CHECK_EQ(define(f, "MFA_HEAD_DIM"), "96");
  CHECK_EQ(define(f, "MFA_VALUE_DIM"), "128");
  CHECK_EQ(define(f, "MFA_BLOCK_Q"), "32");
  CHECK_EQ(define(f, "MFA_SPLIT_KV"), "0");
  CHECK_EQ(define(f, "MFA_MASK_T"), "<unset>");
  CHECK_EQ(bound_tensor(f, MFA_ATTN_MASK), "q");  // unused buffers are bound to q
  CHECK_EQ(bound_tensor(f, MFA_ATTN_OUT), "out");
  CHECK_EQ(bound_params<AttentionParams>(f, MFA_ATTN_PARAMS).num_splits, 1u);
}

// Decoding with GQA: 2 queries x group 4 = 8 packed rows; Apple9, tile dim 64 -> blocks {16, 64}.
AttentionProblem decoding_problem() {
  AttentionProblem p;
  p.dtype = "float16";
  p.batch = 1, p.q_heads = 8, p.kv_heads = 2, p.q_len = 2, p.kv_len = 4096, p.head_dim = 64, p.value_dim = 48;
  p.mask = "float32";
  p.mask_strides = {0, 0, 4096, 1};
  return p;
}

void test_attention_forward_split_kv() {
  // 1 query block of 8 rows x 2 KV heads = 2 threadgroups; 32 key blocks of 128: splits = min(ceil(128 / 2), 32 / 4)
  // = 8 of 4 blocks each.
  Plan plan = plan_attention_forward(decoding_problem());
  CHECK_EQ(plan.launches.size(), 2u);
  const Launch& f = plan.launches.at(0);
  CHECK_EQ(f.threadgroups, (Grid{1, 2, 8}));
  CHECK_EQ(f.threads_per_threadgroup, (Grid{32, 1, 1}));
  CHECK_EQ(define(f, "MFA_BLOCK_Q"), "8");
  CHECK_EQ(define(f, "MFA_BLOCK_K"), "128");
  CHECK_EQ(define(f, "MFA_SPLIT_KV"), "1");
  CHECK_EQ(define(f, "MFA_MASK_KIND"), std::to_string(MFA_MASK_FLOAT));
  CHECK_EQ(define(f, "MFA_MASK_T"), "float");
  CHECK_EQ(bound_tensor(f, MFA_ATTN_OUT), "partial_out");
  CHECK_EQ(bound_tensor(f, MFA_ATTN_STATS), "partial_stats");
  const AttentionParams params = bound_params<AttentionParams>(f, MFA_ATTN_PARAMS);
  CHECK_EQ(params.num_splits, 8u);
  CHECK_EQ(params.blocks_per_split, 4u);
  CHECK_EQ(params.group, 4u);
  CHECK_EQ(params.mask_strides[2], 4096);
  CHECK_EQ(temporary_numel(plan, "partial_out"), 8 * 2 * 8 * 48);  // B Hq Lq splits Ev
  CHECK_EQ(temporary_numel(plan, "partial_stats"), 2 * 8 * 2 * 8);
  const Launch& combine = plan.launches.at(1);
  CHECK_EQ(combine.kernel, "attention_combine");
  CHECK_EQ(combine.threadgroups, (Grid{2, 8, 1}));  // one per (row, q head, sequence)
  CHECK_EQ(bound_tensor(combine, MFA_ATTN_OUT), "out");
}

void test_attention_forward_varlen() {
  // 3 sequences of at most 10 queries and 20 keys: 1 query block of 16 rows and 1 key block each.
  AttentionProblem p;
  p.batch = 1, p.q_heads = 2, p.kv_heads = 2, p.q_len = 25, p.kv_len = 50, p.head_dim = 64, p.value_dim = 64;
  p.num_sequences = 3, p.max_seqlen_q = 10, p.max_seqlen_k = 20;
  const Launch f = plan_attention_forward(p).launches.at(0);
  CHECK_EQ(f.threadgroups, (Grid{1, 2, 3}));
  CHECK_EQ(define(f, "MFA_BLOCK_Q"), "16");
  CHECK_EQ(bound_tensor(f, MFA_ATTN_CU_Q), "cu_seqlens_q");
  CHECK_EQ(bound_tensor(f, MFA_ATTN_CU_K), "cu_seqlens_k");
  CHECK(bound_params<AttentionParams>(f, MFA_ATTN_PARAMS).varlen);
}

void test_attention_backward_plan() {
  // Dims 64 + 48 = 112 -> backward blocks {32, 32, 32, 32}. dQ: 8 packed rows -> block 8, grid {1, 2, 1}. dK/dV:
  // 4096 keys / 32 -> grid {128, 2, 1}.
  AttentionProblem p = decoding_problem();
  p.count_tiles = true;
  Plan plan = plan_attention_backward(p, true);
  CHECK_EQ(plan.launches.size(), 3u);
  const Launch& delta = plan.launches.at(0);
  CHECK_EQ(delta.kernel, "attention_backward_delta");
  CHECK_EQ(delta.threadgroups, (Grid{1, 1, 1}));  // 16 rows of q, 32 per threadgroup
  CHECK_EQ(define(delta, "MFA_VALUE_DIM"), "48");
  const Launch& dq = plan.launches.at(1);
  CHECK_EQ(dq.threadgroups, (Grid{1, 2, 1}));
  CHECK_EQ(dq.threads_per_threadgroup, (Grid{32, 1, 1}));
  CHECK_EQ(dq.threadgroup_memory, 32u * 112 * 2);  // K and V tiles of half
  CHECK_EQ(define(dq, "MFA_MASK_GRAD"), "1");
  CHECK_EQ(bound_tensor(dq, MFA_ATTN_DMASK), "dmask");
  CHECK_EQ(bound_tensor(dq, MFA_ATTN_TILE_COUNT), "tile_count_dq");
  const Launch& dkdv = plan.launches.at(2);
  CHECK_EQ(dkdv.threadgroups, (Grid{128, 2, 1}));
  CHECK_EQ(dkdv.threads_per_threadgroup, (Grid{128, 1, 1}));
  CHECK_EQ(dkdv.threadgroup_memory, 32u * (112 * 2 + 3 * 4));  // Q and dO of half, softmax stats and D of float
  CHECK_EQ(temporary_numel(plan, "delta"), 16);
  CHECK_EQ(temporary_numel(plan, "tile_count_dq"), 2);
  CHECK_EQ(temporary_numel(plan, "tile_count_dkdv"), 256);
  p.mask = "bool";
  CHECK_THROWS(std::invalid_argument, plan_attention_backward(p, true), "mask_grad needs a floating mask");
}

void test_attention_bad_and_empty_problems() {
  AttentionProblem p = decoding_problem();
  p.head_dim = 577;
  CHECK_THROWS(std::invalid_argument, plan_attention_forward(p), "head_dim must be in [1, 576]");
  p = decoding_problem();
  p.value_dim = 513;
  CHECK_THROWS(std::invalid_argument, plan_attention_forward(p), "value_dim must be in [1, 512]");
  p = decoding_problem();
  p.mask = "blocks";  // a block mask without its block sizes
  CHECK_THROWS(std::invalid_argument, plan_attention_forward(p), "mask_block_q and mask_block_k must be in");
  p.mask_block_q = p.mask_block_k = 16;
  CHECK_THROWS(std::invalid_argument, plan_attention_backward(p, true), "mask_grad needs a floating mask");
  p = decoding_problem();
  p.q_heads = 6, p.kv_heads = 4;
  CHECK_THROWS(std::invalid_argument, plan_attention_forward(p), "q_heads must be a multiple of kv_heads");
  p = decoding_problem();
  p.dtype = "float64";
  CHECK_THROWS(std::invalid_argument, plan_attention_forward(p), "q must be float32, float16 or bfloat16");
  p = decoding_problem();
  p.family = "m3";
  CHECK_THROWS(std::invalid_argument, plan_attention_backward(p, false), "gpu family must be one of");
  p = decoding_problem();
  p.q_len = 0;
  CHECK(plan_attention_forward(p).launches.empty());
  CHECK(plan_attention_backward(p, false).launches.empty());
}

void test_gemm_plan() {
  // Apple7 float32 -> 64 x 64 x 32 blocks: 100 x 50 -> 2 x 1 tiles, a worker each (no Stream-K: K has one block).
  GemmProblem p;
  p.family = "apple7";
  p.batch = 1, p.m = 100, p.n = 50, p.k = 30;
  p.a_strides = {0, 32, 1}, p.b_strides = {0, 52, 1};
  p.a_aligned = p.b_aligned = p.c_aligned = true;
  Plan plan = plan_gemm(p);
  CHECK_EQ(plan.launches.size(), 1u);
  const Launch& g = plan.launches.at(0);
  CHECK_EQ(g.threadgroups, (Grid{2, 1, 1}));  // workers
  CHECK_EQ(g.threads_per_threadgroup, (Grid{128, 1, 1}));
  CHECK_EQ(g.threadgroup_memory, 32u * (64 + 64) * 4);
  CHECK_EQ(define(g, "MFA_BLOCK_K"), "32");
  CHECK_EQ(define(g, "MFA_A_FROM_DEVICE"), "1");  // float32 A on Apple7, rows of 4-element groups
  CHECK_EQ(define(g, "MFA_B_FROM_DEVICE"), "0");
  const GemmParams params = bound_params<GemmParams>(g, MFA_GEMM_PARAMS);
  CHECK_EQ(params.copy_modes, uint32_t(MFA_GEMM_COPY_ROWS | MFA_GEMM_COPY_ROWS << 2));
  CHECK_EQ(params.vector_c, 0u);  // 50 columns: rows of C off 4 elements
  CHECK_EQ(bound_tensor(g, MFA_GEMM_BIAS), "c");  // no bias: bound to c, never read
  CHECK_EQ(bound_tensor(g, MFA_GEMM_PARTIAL), "c");  // no shared tile
  p.dtype = "float16";
  CHECK_EQ(define(plan_gemm(p).launches.at(0), "MFA_A_FROM_DEVICE"), "0");  // 16-bit: staged on Apple7
  p.k = 0;  // A and B are empty and may have no buffer
  CHECK_EQ(bound_tensor(plan_gemm(p).launches.at(0), MFA_GEMM_A), "c");
}

void test_gemm_stream_k() {
  // Apple9 bfloat16: one 64 x 64 tile, K 4096 = 128 blocks over min(128, 128 / 8) = 16 workers of 8 blocks; every
  // boundary falls inside the tile, so the reduction sums 16 slots.
  GemmProblem p;
  p.dtype = "bfloat16";
  p.batch = 1, p.m = 8, p.n = 8, p.k = 4096, p.has_bias = true;
  p.a_strides = {0, 4096, 1}, p.b_strides = {0, 8, 1};
  Plan plan = plan_gemm(p);
  CHECK_EQ(plan.launches.size(), 2u);
  const Launch& g = plan.launches.at(0);
  CHECK_EQ(g.threadgroups, (Grid{16, 1, 1}));
  CHECK_EQ(bound_tensor(g, MFA_GEMM_C), "c");
  CHECK_EQ(bound_tensor(g, MFA_GEMM_PARTIAL), "partial");
  const GemmParams params = bound_params<GemmParams>(g, MFA_GEMM_PARAMS);
  CHECK_EQ(params.workers, 16u);
  CHECK_EQ(params.units_per_worker, uint64_t(8));
  CHECK_EQ(params.longer_workers, 0u);
  CHECK_EQ(params.k_blocks, 128u);
  CHECK_EQ(temporary_numel(plan, "partial"), 16 * 2 * 64 * 64);
  const Launch& reduce = plan.launches.at(1);
  CHECK_EQ(reduce.kernel, "gemm_reduce");
  CHECK_EQ(reduce.threadgroups, (Grid{15, 1, 1}));  // one per boundary between workers
  CHECK_EQ(reduce.threads_per_threadgroup, (Grid{MFA_GEMM_REDUCE_THREADS, 1, 1}));
  CHECK(reduce.defines == g.defines);  // one compiled library for both kernels
  CHECK_EQ(bound_tensor(reduce, MFA_GEMM_BIAS), "bias");
}

void test_gemm_bad_and_empty_problems() {
  GemmProblem p;
  p.batch = 1, p.m = 4, p.n = 4, p.k = 4;
  p.dtype = "float64";
  CHECK_THROWS(std::invalid_argument, plan_gemm(p), "dtype must be float32, float16 or bfloat16");
  p.dtype = "float32";
  p.a_strides = {0, -4, 1};
  CHECK_THROWS(std::invalid_argument, plan_gemm(p), "a_strides must be >= 0");
  p.a_strides = {0, 4, 1};
  p.m = int64_t(1) << 31;
  CHECK_THROWS(std::invalid_argument, plan_gemm(p), "m must be in [0, 2^31)");
  p.m = 0;
  CHECK(plan_gemm(p).launches.empty());
}

void test_kv_cache_plans() {
  // 2 sequences x 3 heads x 5 new tokens; k rows of 40 (32 rotated: 16 pairs, 8 copied: 4 pairs), v rows of 24
  // (12 pairs): 32 units a row, 30 rows = 960 threads in 4 threadgroups of 256.
  KvCacheAppendProblem p;
  p.dtype = "bfloat16";
  p.batch = 2, p.kv_heads = 3, p.new_len = 5, p.head_dim = 40, p.value_dim = 24;
  p.pages = 8, p.page_size = 16, p.max_pages = 4;
  p.k_cache_strides = {16 * 3 * 40, 40, 3 * 40}, p.v_cache_strides = {16 * 3 * 24, 24, 3 * 24};
  p.k_strides = {3 * 5 * 40, 5 * 40, 40}, p.v_strides = {3 * 5 * 24, 5 * 24, 24};
  p.block_table_strides = {4, 1};
  p.rotary.dtype = "float32", p.rotary.rotary_dim = 32, p.rotary.length = 100, p.rotary.interleaved = true;
  p.rotary.cos_strides = p.rotary.sin_strides = {16, 1};
  Plan plan = plan_kv_cache_append(p);
  CHECK_EQ(plan.launches.size(), 1u);
  const Launch& a = plan.launches.at(0);
  CHECK_EQ(a.threadgroups, (Grid{4, 1, 1}));
  CHECK_EQ(a.threads_per_threadgroup, (Grid{MFA_KV_CACHE_THREADS, 1, 1}));
  CHECK_EQ(define(a, "MFA_T"), "bfloat");
  CHECK_EQ(define(a, "MFA_ROTARY_T"), "float");
  CHECK_EQ(bound_tensor(a, MFA_KVC_COS), "rotary_cos");
  const KvCacheAppendParams params = bound_params<KvCacheAppendParams>(a, MFA_KVC_PARAMS);
  CHECK_EQ(params.threads, 960u);
  CHECK_EQ(params.units_per_row, 32u);
  CHECK_EQ(params.k_units, 20u);
  CHECK_EQ(params.rotary.interleaved, 1u);
  CHECK_EQ(params.k_cache_strides[2], int64_t(120));
  p.rotary.rotary_dim = 0;  // no rotation: the tables are bound to k and never read; 20 + 12 units all the same
  CHECK_EQ(bound_tensor(plan_kv_cache_append(p).launches.at(0), MFA_KVC_SIN), "k");
  CHECK_EQ(define(plan_kv_cache_append(p).launches.at(0), "MFA_ROTARY_T"), "bfloat");
  p.rotary.rotary_dim = 42;
  CHECK_THROWS(std::invalid_argument, plan_kv_cache_append(p), "rotary_dim (42) must be <= the head dim (40)");
  p.rotary.rotary_dim = 32, p.rotary.dtype = "float16";
  CHECK_THROWS(std::invalid_argument, plan_kv_cache_append(p), "rotary_cos and rotary_sin must have the inputs'");
  p.rotary.dtype = "bfloat16", p.new_len = 0;
  CHECK(plan_kv_cache_append(p).launches.empty());

  // Rotary embedding: 1 x 2 heads x 3 tokens of 41 (16 rotated pairs, 9 copied in 5 units): 126 threads.
  RotaryEmbeddingProblem r;
  r.dtype = "float16";
  r.batch = 1, r.heads = 2, r.seq_len = 3, r.head_dim = 41, r.same_position = true;
  r.x_strides = {2 * 3 * 41, 3 * 41, 41};
  r.rotary.dtype = "float16", r.rotary.rotary_dim = 32, r.rotary.length = 10;
  r.rotary.cos_strides = r.rotary.sin_strides = {16, 1};
  const Plan rotary_plan = plan_rotary_embedding(r);
  const Launch& e = rotary_plan.launches.at(0);
  CHECK_EQ(e.threadgroups, (Grid{1, 1, 1}));
  const RotaryEmbeddingParams rp = bound_params<RotaryEmbeddingParams>(e, MFA_ROPE_PARAMS);
  CHECK_EQ(rp.threads, 126u);
  CHECK_EQ(rp.same_position, 1u);
  r.dtype = "float64";
  CHECK_THROWS(std::invalid_argument, plan_rotary_embedding(r), "x must be float32, float16 or bfloat16");
}

void write_file(const std::filesystem::path& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary);
  out << text;
  if (!out) throw std::runtime_error("cannot write " + path.string());
}

size_t occurrences(const std::string& text, const std::string& part) {
  size_t n = 0;
  for (size_t at = text.find(part); at != std::string::npos; at = text.find(part, at + 1)) ++n;
  return n;
}

void test_shader_source_expansion(const std::filesystem::path& scratch) {
  write_file(scratch / "a.h", "#pragma once\nA\n");
  write_file(scratch / "b.h", "  #  pragma   once  \n#  include \"a.h\"\nB\n");
  write_file(scratch / "main.metal",
             "#include \"a.h\"\n\t#include\"b.h\" \r\n#include <metal_stdlib>\n// #include \"c.h\" stays\nmain\n");
  write_file(scratch / "broken.metal", "#include \"a.h\"\n#include \"no_such_header.h\"\n");
  set_shader_directory(scratch.string());
  // a.h once (b.h includes it again), both pragmas gone, <...> includes and comments kept.
  CHECK_EQ(expanded_shader_source("main.metal"), "A\nB\n#include <metal_stdlib>\n// #include \"c.h\" stays\nmain\n");
  CHECK_THROWS(std::runtime_error, expanded_shader_source("broken.metal"),
               "cannot read shader file " + (scratch / "no_such_header.h").string() + " (included from broken.metal)");
  CHECK_THROWS(std::runtime_error, expanded_shader_source("absent.metal"), "absent.metal");
}

void test_shipped_shaders_expand(const std::filesystem::path& shader_dir) {
  set_shader_directory(shader_dir.string());
  size_t sources = 0;
  for (const auto& entry : std::filesystem::directory_iterator(shader_dir)) {
    if (entry.path().extension() != ".metal") continue;
    ++sources;
    const std::string name = entry.path().filename().string();
    const std::string text = expanded_shader_source(name);
    if (text.find("#include \"") != std::string::npos || text.find("#pragma once") != std::string::npos) {
      fail(__FILE__, __LINE__, name + ": a quoted include or #pragma once survived the expansion");
    }
    if (occurrences(text, "struct AttentionParams {") > 1 || occurrences(text, "struct GemmParams {") > 1) {
      fail(__FILE__, __LINE__, name + ": a params struct is defined twice");
    }
  }
  CHECK(sources > 0);
  CHECK_EQ(occurrences(expanded_shader_source("attention_forward.metal"), "struct AttentionParams {"), 1u);
  CHECK_EQ(occurrences(expanded_shader_source("gemm.metal"), "struct GemmParams {"), 1u);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 3) {
    std::fprintf(stderr, "usage: %s SHADER_DIR SCRATCH_DIR\n", argv[0]);
    return 2;
  }
#if defined(_LIBCPP_VERSION)
  std::printf("standard library: libc++\n");
#elif defined(__GLIBCXX__)
  std::printf("standard library: libstdc++\n");
#else
  std::printf("standard library: unknown\n");
#endif
  // Before any directory is set (the first thing this process does with the expansion).
  CHECK_THROWS(std::runtime_error, expanded_shader_source("gemm.metal"), "the shader directory has not been set");
  const std::vector<std::pair<const char*, std::function<void()>>> tests = {
      {"gpu_family", test_gpu_family},
      {"block_tables", test_block_tables},
      {"register_estimates", test_register_estimates},

      {"sliced_forward_tiles", test_sliced_forward_tiles},
      {"dq_slices", test_dq_slices},
      {"dkdv_slices", test_dkdv_slices},
      {"attention_forward_plan", test_attention_forward_plan},
      {"attention_forward_split_kv", test_attention_forward_split_kv},
      {"attention_forward_varlen", test_attention_forward_varlen},
      {"attention_backward_plan", test_attention_backward_plan},
      {"attention_bad_and_empty_problems", test_attention_bad_and_empty_problems},
      {"gemm_plan", test_gemm_plan},
      {"gemm_stream_k", test_gemm_stream_k},
      {"gemm_bad_and_empty_problems", test_gemm_bad_and_empty_problems},
      {"kv_cache_plans", test_kv_cache_plans},
      {"shader_source_expansion", [&] { test_shader_source_expansion(argv[2]); }},
      {"shipped_shaders_expand", [&] { test_shipped_shaders_expand(argv[1]); }},
  };
  for (const auto& [name, test] : tests) {
    try {
      test();
    } catch (const std::exception& e) {
      fail(__FILE__, __LINE__, std::string(name) + " threw: " + e.what());
    }
  }
  std::printf("%d failed checks in %zu tests\n", failures, tests.size());
  return failures == 0 ? 0 : 1;
}
