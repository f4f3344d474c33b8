"""One rank of a tensor-parallel step: all-reduce, then cujit's fused add + RMSNorm, three times (run by torchrun).

Every rank starts with the same cold cache folder, computes the same thing as a plain torch reference on its own
GPU, and writes its cache counters and its largest relative error to <out>/rank<N>.json.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist

import cujit
from cujit.fused_add_rms_norm import fused_add_rms_norm


def reference(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float) -> None:
    residual.add_(x)  # rounded to the storage dtype, as the kernel does before normalising
    r = residual.float()
    x.copy_((r * torch.rsqrt(r.pow(2).mean(-1, keepdim=True) + eps) * weight.float()).to(x.dtype))


def main() -> None:
    out = Path(sys.argv[1])
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    torch.cuda.set_device(rank)
    dist.init_process_group("nccl", device_id=torch.device("cuda", rank))
    generator = torch.Generator(device="cuda").manual_seed(1234 + rank)
    tokens, hidden, eps = 257, 4096, 1e-6
    x = torch.randn(tokens, hidden, device="cuda", dtype=torch.bfloat16, generator=generator)
    residual = torch.randn(tokens, hidden, device="cuda", dtype=torch.bfloat16, generator=generator)
    weight = torch.randn(hidden, device="cuda", dtype=torch.bfloat16, generator=generator)
    x_ref, residual_ref = x.clone(), residual.clone()
    worst = 0.0
    for _ in range(3):
        dist.all_reduce(x)
        dist.all_reduce(x_ref)
        fused_add_rms_norm(x, residual, weight, eps)
        reference(x_ref, residual_ref, weight, eps)
        for got, want in ((x, x_ref), (residual, residual_ref)):
            # relative to the largest value: bf16 results may differ by a rounding step where the sums differ
            worst = max(worst, ((got.float() - want.float()).abs().max() / want.float().abs().max()).item())
    torch.cuda.synchronize()
    stats = dict(cujit.cache_stats())
    (out / f"rank{rank}.json").write_text(json.dumps({"rank": rank, "world": world, "worst": worst, **stats}))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
