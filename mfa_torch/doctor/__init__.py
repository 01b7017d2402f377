"""`python -m mfa_torch.doctor`: one command that tells whether mfa_torch works on this machine. It prints the
environment, runs the lane-layout self-test, compiles every shader variant the planners emit, and runs a small
correctness sweep of attention and GEMM on the Metal kernels against float64, on the GPU when there is one (on the
MSL emulator otherwise), and ends with one line per check."""
