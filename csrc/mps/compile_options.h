// The options mfa_torch's Metal libraries are compiled with: IEEE (safe) math and precise functions whatever
// PYTORCH_MPS_FAST_MATH says, because fully masked rows and NaN propagation compare scores with -INFINITY, which
// fast math lets the compiler assume away. Objective-C++ (compile_options.mm): building them needs the Metal API.
#pragma once

namespace mfa {

// An MTLCompileOptions*, spelled void* as torch's MetalShaderLibrary.h spells it in C++; alive for the whole process.
void* metal_compile_options();

}  // namespace mfa
