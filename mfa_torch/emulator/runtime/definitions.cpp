// The runtime's launch machinery (scheduler, fault handling, fiber switch) and the profile builds' counting callbacks,
// compiled once per set of compiler flags and linked into every kernel (mfa_torch/emulator/compiler.py).
#define MSL_RUNTIME_DEFINITIONS
#include <metal_stdlib>
