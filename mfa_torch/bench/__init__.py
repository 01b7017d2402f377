"""`python -m mfa_torch.bench`: attention and GEMM throughput of mfa_torch next to PyTorch's own path and MLX, or,
under the emulator, the work the Metal kernels do. See README.md, "Benchmarks".

  formulas.py         FLOPs, metal-flash-attention's instruction counts, tile counts
  cases.py            the sweeps
  implementations.py  mfa_torch, PyTorch, MLX: one call each, memory statistics, what does not fit
  measure.py          timing
  run.py / work.py    timed rows / emulator work-count rows
  report.py           markdown, CSV, plots
"""
