"""Run a few serving ops on large inputs, a few times each, for a profiler to look at (GPU).

    ncu --kernel-name regex:rms_norm --launch-skip 2 --launch-count 1 --section SpeedOfLight \
        --section WarpStateStats --section Occupancy python benchmarks/profile_ops.py rms_norm

Each named op runs three times on bf16 inputs of 4097 tokens (the shapes of the benchmark's headline rows); the
second and later calls find their kernel compiled and loaded, so a profiler that skips the first launches sees
the steady state.
"""

from __future__ import annotations

import sys

import torch

T = 4097


def main(names: list[str]) -> None:
    bf16 = torch.bfloat16
    x = torch.randn(T, 4096, device="cuda", dtype=bf16)
    w = torch.randn(4096, device="cuda", dtype=bf16)
    runs = {}
    if "rms_norm" in names:
        from cujit.rms_norm import rms_norm

        out = torch.empty_like(x)
        runs["rms_norm"] = lambda: rms_norm(x, w, out=out)
    if "fused_add_rms_norm" in names:
        from cujit.fused_add_rms_norm import fused_add_rms_norm

        residual = torch.randn_like(x)
        runs["fused_add_rms_norm"] = lambda: fused_add_rms_norm(x, residual, w)
    if "gelu_and_mul" in names:
        from cujit.gelu_and_mul import gelu_and_mul

        gate = torch.randn(T, 2 * 8192, device="cuda", dtype=bf16)
        runs["gelu_and_mul"] = lambda: gelu_and_mul(gate)
    if "per_token_group_quant_fp8" in names:
        from cujit.per_token_group_quant_fp8 import per_token_group_quant_fp8

        runs["per_token_group_quant_fp8"] = lambda: per_token_group_quant_fp8(x, 128)
    if "per_token_quant_fp8" in names:
        from cujit.per_token_quant_fp8 import per_token_quant_fp8

        small = torch.randn(16, 4096, device="cuda", dtype=bf16)
        runs["per_token_quant_fp8"] = lambda: per_token_quant_fp8(small)
    for _ in range(3):
        for run in runs.values():
            run()
    torch.cuda.synchronize()


if __name__ == "__main__":
    main(sys.argv[1:])
