"""The C++ headers of another torch release, taken from its macOS arm64 wheel without installing it, so CI can
type-check the extension against the oldest torch it claims to support.

    python tests/torch_headers.py VERSION DIR    # prints DIR/torch-VERSION/torch/include
"""
import fcntl
import pathlib
import shutil
import subprocess
import sys
import tempfile
import zipfile

# The wheel the MPS executor is compiled against on a Mac; Python 3.11 wheels exist for every torch 2.x.
PLATFORM = "macosx_14_0_arm64"
PYTHON_VERSION = "3.11"


def torch_headers(version: str, cache: pathlib.Path) -> pathlib.Path:
    """`torch/include` of torch `version`'s macOS wheel under `cache`, downloaded once (about 70 MB) and unpacked
    without the rest of the wheel. Raises RuntimeError with pip's message when the download fails."""
    root = pathlib.Path(cache) / f"torch-{version}"
    include = root / "torch" / "include"
    if include.is_dir():
        return include
    root.parent.mkdir(parents=True, exist_ok=True)
    with open(root.parent / f"torch-{version}.lock", "w") as lock:  # test processes running in parallel fetch once
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not include.is_dir():
            _fetch(version, root)
    return include


def _fetch(version, root):
    with tempfile.TemporaryDirectory(dir=root.parent) as scratch:
        download = subprocess.run(
            [sys.executable, "-m", "pip", "download", f"torch=={version}", "--no-deps", "--only-binary=:all:",
             "--platform", PLATFORM, "--python-version", PYTHON_VERSION, "--quiet", "-d", scratch],
            capture_output=True, text=True)
        if download.returncode != 0:
            raise RuntimeError(f"could not download the torch {version} wheel for {PLATFORM} "
                               f"(network needed once): {download.stderr.strip()[-2000:]}")
        (wheel,) = pathlib.Path(scratch).glob("torch-*.whl")
        unpacked = pathlib.Path(scratch) / "unpacked"
        with zipfile.ZipFile(wheel) as archive:
            archive.extractall(unpacked, [n for n in archive.namelist() if n.startswith("torch/include/")])
        # A rename, so a run interrupted while unpacking never leaves a half-filled cache entry behind.
        shutil.rmtree(root, ignore_errors=True)
        unpacked.rename(root)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python tests/torch_headers.py VERSION DIR")
    print(torch_headers(sys.argv[1], pathlib.Path(sys.argv[2])))
