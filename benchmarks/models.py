"""Whole models: a ~1B-parameter model of each family, eager vs cujit-patched vs Liger-patched vs torch.compile.

    python benchmarks/models.py --quick                    # Llama only, prefill + decode at 1 and 64 sequences
    python benchmarks/models.py --families llama,qwen3 --out results/models.md
    python benchmarks/models.py                            # every family, decode at 1, 8, 32 and 64 sequences
    python benchmarks/models.py --quick --families qwen3,gemma3 --skip cujit-ops+compile,liger+compile

Random weights, bf16, SDPA attention (eager attention for Gemma 2, which has no SDPA path), one GPU. Per family, on
one model instance, in this order (Liger last, since it also rebinds names in the family's modeling module for the
rest of the process):

- ``eager``: the model as transformers builds it; ``compile``: ``torch.compile`` of it (default mode);
- ``cujit``: after ``cujit.integrations.transformers.patch(model)``; ``cujit+compile``: compiled while patched
  (the patch's default ``under_compile="model"``: the graph holds the model's own code, as ``compile``'s does);
  ``cujit-ops+compile``: compiled while patched with ``under_compile="cujit"`` (cujit's ops in the graph);
  ``cujit+graphs`` (decode only): one decode step of the patched model captured in a CUDA graph and replayed;
- ``liger``, ``liger+compile``: after Liger-Kernel's instance patch (rope, RMSNorm, SwiGLU/GeGLU; no loss
  kernels), where ``liger_kernel`` imports; otherwise the rows say why not.

Prefill: one sequence of ``--prefill`` tokens (default 2048), ``logits_to_keep=1`` (the body of the model, not the
[2048, vocab] logits). Decode: ``--context`` tokens already in a ``StaticCache`` (default 128), then ``--steps``
decode steps of batch 1-64 timed with CUDA events; tokens per second = batch x steps / time. Each row also gives the
share of GPU kernel time (torch.profiler, one step, non-compiled variants) in the patched ops (cujit's or Liger's
kernels), and for eager the share outside GEMMs and attention: the most that patching norms, activations and rotary
can take away. Writes a Markdown table (printed, and to ``--out``); compare rows of one run only.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

FAMILIES: dict[str, tuple[str, dict[str, Any]]] = {
    # Llama 3.2 1B's shape (1.24B parameters).
    "llama": ("LlamaConfig", dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                                  num_attention_heads=32, num_key_value_heads=8, head_dim=64, vocab_size=128256,
                                  tie_word_embeddings=True, rope_theta=500000.0)),
    # Qwen2.5 1.5B's shape.
    "qwen2": ("Qwen2Config", dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                                  num_attention_heads=12, num_key_value_heads=2, vocab_size=151936,
                                  tie_word_embeddings=True)),
    # Qwen3 1.7B's shape (per-head QK-norm).
    "qwen3": ("Qwen3Config", dict(hidden_size=2048, intermediate_size=6144, num_hidden_layers=28,
                                  num_attention_heads=16, num_key_value_heads=8, head_dim=128, vocab_size=151936,
                                  tie_word_embeddings=True)),
    # Mistral has no 1B model: Mistral's layer at Llama 3.2 1B's size.
    "mistral": ("MistralConfig", dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                                      num_attention_heads=32, num_key_value_heads=8, head_dim=64, vocab_size=32768)),
    # Gemma 2B's layer (multi-query attention, head 256), 12 layers instead of 18 (about 1.4B parameters).
    "gemma": ("GemmaConfig", dict(hidden_size=2048, intermediate_size=16384, num_hidden_layers=12,
                                  num_attention_heads=8, num_key_value_heads=1, head_dim=256, vocab_size=256000)),
    # Gemma 2 2B's layer, 14 layers instead of 26 (about 1.5B parameters).
    "gemma2": ("Gemma2Config", dict(hidden_size=2304, intermediate_size=9216, num_hidden_layers=14,
                                    num_attention_heads=8, num_key_value_heads=4, head_dim=256, vocab_size=256000)),
    # Gemma 3 1B's shape (QK-norm, 5 sliding-window layers to 1 global).
    "gemma3": ("Gemma3TextConfig", dict(hidden_size=1152, intermediate_size=6912, num_hidden_layers=26,
                                        num_attention_heads=4, num_key_value_heads=1, head_dim=256,
                                        vocab_size=262144, sliding_window=512)),
}

#: Families whose transformers code has no SDPA path (Gemma 2's attention logit softcapping): eager attention.
ATTENTION = {"gemma2": "eager"}

CUJIT_KERNELS = ("rms_norm_kernel", "silu_and_mul_kernel", "gelu_and_mul_kernel", "rotary_embedding_kernel")
LIGER_KERNELS = ("_rms_norm_forward", "_swiglu_forward", "_geglu_tanh_forward", "_triton_rope")
GEMM_KERNELS = ("gemm", "nvjet", "cutlass", "xmma", "cublas", "splitk", "sm90_", "sm100_")
ATTENTION_KERNELS = ("flash", "fmha", "attention", "attn")


@dataclasses.dataclass
class Row:
    family: str
    phase: str
    variant: str
    tokens_per_s: float | None = None
    ms: float | None = None
    patched_share: float | None = None
    elementwise_share: float | None = None
    note: str = ""


def build(family: str) -> torch.nn.Module:
    import transformers

    name, kwargs = FAMILIES[family]
    config = getattr(transformers, name)(max_position_embeddings=8192, **kwargs)
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16,
                                                              attn_implementation=ATTENTION.get(family, "sdpa"))
    return model.eval()


def cuda_time(fn: Callable[[], Any], iters: int, warmup: int = 1) -> float:
    """Milliseconds per call of ``fn``, timed with CUDA events after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / iters


def kernel_shares(fn: Callable[[], Any], patched: tuple[str, ...], top: int = 0) -> tuple[float, float]:
    """(share of GPU kernel time in kernels named by ``patched``, share outside GEMMs and attention) of one call.

    With ``top``, also prints the GPU time of the call and of its ``top`` costliest kernels (by name).
    """
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    total = hit = other = 0.0
    by_name: dict[str, float] = {}
    for evt in prof.events():
        if evt.device_type != torch.autograd.DeviceType.CUDA:
            continue
        name, us = evt.name.lower(), evt.time_range.elapsed_us()
        total += us
        by_name[evt.name] = by_name.get(evt.name, 0.0) + us
        if patched and any(k.lower() in name for k in patched):
            hit += us
        if not any(k in name for k in GEMM_KERNELS + ATTENTION_KERNELS):
            other += us
    if top:
        print(f"  GPU kernel time {total / 1e3:.3f} ms; the {top} costliest kernels:")
        for name, us in sorted(by_name.items(), key=lambda item: -item[1])[:top]:
            print(f"    {us / 1e3:8.3f} ms  {name[:110]}")
    return (hit / total if total else 0.0), (other / total if total else 0.0)


class Decoder:
    """Decode steps of ``batch`` sequences on a StaticCache that already holds ``context`` tokens."""

    def __init__(self, model: torch.nn.Module, forward: Callable[..., Any], batch: int, context: int,
                 capacity: int) -> None:
        import transformers

        self.forward = forward
        self.cache = transformers.StaticCache(config=model.config, max_cache_len=capacity)
        ids = torch.randint(0, model.config.vocab_size, (batch, context), device="cuda")
        self.token = torch.zeros((batch, 1), dtype=torch.long, device="cuda")
        # The context goes through the uncompiled model: a compiled one would compile this shape too.
        model(input_ids=ids, past_key_values=self.cache, use_cache=True, logits_to_keep=1)
        self.graph: torch.cuda.CUDAGraph | None = None

    def step(self) -> None:
        if self.graph is not None:
            self.graph.replay()
            return
        self.forward(input_ids=self.token, past_key_values=self.cache, use_cache=True, logits_to_keep=1)

    def capture(self) -> None:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            self.step()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self.step()
        self.graph = graph


def measure(rows: list[Row], family: str, variant: str, forward: Callable[..., Any], model: torch.nn.Module,
            args: argparse.Namespace, *, patched: tuple[str, ...], profile_it: bool, graphs: bool = False,
            prefill: bool = True) -> None:
    if variant in args.skip:
        return
    vocab = model.config.vocab_size
    if prefill:
        phase = f"prefill {args.prefill}"
        try:
            ids = torch.randint(0, vocab, (1, args.prefill), device="cuda")

            def run() -> None:
                forward(input_ids=ids, use_cache=False, logits_to_keep=1)

            ms = cuda_time(run, args.iters)
            row = Row(family, phase, variant, args.prefill / ms * 1e3, ms)
            if profile_it:
                row.patched_share, row.elementwise_share = kernel_shares(run, patched, args.top)
            rows.append(row)
        except Exception as e:  # one failing contender must not end the run: the row says why
            rows.append(Row(family, phase, variant, note=_failure(e)))
        print(_line(rows[-1]), flush=True)
    for batch in args.batches:
        phase = f"decode bs={batch}"
        try:
            decoder = Decoder(model, forward, batch, args.context, args.context + 3 * args.steps + 8)
            if graphs:
                decoder.capture()
            # Three steps first: a compiled model recompiles on its second step where the model reads the cache's
            # length as a number (Mistral's position_ids; with that compile among 32 timed steps, 0.48-0.53 s a step).
            ms = cuda_time(decoder.step, args.steps, warmup=3)
            row = Row(family, phase, variant, batch / ms * 1e3, ms)
            if profile_it and batch == max(args.batches):
                row.patched_share, row.elementwise_share = kernel_shares(decoder.step, patched, args.top)
            rows.append(row)
            del decoder
        except Exception as e:
            rows.append(Row(family, phase, variant, note=_failure(e)))
        print(_line(rows[-1]), flush=True)


def _failure(e: BaseException) -> str:
    if "--verbose" in sys.argv:
        traceback.print_exc()
    return f"failed: {type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''}"


def _compiled(model: torch.nn.Module) -> Callable[..., Any]:
    torch._dynamo.reset()
    return torch.compile(model)


def _liger(model: torch.nn.Module) -> str | None:
    """Apply Liger-Kernel's instance patch for inference; None, or why it could not be applied."""
    try:
        from liger_kernel.transformers import _apply_liger_kernel_to_instance
    except ImportError as e:
        return f"liger_kernel does not import ({e})"
    try:
        _apply_liger_kernel_to_instance(model=model, rope=True, rms_norm=True, swiglu=True, geglu=True,
                                        cross_entropy=False, fused_linear_cross_entropy=False)
    except Exception as e:
        return _failure(e)
    return None


def bench_family(family: str, args: argparse.Namespace) -> list[Row]:
    from cujit.integrations.transformers import patch

    rows: list[Row] = []
    model = build(family)
    params = sum(p.numel() for p in model.parameters()) / 1e9
    print(f"## {family}: {params:.2f}B parameters", flush=True)
    compile_prefill = not args.quick
    with torch.inference_mode():
        measure(rows, family, "eager", model, model, args, patched=(), profile_it=True)
        if not args.no_compile:
            measure(rows, family, "compile", _compiled(model), model, args, patched=(), profile_it=False,
                    prefill=compile_prefill)
        measure(rows, family, "eager+graphs", model, model, args, patched=(), profile_it=False, graphs=True,
                prefill=False)
        with patch(model) as handle:
            if handle.skipped:
                print(f"cujit skipped: {handle.skipped}", flush=True)
            measure(rows, family, "cujit", model, model, args, patched=CUJIT_KERNELS, profile_it=True)
            if not args.no_compile:
                measure(rows, family, "cujit+compile", _compiled(model), model, args, patched=CUJIT_KERNELS,
                        profile_it=False, prefill=compile_prefill)
            measure(rows, family, "cujit+graphs", model, model, args, patched=CUJIT_KERNELS, profile_it=False,
                    graphs=True, prefill=False)
        if not args.no_compile:
            with patch(model, under_compile="cujit"):
                measure(rows, family, "cujit-ops+compile", _compiled(model), model, args, patched=CUJIT_KERNELS,
                        profile_it=False, prefill=compile_prefill)
        why = None if args.no_liger else _liger(model)
        if args.no_liger:
            rows.append(Row(family, "-", "liger", note="--no-liger"))
        elif why is not None:
            rows.append(Row(family, "-", "liger", note=why))
            print(f"liger: {why}", flush=True)
        else:
            measure(rows, family, "liger", model, model, args, patched=LIGER_KERNELS, profile_it=True)
            if not args.no_compile:
                measure(rows, family, "liger+compile", _compiled(model), model, args, patched=LIGER_KERNELS,
                        profile_it=False, prefill=compile_prefill)
    del model
    torch._dynamo.reset()
    gc.collect()
    torch.cuda.empty_cache()
    return rows


def _pct(x: float | None) -> str:
    return "" if x is None else f"{100 * x:.1f}%"


def _line(r: Row) -> str:
    if r.tokens_per_s is None:
        return f"{r.family} | {r.phase} | {r.variant} | {r.note}"
    return f"{r.family} | {r.phase} | {r.variant} | {r.tokens_per_s:,.0f} tok/s | {r.ms:.3f} ms"


def table(rows: list[Row]) -> str:
    base = {(r.family, r.phase): r.tokens_per_s for r in rows if r.variant == "eager" and r.tokens_per_s}
    out = ["| family | phase | variant | tokens/s | ms/step | vs eager | GPU time in patched ops | "
           "GPU time outside GEMM + attention | note |",
           "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        ref = base.get((r.family, r.phase))
        ratio = f"{r.tokens_per_s / ref:.2f}x" if r.tokens_per_s and ref else ""
        tps = f"{r.tokens_per_s:,.0f}" if r.tokens_per_s else ""
        ms = f"{r.ms:.3f}" if r.ms else ""
        out.append(f"| {r.family} | {r.phase} | {r.variant} | {tps} | {ms} | {ratio} | {_pct(r.patched_share)} | "
                   f"{_pct(r.elementwise_share)} | {r.note} |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="llama only, decode at 1 and 64, no compiled prefill")
    parser.add_argument("--families", default=None, help=f"comma-separated, of {','.join(FAMILIES)}")
    parser.add_argument("--prefill", type=int, default=2048)
    parser.add_argument("--batches", default=None, help="decode batch sizes, e.g. 1,8,32,64")
    parser.add_argument("--context", type=int, default=128, help="tokens in the cache before decoding")
    parser.add_argument("--steps", type=int, default=32, help="decode steps timed")
    parser.add_argument("--iters", type=int, default=5, help="prefill calls timed")
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--top", type=int, default=0, help="print the costliest N kernels of each profiled call")
    parser.add_argument("--no-liger", action="store_true")
    parser.add_argument("--skip", default="", help="comma-separated variants left out, e.g. "
                        "cujit-ops+compile,liger+compile")
    parser.add_argument("--out", type=Path, default=None, help="write the Markdown table here too")
    parser.add_argument("--verbose", action="store_true", help="print the traceback of a failing row")
    args = parser.parse_args(argv)
    families = args.families.split(",") if args.families else (["llama"] if args.quick else list(FAMILIES))
    unknown = [f for f in families if f not in FAMILIES]
    if unknown:
        parser.error(f"unknown families {unknown}; known: {', '.join(FAMILIES)}")
    default_batches = "1,64" if args.quick else "1,8,32,64"
    args.skip = set(filter(None, args.skip.split(",")))
    args.batches = [int(b) for b in (args.batches or default_batches).split(",")]
    if not torch.cuda.is_available():
        print("models.py needs a CUDA GPU", file=sys.stderr)
        return 2
    import transformers

    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
    header = (f"{torch.cuda.get_device_name()}, torch {torch.__version__}, transformers {transformers.__version__}, "
              f"bf16, SDPA (Gemma 2: eager attention); prefill {args.prefill} tokens, decode {args.steps} steps "
              f"after {args.context} tokens")
    print(header, flush=True)
    started = time.perf_counter()
    rows: list[Row] = []
    for family in families:
        try:
            rows += bench_family(family, args)
        except Exception as e:  # e.g. out of memory building a model: the other families still run
            rows.append(Row(family, "-", "-", note=_failure(e)))
    text = f"{header}\n\n{table(rows)}\n"
    print(text)
    print(f"({time.perf_counter() - started:.0f} s)")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
