"""Where the shipped .metal sources live, for both executors."""
import functools
import pathlib

from .. import _C

PACKAGE = pathlib.Path(__file__).resolve().parents[1]


@functools.cache
def shader_dir():
    # An installed package (pip install ., a wheel) has the sources as mfa_torch/shaders/; a source checkout (also an
    # editable install, which maps the package onto the checkout) has shaders/ beside the package. Plain paths, not
    # importlib.resources: shaders/ has no __init__.py, and str() of a namespace package's resource is not a path.
    for directory in (PACKAGE / "shaders", PACKAGE.parent / "shaders"):
        if (directory / "attention_params.h").is_file():
            _C.set_shader_directory(str(directory))  # the MPS executor reads the sources at first use
            return directory
    raise RuntimeError(f"mfa_torch: the Metal shader sources are missing: neither {PACKAGE / 'shaders'} nor "
                       f"{PACKAGE.parent / 'shaders'} holds attention_params.h; reinstall mfa_torch")
