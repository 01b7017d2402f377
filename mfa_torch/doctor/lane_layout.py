"""The lane-layout self-test's verdict: what each lane of an 8x8 simdgroup_matrix must hold under the layout every
mfa_torch kernel assumes, and a float64 product for the matrix unit, compared with what the GPU (or the emulator)
did."""
import torch

from ..metal import lane_layout_self_test as kernel


def expected_position(lane):
    """(row, column) of thread_elements()[0] of `lane`; [1] is one column right. The de facto Apple layout as
    described (not as the shader helpers compute it): the tile is four 4x4 quadrants; lanes 0-7 own the top left,
    8-15 the top right, 16-23 the bottom left, 24-31 the bottom right; inside a quadrant the lanes cover its rows in
    order, two lanes (two elements each) per row."""
    quadrant, within = divmod(lane, 8)
    quadrant_row, quadrant_col = divmod(quadrant, 2)
    return 4 * quadrant_row + within // 2, 4 * quadrant_col + 2 * (within % 2)


def operands():
    """Small integers (every product and sum exact in float32), no symmetry, so a transposed or swapped operand
    changes the product."""
    i = torch.arange(8, dtype=torch.float64).reshape(8, 1)
    j = torch.arange(8, dtype=torch.float64).reshape(1, 8)
    return (3 * i + 5 * j) % 9 - 4, (7 * i + 2 * j) % 9 - 4, i - 2 * j


def mismatches(results, a, b, c):
    """What the kernel's results (lane_layout_self_test.run) got wrong, as readable lines; empty when all is right."""
    iota = torch.arange(64, dtype=torch.float64).reshape(8, 8)
    sources = {"device": iota, "device transposed": iota.T, "threadgroup": iota, "threadgroup transposed": iota.T}
    problems = []
    for lane in range(32):
        row, col = expected_position(lane)
        got = tuple(int(x) for x in results["coords"][lane])
        if got != (row, col):
            problems.append(f"lane {lane}: mfa_tile_row/mfa_tile_col give {got}, the layout is {(row, col)}")
        for load, name in enumerate(kernel.LOADS):
            want = [float(sources[name][row, col + e]) for e in (0, 1)]
            held = [float(x) for x in results["loaded"][load, lane]]
            if held != want:
                problems.append(f"simdgroup_load from {name} memory: lane {lane} holds {held}, the kernels assume "
                                f"{want}")
    reference = a @ b + c
    wrong = (results["product"].double() != reference).nonzero().tolist()
    if wrong:
        r, col = wrong[0]
        problems.append(f"simdgroup_multiply_accumulate: {len(wrong)} of 64 elements differ from the float64 "
                        f"product, e.g. ({r}, {col}) = {float(results['product'][r, col])}, expected "
                        f"{float(reference[r, col])}")
    return problems


def check(route):
    """Runs the self-test on `route` ("metal" or "emulator"); raises with the first few mismatches."""
    a, b, c = operands()
    problems = mismatches(kernel.run(route, a.float(), b.float(), c.float()), a, b, c)
    if problems:
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        raise AssertionError("; ".join(problems[:3]) + more)
