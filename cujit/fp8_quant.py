"""FP8 (e4m3) quantization of activations: per token, per tensor and per group of a token's values.

Kernels: cujit/kernels/fp8_quant.cuh. Each op is declared in the module of its name (cujit/per_token_quant_fp8.py,
...), from the rule, matchers and launch plans of this module, and is importable from here as well.

- ``per_token_quant_fp8(x, *, scale_ub=None) -> (q, scales)``: dynamic, scales [tokens, 1].
- ``per_tensor_quant_fp8(x, scale=None) -> (q, scale)``: static with ``scale`` (a device float32 tensor [1],
  returned as a copy), dynamic without (a max over the whole tensor, computed on the device: no host sync).
- ``per_token_group_quant_fp8(x, group_size=128, *, column_major_scales=False) -> (q, scales)``: dynamic, scales
  [tokens, hidden / group_size], row-major, or column-major (strides (1, tokens): the layout DeepGEMM-style GEMMs
  read).

``x`` is [tokens, hidden] in fp16, bf16 or fp32 with rows at any stride; ``q`` is a new contiguous
float8_e4m3fn tensor (or ``out``). Rule, bit for bit the torch expression (true IEEE divisions, round to nearest
even)::

    amax  = x.abs().amax(dim=..., keepdim=True).float()     # over the row, the tensor or the group
    amax  = amax.clamp(max=scale_ub)                          # per token, when scale_ub is given
    scale = (amax / 448).clamp(min=1 / (448 * 512))           # a dynamic scale; a given static scale is used as is
    q     = (x.float() / scale).clamp(-448, 448).to(torch.float8_e4m3fn)

So an all-zero row (tensor, group) gets the floor scale 1 / (448 * 512) and zeros; values beyond the range
saturate to +-448. inf and NaN follow from the rule: a row holding inf gets scale inf, its finite values become 0
and its infs NaN (inf / inf); a row holding NaN gets scale NaN and NaN everywhere (NaN is 0x7F in e4m3).

Torch tensors: q is float8_e4m3fn, which CuPy (NumPy) has no dtype for; CuPy callers pass ``out`` as they can.
"""

from __future__ import annotations

import functools
import importlib
from typing import Any

import cujit

__all__ = [
    "SIZE_CHECK",
    "T",
    "cached",
    "group_plan",
    "one_float",
    "per_tensor_plan",
    "per_token_plan",
    "q_matcher",
    "x_matcher",
]

#: Blocks of the per-tensor split at most: about two waves of 4 resident 256-thread blocks on 132 SMs. Every
#: block of the second kernel reads all partial maxima (4 KB at most, from L2).
PER_TENSOR_BLOCKS = 1024


@functools.lru_cache(maxsize=1024)
def per_token_plan(hidden: int, itemsize: int) -> tuple[int, int]:
    """(threads, vecs) for one row of ``hidden`` values.

    threads: the smallest block (32 to 1024 threads) that holds the row in at most 4 16-byte vectors per thread;
    vecs: the vectors each thread keeps in registers (rows beyond 1024 x 4 vectors re-read the rest).
    """
    chunks = -(-hidden // (16 // itemsize))
    threads = 32
    while threads < 1024 and threads * 4 < chunks:
        threads *= 2
    return threads, max(1, min(4, -(-chunks // threads)))


@functools.lru_cache(maxsize=1024)
def group_plan(group_size: int, itemsize: int) -> int:
    """Groups per 256-thread block, kBatch * 256 / kLanes as per_token_group_quant_fp8_kernel computes them.

    A group is kLanes threads (up to 32) holding one 16-byte vector each, or more for groups beyond 32 vectors;
    kBatch groups per thread per step keep about 4 vectors in flight per thread.
    """
    chunks = max(group_size // (16 // itemsize), 1)
    lanes = min(chunks, 32)
    batch = 1 if chunks >= 128 else (2 if chunks >= 64 else 4)
    return batch * 256 // lanes


@functools.lru_cache(maxsize=1024)
def per_tensor_plan(total: int) -> tuple[int, int]:
    """(blocks, chunk): the tensor's ``total`` values as ``blocks`` chunks of ``chunk`` values.

    A chunk is a multiple of 16 values (no vector straddles two chunks) and at least 8192 values (256 threads with
    two steps of four 16-byte bf16 vectors); there are at most PER_TENSOR_BLOCKS chunks.
    """
    if total == 0:
        return 0, 16
    blocks = min(PER_TENSOR_BLOCKS, -(-total // 8192))
    chunk = -(-total // blocks)
    chunk += -chunk % 16
    return -(-total // chunk), chunk


T, H, XS = (cujit.SymbolicSize(n) for n in ("T", "H", "XS"))
dtype = cujit.SymbolicDType("dtype")
#: x [tokens, hidden]: rows at any stride, values of a row contiguous.
x_matcher = cujit.TensorMatcher([T, H]).with_strides([XS, 1]).with_dtype("float16", "bfloat16", "float32",
                                                                         symbol=dtype)
#: q: contiguous, like x.
q_matcher = cujit.TensorMatcher([T, H]).with_dtype("float8_e4m3fn")
#: A device float32 value: a static scale, a scale bound, a returned per-tensor scale.
one_float = cujit.TensorMatcher([1]).with_dtype("float32")
SIZE_CHECK = ("T < 2**31 and H < 2**31", "x: expected fewer than 2**31 rows and columns")


def cached(plan: Any, *args: Any) -> Any:
    """``plan(*args)`` through its cache.

    Symbolic sizes (torch.compile's fake tensors evaluate the op's values) are not hashable: those go to the plan
    itself.
    """
    try:
        return plan(*args)
    except TypeError:
        return plan.__wrapped__(*args)


def __getattr__(name: str) -> Any:
    """``from cujit.fp8_quant import per_token_quant_fp8``: each op is declared in the module of its name."""
    if name in _OPS:
        return getattr(importlib.import_module(f"cujit.{name}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


_OPS = ("per_tensor_quant_fp8", "per_token_group_quant_fp8", "per_token_quant_fp8")
