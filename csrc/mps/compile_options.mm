#include "mps/compile_options.h"

#include <Metal/Metal.h>

namespace mfa {

void* metal_compile_options() {
  static MTLCompileOptions* options = [] {
    MTLCompileOptions* o = [MTLCompileOptions new];
    // Explicit, so that every macOS compiles the dialect of the oldest one supported (14), which CI checks.
    o.languageVersion = MTLLanguageVersion3_1;
#if __MAC_OS_X_VERSION_MAX_ALLOWED >= 150000  // SDKs before macOS 15's do not declare mathMode
    if (@available(macOS 15.0, *)) {
      o.mathMode = MTLMathModeSafe;
      o.mathFloatingPointFunctions = MTLMathFloatingPointFunctionsPrecise;
      return o;
    }
#endif
    o.fastMathEnabled = NO;  // before macOS 15: also selects the precise math functions
    return o;
  }();
  return (__bridge void*)options;
}

}  // namespace mfa
