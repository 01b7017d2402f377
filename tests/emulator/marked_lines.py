"""Where KernelError messages must point: lines of the test kernels tagged with a `mark: <name>` comment."""
import pathlib

KERNELS = pathlib.Path(__file__).with_name("kernels")


def marked_line(source):
    """line_of(mark) -> "<path>:<line>" of the line of tests/emulator/kernels/<source> ending in "mark: <mark>",
    the location KernelError messages must name."""
    path = KERNELS / source
    text = path.read_text().splitlines()

    def line_of(mark):
        (number,) = [i + 1 for i, t in enumerate(text) if t.rstrip().endswith(f"mark: {mark}")]
        return f"{path}:{number}"

    return line_of
