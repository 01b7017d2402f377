// SIMD-group (32 lanes) and quad-group (4 lanes) functions and barriers.
// Each call is a rendezvous of the SIMD-group (see runtime/threadgroup.hpp); the first lane to resume
// computes every lane's result from all lanes' arguments. Semantics follow Apple's documentation:
// reductions and scans cover the active lanes; up/down shuffles do not wrap (out-of-range lanes keep their
// value); reading an inactive lane yields poison (all bits set), since the hardware returns garbage.
#pragma once
#include "../../runtime/profile_hooks.hpp"
#include "../../runtime/threadgroup.hpp"
#include "vector.hpp"

namespace metal {

enum class mem_flags : uint {
  mem_none = 0,
  mem_device = 1,
  mem_threadgroup = 2,
  mem_texture = 4,
  mem_threadgroup_imageblock = 8,
  mem_object_data = 16,
};
constexpr mem_flags operator|(mem_flags a, mem_flags b) { return mem_flags(uint(a) | uint(b)); }

inline void threadgroup_barrier(mem_flags flags = mem_flags::mem_none, MSL_SITE_PARAM) {
  msl_rt::threadgroup_barrier_wait(msl_site, flags != mem_flags::mem_none);
}
inline void simdgroup_barrier(mem_flags flags = mem_flags::mem_none, MSL_SITE_PARAM) {
  char nothing = 0;
  msl_rt::simd_collective<char>("simdgroup_barrier", msl_site, nothing, [](const char* const*, char* const*, uint32_t) {},
                                flags != mem_flags::mem_none);
}

struct simd_vote {
  typedef ulong vote_t;
  vote_t bits, active;
  explicit constexpr operator vote_t() const { return bits; }
  bool all() const { return bits == active; }  // every active lane voted true
  bool any() const { return bits != 0; }
};
struct quad_vote {
  typedef ushort vote_t;
  vote_t bits, active;
  explicit constexpr operator vote_t() const { return bits; }
  bool all() const { return bits == active; }
  bool any() const { return bits != 0; }
};

namespace simd_detail {

template <class T> T poison() {
  T t;
  __builtin_memset(static_cast<void*>(&t), 0xFF, sizeof t);
  return t;
}
inline bool active_lane(uint32_t active, int lane) { return lane >= 0 && lane < msl_rt::simd_width && (active >> lane & 1); }

// One lane's arguments.
template <class T> struct Args {
  T value;
  T fill;
  uint32_t a, b;
};

// Lane l reads lane source(l, its args); out-of-range or inactive sources read poison.
template <int Width, class T, class Source>
T permute(const char* op, const msl_rt::Site& site, const Args<T>& in) {
  return msl_rt::simd_collective<T>(op, site, in, [](const Args<T>* const* ins, T* const* outs, uint32_t active) {
    MSL_COUNT_BY_SHIM(shuffles, 1);  // once per SIMD-group call
    MSL_QUIET;
    for (int l = 0; l < msl_rt::simd_width; l++) {
      if (!(active >> l & 1)) continue;
      int base = l & ~(Width - 1);
      auto [lane, from_fill] = Source{}(l - base, *ins[l], Width);
      int src = lane < 0 ? -1 : base + lane;
      *outs[l] = !active_lane(active, src) || lane >= Width ? poison<T>() : from_fill ? ins[src]->fill : ins[src]->value;
    }
  });
}

// Segment-wise (all 32 lanes, or each quad) fold over active lanes in lane order; `inclusive`/`exclusive`
// scans give each lane the fold of the active lanes up to (and including) it.
enum class Fold { reduce, inclusive, exclusive };
template <int Width, Fold Kind, class Op, class T>
T fold(const char* op, const msl_rt::Site& site, const T& x, T identity) {
  Args<T> in{x, identity, 0, 0};
  return msl_rt::simd_collective<T>(op, site, in, [](const Args<T>* const* ins, T* const* outs, uint32_t active) {
    MSL_COUNT_BY_SHIM(simd_reductions, 1);  // once per SIMD-group call
    MSL_QUIET;
    for (int base = 0; base < msl_rt::simd_width; base += Width) {
      T acc{};
      bool any = false;
      for (int l = base; l < base + Width; l++) {
        if (!(active >> l & 1)) continue;
        if (Kind == Fold::exclusive) *outs[l] = any ? acc : ins[l]->fill;
        acc = any ? T(Op{}(acc, ins[l]->value)) : ins[l]->value;
        any = true;
        if (Kind == Fold::inclusive) *outs[l] = acc;
      }
      if (Kind == Fold::reduce)
        for (int l = base; l < base + Width; l++)
          if (active >> l & 1) *outs[l] = acc;
    }
  });
}

template <int Width> uint32_t segment_mask(uint32_t active, int lane) {
  int base = lane & ~(Width - 1);
  return Width == msl_rt::simd_width ? active : (active >> base) & ((1u << Width) - 1);
}

struct Plus { template <class A> A operator()(A a, A b) const { return a + b; } };
struct Times { template <class A> A operator()(A a, A b) const { return a * b; } };
struct Min { template <class A> A operator()(A a, A b) const { return min(a, b); } };
struct Max { template <class A> A operator()(A a, A b) const { return max(a, b); } };
struct And { template <class A> A operator()(A a, A b) const { return a & b; } };
struct Or { template <class A> A operator()(A a, A b) const { return a | b; } };
struct Xor { template <class A> A operator()(A a, A b) const { return a ^ b; } };

// Source lanes (within a segment of `width` lanes) for each shuffle flavour: {lane, read fill value}.
struct Pair { int lane; bool fill; };
struct FromLane { Pair operator()(int, const auto& in, int) const { return {int(in.a), false}; } };
struct FromXor { Pair operator()(int j, const auto& in, int w) const { return {int((j ^ in.a) & (w - 1)), false}; } };
struct FromUp { Pair operator()(int j, const auto& in, int) const { return {j >= int(in.a) ? j - int(in.a) : j, false}; } };
struct FromDown { Pair operator()(int j, const auto& in, int w) const { return {j + int(in.a) < w ? j + int(in.a) : j, false}; } };
struct FromRotateUp { Pair operator()(int j, const auto& in, int w) const { return {int((j - int(in.a % w) + w) % w), false}; } };
struct FromRotateDown { Pair operator()(int j, const auto& in, int w) const { return {int((j + in.a) % w), false}; } };
// and_fill: segments of `modulo` lanes (in.b); lanes shifted in from outside the segment read `fill`
struct FromFillUp {
  Pair operator()(int j, const auto& in, int) const {
    int m = int(in.b), k = j % m, base = j - k, d = int(in.a);
    return k >= d ? Pair{base + k - d, false} : Pair{base + m - d + k, true};
  }
};
struct FromFillDown {
  Pair operator()(int j, const auto& in, int) const {
    int m = int(in.b), k = j % m, base = j - k, d = int(in.a);
    return k + d < m ? Pair{base + k + d, false} : Pair{base + k + d - m, true};
  }
};

}  // namespace simd_detail

// ---- shuffles and broadcasts ------------------------------------------------------------------------------
#define MSL_PERMUTE(NAME, WIDTH, SOURCE)                                                                     \
  template <class T> T NAME(T data, ushort arg, MSL_SITE_PARAM) {                                            \
    return simd_detail::permute<WIDTH, T, simd_detail::SOURCE>(#NAME, msl_site, {data, data, arg, 0});       \
  }
MSL_PERMUTE(simd_shuffle, 32, FromLane)
MSL_PERMUTE(simd_shuffle_xor, 32, FromXor)
MSL_PERMUTE(simd_shuffle_up, 32, FromUp)
MSL_PERMUTE(simd_shuffle_down, 32, FromDown)
MSL_PERMUTE(simd_shuffle_rotate_up, 32, FromRotateUp)
MSL_PERMUTE(simd_shuffle_rotate_down, 32, FromRotateDown)
MSL_PERMUTE(quad_shuffle, 4, FromLane)
MSL_PERMUTE(quad_shuffle_xor, 4, FromXor)
MSL_PERMUTE(quad_shuffle_up, 4, FromUp)
MSL_PERMUTE(quad_shuffle_down, 4, FromDown)
MSL_PERMUTE(quad_shuffle_rotate_up, 4, FromRotateUp)
MSL_PERMUTE(quad_shuffle_rotate_down, 4, FromRotateDown)
#undef MSL_PERMUTE

#define MSL_FILL(NAME, WIDTH, SOURCE)                                                                         \
  template <class T> T NAME(T data, T filling_data, ushort delta, MSL_SITE_PARAM) {                           \
    return simd_detail::permute<WIDTH, T, simd_detail::SOURCE>(#NAME, msl_site, {data, filling_data, delta, WIDTH}); \
  }                                                                                                           \
  template <class T> T NAME(T data, T filling_data, ushort delta, ushort modulo, MSL_SITE_PARAM) {            \
    if (modulo == 0 || modulo > WIDTH || (modulo & (modulo - 1)))                                             \
      msl_rt::thread_fail(msl_site, #NAME ": modulo must be a power of two no larger than the group");        \
    return simd_detail::permute<WIDTH, T, simd_detail::SOURCE>(#NAME, msl_site, {data, filling_data, delta, modulo}); \
  }
MSL_FILL(simd_shuffle_and_fill_up, 32, FromFillUp)
MSL_FILL(simd_shuffle_and_fill_down, 32, FromFillDown)
MSL_FILL(quad_shuffle_and_fill_up, 4, FromFillUp)
MSL_FILL(quad_shuffle_and_fill_down, 4, FromFillDown)
#undef MSL_FILL

// broadcast: like shuffle, but the source lane must be the same for every lane
#define MSL_BROADCAST(NAME, WIDTH)                                                                            \
  template <class T> T NAME(T data, ushort lane, MSL_SITE_PARAM) {                                             \
    simd_detail::Args<T> in{data, data, lane, 0};                                                              \
    bool uniform = msl_rt::simd_collective<bool>(#NAME, msl_site, in,                                          \
        [](const simd_detail::Args<T>* const* ins, bool* const* outs, uint32_t active) {                       \
          int first = __builtin_ctz(active);                                                                   \
          for (int l = 0; l < msl_rt::simd_width; l++)                                                         \
            if (active >> l & 1) *outs[l] = ins[l]->a == ins[first]->a;                                        \
        });                                                                                                    \
    if (!uniform) msl_rt::thread_fail(msl_site, #NAME ": the lane argument differs between lanes");           \
    return simd_detail::permute<WIDTH, T, simd_detail::FromLane>(#NAME, msl_site, in);                         \
  }
MSL_BROADCAST(simd_broadcast, 32)
MSL_BROADCAST(quad_broadcast, 4)
#undef MSL_BROADCAST

// ---- reductions and scans ------------------------------------------------------------------------------------
#define MSL_FOLD(NAME, WIDTH, KIND, OP, IDENTITY)                                                                \
  template <class T> T NAME(T x, MSL_SITE_PARAM) {                                                               \
    return simd_detail::fold<WIDTH, simd_detail::Fold::KIND, simd_detail::OP>(#NAME, msl_site, x, T(IDENTITY));    \
  }
#define MSL_FOLDS(PREFIX, WIDTH)                                                         \
  MSL_FOLD(PREFIX##_sum, WIDTH, reduce, Plus, 0)                                         \
  MSL_FOLD(PREFIX##_product, WIDTH, reduce, Times, 1)                                    \
  MSL_FOLD(PREFIX##_min, WIDTH, reduce, Min, 0)                                          \
  MSL_FOLD(PREFIX##_max, WIDTH, reduce, Max, 0)                                          \
  MSL_FOLD(PREFIX##_and, WIDTH, reduce, And, 0)                                          \
  MSL_FOLD(PREFIX##_or, WIDTH, reduce, Or, 0)                                            \
  MSL_FOLD(PREFIX##_xor, WIDTH, reduce, Xor, 0)                                          \
  MSL_FOLD(PREFIX##_prefix_inclusive_sum, WIDTH, inclusive, Plus, 0)                     \
  MSL_FOLD(PREFIX##_prefix_exclusive_sum, WIDTH, exclusive, Plus, 0)                     \
  MSL_FOLD(PREFIX##_prefix_inclusive_product, WIDTH, inclusive, Times, 1)                \
  MSL_FOLD(PREFIX##_prefix_exclusive_product, WIDTH, exclusive, Times, 1)
MSL_FOLDS(simd, 32)
MSL_FOLDS(quad, 4)
#undef MSL_FOLDS
#undef MSL_FOLD

// ---- votes --------------------------------------------------------------------------------------------------------
#define MSL_VOTES(PREFIX, WIDTH, VOTE)                                                                            \
  inline VOTE PREFIX##_ballot(bool pred, MSL_SITE_PARAM) {                                                         \
    simd_detail::Args<uint32_t> in{uint32_t(pred), 0, 0, 0};                                                       \
    uint32_t lane = msl_rt::lane_id();                                                                             \
    uint32_t bits = msl_rt::simd_collective<uint32_t>(#PREFIX "_ballot", msl_site, in,                             \
        [](const simd_detail::Args<uint32_t>* const* ins, uint32_t* const* outs, uint32_t active) {                \
          uint32_t mask = 0;                                                                                       \
          for (int l = 0; l < msl_rt::simd_width; l++) if ((active >> l & 1) && ins[l]->value) mask |= 1u << l;     \
          for (int l = 0; l < msl_rt::simd_width; l++) if (active >> l & 1) *outs[l] = mask;                       \
        });                                                                                                        \
    uint32_t active = msl_rt::me().lanes.load(std::memory_order_relaxed);                                         \
    return VOTE{VOTE::vote_t(simd_detail::segment_mask<WIDTH>(bits, lane)),                                        \
                VOTE::vote_t(simd_detail::segment_mask<WIDTH>(active, lane))};                                     \
  }                                                                                                                \
  inline VOTE PREFIX##_active_threads_mask(MSL_SITE_PARAM) { return PREFIX##_ballot(true, msl_site); }            \
  inline bool PREFIX##_all(bool pred, MSL_SITE_PARAM) { return PREFIX##_ballot(pred, msl_site).all(); }           \
  inline bool PREFIX##_any(bool pred, MSL_SITE_PARAM) { return PREFIX##_ballot(pred, msl_site).any(); }           \
  inline bool PREFIX##_is_first(MSL_SITE_PARAM) {                                                                  \
    VOTE v = PREFIX##_ballot(true, msl_site);                                                                      \
    return __builtin_ctzll(v.bits) == int(msl_rt::lane_id() % WIDTH);                                             \
  }                                                                                                                \
  template <class T> T PREFIX##_broadcast_first(T data, MSL_SITE_PARAM) {                                          \
    simd_detail::Args<T> in{data, data, 0, 0};                                                                     \
    return msl_rt::simd_collective<T>(#PREFIX "_broadcast_first", msl_site, in,                                   \
        [](const simd_detail::Args<T>* const* ins, T* const* outs, uint32_t active) {                              \
          for (int l = 0; l < msl_rt::simd_width; l++) {                                                           \
            if (!(active >> l & 1)) continue;                                                                      \
            int base = l & ~(WIDTH - 1);                                                                           \
            uint32_t seg = simd_detail::segment_mask<WIDTH>(active, l);                                            \
            *outs[l] = ins[base + __builtin_ctz(seg)]->value;                                                      \
          }                                                                                                        \
        });                                                                                                        \
  }
MSL_VOTES(simd, 32, simd_vote)
MSL_VOTES(quad, 4, quad_vote)
#undef MSL_VOTES

}  // namespace metal
