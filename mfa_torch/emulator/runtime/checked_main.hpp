// main() of a checked-mode executable (checks="bounds" or "races"): runs one launch described by a
// spec file, with every buffer copied into a heap allocation of exactly its size, so that the sanitizer
// sees any access outside it. Protocol (written by mfa_torch/emulator/checked.py):
//   argv[1]: spec lines "kernel N", "grid X Y Z", "size X Y Z", "strict S", "threads T",
//            "buffer INDEX OFFSET BYTES" (into the data file), "tgmem INDEX BYTES"
//   argv[2]: data file; buffers are copied back into it after the launch
//   stdout:  the kernel error, if any (exit status 3; 4 for arguments that do not fit); stderr: sanitizer reports and
//            "MSL_BUFFER INDEX ADDRESS BYTES" lines to map addresses to buffers.
#pragma once
// Included after the kernel source, where `kernel`, `thread`, `device` and `constant` are macros:
// no further library headers, and no variables with those names.
#include <cstdio>
#include <cstdlib>
#include <cstring>

extern "C" [[noreturn]] void msl_checked_kernel_error(const char* text) {
  std::fputs(text, stdout);
  std::fflush(stdout);
  std::_Exit(3);
}

int main(int argc, char** argv) {
  if (argc != 3) return 2;
  msl_launch launch{};
  int kernel_index = -1, count = 0;
  struct Placement { int index; size_t offset, bytes; } placements[31];
  std::FILE* spec = std::fopen(argv[1], "r");
  if (!spec) return 2;
  char what[16];
  while (std::fscanf(spec, "%15s", what) == 1) {
    if (!std::strcmp(what, "kernel")) std::fscanf(spec, "%d", &kernel_index);
    else if (!std::strcmp(what, "grid")) std::fscanf(spec, "%u %u %u", &launch.grid[0], &launch.grid[1], &launch.grid[2]);
    else if (!std::strcmp(what, "size"))
      std::fscanf(spec, "%u %u %u", &launch.threadgroup_size[0], &launch.threadgroup_size[1], &launch.threadgroup_size[2]);
    else if (!std::strcmp(what, "strict")) std::fscanf(spec, "%d", &launch.strict);
    else if (!std::strcmp(what, "threads")) std::fscanf(spec, "%d", &launch.os_threads);
    else if (!std::strcmp(what, "tgmem")) {
      int i;
      std::fscanf(spec, "%d", &i);
      std::fscanf(spec, "%u", &launch.threadgroup_memory[i]);
    } else if (!std::strcmp(what, "buffer") && count < 31) {
      Placement& p = placements[count++];
      std::fscanf(spec, "%d %zu %zu", &p.index, &p.offset, &p.bytes);
    }
  }
  std::fclose(spec);
  std::FILE* data = std::fopen(argv[2], "r+b");
  if (kernel_index < 0 || !data) return 2;
  for (int b = 0; b < count; b++) {
    const Placement& p = placements[b];
    void* exact = std::malloc(p.bytes);  // exact size: one byte past the end is outside
    std::fseek(data, long(p.offset), SEEK_SET);
    if (p.bytes && std::fread(exact, 1, p.bytes, data) != p.bytes) return 2;
    launch.buffers[p.index] = exact;
    launch.buffer_bytes[p.index] = p.bytes;
    std::fprintf(stderr, "MSL_BUFFER %d %p %zu\n", p.index, exact, p.bytes);
  }
  int status = msl_kernels[kernel_index](&launch);
  for (int b = 0; b < count; b++) {
    const Placement& p = placements[b];
    std::fseek(data, long(p.offset), SEEK_SET);
    std::fwrite(launch.buffers[p.index], 1, p.bytes, data);
    std::free(launch.buffers[p.index]);
  }
  std::fclose(data);
  if (status != 0) {
    std::fputs(launch.error, stdout);
    return status == 2 ? 4 : 3;  // 4: the caller's arguments do not fit the kernel
  }
  return 0;
}
