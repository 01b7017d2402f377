"""The Metal kernel route: launch plans from the C++ planners (csrc/attention, csrc/gemm), run by one of two
executors: the MPS executor (csrc/mps, PyTorch's MPS stream) or the emulator executor (CPU tensors, the MSL
emulator running the same shaders)."""
