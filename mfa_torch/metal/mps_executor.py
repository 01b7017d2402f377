"""Runs launch plans on PyTorch's MPS stream through the C++ executor (macOS builds)."""
from .. import _C
from .shader_files import shader_dir


def run_plan(plan, table):
    """table: {name: MPS tensor} for every name the plan binds."""
    shader_dir()  # tells the C++ executor where the sources are
    _C.run_plan_on_mps(plan, table)
