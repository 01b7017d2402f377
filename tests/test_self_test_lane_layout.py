"""The lane-layout self-test (shaders/lane_layout_self_test.metal, judged by mfa_torch/doctor/lane_layout.py): on the
GPU it is the first thing a Mac run tells us; here the emulator runs the same kernel and the same comparison, and
deliberately broken results prove the comparison catches each kind of mismatch."""
import pytest
import torch

from mfa_torch.doctor import lane_layout
from mfa_torch.metal import lane_layout_self_test as kernel


@pytest.mark.mps
def test_the_gpu_has_the_lane_layout_the_kernels_assume():
    lane_layout.check("metal")


@pytest.mark.emulator
def test_the_emulator_passes_the_self_test():
    lane_layout.check("emulator")


def test_the_expected_layout_is_the_documented_one():
    """Properties the documented layout has, checked without its formula: the 32 lanes' element pairs tile the 8x8
    matrix exactly once, and the four lanes that share a row differ only in lane bits 0 and 3 (the shuffle masks
    of a row reduction)."""
    covered = sorted((r, c + e) for r, c in map(lane_layout.expected_position, range(32)) for e in (0, 1))
    assert covered == [(r, c) for r in range(8) for c in range(8)]
    for row in range(8):
        lanes = [lane for lane in range(32) if lane_layout.expected_position(lane)[0] == row]
        assert {lane ^ lanes[0] for lane in lanes} == {0b0000, 0b0001, 0b1000, 0b1001}
    assert lane_layout.expected_position(0) == (0, 0) and lane_layout.expected_position(31) == (7, 6)


@pytest.fixture(scope="module")
def emulated():
    a, b, c = lane_layout.operands()
    return kernel.run("emulator", a.float(), b.float(), c.float()), (a, b, c)


def _broken(results, what):
    broken = {name: t.clone() for name, t in results.items()}
    if what == "transposed load reads untransposed":
        broken["loaded"][1] = broken["loaded"][0]
    elif what == "threadgroup load swaps a lane's elements":
        broken["loaded"][2, 5] = broken["loaded"][2, 5].flip(0)
    elif what == "shader helpers swap row and column":
        broken["coords"] = broken["coords"].flip(1)
    elif what == "matrix unit drops the accumulator":
        a, b, c = lane_layout.operands()
        broken["product"] = (a @ b).float()
    return broken


@pytest.mark.emulator
@pytest.mark.parametrize("what", ["transposed load reads untransposed", "threadgroup load swaps a lane's elements",
                                  "shader helpers swap row and column", "matrix unit drops the accumulator"])
def test_each_kind_of_wrong_result_is_reported(emulated, what):
    results, operands = emulated
    assert lane_layout.mismatches(results, *operands) == []
    found = lane_layout.mismatches(_broken(results, what), *operands)
    word = {"transposed load reads untransposed": "device transposed memory",
            "threadgroup load swaps a lane's elements": "threadgroup memory: lane 5",
            "shader helpers swap row and column": "mfa_tile_row/mfa_tile_col",
            "matrix unit drops the accumulator": "simdgroup_multiply_accumulate"}[what]
    assert found and all(word in line for line in found), found


@pytest.mark.emulator
def test_a_wrong_expected_layout_fails_the_self_test(monkeypatch):
    """A layout with the quadrants' columns and rows exchanged (lanes 8-15 bottom left) fails every check that reads
    thread_elements()."""
    documented = lane_layout.expected_position

    def exchanged(lane):
        row, col = documented(lane)
        return 4 * (col // 4) + row % 4, 4 * (row // 4) + col % 4

    monkeypatch.setattr(lane_layout, "expected_position", exchanged)
    with pytest.raises(AssertionError, match=r"mfa_tile_row/mfa_tile_col give .*\(and \d+ more\)"):
        lane_layout.check("emulator")
