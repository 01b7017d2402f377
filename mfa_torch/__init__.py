"""mfa_torch: FlashAttention-style attention and GEMM for PyTorch, with Metal kernels for Apple GPUs.

Public API only; see README.md for routes, semantics and the backend switch.
"""
from ._validation import ArgumentError, ArgumentTypeError
from .attention import (explain, flash_attn_func, flash_attn_kvpacked_func, flash_attn_qkvpacked_func,
                        flash_attn_varlen_func, flash_attn_varlen_kvpacked_func, flash_attn_varlen_qkvpacked_func,
                        scaled_dot_product_attention)
from .flex import flex_attention
from .gemm import linear, matmul
from .kv_cache import flash_attn_with_kvcache
from .patch import patch, unpatch
from .routing import backend, get_backend, set_backend

__version__ = "0.1.0"

__all__ = [
    "scaled_dot_product_attention", "flash_attn_func", "flash_attn_varlen_func", "flash_attn_qkvpacked_func",
    "flash_attn_kvpacked_func", "flash_attn_varlen_qkvpacked_func", "flash_attn_varlen_kvpacked_func",
    "flash_attn_with_kvcache", "matmul",
    "linear", "flex_attention", "set_backend", "get_backend", "backend", "explain", "patch", "unpatch", "ArgumentError",
    "ArgumentTypeError",
]
