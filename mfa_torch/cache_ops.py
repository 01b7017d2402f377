"""torch.library glue for the KV-cache ops declared in csrc/ops.cpp, mfa::kv_cache_append and mfa::rotary_embedding:
argument checks, fake kernels, the per-device kernels (the Metal route where routing picks it, else the reference
route below, PyTorch operations in any floating dtype).

Canonical forms (csrc/ops.cpp): caches (P, Hk, page_size, D) views, block_table (B, max_pages) int32, new tokens
(B, Hk, Lnew, D), positions (B,) int32, rotary tables (seqlen_ro, rotary_dim / 2). flash_attn_with_kvcache turns
users' tensors into them.
"""
import torch

from . import routing
from ._validation import ArgumentTypeError
from ._validation import FLOAT_DTYPES as _FLOATS
from ._validation import require as _check
from .metal import kv_cache as metal_kv_cache  # imports _C, which loads the op schemas


def _check_type(condition, message):
    _check(condition, message, ArgumentTypeError)


def _check_dense_last_dim(name, t):
    _check(t.shape[-1] <= 1 or t.stride(-1) == 1,
           f"{name}'s last dim must be dense (stride 1), got strides {tuple(t.stride())}")


def _check_rotary_tables(cos, sin, dtype, device, head_dim, head_dim_name):
    """The tables' shapes and dtypes (both or neither); returns rotary_dim (0 without tables)."""
    _check((cos is None) == (sin is None), "rotary_cos and rotary_sin must be given together")
    if cos is None:
        return 0
    for name, t in (("rotary_cos", cos), ("rotary_sin", sin)):
        _check(t.dim() == 2, f"{name} must be 2-D (seqlen_ro, rotary_dim / 2), got shape {tuple(t.shape)}")
        _check(t.device == device, f"{name} is on {t.device} but the inputs are on {device}")
        _check_type(t.dtype in (dtype, torch.float32),
                    f"{name} must have the inputs' dtype ({dtype}) or float32, got {t.dtype}")
    _check(sin.shape == cos.shape, f"rotary_sin has shape {tuple(sin.shape)} but rotary_cos has {tuple(cos.shape)}")
    _check_type(sin.dtype == cos.dtype, f"rotary_sin has dtype {sin.dtype} but rotary_cos has {cos.dtype}")
    rotary_dim = 2 * cos.shape[1]
    _check(rotary_dim <= head_dim, f"rotary_dim (2 x rotary_cos.shape[1] = {rotary_dim}) must be <= {head_dim_name} "
                                   f"({head_dim})")
    return rotary_dim


def _check_positions(positions, batch, device):
    _check(positions.dim() == 1 and positions.shape[0] == batch,
           f"positions must have shape ({batch},), one cache position per sequence, got {tuple(positions.shape)}")
    _check_type(positions.dtype == torch.int32, f"positions must be int32, got {positions.dtype}")
    _check(positions.device == device, f"positions is on {positions.device} but the inputs are on {device}")


def _check_append_args(k_cache, v_cache, k, v, block_table, positions, cos, sin):
    for name, t in (("k_cache", k_cache), ("v_cache", v_cache), ("k", k), ("v", v)):
        _check(t.dim() == 4, f"{name} must be 4-D, got shape {tuple(t.shape)}")
        _check_type(t.dtype in _FLOATS, f"{name} must be float16, bfloat16, float32 or float64, got {t.dtype}")
        _check_type(t.dtype == k_cache.dtype, f"{name} has dtype {t.dtype} but k_cache has {k_cache.dtype}")
        _check(t.device == k_cache.device, f"{name} is on {t.device} but k_cache is on {k_cache.device}")
        _check_dense_last_dim(name, t)
    for name, t in (("k_cache", k_cache), ("v_cache", v_cache)):  # written in place: no element may alias another
        _check(all(n <= 1 or s != 0 for n, s in zip(t.shape, t.stride())),
               f"{name} must not be broadcast (a stride of 0 over a dim of size > 1), got strides {tuple(t.stride())}")
    P, Hk, page_size, D = k_cache.shape
    _check(v_cache.shape[:3] == k_cache.shape[:3],
           f"v_cache (pages, heads, page_size, Dv) {tuple(v_cache.shape)} does not match k_cache "
           f"{tuple(k_cache.shape)}")
    B, Lnew = k.shape[0], k.shape[2]
    _check(k.shape[1] == Hk and k.shape[3] == D,
           f"k must have shape (batch, {Hk}, new tokens, {D}) to match k_cache {tuple(k_cache.shape)}, got "
           f"{tuple(k.shape)}")
    _check(v.shape[:3] == k.shape[:3] and v.shape[3] == v_cache.shape[3],
           f"v must have shape {(B, Hk, Lnew, v_cache.shape[3])} to match k and v_cache, got {tuple(v.shape)}")
    _check(block_table.dim() == 2 and block_table.shape[0] == B,
           f"block_table must have shape ({B}, max_pages), got {tuple(block_table.shape)}")
    _check_type(block_table.dtype == torch.int32, f"block_table must be int32, got {block_table.dtype}")
    _check(block_table.device == k_cache.device,
           f"block_table is on {block_table.device} but k_cache is on {k_cache.device}")
    _check_positions(positions, B, k_cache.device)
    _check_rotary_tables(cos, sin, k_cache.dtype, k_cache.device, D, "k's head dim")


def _describe(values):
    return ", ".join(f"sequence {b}: {value}" for b, value in values[:4]) + (", ..." if len(values) > 4 else "")


def _check_positions_values(positions, new_len, new_text, capacity, capacity_text, rotary_len=None):
    """The positions' values (which only a running kernel can read, not fake tensors): each sequence's `new_len`
    positions from positions[b] lie in [0, capacity) (and [0, rotary_len)). Returns them as int64."""
    first = positions.to(torch.int64)
    end = first + new_len
    low, high = (int(x) for x in torch.stack([first.min(), end.max()]).tolist())
    if low < 0:
        bad = [(b, p) for b, p in enumerate(first.tolist()) if p < 0]
        _check(False, f"positions must be >= 0, got {_describe(bad)}")
    if high > capacity:
        bad = [(b, p) for b, p in enumerate(first.tolist()) if p + new_len > capacity]
        _check(False, f"positions + {new_text} ({new_len}) must be <= {capacity_text} ({capacity}), got positions "
                      f"{_describe(bad)}")
    if rotary_len is not None and high > rotary_len:
        bad = [(b, p) for b, p in enumerate(first.tolist()) if p + new_len > rotary_len]
        _check(False, f"positions + {new_text} ({new_len}) must be <= seqlen_ro (rotary_cos.shape[0] = {rotary_len}): "
                      f"the rotary tables have no angles past it, got positions {_describe(bad)}")
    return first


def _check_append_values(k_cache, k, block_table, positions, cos):
    B, Lnew = k.shape[0], k.shape[2]
    if B == 0 or Lnew == 0:
        return
    P, page_size = k_cache.shape[0], k_cache.shape[2]
    max_pages = block_table.shape[1]
    first = _check_positions_values(positions, Lnew, "new tokens", max_pages * page_size,
                                    f"max_pages x page_size ({max_pages} x {page_size})",
                                    None if cos is None else cos.shape[0])
    logical = first[:, None] + torch.arange(Lnew, device=first.device)
    blocks = torch.div(logical, page_size, rounding_mode="floor")
    pages = block_table.gather(1, blocks)
    low, high = (int(x) for x in torch.stack([pages.min(), pages.max()]).tolist())
    if low < 0 or high >= P:
        bad = ((pages < 0) | (pages >= P)).nonzero()[0].tolist()
        b, j = bad[0], int(blocks[bad[0], bad[1]])
        _check(False, f"block_table entries the new tokens are written to must be pages in [0, {P}), got "
                      f"block_table[{b}, {j}] = {int(block_table[b, j])}")


def _check_rotary_args(x, positions, cos, sin):
    _check(x.dim() == 4, f"x must be 4-D (batch, heads, seqlen, head_dim), got shape {tuple(x.shape)}")
    _check_type(x.dtype in _FLOATS, f"x must be float16, bfloat16, float32 or float64, got {x.dtype}")
    _check_dense_last_dim("x", x)
    _check_positions(positions, x.shape[0], x.device)
    _check_rotary_tables(cos, sin, x.dtype, x.device, x.shape[3], "x's head dim")


# --- fake kernels ------------------------------------------------------------------------------------------------

@torch.library.register_fake("mfa::kv_cache_append")
def _kv_cache_append_fake(k_cache, v_cache, k, v, block_table, positions, rotary_cos, rotary_sin,
                          rotary_interleaved):
    _check_append_args(k_cache, v_cache, k, v, block_table, positions, rotary_cos, rotary_sin)


@torch.library.register_fake("mfa::rotary_embedding")
def _rotary_embedding_fake(x, positions, rotary_cos, rotary_sin, interleaved, same_position):
    _check_rotary_args(x, positions, rotary_cos, rotary_sin)
    return x.new_empty(x.shape)


# --- reference route ---------------------------------------------------------------------------------------------

def _rotate(x, positions, cos, sin, interleaved):
    """x (..., L, D) with positions (..., L) (broadcast against x's leading dims) rotated, in float (float64 for
    float64 inputs) and rounded once to x's dtype; cos / sin None: x itself."""
    if cos is None or cos.shape[1] == 0:
        return x
    compute = torch.float64 if x.dtype == torch.float64 else torch.float32
    half = cos.shape[1]
    c, s = cos[positions].to(compute), sin[positions].to(compute)  # (..., L, half)
    head = x[..., :2 * half].to(compute)
    if interleaved:
        x1, x2 = head[..., 0::2], head[..., 1::2]
    else:
        x1, x2 = head[..., :half], head[..., half:]
    r1, r2 = x1 * c - x2 * s, x1 * s + x2 * c
    turned = torch.stack([r1, r2], -1).flatten(-2) if interleaved else torch.cat([r1, r2], -1)
    return torch.cat([turned.to(x.dtype), x[..., 2 * half:]], -1)


def kv_cache_append_reference(k_cache, v_cache, k, v, block_table, positions, rotary_cos, rotary_sin, interleaved):
    B, Lnew = k.shape[0], k.shape[2]
    if B == 0 or Lnew == 0:
        return
    page_size = k_cache.shape[2]
    logical = positions.to(torch.int64)[:, None] + torch.arange(Lnew, device=k.device)  # (B, Lnew)
    pages = block_table.to(torch.int64).gather(1, torch.div(logical, page_size, rounding_mode="floor"))
    rows = logical % page_size
    k_rot = _rotate(k, logical[:, None, :], rotary_cos, rotary_sin, interleaved)
    # cache[pages, :, rows] is (B, Lnew, Hk, D): the indexed dims first
    k_cache[pages, :, rows] = k_rot.transpose(1, 2)
    v_cache[pages, :, rows] = v.transpose(1, 2)


def rotary_embedding_reference(x, positions, rotary_cos, rotary_sin, interleaved, same_position):
    L = x.shape[2]
    offsets = torch.zeros(L, dtype=torch.int64, device=x.device) if same_position else \
        torch.arange(L, device=x.device)
    at = positions.to(torch.int64)[:, None, None] + offsets  # (B, 1, L)
    return _rotate(x, at, rotary_cos, rotary_sin, interleaved).contiguous()


# --- kernels: every device type; the Metal route (MPS stream or emulator) where routing picks it, else reference ---

def _kv_cache_append_kernel(k_cache, v_cache, k, v, block_table, positions, rotary_cos, rotary_sin,
                            rotary_interleaved):
    _check_append_args(k_cache, v_cache, k, v, block_table, positions, rotary_cos, rotary_sin)
    _check_append_values(k_cache, k, block_table, positions, rotary_cos)
    route = routing.kernel_route(k_cache.device, metal_kv_cache.metal_lacks(
        k_cache.dtype, None if rotary_cos is None else rotary_cos.dtype))
    if route is not None:
        return metal_kv_cache.kv_cache_append(route, k_cache, v_cache, k, v, block_table, positions, rotary_cos,
                                              rotary_sin, rotary_interleaved)
    return kv_cache_append_reference(k_cache, v_cache, k, v, block_table, positions, rotary_cos, rotary_sin,
                                     rotary_interleaved)


def _rotary_embedding_kernel(x, positions, rotary_cos, rotary_sin, interleaved, same_position):
    _check_rotary_args(x, positions, rotary_cos, rotary_sin)
    B, _, L, _ = x.shape
    if B and L:
        _check_positions_values(positions, 1 if same_position else L, "1 (same_position)" if same_position else
                                "x's tokens", rotary_cos.shape[0], "seqlen_ro (rotary_cos.shape[0])")
    route = routing.kernel_route(x.device, metal_kv_cache.metal_lacks(x.dtype, rotary_cos.dtype))
    if route is not None:
        return metal_kv_cache.rotary_embedding(route, x, positions, rotary_cos, rotary_sin, interleaved,
                                               same_position)
    return rotary_embedding_reference(x, positions, rotary_cos, rotary_sin, interleaved, same_position)


for _op, _kernel in (("mfa::kv_cache_append", _kv_cache_append_kernel),
                    ("mfa::rotary_embedding", _rotary_embedding_kernel)):
    for _device_type in (None, "mps"):  # None: CompositeExplicitAutograd, every device type
        torch.library.register_kernel(_op, _device_type, _kernel)
