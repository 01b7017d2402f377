"""Checked execution modes, run in a child process so that nothing can take the caller down.

checks="bounds": the kernel is built with AddressSanitizer; the child copies every buffer into a heap
allocation of exactly its size, so any device access outside a tensor's bytes is reported.
checks="races": built with ThreadSanitizer, whose fiber API sees each GPU thread as its own thread:
two threads of a threadgroup touching the same memory (one writing) with no barrier between them are
reported with both source lines.
Buffers travel through a temporary file and are copied back into the tensors after a clean launch, each one that
the launch changed (a tensor bound at two indices, one of them only read, keeps what the writes gave it).
"""
import ctypes
import os
import pathlib
import re
import shutil
import subprocess
import tempfile

from .compiler import PACKAGE_DIR
from .errors import KernelError
from .library import LibraryBase

_SANITIZER_OPTIONS = {
    "bounds": ("ASAN_OPTIONS", "detect_leaks=0:halt_on_error=1:abort_on_error=0:detect_stack_use_after_return=0:symbolize=1"),
    "races": ("TSAN_OPTIONS", "halt_on_error=1:report_signal_unsafe=0:history_size=7:symbolize=1"),
}
_FRAME_LOCATION = re.compile(r"(?P<file>[^\s()]+):(?P<line>\d+)(?::\d+)?(?:\s+\(|\s*$)")
_BUFFER_LINE = re.compile(r"^MSL_BUFFER (\d+) (0x[0-9a-f]+|\(nil\)) (\d+)$", re.M)
_ADDRESS = re.compile(r"\bat (0x[0-9a-f]+)")


def _user_frame(frames):
    """file:line of the first stack frame in the kernel source (not in the shim, runtime or system)."""
    for frame in frames:
        m = _FRAME_LOCATION.search(frame)
        internal = m and (m["file"].startswith((str(PACKAGE_DIR), "/usr/")) or m["file"].endswith("<emulator-launchers>"))
        if m and not internal and "/include/c++/" not in m["file"]:
            return f"{m['file']}:{m['line']}"
    return None


def _sections(report):
    """[(header line, [frame lines])] of a sanitizer report."""
    sections, current = [], None
    for line in report.splitlines():
        if re.match(r"^\s+#\d+ ", line):
            if current is not None:
                current[1].append(line)
        else:
            current = (line.strip(), [])
            sections.append(current)
    return [s for s in sections if s[1]]


def _buffer_of(address, buffers):
    for index, (start, nbytes) in buffers.items():
        if start <= address < start + max(nbytes, 1):
            return index, address - start
    return None


def explain_crash(report, kernel):
    """A sanitizer's report of something other than a bad access or a race (e.g. a wild pointer: SEGV)."""
    summary = next(line for line in report.splitlines() if "ERROR: " in line).split("ERROR: ", 1)[1]
    where = _user_frame([f for s in _sections(report) for f in s[1]]) or "?"
    return f"{where}: {summary} [kernel {kernel}]"


def explain_asan(report, buffers, kernel):
    sections = _sections(report)
    access = next((s for s in sections if re.match(r"(READ|WRITE) of size", s[0])), None)
    if access is None:
        return explain_crash(report, kernel)
    summary = next(line for line in report.splitlines() if "ERROR: AddressSanitizer" in line)
    kind, size = access[0].split()[0].lower(), access[0].split()[3]
    where = _user_frame(access[1]) or "?"
    address = int(_ADDRESS.search(access[0])[1], 16)
    region = re.search(r"located \d+ bytes (?:to the (?:left|right) of|inside of) \d+-byte region \[(0x[0-9a-f]+),", report)
    owner = {start: index for index, (start, _) in buffers.items()}.get(int(region[1], 16)) if region else None
    if owner is not None:
        start, nbytes = buffers[owner]
        target = f"at byte offset {address - start} of buffer({owner}), which has {nbytes} bytes"
    elif "use-after-poison" in summary:
        target = "in threadgroup memory outside every threadgroup object (past the end of a threadgroup array?)"
    else:
        target = "outside every buffer"
    return f"{where}: out-of-bounds {kind} of {size} bytes {target} [kernel {kernel}]"


def explain_tsan(report, buffers, kernel):
    sections = _sections(report)
    accesses = [s for s in sections if re.search(r"(Read|Write|read|write) of size \d+ at", s[0])]
    if len(accesses) < 2:
        where = _user_frame([f for s in sections for f in s[1]]) or "?"
        return f"{where}: ThreadSanitizer: {report.strip().splitlines()[0]} [kernel {kernel}]"
    (first, first_frames), (second, second_frames) = accesses[:2]
    address = int(_ADDRESS.search(first)[1], 16)
    inside = _buffer_of(address, buffers)
    memory = f"device memory (buffer({inside[0]}), byte offset {inside[1]})" if inside else "threadgroup memory"
    def kind(header):
        return "write" if "rite" in header.split(" of size")[0] else "read"
    here = _user_frame(first_frames) or "?"
    there = _user_frame(second_frames) or "?"
    return (f"{here}: data race on {memory}: {kind(first)} at {here} and {kind(second)} at {there} by another "
            f"GPU thread, with no barrier (or atomic) ordering them [kernel {kernel}]")


class CheckedLibrary(LibraryBase):
    """Same API as Library; each dispatch runs the sanitizer-built executable in a child process."""

    def __init__(self, path, translation, filename, checks):
        super().__init__(translation, filename)
        self._executable = str(path)
        self.checks = checks

    def _run(self, request):
        kernel = self._kernels[request.kernel_index].name
        with tempfile.TemporaryDirectory(prefix="mfa-emulator-") as tmp:
            spec_path, data_path = pathlib.Path(tmp) / "spec", pathlib.Path(tmp) / "data"
            lines = [f"kernel {request.kernel_index}", "grid " + " ".join(map(str, request.grid)),
                     "size " + " ".join(map(str, request.threadgroup_size)), f"strict {int(request.strict)}",
                     f"threads {request.os_threads}"]
            lines += [f"tgmem {i} {n}" for i, n in request.threadgroup_memory.items()]
            offsets, payloads, offset = {}, {}, 0
            with open(data_path, "wb") as data:
                for index, buffer in request.buffers.items():
                    payload = ctypes.string_at(buffer.tensor.data_ptr(), buffer.nbytes) if buffer.tensor is not None else buffer.data
                    data.write(payload)
                    offsets[index], payloads[index] = offset, payload
                    lines.append(f"buffer {index} {offset} {len(payload)}")
                    offset += len(payload)
            spec_path.write_text("\n".join(lines) + "\n")
            result = self._execute(spec_path, data_path, request.timeout)
            if result.returncode == 4:
                raise ValueError(result.stdout)
            if result.returncode == 0:
                raw = data_path.read_bytes()
                for index, buffer in request.buffers.items():
                    after = raw[offsets[index]:offsets[index] + buffer.nbytes]
                    if buffer.tensor is not None and after != payloads[index]:
                        ctypes.memmove(buffer.tensor.data_ptr(), after, buffer.nbytes)
                return
        raise KernelError(self._explain(result, kernel))

    def _execute(self, spec_path, data_path, timeout):
        variable, options = _SANITIZER_OPTIONS[self.checks]
        env = dict(os.environ, **{variable: options})
        command = [self._executable, str(spec_path), str(data_path)]
        try:
            result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=timeout)
            if "unexpected memory mapping" in result.stderr and shutil.which("setarch"):
                # ThreadSanitizer cannot map its shadow memory under high-entropy ASLR: run without ASLR
                result = subprocess.run(["setarch", os.uname().machine, "-R", *command], capture_output=True, text=True,
                                        env=env, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise KernelError(f"the checked launch did not finish within {timeout} s (an endless loop?)") from None
        return result

    def _explain(self, result, kernel):
        buffers = {int(i): (0 if a == "(nil)" else int(a, 16), int(n)) for i, a, n in _BUFFER_LINE.findall(result.stderr)}
        if "ERROR: AddressSanitizer" in result.stderr:
            return explain_asan(result.stderr, buffers, kernel)
        if "WARNING: ThreadSanitizer: data race" in result.stderr:
            return explain_tsan(result.stderr, buffers, kernel)
        if "ERROR: ThreadSanitizer" in result.stderr:
            return explain_crash(result.stderr, kernel)
        if result.returncode in (3, 4) and result.stdout:
            return result.stdout
        tail = "\n".join(result.stderr.strip().splitlines()[-20:])
        return f"the checked launch of kernel {kernel} failed (exit status {result.returncode}):\n{tail}"
