"""Sweep how qk_norm_rotary_kernel spreads heads over its row groups, on one GPU (under a minute).

Each row group takes ``span`` consecutive heads, ``heads`` at a time (cujit/kernels/qk_norm_rotary.cuh); the op
picks ROTARY_HEADS and ROTARY_SPAN (HALVES_HEADS and HALVES_SPAN for the halves form; cujit/qk_norm_rotary.py) from
MANY_HEADS_FROM heads on. For each shape this times every (heads, span) candidate of both forms of the kernel
(the exchanging form, and the halves form marked "halves": both neox halves of a head's share in one lane) against
cujit's two ops in sequence (qk_rms_norm, then rotary_embedding) and against ``copy_`` of the same bytes, and
checks that every candidate writes the same bits as the pair.
CUDA events, median of 15: L2 flushed before each launch from 4097 tokens on, CUDA-graph replays below.

    python benchmarks/tune_qk_norm_rotary.py
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

import cujit
from cujit.qk_norm_rotary import HALVES_HEADS, HALVES_SPAN, qk_norm_rotary, rotary_config
from cujit.qk_rms_norm import qk_rms_norm
from cujit.rotary_embedding import rotary_embedding
from cujit.tools.bench import timing

KERNEL = Path(cujit.__file__).resolve().parent / "kernels" / "qk_norm_rotary.cuh"
#: (heads loaded at once, consecutive heads per row group)
CANDIDATES = ((1, 1), (1, 2), (1, 4), (1, 8), (1, 16), (1, 40), (2, 8), (2, 40))
#: (heads loaded at once, consecutive heads per lane group) of the "halves" form
HALVES_CANDIDATES = ((1, 1), (1, 4), (1, 8), (2, 4), (2, 8))
#: (name, tokens, q heads, kv heads, head size, gemma)
SHAPES = (("qwen3", 4097, 32, 8, 128, False), ("gemma3", 4097, 16, 8, 256, True), ("qwen3", 512, 32, 8, 128, False),
          ("qwen3", 64, 32, 8, 128, False), ("qwen3", 1, 32, 8, 128, False))
GRAPH_TOKENS = 64
GRAPH_CALLS = 20
EPS = 1e-6


def config(head: int, halves: bool) -> Any:
    return rotary_config(head, cujit.DType.of("bfloat16"), halves)


def expression(head: int, gemma: bool, heads: int, halves: bool = False) -> str:
    c = config(head, halves)
    return (f"qk_norm_rotary_kernel<bf16_t, bf16_t, int64_t, true, {str(gemma).lower()}, true, {c.block}, "
            f"{c.row_threads}, {c.vecs}, {heads}, {str(halves).lower()}>")


def candidates_module() -> tuple[cujit.JitModule, list[str]]:
    """One module of every candidate of every shape (kernel ``k<i>`` is expression ``i`` of the list)."""
    wanted = {expression(d, g, h) for _, _, _, _, d, g in SHAPES for h, _ in CANDIDATES}
    wanted |= {expression(d, g, h, True) for _, _, _, _, d, g in SHAPES for h, _ in HALVES_CANDIDATES}
    ordered = sorted(wanted)
    module = cujit.load_jit("tune_qk_norm_rotary", cuda_files=[KERNEL],
                            cuda_wrappers=[(f"k{i}", e) for i, e in enumerate(ordered)])
    return module, ordered


def compile_all() -> dict[str, cujit.Kernel]:
    module, ordered = candidates_module()
    return {e: getattr(module, f"k{i}") for i, e in enumerate(ordered)}


def device_us(fn: Callable[[], None], tokens: int) -> float:
    return timing.device_us(fn, graph_calls=GRAPH_CALLS if tokens <= GRAPH_TOKENS else 0)


def shape_row(kernels: dict[str, cujit.Kernel], name: str, tokens: int, qh: int, kh: int, d: int,
              gemma: bool) -> None:
    dev = "cuda"
    qkv = torch.randn(tokens, (qh + 2 * kh) * d, dtype=torch.bfloat16, device=dev)
    q0, k0 = qkv[:, :qh * d], qkv[:, qh * d:(qh + kh) * d]
    qw = torch.randn(d, dtype=torch.bfloat16, device=dev)
    kw = torch.randn(d, dtype=torch.bfloat16, device=dev)
    max_position = 8192
    inv_freq = 1.0 / (10000.0 ** (torch.arange(0, d, 2, dtype=torch.float64, device=dev) / d))
    angles = torch.outer(torch.arange(max_position, dtype=torch.float64, device=dev), inv_freq)
    cache = torch.cat((angles.cos(), angles.sin()), dim=-1).to(torch.bfloat16)
    positions = torch.randint(0, max_position, (tokens,), device=dev)

    q, k = q0.clone(), k0.clone()
    qk_rms_norm(q, k, qw, kw, EPS, gemma=gemma)
    rotary_embedding(positions, q, k, cache, is_neox=True, head_size=d)
    want = torch.cat((q, k), dim=1)

    work = qkv.clone()
    wq, wk = work[:, :qh * d], work[:, qh * d:(qh + kh) * d]

    def pair() -> None:
        qk_rms_norm(wq, wk, qw, kw, EPS, gemma=gemma)
        rotary_embedding(positions, wq, wk, cache, is_neox=True, head_size=d)

    def fused_op() -> None:
        qk_norm_rotary(positions, wq, wk, qw, kw, cache, head_size=d, eps=EPS, gemma=gemma)

    count = tokens * (qh + kh)
    moved = 2 * count * d * 2
    results = {"copy_": timing.copy_us(moved, graph_calls=GRAPH_CALLS if tokens <= GRAPH_TOKENS else 0),
               "pair": device_us(pair, tokens), "op": device_us(fused_op, tokens)}

    def candidate(label: str, kernel: cujit.Kernel, go: cujit.LaunchKernel, *rest: object) -> None:
        """Time one candidate into results[label], if it writes the two ops' bits (inf otherwise)."""

        def launch() -> None:
            go(kernel, positions, wq, wk, qw, kw, cache, count, qh, qh + kh, work.stride(0), work.stride(0), *rest)

        work.copy_(qkv)
        launch()
        same = torch.equal(torch.cat((wq, wk), dim=1), want)
        results[label] = device_us(launch, tokens) if same else math.inf
        if not same:
            print(f"  WRONG: {name} {tokens} tokens, {label}", flush=True)

    for halves, candidates in ((False, CANDIDATES), (True, HALVES_CANDIDATES)):
        c = config(d, halves)
        for heads, span in candidates:
            go = cujit.LaunchKernel(math.ceil(count / (c.heads_per_block * span)), c.block)
            candidate(f"{'halves ' if halves else ''}{heads}x{span}", kernels[expression(d, gemma, heads, halves)], go,
                      d, d, max_position, span, EPS)
    rule = f"halves {HALVES_HEADS}x{HALVES_SPAN}"
    best = min((v, n) for n, v in results.items() if n not in ("copy_", "pair", "op"))
    cells = "  ".join(f"{n} {v:7.2f}" for n, v in results.items())
    print(f"{name:6} {tokens:5} tokens  {cells}  | best {best[1]} ({results['copy_'] / best[0]:.2f}x copy_, "
          f"{results['pair'] / best[0]:.2f}x pair); rule {rule}", flush=True)


def main() -> int:
    if not torch.cuda.is_available():
        print("tune_qk_norm_rotary: needs a CUDA GPU", file=sys.stderr)
        return 2
    print(f"{torch.cuda.get_device_name()}; times in us; candidates are heads x span", flush=True)
    kernels = compile_all()
    for shape in SHAPES:
        shape_row(kernels, *shape)
    return 0


if __name__ == "__main__":
    sys.exit(main())
