"""Bandwidth of add_constant kernel variants on 1 GiB of int32, next to torch's copy_, in one run (GPU)."""

from __future__ import annotations

from pathlib import Path

import torch

import cujit
from cujit.tools.bench.timing import median_seconds

HERE = Path(__file__).resolve().parent
VARIANTS = [
    ("oneshot", 256, 4, False), ("oneshot", 256, 4, True), ("oneshot", 256, 8, False), ("oneshot", 128, 4, False),
    ("oneshot", 512, 2, False), ("oneshot", 256, 2, False), ("oneshot", 128, 8, False), ("oneshot", 256, 1, False),
    ("gridstride", 256, 4, None), ("gridstride", 512, 2, None),
]


def main() -> None:
    n = 2**28
    x = torch.randint(-(2**30), 2**30, (n,), dtype=torch.int32, device="cuda")
    y = torch.empty_like(x)
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    wrappers = []
    for i, (kind, block, unroll, stream) in enumerate(VARIANTS):
        if kind == "oneshot":
            expr = f"oneshot<3, {block}, {unroll}, {str(stream).lower()}>"
        else:
            expr = f"gridstride<3, {block}, {unroll}>"
        wrappers.append((f"k{i}", expr))
    module = cujit.load_jit("tune_add_constant", cuda_files=[str(HERE / "add_constant_variants.cuh")],
                            cuda_wrappers=wrappers)

    def bench(fn) -> float:
        return 8 * n / median_seconds(fn) / 1e9

    copy = bench(lambda: y.copy_(x))
    print(f"{torch.cuda.get_device_name()}: copy_ {copy:.0f} GB/s")
    for _ in range(2):  # twice: a difference smaller than the spread between passes is noise
        print(f"  copy_ again {bench(lambda: y.copy_(x)) / copy:.3f}")
        for i, (kind, block, unroll, stream) in enumerate(VARIANTS):
            kernel = getattr(module, f"k{i}")
            if kind == "oneshot":
                grid = (n // 4 + block * unroll - 1) // (block * unroll)
            else:
                grid = sms * (2048 // block)
            y.zero_()
            launch = cujit.LaunchKernel(grid, block)
            gbps = bench(lambda launch=launch, kernel=kernel: launch(kernel, y, x, n))
            ok = torch.equal(y, x + 3)
            print(f"  {kind:10s} block {block:4d} unroll {unroll} stream {stream!s:5s}: {gbps:7.0f} GB/s "
                  f"{gbps / copy:.3f} x copy_ {'ok' if ok else 'WRONG'}")


if __name__ == "__main__":
    main()
