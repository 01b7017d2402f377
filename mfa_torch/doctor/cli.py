"""Command line of `python -m mfa_torch.doctor`: the environment, then every check with its full error when it
fails, then one line per check and where to send the output. Exit status 0 when every check passed, else 1."""
import argparse
import io
import sys

import torch

from ..bench import environment
from . import checks

DESCRIPTION = """Checks that mfa_torch works on this machine: prints the environment (chip, OS, torch, mfa_torch,
GPU family, whether the MPS executor is built), runs the lane-layout self-test of the simdgroup_matrix layout the
kernels assume, compiles every shader variant the planners emit, and runs a small correctness sweep of attention
forward/backward and GEMM on mfa_torch's Metal kernels against float64. On a Mac the kernels run on the GPU; where
PyTorch sees no Apple GPU they run on the MSL emulator (the first run compiles the variants, later runs use the
cache). Ends with one line per check (ok / FAILED: error). Exit status 0 when every check passed, 1 otherwise."""
SEND = "Please open an issue on the mfa_torch repository with this output (all of it)."


def _one_line(error):
    text = " ".join(str(error).split())
    text = f"{type(error).__name__}: {text}" if text else type(error).__name__
    return text if len(text) <= 300 else text[:297] + "..."


def _run(function):
    """'ok' (with the check's note) or 'FAILED: <error>'; the full error is printed here."""
    try:
        note = function()
    except Exception as error:  # noqa: BLE001  (a failed check is a result to report, never a crash)
        print(f"    {type(error).__name__}: {error}")
        return f"FAILED: {_one_line(error)}"
    return f"ok ({note})" if note else "ok"


def _describe_environment(route):
    device = torch.device("mps" if route == "metal" else "cpu")
    for key, value in environment.describe(device, "doctor", emulator=route == "emulator"):
        print(f"  {key}: {value}")


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m mfa_torch.doctor", description=DESCRIPTION)
    parser.add_argument("--quick", action="store_true",
                        help="skip compiling every shader variant and sweep float16 only (the sweep still compiles "
                             "the variants it runs)")
    args = parser.parse_args(argv)
    if isinstance(sys.stdout, io.TextIOWrapper):
        sys.stdout.reconfigure(line_buffering=True)  # progress shows as it happens, also through a pipe
    route = checks.route()
    print("mfa_torch doctor")
    results = [("environment", _run(lambda: _describe_environment(route)))]
    if route == "metal":
        print("The checks run mfa_torch's Metal kernels on this Mac's GPU (the MPS device).")
    else:
        print("No GPU was used: PyTorch sees no Apple GPU (MPS device) here, so the checks run the shipped Metal "
              "kernels on the MSL emulator (CPU). Run this on a Mac to check the GPU.")
    planned = checks.planned(route, args.quick)
    for number, (name, function) in enumerate(planned, 1):
        print(f"[{number}/{len(planned)}] {name}", flush=True)
        results.append((name, _run(function)))
    failed = sum(status.startswith("FAILED") for _, status in results)
    print("\nSummary" + (" (no GPU was used: MSL emulator)" if route == "emulator" else " (GPU)"))
    for name, status in results:
        print(f"{name}: {status}")
    print(f"{failed} of {len(results)} checks FAILED." if failed else f"All {len(results)} checks passed.")
    print(SEND)
    return 1 if failed else 0
