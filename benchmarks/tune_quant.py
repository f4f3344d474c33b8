"""Time the candidate instantiations of the FP8 quantization kernels on one GPU (about a minute on an H100).

For each op and shape (bf16; tokens 1, 16 and 4097; hidden 4096 and 7168; groups of 128) it times every candidate
(block size, vectors per thread, reciprocal or IEEE division) next to ``copy_`` of the same bytes: CUDA events,
median of 15; L2 flushed before each launch for 4097 tokens (a 256 MB write); shapes of at most 16 tokens as CUDA
graph replays of 32 launches, the inputs warm in L2 as in decoding. Every candidate's q and scales are first
compared byte for byte with the torch rule of cujit/fp8_quant.py; a wrong one is reported and not timed. The op
itself (its plan, through its generated launch path) is timed as the row "op"; "*" marks the plan's choice among the
candidates.

    python benchmarks/tune_quant.py                       # everything
    python benchmarks/tune_quant.py --ops per_token_group_quant_fp8 --tokens 4097
    python benchmarks/tune_quant.py --compile             # also torch.compile of the rule (slower: a compile a shape)
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

import cujit
from cujit.fp8_quant import (
    AMAX_THREADS,
    divider,
    group_plan,
    per_tensor_plan,
    per_tensor_quant_fp8,
    per_token_group_quant_fp8,
    per_token_plan,
    per_token_quant_fp8,
)
from cujit.tools.bench import timing

KERNEL = Path(cujit.__file__).resolve().parent / "kernels" / "fp8_quant.cuh"
OPS = ("per_token_quant_fp8", "per_token_group_quant_fp8", "per_tensor_static", "per_tensor_dynamic")
TOKENS = (1, 16, 4097)
HIDDEN = (4096, 7168)
GROUP = 128
DTYPE = torch.bfloat16
CPP = "bf16_t"
ITEMSIZE = 2
VEC = 16 // ITEMSIZE
FP8 = torch.float8_e4m3fn
MIN_SCALE = 1 / (448 * 512)
GRAPH_LAUNCHES = 32
GRAPH_TOKENS = 16
REPEATS = 15


# ------------------------------------------------------------------------------------------------ candidates
@dataclass(frozen=True, order=True)
class Candidate:
    """One way to run an op: kernel template arguments and, per tensor, the path."""

    threads: int
    vecs: int
    recip: bool = True
    path: str = ""  # per tensor, dynamic: "two kernels" (the partial maxima, then the quantization); per token:
    # "rows" (the row path) for rows that are not whole 16-byte vectors

    def name(self) -> str:
        division = "" if self.recip else " ieee"
        path = f"{self.path} " if self.path else ""
        return f"{path}{self.threads}x{self.vecs}{division}"


def _fits(threads: int, vecs: int, chunks: int) -> bool:
    """Whether threads x vecs vectors hold a row of ``chunks`` vectors without leaving half of them idle."""
    return chunks <= threads * vecs < 2 * chunks or (threads * vecs > chunks and threads == 32)


def token_candidates(tokens: int, hidden: int) -> tuple[list[Candidate], Candidate]:
    chunks = hidden // VEC
    path = "rows" if hidden % VEC else ""  # the row path for rows that are not whole vectors, as the op takes it
    rule = Candidate(*per_token_plan(tokens, hidden, ITEMSIZE), path=path)
    found = {rule, Candidate(rule.threads, rule.vecs, recip=False, path=path)}
    for threads in (128, 256, 512, 1024):
        for vecs in (1, 2, 4):
            if _fits(threads, vecs, chunks):
                found.add(Candidate(threads, vecs, path=path))
    if hidden == 7168:
        found.add(Candidate(256, 4))  # 224 x 4 would be exact; powers of two keep the set of kernels small
    return sorted(found), rule


def group_candidates(tokens: int) -> tuple[list[Candidate], Candidate]:
    threads, vecs, _ = group_plan(tokens, GROUP, ITEMSIZE)
    rule = Candidate(threads, vecs)
    found = {rule, Candidate(threads, vecs, recip=False)}
    for t in (64, 128, 256, 512):
        for v in (1, 2, 4):
            found.add(Candidate(t, v))
    return sorted(found), rule


def static_candidates(total: int) -> tuple[list[Candidate], Candidate]:
    threads, vecs, *_ = per_tensor_plan(total, ITEMSIZE, False)
    rule = Candidate(threads, vecs)
    found = {rule, Candidate(threads, vecs, recip=False)}
    for t, v in ((128, 1), (128, 2), (256, 1), (256, 2), (256, 4), (512, 1), (512, 2), (128, 4)):
        found.add(Candidate(t, v))
    return sorted(found), rule


def dynamic_candidates(total: int) -> tuple[list[Candidate], Candidate]:
    threads, vecs, *_ = per_tensor_plan(total, ITEMSIZE, True)
    rule = Candidate(threads, vecs, path="two kernels")
    found = {rule, Candidate(rule.threads, rule.vecs, recip=False, path=rule.path)}
    for t, v in ((128, 1), (256, 1), (256, 2), (256, 4)):
        found.add(Candidate(t, v, path="two kernels"))
    return sorted(found), rule


def expressions(op: str, c: Candidate) -> list[str]:
    recip = "true" if c.recip else "false"
    if op == "per_token_quant_fp8":
        rows = "true" if c.path == "rows" else "false"
        return [f"per_token_quant_fp8_kernel<{CPP}, {c.threads}, {c.vecs}, {recip}, {rows}>"]
    if op == "per_token_group_quant_fp8":
        return [f"per_token_group_quant_fp8_kernel<{CPP}, {GROUP}, {c.threads}, {c.vecs}, {recip}>"]
    return [f"per_tensor_amax_kernel<{CPP}, {AMAX_THREADS}>",
            f"per_tensor_quant_fp8_kernel<{CPP}, {c.threads}, {c.vecs}, {recip}>"]


def candidates(op: str, tokens: int, hidden: int) -> tuple[list[Candidate], Candidate]:
    if op == "per_token_quant_fp8":
        return token_candidates(tokens, hidden)
    if op == "per_token_group_quant_fp8":
        return group_candidates(tokens)
    if op == "per_tensor_static":
        return static_candidates(tokens * hidden)
    return dynamic_candidates(tokens * hidden)


# ------------------------------------------------------------------------------------------------ compiling
class Kernels:
    """Every candidate, compiled up front in modules of a few kernels each."""

    def __init__(self, wanted: set[str]) -> None:
        self._kernels: dict[str, cujit.Kernel] = {}
        start = time.perf_counter()
        ordered = sorted(wanted)
        modules = []
        for i in range(0, len(ordered), 6):
            chunk = ordered[i:i + 6]
            module = cujit.load_jit(f"tune_quant_{i // 6}", cuda_files=[KERNEL],
                                    cuda_wrappers=[(f"k{j}", e) for j, e in enumerate(chunk)])
            modules.append(module)
            for j, expression in enumerate(chunk):
                self._kernels[expression] = getattr(module, f"k{j}")
        cujit.compile_modules(modules)
        print(f"compiled {len(self._kernels)} kernels in {len(modules)} modules in "
              f"{time.perf_counter() - start:.1f} s", flush=True)

    def __getitem__(self, expression: str) -> cujit.Kernel:
        return self._kernels[expression]


# ------------------------------------------------------------------------------------------------ timing
def device_us(launch: Callable[[], object], tokens: int) -> float:
    """Median device time of one ``launch()`` in microseconds (graph replays for few tokens, L2 flushed else)."""
    return timing.device_us(launch, graph_calls=GRAPH_LAUNCHES if tokens <= GRAPH_TOKENS else 0, repeats=REPEATS)


def copy_us(moved_bytes: int, tokens: int) -> float:
    """The time of ``copy_`` moving the same bytes (half read, half written)."""
    return timing.copy_us(moved_bytes, graph_calls=GRAPH_LAUNCHES if tokens <= GRAPH_TOKENS else 0, repeats=REPEATS)


# ------------------------------------------------------------------------------------------------ the rule
def _dynamic_scale(amax: torch.Tensor) -> torch.Tensor:
    return (amax / torch.full_like(amax, 448.0)).clamp(min=MIN_SCALE)


def _quantize(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return (x.float() / scale).clamp(-448, 448).to(FP8)


def reference(op: str, x: torch.Tensor, static: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(q, scales) by the torch rule; divisions by tensors (IEEE), as the kernels."""
    if op == "per_token_quant_fp8":
        scale = _dynamic_scale(x.abs().amax(dim=-1, keepdim=True).float())
        return _quantize(x, scale), scale
    if op == "per_token_group_quant_fp8":
        t, h = x.shape
        groups = x.float().reshape(t, h // GROUP, GROUP)
        scale = _dynamic_scale(groups.abs().amax(dim=-1, keepdim=True))
        return _quantize(groups, scale).reshape(t, h), scale.reshape(t, h // GROUP)
    scale = static if op == "per_tensor_static" else _dynamic_scale(x.abs().amax().float().reshape(1))
    return _quantize(x, scale), scale


def _same(q: torch.Tensor, scales: torch.Tensor, expect: tuple[torch.Tensor, torch.Tensor]) -> bool:
    return torch.equal(q.view(torch.uint8), expect[0].view(torch.uint8)) and torch.equal(
        scales.reshape(expect[1].shape), expect[1])


# ------------------------------------------------------------------------------------------------ cases
@dataclass
class Result:
    op: str
    tokens: int
    hidden: int
    copy: float
    rule: Candidate
    times: dict[Candidate, float] = field(default_factory=dict)  # inf when wrong
    op_us: float = math.nan
    compiled_us: float = math.nan


def run_case(kernels: Kernels, op: str, tokens: int, hidden: int, with_compile: bool) -> Result:
    x = (torch.randn(tokens, hidden, device="cuda") * 3).to(DTYPE)
    static = torch.tensor([0.0123], device="cuda")
    expect = reference(op, x, static)
    q = torch.empty(tokens, hidden, dtype=FP8, device="cuda")
    groups = hidden // GROUP
    scales = torch.empty(tokens, groups if op == "per_token_group_quant_fp8" else 1, device="cuda")
    scale_out = torch.empty(1, device="cuda")
    total = tokens * hidden
    moved = total * (ITEMSIZE + 1) + 4 * (tokens * groups if op == "per_token_group_quant_fp8" else tokens)
    found, rule = candidates(op, tokens, hidden)
    result = Result(op, tokens, hidden, copy_us(moved, tokens), rule)
    for c in found:
        ks = [kernels[e] for e in expressions(op, c)]
        launch = _launcher(op, c, ks, x, q, scales, scale_out, static, tokens, hidden)
        q.view(torch.uint8).fill_(0x55)
        launch()
        out_scales = scale_out if op.startswith("per_tensor") else scales
        if not _same(q, out_scales, expect):
            print(f"  WRONG: {op} {tokens}x{hidden} {c.name()}", flush=True)
            result.times[c] = math.inf
            continue
        result.times[c] = device_us(launch, tokens)
    if op == "per_token_quant_fp8":
        result.op_us = device_us(lambda: per_token_quant_fp8(x, out=q, scales=scales), tokens)
    elif op == "per_token_group_quant_fp8":
        result.op_us = device_us(lambda: per_token_group_quant_fp8(x, GROUP, out=q, scales=scales), tokens)
    elif op == "per_tensor_static":
        result.op_us = device_us(lambda: per_tensor_quant_fp8(x, static, out=q, scale_out=scale_out), tokens)
    else:
        result.op_us = device_us(lambda: per_tensor_quant_fp8(x, out=q, scale_out=scale_out), tokens)
    if with_compile:
        fn = torch.compile(lambda t: reference(op, t, static))
        fn(x)
        result.compiled_us = device_us(lambda: fn(x), tokens)
    return result


def _launcher(op: str, c: Candidate, ks: list[cujit.Kernel], x: torch.Tensor, q: torch.Tensor,
              scales: torch.Tensor, scale_out: torch.Tensor, static: torch.Tensor, tokens: int,
              hidden: int) -> Callable[[], None]:
    total = tokens * hidden
    if op == "per_token_quant_fp8":
        go = cujit.LaunchKernel(tokens, c.threads)
        return lambda: go(ks[0], x, q, scales, None, hidden, hidden)
    if op == "per_token_group_quant_fp8":
        groups_row = hidden // GROUP
        lanes = min(GROUP // VEC, 32)
        per_block = c.vecs * c.threads // lanes
        magic, shift = divider(groups_row)
        go = cujit.LaunchKernel(-(-tokens * groups_row // per_block), c.threads)
        return lambda: go(ks[0], x, q, scales, hidden, hidden, tokens * groups_row, groups_row, magic, shift,
                          groups_row, 1)
    blocks = max(1, -(-total // (c.threads * c.vecs * VEC)))
    quant = cujit.LaunchKernel(blocks, c.threads)
    if op == "per_tensor_static":
        return lambda: quant(ks[1], x, q, None, static, scale_out, hidden, hidden, total, 0)
    partials = per_tensor_plan(total, ITEMSIZE, True)[3]
    partial = torch.empty(partials, device="cuda")
    amax = cujit.LaunchKernel(partials, AMAX_THREADS)

    def both() -> None:
        amax(ks[0], x, partial, hidden, hidden, total)
        quant(ks[1], x, q, partial, None, scale_out, hidden, hidden, total, partials)
    return both


# ------------------------------------------------------------------------------------------------ report
def report(r: Result) -> None:
    ok = {c: t for c, t in r.times.items() if math.isfinite(t)}
    best = min(ok, key=ok.__getitem__) if ok else None
    cells = "  ".join(f"{c.name()}{'*' if c == r.rule else ''} {t:6.2f}" for c, t in sorted(r.times.items()))
    head = f"{r.op:26s} {r.tokens:5d} x {r.hidden:5d}  copy {r.copy:6.2f} us"
    op_part = f"op {r.op_us:6.2f} us = {r.copy / r.op_us:.2f}x copy"
    compiled = f"; torch.compile {r.compiled_us:6.2f}" if math.isfinite(r.compiled_us) else ""
    best_part = f"best {best.name()} {ok[best]:6.2f}" if best is not None else "best: none right"
    print(f"{head}  {op_part}{compiled}; {best_part}  |  {cells}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ops", default=",".join(OPS), help=f"comma-separated, of {', '.join(OPS)}")
    parser.add_argument("--tokens", default=",".join(map(str, TOKENS)))
    parser.add_argument("--hidden", default=",".join(map(str, HIDDEN)))
    parser.add_argument("--compile", action="store_true", help="also time torch.compile of the rule")
    args = parser.parse_args(argv)
    ops = args.ops.split(",")
    unknown = sorted(set(ops) - set(OPS))
    if unknown:
        parser.error(f"--ops: unknown {', '.join(unknown)}")
    cases = [(op, t, h) for op in ops for h in map(int, args.hidden.split(","))
             for t in map(int, args.tokens.split(","))]
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, cujit {cujit.__version__}; bf16, "
          f"times in us; graph replays of {GRAPH_LAUNCHES} for <= {GRAPH_TOKENS} tokens, L2 flushed beyond",
          flush=True)
    start = time.perf_counter()
    kernels = Kernels({e for op, t, h in cases for c in candidates(op, t, h)[0] for e in expressions(op, c)})
    wrong = 0
    for op, tokens, hidden in cases:
        r = run_case(kernels, op, tokens, hidden, args.compile)
        report(r)
        wrong += sum(math.isinf(t) for t in r.times.values())
    print(f"\ntotal {time.perf_counter() - start:.0f} s; {wrong} wrong candidates")
    return 1 if wrong else 0


if __name__ == "__main__":
    sys.exit(main())
