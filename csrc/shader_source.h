// Metal sources as the MPS executor compiles them: PyTorch's runtime compiles one source string with no include
// path, so the project's own headers ("..." includes) are inlined here; <...> includes stay for the Metal compiler.
#pragma once

#include <string>

namespace mfa {

// Where the .metal files and their headers live (set once by mfa_torch at import).
void set_shader_directory(const std::string& directory);

// The text of `file` under the shader directory with every quoted include inlined once (headers use #pragma once).
// Throws std::runtime_error naming any file it cannot read (and the file that included it).
std::string expanded_shader_source(const std::string& file);

}  // namespace mfa
