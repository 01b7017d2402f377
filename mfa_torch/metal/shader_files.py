"""Where the shipped .metal sources live, for both executors."""
import functools
import importlib.resources
import pathlib

from .. import _C


@functools.cache
def shader_dir():
    # A source checkout (also an editable install) has shaders/ beside the package; a wheel installs them as the
    # package mfa_torch.shaders.
    checkout = pathlib.Path(__file__).resolve().parents[2] / "shaders"
    directory = checkout if (checkout / "attention_params.h").is_file() else \
        pathlib.Path(str(importlib.resources.files("mfa_torch.shaders")))
    _C.set_shader_directory(str(directory))  # the MPS executor reads the sources at first use
    return directory
