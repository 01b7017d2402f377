"""Fixtures of the emulator tests.

Libraries are compiled once per module (compiling is the slow part) and come from the emulator's
cache when their sources did not change.
"""
import pathlib

import pytest

from mfa_torch import emulator

KERNELS = pathlib.Path(__file__).with_name("kernels")


@pytest.fixture(scope="session")
def kernels_dir():
    return KERNELS


@pytest.fixture(scope="session")
def compile_kernels():
    """compile_kernels(name, **options) compiles tests/emulator/kernels/<name>."""
    return lambda name, **options: emulator.compile(KERNELS / name, **options)

