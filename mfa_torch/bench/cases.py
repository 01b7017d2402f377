"""What the benchmark runs: the attention and GEMM cases of a sweep (full, --quick, emulator, user overrides)."""
import dataclasses

import torch

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
          "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}

# Sequence lengths L = S; 32768 runs where the memory estimate fits (implementations.attention_skip_reason).
GPU_SIZES = (256, 512, 1024, 2048, 4096, 8192, 16384, 32768)
# Off the GPU the reference route is timed on CPU cores: the long sequences would take hours.
CPU_SIZES = (256, 512, 1024, 2048)
# The square sizes of metal-flash-attention's GEMM table.
GEMM_SIZES = (256, 384, 512, 768, 1024, 1280, 1440, 2048, 3072, 4096, 6144)
CPU_GEMM_SIZES = (256, 512, 1024, 2048)
HEAD_DIMS = (64, 80, 128, 256)  # 80: an odd one (not a power of two), common in diffusion models
GQA_HEAD_DIM = 128
HEADS, GQA_KV_HEADS = 8, 2
EMULATOR_SIZES = (256, 512)  # the emulator runs every GPU thread on the CPU: keep it small
EMULATOR_HEAD_DIMS = (64, 80, 128)
EMULATOR_HEADS, EMULATOR_GQA_KV_HEADS = 2, 1  # GQA under the emulator: group of 2 on one K/V head


@dataclasses.dataclass(frozen=True)
class AttentionCase:
    dtype: torch.dtype
    L: int
    D: int
    Hq: int
    Hk: int
    causal: bool
    B: int = 1

    @property
    def S(self):
        return self.L

    @property
    def group(self):
        return self.Hq // self.Hk

    @property
    def dtype_name(self):
        return str(self.dtype).removeprefix("torch.")

    def label(self):
        heads = f"H={self.Hq}" if self.Hq == self.Hk else f"GQA {self.Hq}/{self.Hk}"
        return f"{self.dtype_name} D={self.D} {heads} L={self.L}{' causal' if self.causal else ''}"


@dataclasses.dataclass(frozen=True)
class GemmCase:
    dtype: torch.dtype
    size: int  # M = N = K

    @property
    def dtype_name(self):
        return str(self.dtype).removeprefix("torch.")

    def label(self):
        return f"{self.dtype_name} {self.size}^3"


@dataclasses.dataclass(frozen=True)
class Sweep:
    attention: tuple
    gemm: tuple


def _head_shapes(head_dims, heads, gqa_kv_heads):
    """(D, Hq, Hk): every head dim with all heads, plus one GQA case at GQA_HEAD_DIM (else the first head dim)."""
    gqa_dim = GQA_HEAD_DIM if GQA_HEAD_DIM in head_dims else head_dims[0]
    return [(D, heads, heads) for D in head_dims] + [(gqa_dim, heads, gqa_kv_heads)]


def attention_cases(dtypes, sizes, head_dims, heads=HEADS, gqa_kv_heads=GQA_KV_HEADS):
    return tuple(AttentionCase(dtype, L, D, Hq, Hk, causal)
                 for dtype in dtypes for D, Hq, Hk in _head_shapes(head_dims, heads, gqa_kv_heads)
                 for causal in (False, True) for L in sizes)


def timed_sweep(device, what, quick, dtypes=None, sizes=None, head_dims=None):
    """The cases timed on `device`. --quick: two sizes, D 64 and 128 (+ GQA), 16-bit dtypes on the GPU (float32 on
    a CPU, whose half-precision math is slow), a few GEMM sizes. Explicit dtypes/sizes/head_dims override."""
    gpu = device.type == "mps"
    if quick:
        dtypes = dtypes or ((torch.float16, torch.bfloat16) if gpu else (torch.float32,))
        attention_sizes = sizes or ((1024, 4096) if gpu else (256, 1024))
        gemm_sizes = sizes or ((1024, 2048, 4096) if gpu else (256, 1024))
        head_dims = head_dims or (64, 128)
    else:
        dtypes = dtypes or (torch.float32, torch.float16, torch.bfloat16)
        attention_sizes = sizes or (GPU_SIZES if gpu else CPU_SIZES)
        gemm_sizes = sizes or (GEMM_SIZES if gpu else CPU_GEMM_SIZES)
        head_dims = head_dims or HEAD_DIMS
    attention = attention_cases(dtypes, attention_sizes, head_dims) if "attention" in what else ()
    gemm = tuple(GemmCase(d, n) for d in dtypes for n in gemm_sizes) if "gemm" in what else ()
    return Sweep(attention, gemm)


def emulator_cases(quick, dtypes=None, sizes=None, head_dims=None):
    """Attention cases for work counts under the emulator (small: L up to 512). Tile counts do not depend on the
    dtype except through the block tables, so one dtype by default."""
    return attention_cases(dtypes or (torch.float16,), sizes or ((256,) if quick else EMULATOR_SIZES),
                           head_dims or ((64,) if quick else EMULATOR_HEAD_DIMS),
                           EMULATOR_HEADS, EMULATOR_GQA_KV_HEADS)
