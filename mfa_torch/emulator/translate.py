"""Preprocessed MSL -> C++ for the shim, plus a description of its kernels and function constants."""
import dataclasses

from .kernels import find_kernels
from .rewrite import Rewriter


@dataclasses.dataclass
class Translation:
    text: str
    kernels: list
    function_constants: list


def translate(preprocessed, function_constants=None, count_divisions=False):
    """Rewrite preprocessed MSL to shim C++; returns a Translation (text, kernels, function constants).
    count_divisions: for profile builds (rewrite.py)."""
    rewriter = Rewriter(preprocessed, function_constants, count_divisions)
    rewriter.run()
    kernels = find_kernels(rewriter.tokens, rewriter.constants)
    return Translation(rewriter.rewritten(), kernels, list(rewriter.constants.values()))
