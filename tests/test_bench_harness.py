"""The serving-op benchmark harness: byte formulas, the sweep, the report writer, the CLI, and one row run on CPU
tensors with fake timings (the GPU test at the end runs the real thing at one tiny shape)."""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from cujit.tools.bench import cases as C
from cujit.tools.bench import main, parser
from cujit.tools.bench import report as R
from cujit.tools.bench import summary as S
from cujit.tools.bench.timing import percentile, summarize
from tests.conftest import gpu_count

# -- byte formulas -----------------------------------------------------------------------------------------------


def test_norm_and_activation_bytes() -> None:
    # rms_norm: x read, weight read, out written.
    assert C.rms_norm_bytes(4097, 8192, 2) == (4097 * 8192 * 2 + 8192) * 2
    # fused add: x and residual read and written, weight read.
    assert C.fused_add_rms_norm_bytes(4097, 16384, 2) == (4 * 4097 * 16384 + 16384) * 2
    assert C.fused_add_rms_norm_bytes(1, 4, 4) == (16 + 4) * 4
    # x [T, 2d] read, out [T, d] written.
    assert C.gated_act_bytes(4097, 8192, 2) == 4097 * (2 * 8192 + 8192) * 2
    assert C.gated_act_bytes(3, 5, 4) == 3 * 15 * 4


def test_rotary_and_kv_bytes() -> None:
    # q [T, 64*128] and k [T, 16*128] read and written, 8-byte positions, one 128-wide bf16 cache row per token.
    t = 4097
    assert C.rotary_bytes(t, 64, 16, 128, 2, 2, 8) == 2 * t * 80 * 128 * 2 + t * 128 * 2 + t * 8
    # partial rotary: only the rotated part of each head moves.
    assert C.rotary_bytes(1, 1, 1, 64, 2, 4, 4) == 2 * 2 * 64 * 2 + 64 * 4 + 4
    # k and v [T, 8, 128] bf16 read, the same rows written into a bf16 or fp8 cache, int64 slots.
    assert C.store_kv_bytes(t, 8, 128, 2, 2) == 2 * t * 1024 * 4 + 8 * t
    assert C.store_kv_bytes(t, 8, 128, 2, 1, 8, 8) == 2 * t * 1024 * 3 + 8 * t + 8
    # fused: q read + written, k and v read once, cache rows written, positions, slots, cos/sin rows.
    got = C.fused_rotary_store_bytes(t, 32, 8, 128, 128, 2, 2, 2, 8, 8)
    assert got == 2 * t * 32 * 128 * 2 + 2 * t * 8 * 128 * (2 + 2) + t * 128 * 2 + t * 16


def test_quant_bytes() -> None:
    assert C.per_token_quant_bytes(4097, 4096, 2) == 4097 * 4096 * 3 + 4 * 4097
    assert C.per_tensor_quant_bytes(4097, 4096, 2) == 4097 * 4096 * 3 + 4
    assert C.group_quant_bytes(4097, 7168, 2, 128) == 4097 * 7168 * 3 + 4 * 4097 * 56


def test_fused_quant_router_and_qk_norm_bytes() -> None:
    # x [T, 2d] read, q [T, d] (1 byte) and one fp32 scale per 128 values written.
    assert C.silu_and_mul_quant_bytes(4097, 4096, 2, 128) == 4097 * (2 * 4096 * 2 + 4096) + 4 * 4097 * 32
    # x read, residual read and written, weight read, q and scales written.
    assert C.fused_add_rms_norm_quant_bytes(4097, 4096, 2, 128) == (
        4097 * 4096 * (3 * 2 + 1) + 4096 * 2 + 4 * 4097 * 32)
    # logits read, fp32 weights and int32 ids written.
    assert C.topk_softmax_bytes(4097, 256, 8, 2) == 4097 * 256 * 2 + 4097 * 8 * (4 + 4)
    # q and k read and written, two weights of head_dim read.
    assert C.qk_rms_norm_bytes(4097, 32, 8, 128, 2) == 2 * 4097 * 40 * 128 * 2 + 2 * 128 * 2
    # the same, and one cos/sin row (bf16) and one int64 position per token; partial rotary reads less of a row.
    assert C.qk_norm_rotary_bytes(4097, 32, 8, 128, 128, 2, 2, 8) == (
        2 * 4097 * 40 * 128 * 2 + 2 * 128 * 2 + 4097 * 128 * 2 + 4097 * 8)
    assert C.qk_norm_rotary_bytes(1, 1, 1, 128, 64, 2, 4, 4) == 2 * 2 * 128 * 2 + 2 * 128 * 2 + 64 * 4 + 4


def test_every_case_carries_its_formula_and_positive_bytes() -> None:
    for case in C.sweep(C.OPS):
        assert case.nbytes > 0 and case.formula and case.group
        e = C.ITEMSIZE[case.dtype]
        if case.op == "rms_norm":
            assert case.nbytes == C.rms_norm_bytes(case.tokens, case.params["hidden"], e)
        elif case.op in ("silu_and_mul", "gelu_and_mul"):
            assert case.nbytes == C.gated_act_bytes(case.tokens, case.params["d"], e)


# -- the sweep ---------------------------------------------------------------------------------------------------


def _key(case: C.Case) -> tuple[Any, ...]:
    return (case.op, case.variant, case.dtype, case.tokens, tuple(case.params.items()))


def test_full_sweep_covers_the_asked_shapes() -> None:
    full = C.sweep(C.OPS)
    norms = {(c.tokens, c.params["hidden"]) for c in full if c.op == "rms_norm" and c.dtype == "bfloat16"}
    assert norms == {(t, h) for t in (1, 2, 4, 8, 16, 128, 512, 4097, 16384) for h in (4096, 5120, 8192, 16384)}
    acts = {(c.tokens, c.params["d"]) for c in full if c.op == "silu_and_mul" and c.dtype == "bfloat16"}
    assert {d for _, d in acts} == {4096, 8192, 14336}
    assert {c.dtype for c in full if c.op == "fused_add_rms_norm"} == {"bfloat16", "float16", "float32"}
    # Gemma's form: bf16 at the headline shape of each hidden size.
    gemma = {(c.op, c.dtype, c.tokens, c.params["hidden"]) for c in full if c.variant == "gemma"}
    assert gemma == {(op, "bfloat16", C.HEADLINE_TOKENS, h) for op in ("rms_norm", "fused_add_rms_norm")
                     for h in (4096, 5120, 8192, 16384)}
    heads = {(c.params["q_heads"], c.params["kv_heads"]) for c in full if c.op == "rotary_embedding"}
    assert heads == {(64, 16), (32, 8), (40, 10)}
    assert {c.variant for c in full if c.op == "store_kv_cache"} == {"bf16 cache", "fp8 cache"}
    assert {c.variant for c in full if c.op == "per_tensor_quant_fp8"} == {"dynamic", "static"}
    assert {c.params["hidden"] for c in full if c.op == "per_token_group_quant_fp8"} == {4096, 7168}
    assert {(c.params["experts"], c.params["topk"]) for c in full if c.op == "topk_softmax"} == {
        (8, 2), (128, 8), (256, 8)}
    assert {c.params["hidden"] for c in full if c.op == "fused_add_rms_norm_quant_fp8"} == {4096, 7168}
    assert {c.params["d"] for c in full if c.op == "silu_and_mul_quant_fp8"} == {4096, 14336}
    assert {c.tokens for c in full if c.op == "qk_rms_norm"} == set(C.TOKENS)
    assert {(c.variant, c.params["head_size"]) for c in full if c.op == "qk_norm_rotary"} == {
        ("qwen3", 128), ("gemma3", 256)}
    assert {c.op for c in full} == set(C.OPS)
    assert len({_key(c) for c in full}) == len(full), "no row twice"


def test_quick_sweep_is_a_small_subset_with_the_headline_shape() -> None:
    full = {_key(c) for c in C.sweep(C.OPS)}
    quick = C.sweep(C.OPS, quick=True)
    assert {_key(c) for c in quick} <= full
    assert len(quick) < 75
    assert {c.op for c in quick} == set(C.OPS)
    assert all(any(c.op == op and c.tokens == C.HEADLINE_TOKENS for c in quick) for op in C.OPS)


def test_filters_and_graph_rows() -> None:
    rows = C.sweep(["rms_norm"], tokens=[1, 4097], sizes=[8192])
    assert rows and all(c.tokens in (1, 4097) and c.params["hidden"] == 8192 for c in rows)
    assert [c.graph for c in rows if c.dtype == "bfloat16" and not c.variant] == [True, False]
    # rows without a hidden size or d are kept by --sizes
    assert C.sweep(["rotary_embedding"], quick=True, sizes=[8192])


def test_select_ops() -> None:
    assert C.select_ops([]) == list(C.OPS)
    assert C.select_ops(["quant", "rms_norm"]) == ["rms_norm", "per_token_quant_fp8", "per_tensor_quant_fp8",
                                                   "per_token_group_quant_fp8"]
    with pytest.raises(ValueError, match=r"--ops: expected op or family names .* got 'rmsnorm'"):
        C.select_ops(["rmsnorm"])


# -- statistics --------------------------------------------------------------------------------------------------


def test_geomean_and_percentiles() -> None:
    assert R.geomean([2.0, 8.0]) == pytest.approx(4.0)
    assert R.geomean([1.1]) == pytest.approx(1.1)
    assert R.geomean([]) is None
    assert R.geomean([0.0, -1.0, math.nan]) is None
    assert percentile([1.0, 2.0, 3.0, 4.0, 5.0], 50) == 3.0
    assert percentile([1.0, 2.0], 20) == pytest.approx(1.2)
    timing = summarize([10.0, 12.0, 11.0, 30.0, 9.0])
    assert timing.median_us == 11.0 and timing.samples == 5 and timing.low_us <= 11.0 <= timing.high_us
    with pytest.raises(ValueError, match="expected at least one value"):
        percentile([], 50)


# -- the report --------------------------------------------------------------------------------------------------


def _cell(us: float, nbytes: int, copy_gbps: float, note: str = "") -> dict[str, Any]:
    gbps = nbytes / (us * 1e-6) / 1e9
    return {"status": "ok", "note": note, "us": us, "low_us": us * 0.99, "high_us": us * 1.01, "samples": 100,
            "gbps": gbps, "x_copy": gbps / copy_gbps}


def _row(op: str, tokens: int, cujit_us: float | None, compile_us: float, family: str = "norms",
         variant: str = "") -> dict[str, Any]:
    nbytes = 134_250_496
    copy_us = 45.0
    copy_gbps = nbytes / (copy_us * 1e-6) / 1e9
    contenders = {
        "cujit": _cell(cujit_us, nbytes, copy_gbps) if cujit_us else {"status": "not available: no cujit.x here",
                                                                       "note": ""},
        "eager": _cell(150.0, nbytes, copy_gbps),
        "compile": _cell(compile_us, nbytes, copy_gbps, note="dynamic tokens"),
        "liger": {"status": "wrong: out: rel err 3.0e-01 > 2e-02", "note": ""},
    }
    return {"family": family, "op": op, "variant": variant, "label": f"{op}[{variant}]" if variant else op,
            "dtype": "bfloat16", "tokens": tokens, "shape": {"hidden": 8192}, "group": "8192", "bytes": nbytes,
            "formula": "(2*T*H + H)*e", "timing": "graph" if tokens <= 16 else "flush",
            "calls_per_graph": 32 if tokens <= 16 else None, "copy_us": copy_us, "copy_gbps": copy_gbps,
            "noise": 0.004, "contenders": contenders}


def _rows() -> list[dict[str, Any]]:
    return [_row("rms_norm", 1, 2.0, 2.5), _row("rms_norm", 4097, 48.0, 50.0), _row("rms_norm", 16384, None, 190.0),
            _row("silu_and_mul", 4097, 40.0, 40.0, "activations")]


def test_speedup_and_summary() -> None:
    rows = _rows()
    assert R.speedup(rows[1]) == pytest.approx(50.0 / 48.0)
    assert R.speedup(rows[2]) is None  # cujit not available
    result = R.summary(rows)
    assert result["rows"] == 3
    assert result["geomean"] == pytest.approx((1.25 * 50 / 48 * 1.0) ** (1 / 3))
    assert result["min"] == pytest.approx(1.0) and "silu_and_mul bf16 T=4097" in result["min_row"]


def test_markdown_tables() -> None:
    text = R.markdown(_rows(), {"device": "NVIDIA H100 80GB HBM3", "torch": "2.11.0", "liger": "0.8.5"})
    assert "NVIDIA H100 80GB HBM3" in text and "liger-kernel 0.8.5" in text
    assert "## Norms" in text and "## Gated activations" in text and "## Rotary" not in text
    assert "| op | dtype | shape | T | timing | MB | copy_ | cujit | torch eager | torch.compile | Liger |" in text
    # 134.25 MB in 48 us: 2797 GB/s; copy_ in 45 us: 0.94x
    assert "48.0 us · 2797 GB/s · 0.94x" in text
    assert "| graph x32 |" in text and "| flush |" in text
    assert "not available: no cujit.x here" in text and "wrong: out: rel err 3.0e-01 > 2e-02" in text
    assert "| 1.04x |" in text  # 50 / 48
    assert "`rms_norm`: (2*T*H + H)*e" in text
    assert "48.0 us · 2797 GB/s · 0.94x |" in text  # only cells with a note are marked
    assert "50.0 us · 2685 GB/s · 0.90x [1]" in text and "[1] torch.compile: dynamic tokens" in text
    assert "geometric mean of 3 rows" in text


def test_markdown_says_when_rows_are_missing() -> None:
    text = R.markdown(_rows()[:1], {"partial": True, "not_run": ["rms_norm bfloat16 T=16384 hidden=8192"]})
    assert "**Partial:" in text
    assert "**Not run (time limit): 1 rows**: rms_norm bfloat16 T=16384 hidden=8192." in text


def test_write_report_json_and_plot_names(tmp_path: Path) -> None:
    rows = _rows()
    result = R.write_report(rows, {"device": "NVIDIA H200"}, tmp_path / "out")
    data = json.loads((tmp_path / "out" / "bench_ops.json").read_text())
    assert data["meta"]["device"] == "NVIDIA H200" and len(data["rows"]) == 4
    assert data["rows"][1]["contenders"]["cujit"]["us"] == 48.0
    assert data["summary"]["rows"] == 3
    assert (tmp_path / "out" / "bench_ops.md").read_text() == result["text"]
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert result["plots"] == [] and "matplotlib is not installed" in result["plot_message"]
    else:
        names = sorted(p.name for p in result["plots"])
        assert names == ["rms_norm_bf16_8192.png", "silu_and_mul_bf16_8192.png"]
        assert all(p.stat().st_size > 1000 for p in result["plots"])


def test_plots_skipped_without_matplotlib(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ImportError
    written, message = R.write_plots(_rows(), tmp_path)
    assert written == [] and "pip install 'cujit[bench]'" in message
    assert list(tmp_path.iterdir()) == []


def test_plot_names_are_file_safe() -> None:
    assert R.plot_name("rms_norm", "", "bfloat16", "4096") == "rms_norm_bf16_4096.png"
    assert R.plot_name("store_kv_cache", "fp8 cache", "bfloat16", "8x128") == "store_kv_cache-fp8-cache_bf16_8x128.png"
    assert R.plot_name("gelu_and_mul", "tanh", "float32", "8192") == "gelu_and_mul-tanh_fp32_8192.png"


def test_progress_line() -> None:
    line = R.progress_line(3, 51, _rows()[1], 12.4)
    assert line.startswith("[  3/51] rms_norm bf16 T=4097 hidden=8192 (flush)")
    assert "cujit 48.0us 0.94x" in line and "torch.compile 50.0us" in line and "| 12 s" in line
    assert "Liger wrong" in line


# -- the command line --------------------------------------------------------------------------------------------


def test_parser() -> None:
    args = parser().parse_args(["--ops", "norms", "silu_and_mul", "--quick", "--tokens", "1,4097", "--out", "x"])
    assert args.ops == ["norms", "silu_and_mul"] and args.quick and args.tokens == [1, 4097]
    assert args.out == Path("x") and args.compile is None
    assert parser().parse_args(["--ops"]).ops == []
    assert parser().parse_args([]).ops is None
    assert parser().parse_args(["--ops", "--compile", "dynamic"]).compile == "dynamic"
    assert parser().parse_args(["--ops", "--time-limit", "540"]).time_limit == 540.0


@pytest.mark.parametrize("argv, message", [
    (["--quick"], "--quick: expected with --ops"),
    (["--ops", "rmsnorm"], "expected op or family names"),
    (["--ops", "--json", "x.json"], "--json and --only are for the runtime sections"),
    (["--ops", "--tokens", "1,x"], "expected comma-separated integers"),
    (["--ops", "--tokens", "0"], "positive integers"),
    (["--ops", "--compile", "max"], "invalid choice"),
    (["--ops", "--time-limit", "0"], "expected a positive number of seconds"),
    (["--time-limit", "60"], "--time-limit: expected with --ops"),
])
def test_cli_errors(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_help_lists_both_modes(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "usage: python -m cujit bench" in out and "--ops" in out and "--only" in out
    assert "rotary_embedding_with_kv_cache" in out and "bench_ops.md" in out


@pytest.mark.skipif(gpu_count() > 0, reason="checks the no-GPU path")
def test_ops_without_gpu_says_so() -> None:
    out = subprocess.run([sys.executable, "-m", "cujit", "bench", "--ops", "rms_norm", "--quick"],
                         capture_output=True, text=True, timeout=300, check=False)
    assert out.returncode == 1 and "needs a CUDA GPU" in out.stderr


def test_benchmark_script_is_the_same_command() -> None:
    text = (Path(__file__).parent.parent / "benchmarks" / "serving_ops.py").read_text()
    assert 'main(["--ops", *' in text
    assert "cujit._runtime" not in text


# -- one row on CPU tensors, fake timings ------------------------------------------------------------------------


class _FakeTimer:
    """Calls every function once and reports fixed times: copy_ 10 us, the others 20, 21, ... us."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def _times(self, fns: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
        times = {}
        for i, (name, fn) in enumerate(fns.items()):
            fn()
            self.calls.append(name)
            base = 10.0 if name.startswith("copy_") else 20.0 + i
            times[name] = summarize([base, base, base])
        return times, {}

    def flushed(self, fns: dict[str, Any], resets: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
        for reset in resets.values():
            reset()
        return self._times(fns)

    def graphed(self, fns: dict[str, Any], calls: int, resets: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
        return self._times(fns)


def _env(timer: _FakeTimer) -> Any:
    from cujit.tools.bench import ops

    return ops.Env("cpu", ops.Compiler("off"), timer, max_position=256, num_slots=512)


def _resolved(monkeypatch: pytest.MonkeyPatch, table: dict[str, Any]) -> None:
    """Make the benchmark's op lookup answer from ``table`` alone."""
    from cujit.tools.bench.ops import contenders

    monkeypatch.setattr(contenders, "_RESOLVED", table)


def test_row_on_cpu_checks_each_contender(monkeypatch: pytest.MonkeyPatch) -> None:
    torch = pytest.importorskip("torch")
    from cujit.tools.bench import ops
    from cujit.tools.bench import references as refs

    def good(x: Any, weight: Any, eps: float = 1e-6, out: Any = None) -> Any:
        return out.copy_(refs.rms_norm(x, weight, eps))

    monkeypatch.setitem(ops._RESOLVED, "rms_norm", good)
    case = C.Case("rms_norm", "bfloat16", 33, {"hidden": 1000}, "1000", C.rms_norm_bytes(33, 1000, 2),
                  "(2*T*H + H)*e")
    timer = _FakeTimer()
    with torch.no_grad():
        row = ops.run_case(case, _env(timer))
    cells = row["contenders"]
    assert row["timing"] == "flush" and row["bytes"] == case.nbytes and row["copy_us"] == 10.0
    assert cells["cujit"]["status"] == "ok" and cells["eager"]["status"] == "ok"
    assert cells["cujit"]["x_copy"] == pytest.approx(10.0 / cells["cujit"]["us"])
    assert cells["cujit"]["gbps"] == pytest.approx(case.nbytes / (cells["cujit"]["us"] * 1e-6) / 1e9)
    assert cells["compile"]["status"].startswith("n/a")
    if importlib.util.find_spec("liger_kernel") is None:
        assert cells["liger"]["status"].startswith("n/a")
    else:  # installed: its Triton kernels refuse these CPU tensors, which is reported, not timed
        assert cells["liger"]["status"].startswith("error") and cells["liger"].get("us") is None
    assert row["noise"] == 0.0
    assert {"copy_", "copy_ again", "cujit", "eager"} <= set(timer.calls)


def test_wrong_and_failing_contenders_are_reported_not_timed(monkeypatch: pytest.MonkeyPatch) -> None:
    torch = pytest.importorskip("torch")
    from cujit.tools.bench import ops

    def skips_last_row(x: Any, weight: Any, eps: float = 1e-6, out: Any = None) -> Any:
        from cujit.tools.bench import references as refs

        out[:-1] = refs.rms_norm(x[:-1], weight, eps)  # the poisoned last row stays NaN
        return out

    case = C.Case("rms_norm", "float32", 4, {"hidden": 64}, "64", C.rms_norm_bytes(4, 64, 4), "f")
    monkeypatch.setitem(ops._RESOLVED, "rms_norm", skips_last_row)
    timer = _FakeTimer()
    with torch.no_grad():
        row = ops.run_case(case, _env(timer))
    assert row["timing"] == "graph"
    assert row["contenders"]["cujit"]["status"] == "wrong: out: non-finite values"
    assert "us" not in row["contenders"]["cujit"] and "cujit" not in timer.calls

    def raises(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("kernel exploded\nsecond line")

    monkeypatch.setitem(ops._RESOLVED, "rms_norm", raises)
    with torch.no_grad():
        row = ops.run_case(case, _env(_FakeTimer()))
    assert row["contenders"]["cujit"]["status"] == "error: RuntimeError: kernel exploded"

    monkeypatch.setitem(ops._RESOLVED, "rms_norm", "not available: no cujit.rms_norm here")
    with torch.no_grad():
        row = ops.run_case(case, _env(_FakeTimer()))
    assert row["contenders"]["cujit"]["status"] == "not available: no cujit.rms_norm here"


def test_inplace_rows_reset_their_inputs(monkeypatch: pytest.MonkeyPatch) -> None:
    torch = pytest.importorskip("torch")
    from cujit.tools.bench import ops
    from cujit.tools.bench import references as refs

    calls = []

    def fused(x: Any, residual: Any, weight: Any, eps: float = 1e-6) -> None:
        calls.append(1)
        refs.fused_add_rms_norm(x, residual, weight, eps)

    monkeypatch.setitem(ops._RESOLVED, "fused_add_rms_norm", fused)
    case = C.Case("fused_add_rms_norm", "bfloat16", 5, {"hidden": 128}, "128",
                  C.fused_add_rms_norm_bytes(5, 128, 2), "f")
    with torch.no_grad():
        row = ops.run_case(case, _env(_FakeTimer()))
    assert row["contenders"]["cujit"]["status"] == "ok", row["contenders"]["cujit"]
    assert row["contenders"]["eager"]["status"] == "ok"
    assert "non-finite" not in row["contenders"]["cujit"]["note"]
    assert len(calls) == 2  # the check, then the (fake) timing


def _fake_ops() -> dict[str, Any]:
    """Correct stand-ins for the cujit ops, with their signatures, built from the references."""
    from cujit.tools.bench import references as refs
    from cujit.tools.bench.ops import fused_quant, qk_norm
    from cujit.tools.bench.ops.qk_norm_rotary import qk_norm_rotary as qk_norm_rotary_ref

    def rotary_embedding(positions: Any, q: Any, k: Any, cos_sin_cache: Any, *, is_neox: bool = True,
                         rotary_dim: Any = None, head_size: Any = None) -> None:
        refs.rotary_embedding(positions, q, k, cos_sin_cache, head_size, is_neox)

    def store_kv_cache(k: Any, v: Any, k_cache: Any, v_cache: Any, slot_mapping: Any, *, k_scale: Any = None,
                       v_scale: Any = None) -> None:
        refs.store_kv_cache(k, v, k_cache, v_cache, slot_mapping, k_scale, v_scale)

    def rotary_embedding_with_kv_cache(positions: Any, q: Any, k: Any, v: Any, cos_sin_cache: Any, k_cache: Any,
                                       v_cache: Any, slot_mapping: Any, *, is_neox: bool = True, k_scale: Any = None,
                                       v_scale: Any = None) -> None:
        tokens, _, head_size = q.shape
        q2, k2 = q.reshape(tokens, -1), k.reshape(tokens, -1).clone()  # k itself is not written
        refs.rotary_embedding(positions, q2, k2, cos_sin_cache, head_size, is_neox)
        refs.store_kv_cache(k2.view(k.shape), v, k_cache, v_cache, slot_mapping, k_scale, v_scale)

    def per_token_quant_fp8(x: Any, *, scale_ub: Any = None, out: Any = None, scales: Any = None) -> Any:
        q, s = refs.per_token_quant_fp8(x)
        return q, s.view(-1)

    def per_tensor_quant_fp8(x: Any, scale: Any = None, *, out: Any = None, scale_out: Any = None) -> Any:
        return refs.per_tensor_quant_fp8(x, scale)

    def per_token_group_quant_fp8(x: Any, group_size: int = 128, *, column_major_scales: bool = False,
                                  out: Any = None, scales: Any = None) -> Any:
        q, s = refs.per_token_group_quant_fp8(x, group_size)
        return q, s.t().contiguous().t()  # column-major storage of the same values

    def topk_softmax(gating_output: Any, topk: int, renormalize: bool = False, *, weights: Any = None,
                     ids: Any = None) -> Any:
        import torch

        w, i = torch.softmax(gating_output.float(), -1).topk(topk, -1)
        if renormalize:
            w = w / w.sum(-1, keepdim=True)
        return weights.copy_(w), ids.copy_(i)

    def qk_rms_norm(q: Any, k: Any, q_weight: Any, k_weight: Any, eps: float = 1e-6, *, gemma: bool = False) -> None:
        if gemma:
            q_weight, k_weight = q_weight.float() + 1, k_weight.float() + 1
        qk_norm.qk_rms_norm(q, k, q_weight, k_weight, eps)

    def qk_norm_rotary(positions: Any, q: Any, k: Any, q_weight: Any, k_weight: Any, cos_sin_cache: Any, *,
                       head_size: int, eps: float = 1e-6, is_neox: bool = True, gemma: bool = False,
                       rotary_dim: Any = None) -> None:
        qk_norm_rotary_ref(positions, q, k, q_weight, k_weight, cos_sin_cache, head_size, eps, gemma)

    def silu_and_mul_quant_fp8(x: Any, group_size: int = 128, *, column_major_scales: bool = False, out: Any = None,
                               scales: Any = None) -> Any:
        return fused_quant.silu_and_mul_quant(x, group_size)

    def fused_add_rms_norm_quant_fp8(x: Any, residual: Any, weight: Any, eps: float = 1e-6, *, group_size: int = 0,
                                     column_major_scales: bool = False, gemma: bool = False, out: Any = None,
                                     scales: Any = None) -> Any:
        return fused_quant.add_rms_norm_quant(x, residual, weight, eps, group_size)

    return {f.__name__: f for f in (rotary_embedding, store_kv_cache, rotary_embedding_with_kv_cache,
                                    per_token_quant_fp8, per_tensor_quant_fp8, per_token_group_quant_fp8,
                                    topk_softmax, qk_rms_norm, qk_norm_rotary, silu_and_mul_quant_fp8,
                                    fused_add_rms_norm_quant_fp8)}


@pytest.mark.parametrize("op, variant, params", [
    ("rotary_embedding", "neox", {"q_heads": 4, "kv_heads": 2, "head_size": 64, "rotary_dim": 64}),
    ("rotary_embedding", "gptj", {"q_heads": 4, "kv_heads": 2, "head_size": 64, "rotary_dim": 64}),
    ("store_kv_cache", "bf16 cache", {"kv_heads": 2, "head_size": 64}),
    ("store_kv_cache", "fp8 cache", {"kv_heads": 2, "head_size": 64}),
    ("per_token_quant_fp8", "", {"hidden": 256}),
    ("per_tensor_quant_fp8", "dynamic", {"hidden": 256}),
    ("per_tensor_quant_fp8", "static", {"hidden": 256}),
    ("per_token_group_quant_fp8", "", {"hidden": 256, "group_size": 128}),
    ("rotary_embedding_with_kv_cache", "neox", {"q_heads": 4, "kv_heads": 2, "head_size": 64, "rotary_dim": 64}),
    ("topk_softmax", "", {"experts": 64, "topk": 8}),
    ("topk_softmax", "", {"experts": 8, "topk": 2}),
    ("qk_rms_norm", "", {"q_heads": 4, "kv_heads": 2, "head_dim": 64}),
    ("qk_norm_rotary", "qwen3", {"q_heads": 4, "kv_heads": 2, "head_size": 64, "rotary_dim": 64}),
    ("qk_norm_rotary", "gemma3", {"q_heads": 4, "kv_heads": 2, "head_size": 64, "rotary_dim": 64}),
    ("silu_and_mul_quant_fp8", "", {"d": 256, "group_size": 128}),
    ("fused_add_rms_norm_quant_fp8", "", {"hidden": 256, "group_size": 128}),
])
def test_every_family_on_cpu(op: str, variant: str, params: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    torch = pytest.importorskip("torch")
    from cujit.tools.bench import ops

    _resolved(monkeypatch, dict(_fake_ops()))
    extra = {"cache_dtype": "float8_e4m3fn" if variant == "fp8 cache" else "bfloat16"}
    case = C.Case(op, "bfloat16", 7, params, "g", 1000, "f", variant, extra)
    with torch.no_grad():
        row = ops.run_case(case, _env(_FakeTimer()))
    cells = row["contenders"]
    assert cells["cujit"]["status"] == "ok", cells["cujit"]
    assert cells["eager"]["status"] == "ok", cells["eager"]
    if op in ("rotary_embedding_with_kv_cache", "qk_norm_rotary"):
        assert cells["cujit unfused"]["status"] == "ok", cells["cujit unfused"]


def _ascending_topk(gating_output: Any, topk: int, renormalize: bool = False, *, weights: Any = None,
                    ids: Any = None) -> Any:
    import torch

    w, i = torch.softmax(gating_output.float(), -1).topk(topk, -1, largest=True, sorted=True)
    w, i = w.flip(-1), i.flip(-1)  # the right experts, in the wrong order
    return weights.copy_(w / w.sum(-1, keepdim=True)), ids.copy_(i)


def _repeated_topk(gating_output: Any, topk: int, renormalize: bool = False, *, weights: Any = None,
                   ids: Any = None) -> Any:
    import torch

    w, i = torch.softmax(gating_output.float(), -1).topk(topk, -1)
    i[:, -1] = i[:, 0]  # an expert picked twice
    return weights.copy_(w / w.sum(-1, keepdim=True)), ids.copy_(i)


def _qk_norm_into_v(q: Any, k: Any, q_weight: Any, k_weight: Any, eps: float = 1e-6, *, gemma: bool = False) -> None:
    from cujit.tools.bench.ops import qk_norm

    qk_norm.qk_rms_norm(q, k, q_weight, k_weight, eps)
    width = k.shape[1]
    k.as_strided((k.shape[0], 1), k.stride(), k.storage_offset() + width).fill_(0)  # the first value of v


def _norm_without_rope(positions: Any, q: Any, k: Any, q_weight: Any, k_weight: Any, cos_sin_cache: Any, *,
                       head_size: int, eps: float = 1e-6, is_neox: bool = True, gemma: bool = False,
                       rotary_dim: Any = None) -> None:
    from cujit.tools.bench.ops import qk_norm

    qk_norm.qk_rms_norm(q, k, q_weight, k_weight, eps)


def _quant_writes_x(x: Any, residual: Any, weight: Any, eps: float = 1e-6, *, group_size: int = 0, **_: Any) -> Any:
    from cujit.tools.bench.ops import fused_quant

    result = fused_quant.add_rms_norm_quant(x, residual, weight, eps, group_size)
    x.copy_(residual)
    return result


@pytest.mark.parametrize("op, fake, params, problem", [
    ("topk_softmax", _ascending_topk, {"experts": 64, "topk": 8}, "picked: rel err"),
    ("topk_softmax", _repeated_topk, {"experts": 64, "topk": 8}, "distinct: "),
    ("qk_rms_norm", _qk_norm_into_v, {"q_heads": 4, "kv_heads": 2, "head_dim": 64}, "v: "),
    ("qk_norm_rotary", _norm_without_rope, {"q_heads": 4, "kv_heads": 2, "head_size": 64, "rotary_dim": 64},
     "q: rel err"),
    ("fused_add_rms_norm_quant_fp8", _quant_writes_x, {"hidden": 256, "group_size": 128}, "x: "),
])
def test_new_ops_wrong_results_are_caught(op: str, fake: Any, params: dict[str, Any], problem: str,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    torch = pytest.importorskip("torch")
    from cujit.tools.bench import ops

    _resolved(monkeypatch, {op: fake})
    case = C.Case(op, "bfloat16", 7, params, "g", 1000, "f")
    with torch.no_grad():
        row = ops.run_case(case, _env(_FakeTimer()))
    status = row["contenders"]["cujit"]["status"]
    assert status.startswith("wrong: ") and problem in status, status
    assert row["contenders"]["eager"]["status"] == "ok"


def test_a_store_into_the_wrong_slots_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    torch = pytest.importorskip("torch")
    from cujit.tools.bench import ops
    from cujit.tools.bench import references as refs

    def off_by_one(k: Any, v: Any, k_cache: Any, v_cache: Any, slot_mapping: Any, *, k_scale: Any = None,
                   v_scale: Any = None) -> None:
        refs.store_kv_cache(k, v, k_cache, v_cache, (slot_mapping + 1) % k_cache.shape[0], k_scale, v_scale)

    _resolved(monkeypatch, {"store_kv_cache": off_by_one})
    case = C.Case("store_kv_cache", "bfloat16", 7, {"kv_heads": 2, "head_size": 64}, "g", 1000, "f", "bf16 cache",
                  {"cache_dtype": "bfloat16"})
    with torch.no_grad():
        row = ops.run_case(case, _env(_FakeTimer()))
    status = row["contenders"]["cujit"]["status"]
    assert status.startswith("wrong: k_rows:") and "k_rest:" in status


def test_cujit_op_lookup_reports_missing_and_broken_modules(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from cujit.tools.bench import ops

    assert ops._resolve("bench_fake_op", "cujit_bench_absent_module") == "not available: no cujit.bench_fake_op here"
    (tmp_path / "cujit_bench_broken_module.py").write_text("raise ImportError('half-written op')\n")
    (tmp_path / "cujit_bench_needs_more.py").write_text("import cujit_bench_absent_dependency\n")
    (tmp_path / "cujit_bench_good_module.py").write_text("def bench_good_op(x):\n    return x\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert ops._resolve("op", "cujit_bench_broken_module") == (
        "not available: importing cujit_bench_broken_module failed: ImportError: half-written op")
    assert ops._resolve("op", "cujit_bench_needs_more").startswith(
        "not available: importing cujit_bench_needs_more failed: No module named 'cujit_bench_absent_dependency'")
    found = ops._resolve("bench_good_op", "cujit_bench_good_module")
    assert callable(found) and found(3) == 3
    _resolved(monkeypatch, {})
    with pytest.raises(ops.Unavailable, match=r"not available: no cujit\.bench_fake_op here"):
        ops.cujit_op("bench_fake_op")


def test_bind_by_parameter_name() -> None:
    from cujit.tools.bench import ops

    def op(k: Any, v: Any, k_cache: Any, v_cache: Any, slot_mapping: Any, *, k_scale: Any = None) -> None:
        return None

    assert ops.bind(op, {"k": 1, "v": 2, "k_cache": 3, "v_cache": 4, "slot_mapping": 5, "k_scale": 6, "x": 7},
                    "op") == {"k": 1, "v": 2, "k_cache": 3, "v_cache": 4, "slot_mapping": 5, "k_scale": 6}
    with pytest.raises(ops.Unavailable, match="has a parameter 'slot_mapping' the benchmark does not know"):
        ops.bind(op, {"k": 1, "v": 2, "k_cache": 3, "v_cache": 4}, "op")


def test_every_shipped_op_has_rows_or_a_reason() -> None:
    import cujit
    from cujit.tools.bench.ops import WITHOUT_ROWS

    shipped = set(cujit.shipped_module_names())
    missing = shipped - set(C.OPS) - set(WITHOUT_ROWS)
    assert not missing, f"shipped ops without benchmark rows: add a module to cujit/tools/bench/ops/ or list them " \
                        f"in WITHOUT_ROWS with the reason: {sorted(missing)}"
    assert set(C.OPS) | set(WITHOUT_ROWS) <= shipped, "rows or reasons for ops cujit does not ship"
    assert not set(C.OPS) & set(WITHOUT_ROWS)


def test_families_are_collected_from_their_modules() -> None:
    from cujit.tools.bench import ops

    names = [family.name for family in ops.families()]
    assert names == list(C.FAMILIES) == list(ops.BUILDERS)
    assert names[:2] == ["norms", "qk_norm"] and names[-1] == "router"
    assert ops.family_of("topk_softmax").name == "router"
    for family in ops.families():
        assert family.ops and all(C.sweep([op]) and C.sweep([op], quick=True) for op in family.ops)
        # The report heads each family's table with the title its module declares.
        assert R._title(family.name) == family.title


# -- GPU smoke test ----------------------------------------------------------------------------------------------


@pytest.mark.gpu
def test_gpu_smoke_one_op_at_tiny_shapes(tmp_path: Path) -> None:
    """A graph-replayed row with torch.compile, and an L2-flushed one, end to end through the command line."""
    out = subprocess.run([sys.executable, "-m", "cujit", "bench", "--ops", "rms_norm", "--quick", "--tokens", "1",
                          "--sizes", "4096", "--out", str(tmp_path)], capture_output=True, text=True, timeout=600,
                         check=False)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    flushed = subprocess.run([sys.executable, "-m", "cujit", "bench", "--ops", "silu_and_mul", "--quick", "--tokens",
                              "4097", "--compile", "off", "--out", str(tmp_path / "flushed")], capture_output=True,
                             text=True, timeout=600, check=False)
    assert flushed.returncode == 0, flushed.stdout[-3000:] + flushed.stderr[-3000:]
    for folder, timing in ((tmp_path, "graph"), (tmp_path / "flushed", "flush")):
        data = json.loads((folder / "bench_ops.json").read_text())
        assert data["rows"] and all(r["timing"] == timing for r in data["rows"])
        for r in data["rows"]:
            assert r["copy_us"] > 0 and 0 <= r["noise"] < 0.5
            eager = r["contenders"]["eager"]
            assert eager["status"] == "ok" and eager["us"] > 0 and 0.01 < eager["x_copy"] < 2
            cujit = r["contenders"]["cujit"]
            assert cujit["status"] == "ok" or cujit["status"].startswith("not available"), cujit
        assert (folder / "bench_ops.md").is_file()
    graph_row = json.loads((tmp_path / "bench_ops.json").read_text())["rows"][0]
    assert graph_row["contenders"]["compile"]["status"] == "ok", graph_row["contenders"]["compile"]


@pytest.mark.gpu
def test_gpu_new_op_families_check_and_time(tmp_path: Path) -> None:
    """The router, per-head norm and fused FP8 rows on the GPU: every contender right, each family its own table."""
    out = subprocess.run([sys.executable, "-m", "cujit", "bench", "--ops", "router", "qk_norm", "fused_quant",
                          "--quick", "--tokens", "16,4097", "--sizes", "4096", "--out", str(tmp_path)],
                         capture_output=True, text=True, timeout=600, check=False)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    rows = json.loads((tmp_path / "bench_ops.json").read_text())["rows"]
    assert {r["op"] for r in rows} == {"topk_softmax", "qk_rms_norm", "silu_and_mul_quant_fp8",
                                       "fused_add_rms_norm_quant_fp8"}
    assert {r["timing"] for r in rows} == {"graph", "flush"}
    for r in rows:
        for name in ("cujit", "eager", "compile"):
            cell = r["contenders"][name]
            assert cell["status"] == "ok" and cell["us"] > 0, (r["label"], r["tokens"], name, cell)
    text = (tmp_path / "bench_ops.md").read_text()
    assert "## MoE router" in text and "## Per-head RMSNorm" in text and "## Fused FP8 quantization" in text


# -- the summary per op ------------------------------------------------------------------------------------------


def _summary_rows() -> list[dict[str, Any]]:
    """_rows() (Liger wrong in every row), and a row where QuACK beats cujit."""
    rows = _rows()
    quick = _row("rms_norm", 16, 3.0, 3.3)
    quick["contenders"]["quack"] = _cell(2.4, quick["bytes"], quick["copy_gbps"])
    return [*rows, quick]


@pytest.mark.parametrize("device, tbps", [
    ("NVIDIA H100 80GB HBM3", 3.35), ("NVIDIA H200", 4.8), ("NVIDIA H100 PCIe", 2.0), ("NVIDIA H100 NVL", 3.9),
    ("NVIDIA A100-SXM4-80GB", 2.039), ("NVIDIA A100-SXM4-40GB", 1.555), ("NVIDIA L4", 0.3),
])
def test_peak_by_device_name(device: str, tbps: float) -> None:
    peak, source = S.peak_for({"device": device})
    assert peak == tbps and "table" in source


def test_peak_given_or_unknown() -> None:
    assert S.peak_for({"device": "NVIDIA H200", "peak_tbps": 4.0}) == (4.0, "given")
    peak, source = S.peak_for({"device": "Tesla T4"})
    assert peak is None and "no entry for Tesla T4" in source


def test_op_summaries_against_every_contender() -> None:
    found = {s["label"]: s for s in S.op_summaries(_summary_rows(), 3.35)}
    assert list(found) == ["rms_norm", "silu_and_mul"]
    norm = found["rms_norm"]
    assert norm["rows"] == 4 and set(norm["against"]) == {"eager", "compile", "quack"}  # Liger was never timed
    compile_ = norm["against"]["compile"]
    assert compile_["rows"] == 3  # the row without cujit is left out
    assert compile_["geomean"] == pytest.approx((2.5 / 2.0 * 50 / 48 * 3.3 / 3.0) ** (1 / 3))
    assert compile_["worst"] == pytest.approx(50 / 48) and compile_["worst_row"] == "bf16 T=4097 hidden=8192"
    assert norm["against"]["quack"] == {"rows": 1, "geomean": pytest.approx(0.8), "worst": pytest.approx(0.8),
                                        "worst_row": "bf16 T=16 hidden=8192"}
    # Only flushed rows count for the fraction of peak: 134.25 MB in 48 us is 2797 GB/s, 83% of 3.35 TB/s.
    assert norm["peak"]["rows"] == 1 and norm["peak"]["max"] == pytest.approx(134_250_496 / 48e-6 / 3.35e12)
    assert found["silu_and_mul"]["peak"]["max"] == pytest.approx(134_250_496 / 40e-6 / 3.35e12)
    assert all(s["peak"] is None for s in S.op_summaries(_summary_rows(), None))


def test_markdown_summary_per_op() -> None:
    text = R.markdown(_summary_rows(), {"device": "NVIDIA H100 80GB HBM3"})
    assert "## Summary per op" in text and text.index("## Summary per op") < text.index("## Norms")
    assert "3.35 TB/s (H100 in the table of cujit/tools/bench/summary.py)" in text
    assert ("| op | rows | vs torch eager | vs torch.compile | vs Liger | vs QuACK | cujit, fraction of peak | "
            "best fraction at |") in text
    eager = (150 / 2.0 * 150 / 48 * 150 / 3.0) ** (1 / 3)
    compile_ = (2.5 / 2.0 * 50 / 48 * 3.3 / 3.0) ** (1 / 3)
    # Liger was timed in no row: its cells say why, once per op.
    wrong = "wrong: out: rel err 3.0e-01 > 2e-02"
    assert (f"| `rms_norm` | 4 | {eager:.2f}x (worst {150 / 48:.2f}x) | {compile_:.2f}x (worst 1.04x) | {wrong} | "
            f"0.80x (worst 0.80x) | 83% | bf16 T=4097 hidden=8192 |") in text
    assert f"| `silu_and_mul` | 1 | 3.75x (worst 3.75x) | 1.00x (worst 1.00x) | {wrong} |  | 100% |" in text
    assert "- where cujit is behind: `rms_norm` 0.80x QuACK at bf16 T=16 hidden=8192." in text
    unknown = R.markdown(_rows(), {"device": "Tesla T4"})
    assert "Peak DRAM bandwidth: unknown (no entry for Tesla T4" in unknown and "`--peak-tbps` gives it" in unknown


def test_readme_table_and_its_markers() -> None:
    table = S.readme_table(_summary_rows(), {"device": "NVIDIA H200", "date": "2026-12-06"})
    assert table.startswith("Measured on NVIDIA H200 with `python -m cujit bench --ops` (2026-12-06)")
    assert "4.8 TB/s" in table
    # the closest peer besides torch.compile: QuACK (0.80x) rather than torch eager
    assert "| `rms_norm` | 4 | 1.13x (worst 1.04x) | QuACK: 0.80x (worst 0.80x) | 58% |" in table
    readme = f"# x\n\nbefore\n{S.README_BEGIN}\nold table\n{S.README_END}\nafter\n"
    replaced = S.replace_readme_table(readme, table)
    assert replaced == f"# x\n\nbefore\n{S.README_BEGIN}\n{table}{S.README_END}\nafter\n"
    assert S.replace_readme_table(replaced, table) == replaced
    with pytest.raises(ValueError, match="expected the lines <!-- bench-ops-summary:begin -->"):
        S.replace_readme_table("no markers\n", table)
    with pytest.raises(ValueError, match="in that order"):
        S.replace_readme_table(f"{S.README_END}\n{S.README_BEGIN}\n", table)


def test_summary_command_and_peak_rewrite(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "out"
    R.write_report(_summary_rows(), {"device": "NVIDIA H100 80GB HBM3"}, folder, plots=False)
    js = folder / "bench_ops.json"
    assert S.main([str(js)]) == 0
    assert "| `silu_and_mul` | 1 | 1.00x (worst 1.00x) | torch eager: 3.75x (worst 3.75x) | 100% |" in (
        capsys.readouterr().out)
    readme = tmp_path / "README.md"
    readme.write_text(f"top\n{S.README_BEGIN}\n{S.README_END}\n")
    assert S.main([str(js), "--peak-tbps", "4", "--readme", str(readme)]) == 0
    assert "4 TB/s (given)" in readme.read_text() and "| 84% |" in readme.read_text()
    for argv, message in (([str(js), "--peak-tbps", "0"], "--peak-tbps: expected a positive number"),
                          ([str(tmp_path / "none.json")], "expected a bench_ops.json"),
                          ([str(js), "--readme", str(js)], "expected the lines")):
        with pytest.raises(SystemExit):
            S.main(argv)
        assert message in capsys.readouterr().err
    R.rewrite_report(folder, 5.0)
    assert "5 TB/s (given)" in (folder / "bench_ops.md").read_text()
    assert json.loads(js.read_text())["meta"]["peak_tbps"] == 5.0


def test_peak_flag_needs_ops() -> None:
    assert parser().parse_args(["--ops", "--peak-tbps", "3.35"]).peak_tbps == 3.35
    with pytest.raises(SystemExit):
        main(["--peak-tbps", "3.35"])
    with pytest.raises(SystemExit):
        main(["--ops", "--peak-tbps", "-1"])
