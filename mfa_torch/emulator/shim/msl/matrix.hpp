// simdgroup_matrix<T, 8, 8>: an 8x8 tile spread over the 32 lanes of a SIMD-group, exactly two elements
// per lane in the layout MFA, MLX and tinygrad rely on (facts/metal.md):
//   thread_elements()[0] at (row(lane), col(lane)), [1] at (row(lane), col(lane) + 1).
// Loads, stores and products are SIMD-group functions: every live lane must reach them together.
// Products are computed in float with fused multiply-adds and rounded once to the result type; Apple's
// matrix unit may round differently (unknowable here).
#pragma once
#include "simd.hpp"

namespace metal {

constexpr int msl_sgm_row(uint lane) { return int(((lane >> 4) & 1) * 4 + ((lane >> 1) & 3)); }
constexpr int msl_sgm_col(uint lane) { return int(((lane >> 3) & 1) * 4 + (lane & 1) * 2); }

template <class T, int Cols, int Rows> struct simdgroup_matrix {
  static_assert(Cols == 8 && Rows == 8, "the emulator supports 8x8 simdgroup matrices");
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, half> || std::is_same_v<T, bfloat>,
                "simdgroup_matrix elements are float, half or bfloat");
  vec<T, 2> elements;

#if defined(MSL_PROFILE)
  // Profile builds count the registers of the tiles alive at once: 64 elements over 32 lanes.
  static constexpr int registers = sizeof(T) == 4 ? 2 : 1;
  simdgroup_matrix() { msl_rt::count_tile_registers(registers); }
  simdgroup_matrix(const simdgroup_matrix& o) : elements(o.elements) { msl_rt::count_tile_registers(registers); }
  simdgroup_matrix& operator=(const simdgroup_matrix& o) {
    elements = o.elements;
    return *this;
  }
  ~simdgroup_matrix() { msl_rt::count_tile_registers(-registers); }
#else
  simdgroup_matrix() = default;
#endif
  explicit simdgroup_matrix(T diagonal) : simdgroup_matrix() {  // MSL: a diagonal matrix
    uint lane = msl_rt::lane_id();
    int r = msl_sgm_row(lane), c = msl_sgm_col(lane);
    elements = vec<T, 2>(r == c ? diagonal : T(0), r == c + 1 ? diagonal : T(0));
  }
  thread vec<T, 2>& thread_elements() { return elements; }
  const thread vec<T, 2>& thread_elements() const { return elements; }
};
typedef simdgroup_matrix<float, 8, 8> simdgroup_float8x8;
typedef simdgroup_matrix<half, 8, 8> simdgroup_half8x8;
typedef simdgroup_matrix<bfloat, 8, 8> simdgroup_bfloat8x8;

template <class T, int Cols, int Rows> simdgroup_matrix<T, Cols, Rows> make_filled_simdgroup_matrix(const T value) {
  simdgroup_matrix<T, Cols, Rows> m;
  m.elements = vec<T, 2>(value);
  return m;
}

namespace simd_detail {
inline void rendezvous(const char* op, const msl_rt::Site& site) {
  char nothing = 0;
  msl_rt::simd_collective<char>(op, site, nothing, [](const char* const*, char* const*, uint32_t) {});
}
// Apple does not say how matrix_origin combines with transpose_matrix ((x, y) before or after the transpose), so a
// kernel that relies on either reading may differ on hardware: it must offset the pointer and pass origin 0.
inline void require_plain_origin(const char* op, ulong2 origin, bool transpose, const msl_rt::Site& site) {
  if (transpose && (origin.x != 0 || origin.y != 0))
    msl_rt::thread_fail(site, msl_rt::format("%s: transpose_matrix with a non-zero matrix_origin (%llu, %llu) is "
                                             "unspecified by Metal; offset the pointer and pass origin 0",
                                             op, (unsigned long long)origin.x, (unsigned long long)origin.y));
}
// Element offset of (row, col) of the tile in memory with `stride` elements per row.
inline ulong tile_offset(int r, int c, ulong stride, ulong2 origin, bool transpose) {
  return transpose ? (origin.x + ulong(c)) * stride + origin.y + ulong(r) : (origin.y + ulong(r)) * stride + origin.x + ulong(c);
}
// Profile builds: a lane's part of a simdgroup_load or simdgroup_store is one access of its two elements.
template <class T> void count_lane_access(const T* first) {
#if defined(MSL_PROFILE)
  msl_rt::count_access(first, 2 * sizeof(T), true);
#endif
  (void)first;
}
template <class T> constexpr int mma_type() { return std::is_same_v<T, float> ? 0 : std::is_same_v<T, half> ? 1 : 2; }
}  // namespace simd_detail

template <class T, class U>
void simdgroup_load(thread simdgroup_matrix<T, 8, 8>& d, const U* src, ulong elements_per_row = 8, ulong2 matrix_origin = 0,
                    bool transpose_matrix = false, MSL_SITE_PARAM) {
  static_assert(std::is_same_v<std::remove_cv_t<U>, T>, "simdgroup_load: source element type must match the matrix");
  MSL_QUIET;
  simd_detail::require_plain_origin("simdgroup_load", matrix_origin, transpose_matrix, msl_site);
  simd_detail::rendezvous("simdgroup_load", msl_site);
  uint lane = msl_rt::lane_id();
  simd_detail::count_lane_access(src + simd_detail::tile_offset(msl_sgm_row(lane), msl_sgm_col(lane), elements_per_row,
                                                                matrix_origin, transpose_matrix));
  for (int j = 0; j < 2; j++)
    d.elements[j] = src[simd_detail::tile_offset(msl_sgm_row(lane), msl_sgm_col(lane) + j, elements_per_row, matrix_origin, transpose_matrix)];
}

template <class T, class U>
void simdgroup_store(const thread simdgroup_matrix<T, 8, 8>& a, U* dst, ulong elements_per_row = 8, ulong2 matrix_origin = 0,
                     bool transpose_matrix = false, MSL_SITE_PARAM) {
  static_assert(std::is_same_v<U, T>, "simdgroup_store: destination element type must match the matrix");
  MSL_QUIET;
  simd_detail::require_plain_origin("simdgroup_store", matrix_origin, transpose_matrix, msl_site);
  simd_detail::rendezvous("simdgroup_store", msl_site);
  uint lane = msl_rt::lane_id();
  simd_detail::count_lane_access(dst + simd_detail::tile_offset(msl_sgm_row(lane), msl_sgm_col(lane), elements_per_row,
                                                                matrix_origin, transpose_matrix));
  for (int j = 0; j < 2; j++)
    dst[simd_detail::tile_offset(msl_sgm_row(lane), msl_sgm_col(lane) + j, elements_per_row, matrix_origin, transpose_matrix)] = a.elements[j];
}

template <class TD, class TA, class TB, class TC>
void simdgroup_multiply_accumulate(thread simdgroup_matrix<TD, 8, 8>& d, const thread simdgroup_matrix<TA, 8, 8>& a,
                                   const thread simdgroup_matrix<TB, 8, 8>& b, const thread simdgroup_matrix<TC, 8, 8>& c,
                                   MSL_SITE_PARAM) {
  struct Operands {
    vec<TA, 2> a;
    vec<TB, 2> b;
    vec<TC, 2> c;
  };
  Operands mine{a.elements, b.elements, c.elements};
  d.elements = msl_rt::simd_collective<vec<TD, 2>>(
      "simdgroup_multiply_accumulate", msl_site, mine, [](const Operands* const* in, vec<TD, 2>* const* out, uint32_t active) {
        if (active != 0xffffffffu) msl_rt::thread_fail(msl_rt::me().site(), "simdgroup_multiply_accumulate needs all 32 lanes of the SIMD-group");
#if defined(MSL_PROFILE)
        msl_rt::count_mma(msl_rt::mma_type_index(simd_detail::mma_type<TA>(), simd_detail::mma_type<TB>(),
                                                 simd_detail::mma_type<TC>(), simd_detail::mma_type<TD>()));
        MSL_QUIET;
#endif
        float A[8][8], B[8][8], C[8][8];
        for (int l = 0; l < 32; l++)
          for (int j = 0; j < 2; j++) {
            int r = msl_sgm_row(l), col = msl_sgm_col(l) + j;
            A[r][col] = float(in[l]->a[j]);
            B[r][col] = float(in[l]->b[j]);
            C[r][col] = float(in[l]->c[j]);
          }
        for (int l = 0; l < 32; l++)
          for (int j = 0; j < 2; j++) {
            int r = msl_sgm_row(l), col = msl_sgm_col(l) + j;
            float acc = C[r][col];
            for (int k = 0; k < 8; k++) acc = std::fma(A[r][k], B[k][col], acc);
            (*out[l])[j] = TD(acc);
          }
      });
}

template <class TD, class TA, class TB>
void simdgroup_multiply(thread simdgroup_matrix<TD, 8, 8>& d, const thread simdgroup_matrix<TA, 8, 8>& a,
                        const thread simdgroup_matrix<TB, 8, 8>& b, MSL_SITE_PARAM) {
  simdgroup_multiply_accumulate(d, a, b, make_filled_simdgroup_matrix<TD, 8, 8>(TD(0)), msl_site);
}

}  // namespace metal
