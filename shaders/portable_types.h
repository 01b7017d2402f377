// Fixed-width integer names shared by the Metal sources and the C++ host code (structs in shaders/*_params.h
// must have one layout on both sides).
#pragma once

#ifdef __METAL_VERSION__
typedef long mfa_i64;
typedef ulong mfa_u64;
typedef uint mfa_u32;
typedef int mfa_i32;
#else
#include <cstdint>
typedef int64_t mfa_i64;
typedef uint64_t mfa_u64;
typedef uint32_t mfa_u32;
typedef int32_t mfa_i32;
#endif
