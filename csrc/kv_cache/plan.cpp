#include "kv_cache/plan.h"

#include <limits>
#include <stdexcept>
#include <utility>

#include "kv_cache_params.h"

namespace mfa {
namespace {

static_assert(sizeof(RotaryTable) == 40, "RotaryTable has one layout in C++ and MSL");
static_assert(sizeof(KvCacheAppendParams) == 200, "KvCacheAppendParams has one layout in C++ and MSL");
static_assert(sizeof(RotaryEmbeddingParams) == 96, "RotaryEmbeddingParams has one layout in C++ and MSL");

constexpr int64_t kMaxSize = std::numeric_limits<int32_t>::max();  // sizes and positions are 32-bit in the kernels

void require(bool ok, const std::string& message) {
  if (!ok) throw std::invalid_argument(message);
}

// The MSL type of a tensor dtype; `what` names the tensors in the error.
std::string kernel_type(const std::string& dtype, const std::string& what) {
  if (dtype == "float32") return "float";
  if (dtype == "float16") return "half";
  if (dtype == "bfloat16") return "bfloat";
  throw std::invalid_argument(what + " must be float32, float16 or bfloat16 for the Metal kernels, got " + dtype);
}

void require_sizes(std::initializer_list<std::pair<const char*, int64_t>> sizes) {
  for (auto [name, n] : sizes) {
    require(n >= 0 && n <= kMaxSize, std::string(name) + " must be in [0, 2^31) for the Metal kernels, got " +
                                         std::to_string(n));
  }
}

template <size_t N>
void require_strides(const char* name, const std::array<int64_t, N>& strides) {
  for (int64_t s : strides) require(s >= 0, std::string(name) + " must be >= 0, got " + std::to_string(s));
}

// The tables' type (the inputs' type without rotation: the variant then never reads them), after checking them.
std::string rotary_type(const RotaryTables& r, const std::string& dtype, int64_t head_dim) {
  require_sizes({{"rotary_dim", r.rotary_dim}, {"seqlen_ro", r.length}});
  require(r.rotary_dim % 2 == 0, "rotary_dim must be even, got " + std::to_string(r.rotary_dim));
  require(r.rotary_dim <= head_dim, "rotary_dim (" + std::to_string(r.rotary_dim) + ") must be <= the head dim (" +
                                        std::to_string(head_dim) + ")");
  if (r.rotary_dim == 0) return kernel_type(dtype, "dtype");
  require(r.dtype == dtype || r.dtype == "float32",
          "rotary_cos and rotary_sin must have the inputs' dtype (" + dtype + ") or float32, got " + r.dtype);
  require_strides("rotary_cos strides", r.cos_strides);
  require_strides("rotary_sin strides", r.sin_strides);
  return kernel_type(r.dtype, "rotary_cos and rotary_sin");
}

RotaryTable rotary_table(const RotaryTables& r) {
  RotaryTable t{};
  for (int i = 0; i < 2; i++) {
    t.cos_strides[i] = r.rotary_dim ? r.cos_strides[i] : 0;
    t.sin_strides[i] = r.rotary_dim ? r.sin_strides[i] : 0;
  }
  t.rotary_dim = mfa_u32(r.rotary_dim);
  t.interleaved = r.interleaved;
  return t;
}

// The launch of `threads` threads, one per unit, in threadgroups of MFA_KV_CACHE_THREADS.
Launch unit_launch(const char* shader, const char* kernel, const std::string& type, const std::string& table_type,
                   int64_t threads) {
  Launch launch;
  launch.shader = shader;
  launch.kernel = kernel;
  launch.defines = {{"MFA_T", type}, {"MFA_ROTARY_T", table_type}};
  launch.threadgroups = {uint64_t((threads + MFA_KV_CACHE_THREADS - 1) / MFA_KV_CACHE_THREADS), 1, 1};
  launch.threads_per_threadgroup = {MFA_KV_CACHE_THREADS, 1, 1};
  return launch;
}

// A row's units, as shaders/rotary.h cuts it: a rotated pair, or two elements copied.
int64_t row_units(int64_t dim, int64_t rotary_dim) { return rotary_dim / 2 + (dim - rotary_dim + 1) / 2; }

void require_threads(int64_t rows, int64_t units, const std::string& what) {
  require(units == 0 || rows <= (int64_t(std::numeric_limits<uint32_t>::max()) / units),
          what + " has too many elements for one launch: rows x units per row must be < 2^32");
}

}  // namespace

Plan plan_kv_cache_append(const KvCacheAppendProblem& p) {
  const std::string type = kernel_type(p.dtype, "k_cache, v_cache, k and v");
  require_sizes({{"batch", p.batch}, {"kv_heads", p.kv_heads}, {"new_len", p.new_len}, {"head_dim", p.head_dim},
                 {"value_dim", p.value_dim}, {"pages", p.pages}, {"page_size", p.page_size},
                 {"max_pages", p.max_pages}});
  require_strides("k_cache strides", p.k_cache_strides);
  require_strides("v_cache strides", p.v_cache_strides);
  require_strides("k strides", p.k_strides);
  require_strides("v strides", p.v_strides);
  require_strides("block_table strides", p.block_table_strides);
  require(p.positions_stride >= 0, "positions stride must be >= 0, got " + std::to_string(p.positions_stride));
  const std::string table_type = rotary_type(p.rotary, p.dtype, p.head_dim);
  require(p.max_pages * p.page_size <= kMaxSize,
          "max_pages x page_size (the cache positions a sequence can have) must be < 2^31, got " +
              std::to_string(p.max_pages) + " x " + std::to_string(p.page_size));

  Plan plan;
  const int64_t rows = p.batch * p.kv_heads * p.new_len;
  const int64_t k_units = row_units(p.head_dim, p.rotary.rotary_dim), units = k_units + row_units(p.value_dim, 0);
  if (rows == 0 || units == 0) return plan;  // nothing to write
  require(p.page_size > 0 && p.max_pages > 0 && p.pages > 0,
          "the caches must have pages of at least one row and the block table at least one page to append to");
  require_threads(rows, units, "k and v");

  KvCacheAppendParams params{};
  for (int i = 0; i < 3; i++) {
    params.k_cache_strides[i] = p.k_cache_strides[i];
    params.v_cache_strides[i] = p.v_cache_strides[i];
    params.k_strides[i] = p.k_strides[i];
    params.v_strides[i] = p.v_strides[i];
  }
  params.block_table_strides[0] = p.block_table_strides[0];
  params.block_table_strides[1] = p.block_table_strides[1];
  params.positions_stride = p.positions_stride;
  params.rotary = rotary_table(p.rotary);
  params.threads = mfa_u32(rows * units);
  params.units_per_row = mfa_u32(units);
  params.k_units = mfa_u32(k_units);
  params.kv_heads = mfa_u32(p.kv_heads);
  params.new_len = mfa_u32(p.new_len);
  params.head_dim = mfa_u32(p.head_dim);
  params.value_dim = mfa_u32(p.value_dim);
  params.pages = mfa_u32(p.pages);
  params.page_size = mfa_u32(p.page_size);

  // Without rotation the tables are unread; Metal wants every declared buffer bound, so they are bound to k.
  const bool rotary = p.rotary.rotary_dim > 0;
  Launch launch = unit_launch("kv_cache_append.metal", "kv_cache_append", type, table_type, rows * units);
  launch.arguments = {tensor_argument(MFA_KVC_K_CACHE, "k_cache"),
                      tensor_argument(MFA_KVC_V_CACHE, "v_cache"),
                      tensor_argument(MFA_KVC_K, "k"),
                      tensor_argument(MFA_KVC_V, "v"),
                      tensor_argument(MFA_KVC_BLOCK_TABLE, "block_table"),
                      tensor_argument(MFA_KVC_POSITIONS, "positions"),
                      tensor_argument(MFA_KVC_COS, rotary ? "rotary_cos" : "k"),
                      tensor_argument(MFA_KVC_SIN, rotary ? "rotary_sin" : "k"),
                      bytes_argument(MFA_KVC_PARAMS, params)};
  plan.launches.push_back(launch);
  return plan;
}

Plan plan_rotary_embedding(const RotaryEmbeddingProblem& p) {
  const std::string type = kernel_type(p.dtype, "x");
  require_sizes({{"batch", p.batch}, {"heads", p.heads}, {"seq_len", p.seq_len}, {"head_dim", p.head_dim}});
  require_strides("x strides", p.x_strides);
  require(p.positions_stride >= 0, "positions stride must be >= 0, got " + std::to_string(p.positions_stride));
  const std::string table_type = rotary_type(p.rotary, p.dtype, p.head_dim);

  Plan plan;
  const int64_t rows = p.batch * p.heads * p.seq_len;
  const int64_t units = row_units(p.head_dim, p.rotary.rotary_dim);
  if (rows == 0 || units == 0) return plan;  // the output is empty
  require_threads(rows, units, "x");

  RotaryEmbeddingParams params{};
  for (int i = 0; i < 3; i++) params.x_strides[i] = p.x_strides[i];
  params.positions_stride = p.positions_stride;
  params.rotary = rotary_table(p.rotary);
  params.threads = mfa_u32(rows * units);
  params.units_per_row = mfa_u32(units);
  params.heads = mfa_u32(p.heads);
  params.seq_len = mfa_u32(p.seq_len);
  params.head_dim = mfa_u32(p.head_dim);
  params.same_position = p.same_position;

  const bool rotary = p.rotary.rotary_dim > 0;
  Launch launch = unit_launch("rotary_embedding.metal", "rotary_embedding", type, table_type, rows * units);
  launch.arguments = {tensor_argument(MFA_ROPE_X, "x"),
                      tensor_argument(MFA_ROPE_OUT, "out"),
                      tensor_argument(MFA_ROPE_POSITIONS, "positions"),
                      tensor_argument(MFA_ROPE_COS, rotary ? "rotary_cos" : "x"),
                      tensor_argument(MFA_ROPE_SIN, rotary ? "rotary_sin" : "x"),
                      bytes_argument(MFA_ROPE_PARAMS, params)};
  plan.launches.push_back(launch);
  return plan;
}

}  // namespace mfa
