"""The adapters of other libraries' kernels in the op benchmark (Liger, QuACK, FlashInfer).

On CPU: each adapter says why when its package is missing or broken, and the report shows the reason (in the
cell, the header and the summary per op); and, with stand-in packages that implement the APIs the adapters call
(as quack-kernels 0.6.5 and flashinfer-python 0.7.4 define them) in torch, every row that has such a contender
checks it as right. On the GPU, with the real packages: every QuACK and FlashInfer cell of a quick sweep is
timed or n/a, never wrong.
"""

from __future__ import annotations

import json
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import pytest

from cujit.tools.bench import cases as C
from cujit.tools.bench import flashinfer, liger, quack
from cujit.tools.bench import report as R
from cujit.tools.bench.adapters import Package, Unavailable

_PACKAGES = ("quack", "flashinfer", "liger_kernel")


def _block(monkeypatch: pytest.MonkeyPatch, *roots: str) -> None:
    """Make ``import root`` (and its submodules) fail as for a package that is not installed."""
    for name in list(sys.modules):
        if name.split(".")[0] in roots:
            monkeypatch.delitem(sys.modules, name)
    for root in roots:
        monkeypatch.setitem(sys.modules, root, None)


# -- a missing or broken package ---------------------------------------------------------------------------------


@pytest.mark.parametrize("factory, reason", [
    (lambda: quack.rms_norm(1e-6), "quack-kernels is not installed"),
    (lambda: quack.fused_add_rms_norm(1e-6, gemma=True), "quack-kernels is not installed"),
    (lambda: quack.rotary_embedding(True), "quack-kernels is not installed"),
    (lambda: quack.topk_softmax(8), "quack-kernels is not installed"),
    (lambda: flashinfer.rms_norm(1e-6, "bfloat16", "cpu"), "flashinfer-python is not installed"),
    (lambda: flashinfer.rms_norm(1e-6, "float32", "cpu"), "flashinfer-python is not installed"),
    (lambda: flashinfer.gated_activation("silu_and_mul", "", "float16"), "flashinfer-python is not installed"),
    (lambda: flashinfer.rotary_embedding(False, "bfloat16"), "flashinfer-python is not installed"),
    (lambda: flashinfer.per_token_group_quant_fp8(128), "flashinfer-python is not installed"),
    (lambda: liger.rms_norm(1e-6, gemma=True), "liger-kernel is not installed"),
])
def test_adapters_without_their_package(factory: Any, reason: str, monkeypatch: pytest.MonkeyPatch) -> None:
    _block(monkeypatch, *_PACKAGES)
    with pytest.raises(Unavailable, match=f"^{reason}$"):
        factory()
    assert quack.problem() == "quack-kernels is not installed"
    assert flashinfer.problem() == "flashinfer-python is not installed"
    assert liger.problem() == "liger-kernel is not installed"


@pytest.mark.parametrize("factory, reason", [
    (lambda: flashinfer.gated_activation("gelu_and_mul", "none", "float32"),
     "FlashInfer's activations take fp16 and bf16 only, not float32"),
    (lambda: flashinfer.rotary_embedding(True, "float32"), "FlashInfer's rotary takes fp16 and bf16 q and k only"),
    (lambda: flashinfer.per_token_group_quant_fp8(64), "groups of 128 only, not 64"),
    (lambda: flashinfer.fused_add_rms_norm_quant_fp8(1e-6, 4224, "bfloat16"), "a multiple of 256"),
])
def test_flashinfer_limits_are_reasons_before_any_import(factory: Any, reason: str,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    _block(monkeypatch, "flashinfer")
    with pytest.raises(Unavailable, match=reason):
        factory()


def test_a_broken_package_is_named_with_its_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(sys.modules):
        if name.split(".")[0] in ("quack", "flashinfer", "cutlass", "nvidia_cutlass_dsl"):
            monkeypatch.delitem(sys.modules, name)
    (tmp_path / "quack").mkdir()
    (tmp_path / "quack" / "__init__.py").write_text("")
    (tmp_path / "quack" / "rmsnorm.py").write_text("import cutlass\n")
    (tmp_path / "flashinfer").mkdir()
    (tmp_path / "flashinfer" / "__init__.py").write_text("raise RuntimeError('CUDA driver too old\\nsecond line')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(sys.modules, "cutlass", None)
    monkeypatch.setitem(sys.modules, "nvidia_cutlass_dsl", None)
    with pytest.raises(Unavailable, match=r"^importing quack.rmsnorm failed: No module named 'cutlass' "
                                          r"\(nvidia-cutlass-dsl is not installed\)$"):
        quack.rms_norm(1e-6)
    assert flashinfer.problem() == "importing flashinfer.norm failed: RuntimeError: CUDA driver too old"
    # nvidia-cutlass-dsl installed with pip --target: its .pth file, which puts cutlass on sys.path, is not read.
    monkeypatch.delitem(sys.modules, "nvidia_cutlass_dsl")
    (tmp_path / "nvidia_cutlass_dsl" / "dsl_packages").mkdir(parents=True)
    with pytest.raises(Unavailable, match=r"add .*nvidia_cutlass_dsl/dsl_packages to PYTHONPATH\)$"):
        quack.rms_norm(1e-6)
    # That folder on the path, without the wheel that holds the DSL's Python package (nvidia-cutlass-dsl-libs-core):
    # cutlass is there, cutlass.cutlass_dsl is not.
    (tmp_path / "nvidia_cutlass_dsl" / "dsl_packages" / "cutlass" / "_mlir").mkdir(parents=True)
    (tmp_path / "quack" / "rmsnorm.py").write_text("from cutlass.cutlass_dsl import dsl_user_op\n")
    monkeypatch.delitem(sys.modules, "cutlass")
    monkeypatch.delitem(sys.modules, "quack.rmsnorm", raising=False)
    monkeypatch.syspath_prepend(str(tmp_path / "nvidia_cutlass_dsl" / "dsl_packages"))
    with pytest.raises(Unavailable, match=r"No module named 'cutlass.cutlass_dsl' \(.*install "
                                          r"nvidia-cutlass-dsl-libs-core"):
        quack.rms_norm(1e-6)


def test_a_moved_function_is_named() -> None:
    package = Package("pytest", "pytest")
    with pytest.raises(Unavailable, match=r"^pytest has no no_such_function \(pytest \d"):
        package.function("pytest", "no_such_function")
    assert package.version() and Package("cujit-no-such-dist", "x").version() is None


def test_rows_and_report_say_why_a_library_is_absent(monkeypatch: pytest.MonkeyPatch) -> None:
    torch = pytest.importorskip("torch")
    from cujit.tools.bench import ops
    from cujit.tools.bench import references as refs

    _block(monkeypatch, *_PACKAGES)

    def rms_norm(x: Any, weight: Any, eps: float = 1e-6, *, gemma: bool = False, out: Any = None) -> Any:
        return out.copy_(refs.rms_norm(x, weight.float() + 1 if gemma else weight, eps))

    monkeypatch.setattr(ops.contenders, "_RESOLVED", {"rms_norm": rms_norm})
    rows = []
    for variant in ("", "gemma"):
        case = C.Case("rms_norm", "bfloat16", 5, {"hidden": 256}, "256", C.rms_norm_bytes(5, 256, 2), "f", variant)
        with torch.no_grad():
            rows.append(ops.run_case(case, ops.Env("cpu", ops.Compiler("off"), _FakeTimer())))
    for row in rows:
        cells = row["contenders"]
        assert cells["cujit"]["status"] == "ok", cells["cujit"]
        assert cells["quack"]["status"] == "n/a: quack-kernels is not installed"
        assert cells["flashinfer"]["status"] == "n/a: flashinfer-python is not installed"
        assert cells["liger"]["status"] == "n/a: liger-kernel is not installed"
    meta = {"device": "NVIDIA H100 80GB HBM3", "liger": None, "liger_problem": liger.problem(),
            "quack": "0.6.5", "quack_problem": None, "flashinfer": "0.7.4",
            "flashinfer_problem": "importing flashinfer.norm failed: No module named 'tvm_ffi'"}
    text = R.markdown(rows, meta)
    assert ("liger-kernel not installed, quack-kernels 0.6.5, flashinfer-python 0.7.4 (n/a: importing "
            "flashinfer.norm failed: No module named 'tvm_ffi')") in text
    assert "| cujit | torch eager | torch.compile | Liger | QuACK | FlashInfer |" in text
    assert "| n/a: quack-kernels is not installed | n/a: flashinfer-python is not installed |" in text
    # The summary per op has a column per library, whose cell says why there is no ratio.
    assert "| vs Liger | vs QuACK | vs FlashInfer |" in text
    assert ("| n/a: liger-kernel is not installed | n/a: quack-kernels is not installed | n/a: flashinfer-python is "
            "not installed |") in text
    assert "- cujit against QuACK: no row timed both (n/a: quack-kernels is not installed)." in text


def test_why_a_library_has_no_ratio() -> None:
    from cujit.tools.bench.summary import untimed_reason

    def row(cujit: str, flashinfer: str | None) -> dict[str, Any]:
        cells = {"cujit": {"status": cujit}}
        if flashinfer is not None:
            cells["flashinfer"] = {"status": flashinfer, "us": 1.0}
        return {"contenders": cells}

    fp32 = "n/a: FlashInfer's CUDA norm kernels take fp16 and bf16 only, not float32"
    assert untimed_reason([row("not available: x", "ok"), row("ok", fp32)], "flashinfer") == (
        "cujit not timed (and 1 other reason)")
    assert untimed_reason([row("ok", fp32), row("ok", None), row("ok", fp32)], "flashinfer") == fp32
    assert untimed_reason([row("ok", None)], "flashinfer") == "no FlashInfer cell"


def test_header_names_each_library() -> None:
    assert R.peers_text({}) == ("liger-kernel not installed, quack-kernels not installed, flashinfer-python not "
                                "installed")
    assert R.peers_text({"liger": "0.8.5", "quack": "0.6.5", "quack_problem": "importing quack.rmsnorm failed: x",
                         "flashinfer_problem": "importing flashinfer.norm failed: y"}) == (
        "liger-kernel 0.8.5, quack-kernels 0.6.5 (n/a: importing quack.rmsnorm failed: x), flashinfer-python n/a "
        "(importing flashinfer.norm failed: y)")


# -- stand-in packages: every row's QuACK and FlashInfer contenders are checked right ----------------------------


def _no_cujit(monkeypatch: pytest.MonkeyPatch) -> None:
    """The cujit ops are not under test here: every row's cujit cell says so."""
    from cujit.tools.bench.ops import contenders

    monkeypatch.setattr(contenders, "_RESOLVED", dict.fromkeys(C.OPS, "not available: not under test"))


class _FakeTimer:
    """Calls every function once and reports fixed times."""

    def _times(self, fns: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
        from cujit.tools.bench.timing import summarize

        for fn in fns.values():
            fn()
        return {name: summarize([10.0 + i] * 3) for i, name in enumerate(fns)}, {}

    def flushed(self, fns: dict[str, Any], resets: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
        for reset in resets.values():
            reset()
        return self._times(fns)

    def graphed(self, fns: dict[str, Any], calls: int, resets: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
        for reset in resets.values():
            reset()
        return self._times(fns)


def _norm(x: Any, weight: Any, eps: float, offset: float = 0.0) -> Any:
    """RMSNorm over the last dimension in fp32 with ``weight + offset``, rounded to x's dtype."""
    xf = x.float()
    return (xf * (xf.square().mean(-1, keepdim=True) + eps).rsqrt() * (weight.float() + offset)).to(x.dtype)


def _rotate(x: Any, cos: Any, sin: Any, interleaved: bool) -> Any:
    """Rotate x [..., D] by cos, sin [..., D/2] in fp32, rounded to x's dtype."""
    import torch

    xf = x.float()
    if interleaved:
        x1, x2 = xf[..., 0::2], xf[..., 1::2]
        return torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), -1).flatten(-2).to(x.dtype)
    half = x.shape[-1] // 2
    x1, x2 = xf[..., :half], xf[..., half:]
    return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), -1).to(x.dtype)


def _fake_quack() -> dict[str, types.ModuleType]:
    """quack.rmsnorm, quack.rotary and quack.topk with the signatures and semantics of quack-kernels 0.6.5."""
    import torch

    rmsnorm = types.ModuleType("quack.rmsnorm")

    def _rmsnorm_fwd(x: Any, weight: Any, out: Any, bias: Any = None, rstd: Any = None, mean: Any = None,
                     residual: Any = None, residual_out: Any = None, eps: float = 1e-6, is_layernorm: bool = False,
                     weight_offset: float = 0.0) -> None:
        assert x.stride(-1) == 1 and weight.dim() == x.dim() - 1, "per-head mode: x [T, H, D] with weight [H, D]"
        if residual is not None:
            x = (x.float() + residual.float()).to(residual_out.dtype)
            residual_out.copy_(x)
        out.copy_(_norm(x, weight, eps, weight_offset))

    def rmsnorm_fwd(x: Any, weight: Any = None, bias: Any = None, residual: Any = None, out_dtype: Any = None,
                    residual_dtype: Any = None, eps: float = 1e-6, store_rstd: bool = False,
                    weight_offset: float = 0.0) -> tuple[Any, Any, Any]:
        out = torch.empty_like(x)
        residual_out = torch.empty_like(x) if residual is not None else None
        _rmsnorm_fwd(x, weight, out, None, None, None, residual, residual_out, eps, False, weight_offset)
        return out, x if residual_out is None else residual_out, None

    rmsnorm.rmsnorm_fwd, rmsnorm._rmsnorm_fwd = rmsnorm_fwd, _rmsnorm_fwd  # type: ignore[attr-defined]

    rotary = types.ModuleType("quack.rotary")

    def apply_rotary(x: Any, cos: Any, sin: Any, seqlen_offsets: Any = None, cu_seqlens: Any = None,
                     max_seqlen: Any = None, interleaved: bool = False, inplace: bool = False,
                     conjugate: bool = False) -> Any:
        seqlen = x.shape[1]
        rows = seqlen_offsets[:, None] + torch.arange(seqlen, device=x.device)  # [batch, seqlen]
        c, s = cos[rows][:, :, None].float(), sin[rows][:, :, None].float()  # [batch, seqlen, 1, R/2]
        out = x if inplace else x.clone()
        out.copy_(_rotate(x, c, s, interleaved))
        return out

    rotary.apply_rotary = apply_rotary  # type: ignore[attr-defined]

    topk = types.ModuleType("quack.topk")

    def topk_fwd(x: Any, k: int, softmax: bool = False) -> tuple[Any, Any]:
        assert x.shape[1] & (x.shape[1] - 1) == 0 and k & (k - 1) == 0, "powers of two"
        values, indices = x.float().topk(k, -1)
        if softmax:
            values = values.softmax(-1)
        return values.to(x.dtype), indices.to(torch.int32)

    topk.topk_fwd = topk_fwd  # type: ignore[attr-defined]
    return {"quack": types.ModuleType("quack"), "quack.rmsnorm": rmsnorm, "quack.rotary": rotary, "quack.topk": topk}


def _fake_flashinfer() -> dict[str, types.ModuleType]:
    """flashinfer.norm, .activation, .rope and .quantization as flashinfer-python 0.7.4 defines the functions used.

    Its dispatch picks the CUDA norm kernels (fp16 and bf16 only): ``_use_cuda_norm`` answers True.
    """
    import torch

    from cujit.tools.bench import references as refs

    def halves(*tensors: Any) -> None:
        assert all(t.dtype in (torch.float16, torch.bfloat16) for t in tensors), "fp16 and bf16 only"

    norm = types.ModuleType("flashinfer.norm")

    def rmsnorm(input: Any, weight: Any, eps: float = 1e-6, out: Any = None, enable_pdl: Any = None) -> Any:
        halves(input, weight)
        assert weight.dim() == 1 and input.dim() in (2, 3) and input.stride(-1) == 1
        out = torch.empty_like(input) if out is None else out
        out.copy_(_norm(input, weight, eps))
        return out

    def gemma_rmsnorm(input: Any, weight: Any, eps: float = 1e-6, out: Any = None, enable_pdl: Any = None) -> Any:
        halves(input, weight)
        out = torch.empty_like(input) if out is None else out
        out.copy_(_norm(input, weight, eps, 1.0))
        return out

    def fused_add(input: Any, residual: Any, weight: Any, eps: float, offset: float) -> None:
        halves(input, residual, weight)
        residual.copy_((input.float() + residual.float()).to(residual.dtype))
        input.copy_(_norm(residual, weight, eps, offset))

    def fused_add_rmsnorm(input: Any, residual: Any, weight: Any, eps: float = 1e-6, enable_pdl: Any = None) -> None:
        fused_add(input, residual, weight, eps, 0.0)

    def gemma_fused_add_rmsnorm(input: Any, residual: Any, weight: Any, eps: float = 1e-6,
                                enable_pdl: Any = None) -> None:
        fused_add(input, residual, weight, eps, 1.0)

    def fused_add_rmsnorm_fp8_block_quant(out: Any, block_scale: Any, normed_out: Any, input: Any, residual: Any,
                                          weight: Any, eps: float = 1e-6, enable_pdl: Any = None) -> None:
        halves(input, residual, weight)
        tokens, hidden = input.shape
        assert block_scale.shape == (hidden // 128, (tokens + 3) // 4 * 4) and block_scale.is_contiguous()
        residual.copy_((input.float() + residual.float()).to(residual.dtype))
        normed_out.copy_(_norm(residual, weight, eps))
        q, scale = refs.per_token_group_quant_fp8(normed_out, 128)
        out.copy_(q)
        block_scale[:, :tokens] = scale.t()

    for fn in (rmsnorm, gemma_rmsnorm, fused_add_rmsnorm, gemma_fused_add_rmsnorm, fused_add_rmsnorm_fp8_block_quant):
        setattr(norm, fn.__name__, fn)
    norm._use_cuda_norm = lambda device: True  # type: ignore[attr-defined]

    activation = types.ModuleType("flashinfer.activation")

    def act(name: str, f: Any) -> Any:
        def call(input: Any, out: Any = None, enable_pdl: Any = None) -> Any:
            halves(input)
            d = input.shape[-1] // 2
            out = input.new_empty(*input.shape[:-1], d) if out is None else out
            xf = input.float()
            out.copy_((f(xf[..., :d]) * xf[..., d:]).to(input.dtype))
            return out

        call.__name__ = name
        return call

    gelu = torch.nn.functional.gelu
    for fn in (act("silu_and_mul", torch.nn.functional.silu), act("gelu_and_mul", gelu),
               act("gelu_tanh_and_mul", lambda v: gelu(v, approximate="tanh"))):
        setattr(activation, fn.__name__, fn)

    rope = types.ModuleType("flashinfer.rope")

    def apply_rope_with_cos_sin_cache_inplace(positions: Any, query: Any, key: Any, head_size: int,
                                              cos_sin_cache: Any, is_neox: bool = True) -> None:
        if cos_sin_cache.dtype != torch.float32:
            raise ValueError("cos_sin_cache should be float32")
        halves(query, key)
        half = cos_sin_cache.shape[1] // 2
        rows = cos_sin_cache[positions][:, None, :]
        for x in (query, key):
            heads = x.view(x.shape[0], -1, head_size)
            heads.copy_(_rotate(heads, rows[..., :half], rows[..., half:], not is_neox))

    rope.apply_rope_with_cos_sin_cache_inplace = apply_rope_with_cos_sin_cache_inplace  # type: ignore[attr-defined]

    quantization = types.ModuleType("flashinfer.quantization")

    def per_token_group_quant_8bit(x: Any, group_size: int, eps: float = 1e-10, dst_dtype: Any = None,
                                   column_major_scales: bool = False, scale_tma_aligned: bool = False,
                                   scale_ue8m0: bool = False, backend: str = "cutile") -> tuple[Any, Any]:
        assert backend == "cuda" and dst_dtype == torch.float8_e4m3fn and not column_major_scales
        halves(x)
        return refs.per_token_group_quant_fp8(x, group_size)

    quantization.per_token_group_quant_8bit = per_token_group_quant_8bit  # type: ignore[attr-defined]
    return {"flashinfer": types.ModuleType("flashinfer"), "flashinfer.norm": norm,
            "flashinfer.activation": activation, "flashinfer.rope": rope, "flashinfer.quantization": quantization}


_ROWS = [
    ("rms_norm", "", "bfloat16", {"hidden": 256}),
    ("rms_norm", "gemma", "bfloat16", {"hidden": 256}),
    ("rms_norm", "", "float32", {"hidden": 256}),
    ("fused_add_rms_norm", "", "float16", {"hidden": 256}),
    ("fused_add_rms_norm", "gemma", "bfloat16", {"hidden": 256}),
    ("qk_rms_norm", "", "bfloat16", {"q_heads": 4, "kv_heads": 2, "head_dim": 64}),
    ("silu_and_mul", "", "bfloat16", {"d": 256}),
    ("gelu_and_mul", "none", "float16", {"d": 256}),
    ("gelu_and_mul", "tanh", "bfloat16", {"d": 256}),
    ("gelu_and_mul", "none", "float32", {"d": 256}),
    ("rotary_embedding", "neox", "bfloat16", {"q_heads": 4, "kv_heads": 2, "head_size": 64, "rotary_dim": 64}),
    ("rotary_embedding", "gptj", "bfloat16", {"q_heads": 4, "kv_heads": 2, "head_size": 64, "rotary_dim": 64}),
    ("per_token_group_quant_fp8", "", "bfloat16", {"hidden": 256, "group_size": 128}),
    ("per_token_quant_fp8", "", "bfloat16", {"hidden": 256}),
    ("topk_softmax", "", "bfloat16", {"experts": 64, "topk": 8}),
    ("fused_add_rms_norm_quant_fp8", "", "bfloat16", {"hidden": 256, "group_size": 128}),
    ("silu_and_mul_quant_fp8", "", "bfloat16", {"d": 256, "group_size": 128}),
]


@pytest.mark.parametrize("op, variant, dtype, params", _ROWS)
def test_every_row_checks_the_libraries_right(op: str, variant: str, dtype: str, params: dict[str, Any],
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Through stand-in packages, the adapters give each row's check the outputs it compares, in the right form."""
    torch = pytest.importorskip("torch")
    from cujit.tools.bench import ops

    _block(monkeypatch, "quack", "flashinfer")
    for name, module in {**_fake_quack(), **_fake_flashinfer()}.items():
        monkeypatch.setitem(sys.modules, name, module)
    _no_cujit(monkeypatch)
    case = C.Case(op, dtype, 7, params, "g", 10_000, "f", variant)
    with torch.no_grad():
        row = ops.run_case(case, ops.Env("cpu", ops.Compiler("off"), _FakeTimer(), max_position=256))
    cells = row["contenders"]
    assert cells["eager"]["status"] == "ok", cells["eager"]
    expected = {name: "ok" for name in ("quack", "flashinfer") if name in cells}
    if dtype == "float32" or op in ("per_token_quant_fp8", "silu_and_mul_quant_fp8"):
        expected["flashinfer"] = "n/a"
    assert {name: cells[name]["status"].split(":")[0] for name in expected} == expected, cells
    has = {"quack": ("rms_norm", "fused_add_rms_norm", "qk_rms_norm", "rotary_embedding", "topk_softmax"),
           "flashinfer": ("rms_norm", "fused_add_rms_norm", "qk_rms_norm", "silu_and_mul", "gelu_and_mul",
                          "rotary_embedding", "per_token_group_quant_fp8", "per_token_quant_fp8",
                          "fused_add_rms_norm_quant_fp8", "silu_and_mul_quant_fp8")}
    assert {name for name in has if op in has[name]} == set(expected)


def test_what_the_libraries_move_is_counted(monkeypatch: pytest.MonkeyPatch) -> None:
    """The rows count the bytes each library really moves where it differs from the op (see each adapter)."""
    torch = pytest.importorskip("torch")
    from cujit.tools.bench import ops

    _block(monkeypatch, "quack", "flashinfer")
    for name, module in {**_fake_quack(), **_fake_flashinfer()}.items():
        monkeypatch.setitem(sys.modules, name, module)
    _no_cujit(monkeypatch)

    def run(op: str, params: dict[str, Any], variant: str = "") -> dict[str, Any]:
        case = C.Case(op, "bfloat16", 7, params, "g", 10_000, "f", variant)
        with torch.no_grad():
            return ops.run_case(case, ops.Env("cpu", ops.Compiler("off"), _FakeTimer(), max_position=256))

    qk = run("qk_rms_norm", {"q_heads": 4, "kv_heads": 2, "head_dim": 64})["contenders"]
    assert qk["quack"]["bytes"] == 10_000 + (4 + 2 - 2) * 64 * 2 and "bytes" not in qk["flashinfer"]
    rope = run("rotary_embedding", {"q_heads": 4, "kv_heads": 2, "head_size": 64, "rotary_dim": 64}, "neox")
    cells = rope["contenders"]
    assert cells["flashinfer"]["bytes"] == 10_000 + 7 * 64 * 2 and "bytes" not in cells["quack"]
    router = run("topk_softmax", {"experts": 64, "topk": 8})["contenders"]["quack"]
    assert router["bytes"] == 10_000 - 7 * 8 * 2 and router["note"] == "weights in bfloat16, not fp32"
    fused = run("fused_add_rms_norm_quant_fp8", {"hidden": 256, "group_size": 128})["contenders"]["flashinfer"]
    assert fused["bytes"] == 10_000 + 7 * 256 * 2
    norm = run("rms_norm", {"hidden": 256})["contenders"]
    assert "bytes" not in norm["quack"]
    # The note names the kernels FlashInfer's own dispatch picks on the row's device (none on a CPU).
    assert norm["flashinfer"]["note"] == "unknown kernels"
    assert flashinfer.norm_backend("cuda") == "CUDA" and flashinfer.norm_backend("cpu") == "unknown"


def test_quack_weights_are_checked_at_their_own_dtype(monkeypatch: pytest.MonkeyPatch) -> None:
    """QuACK's router weights are bf16: right at bf16's bound, and a wrong pick is still caught."""
    torch = pytest.importorskip("torch")
    from cujit.tools.bench import ops

    _block(monkeypatch, "quack")
    fake = _fake_quack()
    right = fake["quack.topk"].topk_fwd  # type: ignore[attr-defined]

    def ascending(x: Any, k: int, softmax: bool = False) -> tuple[Any, Any]:
        values, indices = right(x, k, softmax)
        return values.flip(-1), indices.flip(-1)

    _no_cujit(monkeypatch)
    statuses = []
    for topk_fwd in (right, ascending):
        fake["quack.topk"].topk_fwd = topk_fwd  # type: ignore[attr-defined]
        for name, module in fake.items():
            monkeypatch.setitem(sys.modules, name, module)
        case = C.Case("topk_softmax", "bfloat16", 9, {"experts": 128, "topk": 8}, "g", 10_000, "f")
        with torch.no_grad():
            row = ops.run_case(case, ops.Env("cpu", ops.Compiler("off"), _FakeTimer()))
        statuses.append(row["contenders"]["quack"]["status"])
    assert statuses[0] == "ok" and statuses[1].startswith("wrong: ") and "picked" in statuses[1], statuses


# -- the real packages on the GPU --------------------------------------------------------------------------------


@pytest.mark.gpu
def test_gpu_quack_and_flashinfer_cells(tmp_path: Path) -> None:
    """A quick sweep of the rows with QuACK or FlashInfer cells: each is timed, or n/a with a reason; none wrong.

    The first run builds FlashInfer's CUDA kernels (a few minutes; cached in ~/.cache/flashinfer).
    """
    problems = {name: adapter.problem() for name, adapter in (("quack", quack), ("flashinfer", flashinfer))}
    if all(problems.values()):
        pytest.skip(f"neither library is usable here: {problems}")
    out = subprocess.run([sys.executable, "-m", "cujit", "bench", "--ops", "norms", "qk_norm", "activations",
                          "rotary", "per_token_group_quant_fp8", "router", "fused_add_rms_norm_quant_fp8", "--quick",
                          "--tokens", "16,4097", "--sizes", "4096,8192", "--compile", "off", "--out", str(tmp_path)],
                         capture_output=True, text=True, timeout=900, check=False)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    data = json.loads((tmp_path / "bench_ops.json").read_text())
    seen = []
    for row in data["rows"]:
        for name in ("quack", "flashinfer"):
            cell = row["contenders"].get(name)
            if cell is None:
                continue
            where = (row["label"], row["dtype"], row["tokens"], name, cell["status"])
            if problems[name]:
                assert cell["status"] == f"n/a: {problems[name]}", where
            elif row["dtype"] == "float32" and name == "flashinfer":
                assert cell["status"].startswith("n/a") or cell["status"] == "ok", where
            else:
                assert cell["status"] == "ok" and cell["us"] > 0, where
            seen.append(where)
    assert seen
    text = (tmp_path / "bench_ops.md").read_text()
    for name, dist in (("quack", "quack-kernels"), ("flashinfer", "flashinfer-python")):
        version = data["meta"][name]
        assert (f"{dist} {version}" if version else f"{dist} not installed") in text
