"""Sweep the template parameters of the RMSNorm and gated-activation kernels on one GPU (a few minutes).

For each op and shape it times every candidate instantiation around the current selection rule (CUDA events,
median of 15, through cujit/tools/bench/timing.py: L2 flushed before each launch; shapes of at most 16 tokens as
CUDA-graph replays of 20 launches, the inputs warm in L2 as they are in decoding), checks
each result against an fp32 torch reference, and prints the times, the best candidate per shape and, per op and
dtype, the configuration that is best over all token counts of each hidden size: the table to write into
``norm_config`` (cujit/rms_norm.py) and ``activation_config`` (cujit/silu_and_mul.py).

    python benchmarks/tune_norms.py                  # everything
    python benchmarks/tune_norms.py --ops rms_norm   # one op; --quick: mostly bf16 at 4097 tokens
    python benchmarks/tune_norms.py --ops rms_norm --shapes 4097x4097,4096x4096+1   # bf16 shapes; +1: x[:, 1:]
    python benchmarks/tune_norms.py --pdl            # a graph of rms_norm -> silu_and_mul -> rms_norm, PDL on/off
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

import cujit
from cujit.rms_norm import (
    LOOP_TOKENS,
    PATH_PHASED,
    PATH_PHASED_DIRECT,
    PATH_SCALAR,
    PATH_TILED,
    PATH_VECTOR,
    PATH_VECTOR_LATE,
    NormConfig,
    norm_config,
)
from cujit.silu_and_mul import ActivationConfig, RowLayout, activation_config, row_layout
from cujit.tools.bench import timing

KERNELS = Path(cujit.__file__).resolve().parent / "kernels"
HIDDEN = (64, 1000, 4096, 4097, 5120, 5121, 8192, 16384, 32768)
TOKENS = (1, 16, 128, 4097)
QUICK_TOKENS = (1, 16)
QUICK_HIDDEN = (4096, 4097, 8192)
# Other dtypes at a few shapes: (tokens, hidden).
EXTRA = {torch.float16: ((4097, 4096), (4097, 8192), (16, 4096)),
         torch.float32: ((4097, 4096), (4097, 8192), (16, 4096), (4097, 16384))}
CPP = {torch.float32: "fp32_t", torch.float16: "fp16_t", torch.bfloat16: "bf16_t"}
TOLERANCE = {torch.float32: (1e-5, 1e-5), torch.float16: (2e-3, 2e-3), torch.bfloat16: (1.6e-2, 1.6e-2)}
GRAPH_LAUNCHES = 20
GRAPH_TOKENS = 16


# ------------------------------------------------------------------------------------------------ candidates
def _fused(op: str) -> bool:
    """Whether ``op`` is the fused form, whose rule and element-load configurations are its own."""
    return op == "fused_add_rms_norm"


def norm_candidates(hidden: int, dtype: torch.dtype, tokens: int, offset: bool = False,
                    fused: bool = False) -> list[NormConfig]:
    """Configurations around the rule's choice: 1, 2 and 4 vectors a thread, the fewest threads that hold the row
    and twice that many (at most 4x the row's size), 256-thread blocks for small rows, and for long rows the
    two-pass kernel. Aligned rows: the vector path with the weight loaded after the reduction (PATH_VECTOR_LATE)
    and with it loaded with the row (PATH_VECTOR), the latter also looping over 2, 4 or 8 rows per row group
    (from 128 tokens, at most 2 vectors a thread). Odd rows: the scalar path and the phased path (rows as
    above), with the weight staged in shared memory or read directly (PATH_PHASED_DIRECT). ``offset``: x starts
    one element into its rows, so that no vector path applies. ``fused``: candidates of fused_add_rms_norm (the
    rule's choice is its own)."""
    lanes = 16 // dtype.itemsize
    vector = hidden % lanes == 0 and not offset
    found = {norm_config(hidden, dtype, vector, not vector, tokens, fused=fused)}
    loops = (2, 4, 8) if tokens >= 128 else ()
    # Vectors a row group must hold: the whole row's, or for the phased path the body's only (the head and tail
    # are held besides, one element a thread).
    vectors = {"row": math.ceil(hidden / lanes), "body": max(1, hidden // lanes)}
    for vecs in (1, 2, 4):
        fewest = {k: max(8, 1 << math.ceil(math.log2(math.ceil(n / vecs)))) for k, n in vectors.items()}
        for row_threads in sorted({fewest["row"], fewest["row"] * 2, *([] if vector else [fewest["body"]])}):
            if row_threads > 1024 or row_threads * vecs * lanes >= 4 * hidden:
                continue
            blocks = [max(row_threads, 128)] + ([256] if row_threads <= 64 else [])
            for block in blocks:
                if vector:
                    found.add(NormConfig(PATH_VECTOR_LATE, block, row_threads, vecs))
                    found.add(NormConfig(PATH_VECTOR, block, row_threads, vecs))
                    if vecs <= 2:
                        found |= {NormConfig(PATH_VECTOR, block, row_threads, vecs, rows) for rows in loops}
                elif vecs <= 2:
                    if row_threads * vecs * lanes >= hidden:
                        found.add(NormConfig(PATH_SCALAR, block, row_threads, vecs))
                    if row_threads >= 32:
                        found |= {NormConfig(path, block, row_threads, vecs, rows) for rows in (1, *loops)
                                  for path in (PATH_PHASED, PATH_PHASED_DIRECT)}
    if hidden > 8192:
        found |= {NormConfig(PATH_TILED, 1024, 1024, 2), NormConfig(PATH_TILED, 512, 512, 4)}
    return sorted(found)


def activation_candidates(dtype: torch.dtype, hidden: int) -> list[ActivationConfig]:
    """Configurations of the path the op takes for an aligned x of rows of ``hidden`` values, the rule's first."""
    vector = hidden % (16 // dtype.itemsize) == 0
    rule = activation_config(hidden, dtype, vector)
    if vector:
        others = [ActivationConfig(b, v) for b, v in ((128, 1), (256, 1), (512, 1), (128, 2), (256, 2))]
    else:
        others = [ActivationConfig(b, v, True) for b, v in ((256, 1), (256, 2), (128, 2), (512, 2))]
    return [rule, *(c for c in others if c != rule)]


def norm_expression(op: str, dtype: torch.dtype, c: NormConfig) -> str:
    return f"{op}_kernel<{CPP[dtype]}, false, {c.path}, {c.block}, {c.row_threads}, {c.vecs}, {c.rows}>"


def activation_expression(op: str, dtype: torch.dtype, c: ActivationConfig) -> str:
    path = str(c.row_path).lower()
    if op == "silu_and_mul":
        return f"silu_and_mul_kernel<{CPP[dtype]}, {path}, {c.block}, {c.vecs}>"
    return f"gelu_and_mul_kernel<{CPP[dtype]}, false, {path}, {c.block}, {c.vecs}>"


# ------------------------------------------------------------------------------------------------ compiling
class Kernels:
    """Every candidate, compiled up front in modules of a few kernels each (one NVRTC front end per module)."""

    def __init__(self, wanted: dict[str, set[str]]) -> None:
        self._kernels: dict[str, cujit.Kernel] = {}
        start = time.perf_counter()
        modules = []
        for source, expressions in wanted.items():
            ordered = sorted(expressions)
            for i in range(0, len(ordered), 8):
                chunk = ordered[i:i + 8]
                module = cujit.load_jit(f"tune_{Path(source).stem}_{i // 8}", cuda_files=[KERNELS / source],
                                        cuda_wrappers=[(f"k{j}", e) for j, e in enumerate(chunk)])
                modules.append(module)
                for j, expression in enumerate(chunk):
                    self._kernels[expression] = getattr(module, f"k{j}")
        compile_all = getattr(cujit, "compile_modules", None)
        if compile_all is not None:
            compile_all(modules)
        else:
            for module in modules:
                module.compile()
        print(f"compiled {len(self._kernels)} kernels in {len(modules)} modules in "
              f"{time.perf_counter() - start:.1f} s", flush=True)

    def __getitem__(self, expression: str) -> cujit.Kernel:
        return self._kernels[expression]


# ------------------------------------------------------------------------------------------------ timing
def device_us(launch: Callable[[], None], tokens: int) -> float:
    """Median device time of one ``launch()`` in microseconds (graph replays for few tokens, L2 flushed else)."""
    return timing.device_us(launch, graph_calls=GRAPH_LAUNCHES if tokens <= GRAPH_TOKENS else 0)


def copy_us(moved_bytes: int, tokens: int) -> float:
    """The time of ``copy_`` moving the same number of bytes (half read, half written)."""
    return timing.copy_us(moved_bytes, graph_calls=GRAPH_LAUNCHES if tokens <= GRAPH_TOKENS else 0)


# ------------------------------------------------------------------------------------------------ cases
@dataclass
class Result:
    op: str
    dtype: torch.dtype
    tokens: int
    hidden: int
    copy: float
    offset: bool = False  # x one element into its rows
    times: dict[object, float] = field(default_factory=dict)  # candidate -> us (inf when wrong)


def _close(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype) -> bool:
    rtol, atol = TOLERANCE[dtype]
    return bool(torch.allclose(actual.float(), expected.float(), rtol=rtol, atol=atol))


def rms_norm_case(kernels: Kernels, op: str, dtype: torch.dtype, tokens: int, hidden: int,
                  offset: bool = False) -> Result:
    """``offset``: x is base[:, 1:] of a tensor one column wider (out and residual contiguous)."""
    eps = 1e-6
    x = torch.randn(tokens, hidden + offset, dtype=dtype, device="cuda")[:, int(offset):]
    xs_stride = x.stride(0)
    residual = torch.randn(tokens, hidden, dtype=dtype, device="cuda")
    weight = torch.randn(hidden, dtype=dtype, device="cuda")
    out = torch.empty(tokens, hidden, dtype=dtype, device="cuda")
    w32 = weight.float()
    if op == "rms_norm":
        x32 = x.float()
        expected = [x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps) * w32]
        moved = 2 * x.numel() * x.element_size()
    else:
        s = (x.float() + residual.float()).to(dtype)
        s32 = s.float()
        expected = [s32 * torch.rsqrt(s32.pow(2).mean(-1, keepdim=True) + eps) * w32, s]
        moved = 4 * x.numel() * x.element_size()
    result = Result(op, dtype, tokens, hidden, copy_us(moved, tokens), offset)
    for c in norm_candidates(hidden, dtype, tokens, offset, _fused(op)):
        kernel = kernels[norm_expression(op, dtype, c)]
        launch_with = cujit.LaunchKernel(math.ceil(tokens / c.rows_per_block), c.block)
        if op == "rms_norm":
            def launch(k: cujit.Kernel = kernel, go: cujit.LaunchKernel = launch_with) -> None:
                go(k, out, x, weight, tokens, hidden, xs_stride, hidden, eps)
            launch()
            ok = _close(out, expected[0], dtype)
        else:
            xs = torch.empty(tokens, hidden + offset, dtype=dtype, device="cuda")[:, int(offset):]
            xs.copy_(x)
            rs = residual.clone()

            def launch(k: cujit.Kernel = kernel, go: cujit.LaunchKernel = launch_with, xs: torch.Tensor = xs,
                       rs: torch.Tensor = rs) -> None:
                go(k, xs, rs, weight, tokens, hidden, xs_stride, hidden, eps)
            launch()
            ok = _close(xs, expected[0], dtype) and torch.equal(rs, expected[1])
        if not ok:
            print(f"  WRONG: {op} {dtype} {tokens}x{hidden} {c}", flush=True)
        result.times[c] = device_us(launch, tokens) if ok else math.inf
    return result


def activation_case(kernels: Kernels, op: str, dtype: torch.dtype, tokens: int, d: int) -> Result:
    x = torch.randn(tokens, 2 * d, dtype=dtype, device="cuda")
    out = torch.empty(tokens, d, dtype=dtype, device="cuda")
    a, b = x[:, :d].float(), x[:, d:].float()
    expected = (F.silu(a) if op == "silu_and_mul" else F.gelu(a)) * b
    moved = 3 * tokens * d * x.element_size()
    result = Result(op, dtype, tokens, d, copy_us(moved, tokens))
    lanes = 16 // x.element_size()
    for c in activation_candidates(dtype, d):
        kernel = kernels[activation_expression(op, dtype, c)]
        if c.row_path:
            layout = row_layout(d, x.element_size(), c.block, c.vecs)
            go = cujit.LaunchKernel(math.ceil(tokens * layout.segs / (c.block // layout.group)), c.block)
        else:
            layout = RowLayout(0, 0, 0)
            go = cujit.LaunchKernel(math.ceil(tokens * d / (c.block * c.vecs * lanes)), c.block)

        def launch(k: cujit.Kernel = kernel, go: cujit.LaunchKernel = go, layout: RowLayout = layout) -> None:
            go(k, out, x, tokens, d, *layout)
        launch()
        ok = _close(out, expected, dtype)
        if not ok:
            print(f"  WRONG: {op} {dtype} {tokens}x{d} {c}", flush=True)
        result.times[c] = device_us(launch, tokens) if ok else math.inf
    return result


# ------------------------------------------------------------------------------------------------ report
def _name(candidate: object) -> str:
    if isinstance(candidate, NormConfig):
        path = {PATH_VECTOR: "vec", PATH_SCALAR: "scalar", PATH_TILED: "tiled", PATH_PHASED: "phased",
                PATH_VECTOR_LATE: "late", PATH_PHASED_DIRECT: "direct"}[candidate.path]
        rows = f" r{candidate.rows}" if candidate.rows > 1 else ""
        return f"{path} {candidate.row_threads}x{candidate.vecs}/{candidate.block}{rows}"
    c = candidate
    assert isinstance(c, ActivationConfig)
    return f"{'rows' if c.row_path else 'vec'} block {c.block} x{c.vecs}"


def report_shape(r: Result, rule: object) -> None:
    best = min(r.times, key=r.times.__getitem__)
    cells = "  ".join(f"{_name(c)}{'*' if c == rule else ''} {t:7.1f}" for c, t in r.times.items())
    shape = f"{r.tokens:5d} x {r.hidden:5d}{' +1' if r.offset else '   '}"
    print(f"{r.op:18s} {str(r.dtype)[6:]:8s} {shape}  copy {r.copy:7.1f} us  "
          f"best {_name(best)}: {r.times[best]:7.1f} us = {r.copy / r.times[best]:.2f}x copy; "
          f"rule {r.times.get(rule, math.nan):7.1f}  |  {cells}", flush=True)


def report_table(results: list[Result]) -> None:
    """Per op, dtype and hidden size: the candidate with the best geometric mean of time / best time."""
    groups: dict[tuple[str, torch.dtype, int, bool, bool], list[Result]] = defaultdict(list)
    for r in results:
        groups[(r.op, r.dtype, r.hidden, r.offset, r.tokens >= LOOP_TOKENS)].append(r)
    print("\nbest over the token counts below and from LOOP_TOKENS (geometric mean of time / best time at each "
          "count)")
    for (op, dtype, hidden, offset, _), rs in sorted(groups.items(),
                                                     key=lambda kv: (kv[0][0], str(kv[0][1]), kv[0][2:])):
        common = set.intersection(*(set(r.times) for r in rs))
        score = {c: math.exp(statistics.fmean(math.log(r.times[c] / min(r.times.values())) for r in rs))
                 for c in common}
        best = min(score, key=score.__getitem__)
        tokens = ",".join(str(r.tokens) for r in rs)
        ranked = ", ".join(f"{_name(c)} {score[c]:.3f}" for c in sorted(score, key=score.__getitem__)[:4])
        where = f"hidden {hidden:5d}{' x one element in' if offset else ''}"
        print(f"  {op:18s} {str(dtype)[6:]:8s} {where} (tokens {tokens}): {_name(best)}  [{ranked}]")


# ------------------------------------------------------------------------------------------------ PDL
def pdl_chain(d: int = 4096, dtype: torch.dtype = torch.bfloat16) -> None:
    """A CUDA graph of rms_norm -> silu_and_mul -> rms_norm at 1-16 tokens, with and without PDL."""
    from cujit.rms_norm import rms_norm
    from cujit.silu_and_mul import silu_and_mul

    variants = {"pdl": (rms_norm, silu_and_mul),
                "no pdl": (rms_norm.op.variant("tune_no_pdl", pdl=False),
                           silu_and_mul.op.variant("tune_no_pdl", pdl=False))}
    w1 = torch.randn(2 * d, dtype=dtype, device="cuda")
    w2 = torch.randn(d, dtype=dtype, device="cuda")
    print(f"\nrms_norm [T, {2 * d}] -> silu_and_mul -> rms_norm [T, {d}], {dtype}, CUDA graph of "
          f"{GRAPH_LAUNCHES} chains, us per chain (median of 15 replays, the two variants interleaved)")
    for tokens in (1, 2, 4, 8, 16):
        x = torch.randn(tokens, 2 * d, dtype=dtype, device="cuda")
        outs = {}
        graphs = {}
        for label, (norm, act) in variants.items():
            a = torch.empty_like(x)
            b = torch.empty(tokens, d, dtype=dtype, device="cuda")
            c = torch.empty_like(b)

            def chain(norm: Callable[..., object] = norm, act: Callable[..., object] = act, x: torch.Tensor = x,
                      a: torch.Tensor = a, b: torch.Tensor = b, c: torch.Tensor = c) -> None:
                norm(x, w1, out=a)
                act(a, out=b)
                norm(b, w2, out=c)
            graphs[label] = timing.capture_graph(chain, GRAPH_LAUNCHES, warmup=1)
            outs[label] = c
        times = timing.time_graphs(graphs, GRAPH_LAUNCHES, rounds=15, iters=1)
        same = torch.equal(outs["pdl"], outs["no pdl"])
        cells = "  ".join(f"{label} {t.median_us:6.2f}" for label, t in times.items())
        ratio = times["pdl"].median_us / times["no pdl"].median_us
        print(f"  tokens {tokens:2d}: {cells}  ratio {ratio:.3f}  {'same results' if same else 'RESULTS DIFFER'}",
              flush=True)


# ------------------------------------------------------------------------------------------------ main
def shapes(quick: bool) -> list[tuple[torch.dtype, int, int, bool]]:
    """(dtype, tokens, hidden, x one element into its rows) of each case."""
    if quick:  # bf16 at 4097 tokens, a few decode shapes, fp32 at 4097 x 4096
        found = [(torch.bfloat16, 4097, h, False) for h in HIDDEN]
        found += [(torch.bfloat16, t, h, False) for t in QUICK_TOKENS for h in QUICK_HIDDEN]
        return [*found, (torch.float32, 4097, 4096, False)]
    found = [(torch.bfloat16, t, h, False) for h in HIDDEN for t in TOKENS]
    return found + [(dt, t, h, False) for dt, pairs in EXTRA.items() for t, h in pairs]


def parse_shape(text: str) -> tuple[torch.dtype, int, int, bool]:
    """``TOKENSxHIDDEN`` in bf16; ``TOKENSxHIDDEN+1``: x one element into its rows."""
    offset = text.endswith("+1")
    tokens, hidden = map(int, text.removesuffix("+1").split("x"))
    return torch.bfloat16, tokens, hidden, offset


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ops", default="rms_norm,fused_add_rms_norm,silu_and_mul,gelu_and_mul")
    parser.add_argument("--quick", action="store_true", help="bf16 at 4097 tokens, and at 1 and 16 tokens for a few "
                        "hidden sizes; fp32 at 4097 x 4096")
    parser.add_argument("--pdl", action="store_true", help="only time a graph of rms_norm -> silu_and_mul -> "
                        "rms_norm at 1-16 tokens with and without programmatic dependent launch")
    parser.add_argument("--shapes", help="bf16 shapes only, as TOKENSxHIDDEN,... (e.g. 4097x4097,4097x2881); "
                        "TOKENSxHIDDEN+1 reads x one element into its rows (out and residual contiguous)")
    args = parser.parse_args(argv)
    if args.pdl:
        print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, cujit {cujit.__version__}", flush=True)
        pdl_chain()
        return 0
    ops = args.ops.split(",")
    cases = shapes(args.quick)
    if args.shapes:
        cases = [parse_shape(shape) for shape in args.shapes.split(",")]
    wanted: dict[str, set[str]] = defaultdict(set)
    for op in ops:
        for dtype, tokens, hidden, offset in cases:
            if op in ("rms_norm", "fused_add_rms_norm"):
                wanted["rms_norm.cuh"] |= {norm_expression(op, dtype, c)
                                           for c in norm_candidates(hidden, dtype, tokens, offset, _fused(op))}
            else:
                wanted["activation.cuh"] |= {activation_expression(op, dtype, c)
                                             for c in activation_candidates(dtype, hidden)}
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, cujit {cujit.__version__}", flush=True)
    start = time.perf_counter()
    kernels = Kernels(wanted)
    results = []
    for op in ops:
        for dtype, tokens, hidden, offset in cases:
            if op in ("rms_norm", "fused_add_rms_norm"):
                r = rms_norm_case(kernels, op, dtype, tokens, hidden, offset)
                vector = hidden % (16 // dtype.itemsize) == 0 and not offset
                rule: object = norm_config(hidden, dtype, vector, not vector, tokens, fused=_fused(op))
            else:
                r = activation_case(kernels, op, dtype, tokens, hidden)
                rule = activation_config(hidden, dtype, hidden % (16 // dtype.itemsize) == 0)
            report_shape(r, rule)
            results.append(r)
    report_table(results)
    print(f"\ntotal {time.perf_counter() - start:.0f} s")
    wrong = sum(math.isinf(t) for r in results for t in r.times.values())
    return 1 if wrong else 0


if __name__ == "__main__":
    sys.exit(main())
