"""Exceptions raised by the emulator."""


class KernelError(RuntimeError):
    """A kernel did something undefined on a GPU (or failed to compile). The message names the .metal
    file and line and what happened."""


class CompileError(KernelError):
    """The kernel source does not compile under the emulator."""
