"""qk_norm_rotary without a GPU: the instantiations, the plan, the launch and the refusals.

Every precompiled instance compiles for sm_80 and sm_90 (tests/test_compile_all.py compiles them for every shipped
op; here the set itself is checked: serving calls find their instance in it, and every value of every template
parameter is compiled at least once). The launch, run against the stub driver of tests/stub_cuda.py, takes the
configuration and layout that qk_rms_norm takes for the same q, k and weights (the condition for the same bits) and
passes what the kernel expects; bad inputs are refused before anything is launched.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

import cujit
from cujit.qk_norm_rotary import (
    HALVES_HEADS,
    HALVES_SPAN,
    ROTARY_HEADS,
    ROTARY_SPAN,
    halves_form,
    qk_norm_rotary,
    rotary_config,
)
from cujit.qk_rms_norm import CONFIGS, MANY_HEADS_FROM, head_config, qk_rms_norm
from tests.stub_cuda import StubBackend, bind_fakes, fake, last_launch

torch = pytest.importorskip("torch")

FIELDS = ("dtype", "cs_dtype", "pos_dtype", "is_neox", "gemma", "vector", "block", "row_threads", "vecs", "heads",
          "halves")


def _fields(fields: dict[str, Any]) -> dict[str, str]:
    return {k: str(cujit.DType.of(v).name if k.endswith("dtype") else v) for k, v in fields.items()}


def _instances() -> list[dict[str, str]]:
    return [_fields(f) for f in qk_norm_rotary.op.instances()]


def test_serving_calls_are_precompiled() -> None:
    """Both forms: the halves form for the whole head rotated, the exchanging form for partial rotary."""
    instances = _instances()
    for dtype in ("bfloat16", "float16"):
        for head in (64, 128, 256):
            for halves, many in ((True, HALVES_HEADS), (False, ROTARY_HEADS)):
                assert halves_form(True, True, head if halves else head // 2, head, cujit.DType.of(dtype)) is halves
                config = rotary_config(head, cujit.DType.of(dtype), halves)
                for cs in ("float32", dtype):
                    for gemma in (False, True):
                        for heads in (1, many):
                            fields = {"dtype": dtype, "cs_dtype": cs, "pos_dtype": "int64", "is_neox": True,
                                      "gemma": gemma, "vector": True, **config._asdict(), "heads": heads,
                                      "halves": halves}
                            assert _fields(fields) in instances, fields


def test_every_template_value_is_precompiled() -> None:
    instances = qk_norm_rotary.op.instances()
    assert all(set(f) == set(FIELDS) for f in instances)
    seen = {name: {str(f[name]) for f in instances} for name in FIELDS}
    assert seen["dtype"] == {"float32", "float16", "bfloat16"}
    assert seen["cs_dtype"] == {"float32", "float16", "bfloat16"}
    assert seen["pos_dtype"] == {"int32", "int64"}
    assert seen["is_neox"] == seen["gemma"] == seen["vector"] == {"True", "False"}
    exchanging = [f for f in instances if not f["halves"]]
    assert {(f["row_threads"], f["vecs"]) for f in exchanging} == set(CONFIGS)
    assert {int(f["heads"]) for f in exchanging} == {1, ROTARY_HEADS}
    halves = [f for f in instances if f["halves"]]
    assert {(f["row_threads"], f["vecs"]) for f in halves} == {(4, 1), (8, 1), (16, 1)}
    assert {int(f["heads"]) for f in halves} == {1, HALVES_HEADS}
    assert all(f["is_neox"] and f["vector"] for f in halves)
    assert len({tuple(sorted(_fields(f).items())) for f in instances}) == len(instances), "no instance twice"


@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
def test_a_gptj_element_layout_instance_compiles(arch: str) -> None:
    # Outside the precompiled set: gpt-j style in the element layout with a same-dtype cache and int32 positions.
    fields = {"dtype": "float16", "cs_dtype": "float16", "pos_dtype": "int32", "is_neox": False, "gemma": True,
              "vector": False, **head_config(256, cujit.DType.of("float16"))._asdict(), "heads": 1, "halves": False}
    assert qk_norm_rotary.op.module(**fields).compile(arch).cubin[:4] == b"\x7fELF"


def test_the_sweeps_candidates_compile() -> None:
    """benchmarks/tune_qk_norm_rotary.py's candidates: both forms of the op's kernel."""
    sys.path.insert(0, str(Path(__file__).parent.parent / "benchmarks"))
    try:
        import tune_qk_norm_rotary
    finally:
        sys.path.pop(0)
    module, expressions = tune_qk_norm_rotary.candidates_module()
    assert any(e.endswith(", true>") for e in expressions) and any(e.endswith(", false>") for e in expressions)
    assert module.compile("sm_90").cubin[:4] == b"\x7fELF"


@pytest.fixture
def ops(stub: StubBackend) -> SimpleNamespace:
    declared = SimpleNamespace(fused=qk_norm_rotary.op.variant("cujit_stub_qk_norm_rotary"),
                               norm=qk_rms_norm.op.variant("cujit_stub_qk_norm_rotary"))
    for fn in vars(declared).values():
        bind_fakes(fn.op.env, stub)
    return declared


# (qkv columns, q offset, head_size, q heads, kv heads, weight offset, cache columns, cache offset, dtype)
LAYOUTS = [
    (128 * 12, 0, 128, 8, 2, 0, 128, 0, torch.float16),  # the vector layout
    (128 * 12 + 1, 1, 128, 8, 2, 0, 128, 1, torch.float16),  # q and k start one element in
    (128 * 12, 0, 128, 8, 2, 1, 64, 0, torch.float16),  # the weights start one element in; partial rotary
    (100 * 6, 0, 100, 4, 1, 0, 20, 0, torch.float16),  # head_size not a whole number of vectors
    (64 * 3, 0, 64, 1, 1, 0, 64, 0, torch.float32),
    (256 * 6, 0, 256, 4, 1, 0, 256, 0, torch.float32),
]


@pytest.mark.parametrize("layout", LAYOUTS, ids=lambda v: f"{v[0]}-{v[1]}-{v[2]}-{v[5]}-{v[6]}-{v[7]}")
@pytest.mark.parametrize("is_neox", [True, False], ids=["neox", "gptj"])
def test_launch_takes_qk_rms_norms_layout(layout: tuple[Any, ...], is_neox: bool, stub: StubBackend,
                                          ops: SimpleNamespace) -> None:
    columns, offset, d, qh, kh, w_offset, rot, cs_offset, dtype = layout
    tokens = 37
    qkv = torch.randn(tokens, columns, dtype=dtype)
    q, k = fake(stub, qkv[:, offset:offset + qh * d]), fake(stub, qkv[:, offset + qh * d:offset + (qh + kh) * d])
    w = torch.randn(2, d + w_offset, dtype=dtype)
    qw, kw = fake(stub, w[0, w_offset:]), fake(stub, w[1, w_offset:])
    cache = fake(stub, torch.randn(100 * rot + cs_offset)[cs_offset:].view(100, rot))
    positions = fake(stub, torch.arange(tokens, dtype=torch.int32))
    assert ops.norm(q, k, qw, kw, 1e-5, gemma=True) is None
    norm_key, _ = last_launch(stub, ops.norm)
    norm_grid = stub.launches[-1].grid
    assert ops.fused(positions, q, k, qw, kw, cache, head_size=d, eps=1e-5, is_neox=is_neox, gemma=True) is None
    key, values = last_launch(stub, ops.fused)
    assert key[1:3] == (cujit.DType.of("float32"), cujit.DType.of("int32")) and key[3] is is_neox
    # gemma, vector: the layout qk_rms_norm takes (the condition for its bits)
    assert key[4:6] == norm_key[1:3], (key, norm_key)
    halves = key[10]
    assert halves is (is_neox and key[5] and rot == d and d == norm_key[4] * 16 // qkv.element_size())
    # block, lanes per head, vectors per lane, heads per lane group: qk_rms_norm's, or half its lanes per head
    config = rotary_config(d, cujit.DType.of(dtype), halves)
    assert key[6:10] == (config.block, config.row_threads, config.vecs, 1), (key, norm_key)
    if not halves:
        assert key[6:10] == norm_key[3:], (key, norm_key)  # one head per lane group for both at these sizes
    else:
        assert (key[7], key[8]) == (norm_key[4] // 2, 1)
    assert values[:-1] == [positions.data_ptr(), q.data_ptr(), k.data_ptr(), qw.data_ptr(), kw.data_ptr(),
                           cache.data_ptr(), tokens * (qh + kh), qh, qh + kh, columns, columns, d, rot, 100, 1]
    assert values[-1] == pytest.approx(1e-5)
    assert stub.launches[-1].grid == (math.ceil(tokens * (qh + kh) / config.heads_per_block), 1, 1)
    if not halves:
        assert stub.launches[-1].grid == norm_grid
    assert stub.launches[-1].block == (config.block, 1, 1) and stub.launches[-1].pdl


@pytest.mark.parametrize("rotary", [128, 64], ids=["halves", "exchanging"])
def test_many_heads_take_runs_of_consecutive_heads(stub: StubBackend, ops: SimpleNamespace, rotary: int) -> None:
    # From MANY_HEADS_FROM heads on, each lane group takes HALVES_SPAN (ROTARY_SPAN) consecutive heads,
    # HALVES_HEADS (ROTARY_HEADS) at a time.
    tokens, qh, kh, d = 410, 32, 8, 128
    assert tokens * (qh + kh) >= MANY_HEADS_FROM > (tokens - 1) * (qh + kh)
    qkv = torch.randn(tokens, (qh + 2 * kh) * d, dtype=torch.float16)
    w = fake(stub, torch.randn(d, dtype=torch.float16))
    cache = fake(stub, torch.randn(8, rotary))
    halves = rotary == d
    heads, span = (HALVES_HEADS, HALVES_SPAN) if halves else (ROTARY_HEADS, ROTARY_SPAN)
    for t in (tokens, tokens - 1):
        q, k = fake(stub, qkv[:t, :qh * d]), fake(stub, qkv[:t, qh * d:(qh + kh) * d])
        ops.fused(fake(stub, torch.zeros(t, dtype=torch.int64)), q, k, w, w, cache, head_size=d)
        key, values = last_launch(stub, ops.fused)
        many = t * (qh + kh) >= MANY_HEADS_FROM
        assert key[-1] is halves and key[-2] == (heads if many else 1) and values[-2] == (span if many else 1)
        per_block = rotary_config(d, cujit.DType.of("float16"), halves).heads_per_block
        assert stub.launches[-1].grid == (math.ceil(t * (qh + kh) / (per_block * values[-2])), 1, 1)


def test_empty_launches_nothing(stub: StubBackend, ops: SimpleNamespace) -> None:
    before = len(stub.launches)
    q = fake(stub, torch.empty(0, 512, dtype=torch.float16))
    k = fake(stub, torch.empty(0, 128, dtype=torch.float16))
    w = fake(stub, torch.ones(128, dtype=torch.float16))
    positions = fake(stub, torch.empty(0, dtype=torch.int64))
    ops.fused(positions, q, k, w, w, fake(stub, torch.randn(8, 128)), head_size=128)
    ops.fused(positions, q, k, w, w, fake(stub, torch.randn(0, 128)), head_size=128)  # no row needed for no token
    assert len(stub.launches) == before


def test_refusals_launch_nothing(stub: StubBackend, ops: SimpleNamespace) -> None:
    fn = ops.fused
    f16 = torch.float16
    qkv = torch.randn(4, 64 * 6, dtype=f16)
    q, k = fake(stub, qkv[:, :256]), fake(stub, qkv[:, 256:320])
    w = fake(stub, torch.randn(64, dtype=f16))
    pos = fake(stub, torch.arange(4))
    cache = fake(stub, torch.randn(16, 64))
    qkv32 = torch.randn(4, 64 * 6)
    q32, k32, w32 = fake(stub, qkv32[:, :256]), fake(stub, qkv32[:, 256:320]), fake(stub, torch.randn(64))

    def w48() -> Any:
        return fake(stub, torch.randn(48, dtype=f16))

    before = len(stub.launches)
    cases = [
        (lambda: fn(pos, q, k, w, w, cache, head_size=32), cujit.CujitError,
         "head_size: expected the length of q_weight and k_weight"),
        (lambda: fn(pos, q, q, w, w, cache, head_size=64), cujit.CujitError, "q and k must be different tensors"),
        (lambda: fn(pos, q, k, w48(), w48(), fake(stub, torch.randn(16, 48)), head_size=48), cujit.CujitError,
         "rows of whole heads"),
        (lambda: fn(pos, q, k, w, fake(stub, torch.randn(32, dtype=f16)), cache, head_size=64),
         cujit.TensorMatchError, "'k_weight'"),
        (lambda: fn(pos, q, k, fake(stub, torch.randn(64)), w, cache, head_size=64), cujit.TensorMatchError,
         "'q_weight': dtype"),
        (lambda: fn(pos, q, fake(stub, torch.empty(400, dtype=f16).as_strided((4, 64), (32, 1))), w, w, cache,
                    head_size=64), cujit.CujitError, "rows overlap"),
        (lambda: fn(fake(stub, torch.arange(4.0)), q, k, w, w, cache, head_size=64), cujit.TensorMatchError,
         "'positions': dtype"),
        (lambda: fn(fake(stub, torch.arange(3)), q, k, w, w, cache, head_size=64), cujit.TensorMatchError,
         "positions"),
        (lambda: fn(pos, q, k, w, w, fake(stub, torch.randn(16, 128)), head_size=64), cujit.CujitError,
         "cos_sin_cache: expected at most head_size columns"),
        (lambda: fn(pos, q, k, w, w, fake(stub, torch.randn(16, 63)), head_size=64), cujit.CujitError,
         "cos_sin_cache: expected an even, non-zero number of columns"),
        (lambda: fn(pos, q32, k32, w32, w32, fake(stub, torch.randn(16, 64, dtype=f16)), head_size=64),
         cujit.CujitError, "cos_sin_cache: expected float32 or the dtype of q and k"),
        (lambda: fn(pos, q, k, w, w, fake(stub, torch.randn(0, 64)), head_size=64), cujit.CujitError,
         "cos_sin_cache: expected at least one row"),
        (lambda: fn(pos, q, k, w, w, cache, head_size=64, rotary_dim=32), cujit.CujitError,
         "rotary_dim: expected the width of cos_sin_cache"),
        (lambda: fn(pos, q, k, w, w, fake(stub, torch.randn(16, 64, 1)), head_size=64), cujit.TensorMatchError,
         "cos_sin_cache"),
        (lambda: fn(pos, q, k, w, w, cache, head_size=64, is_neox="yes"), TypeError, "is_neox"),
        (lambda: fn(pos, q, k, w, w, cache), TypeError, "head_size"),
    ]
    for call, error, words in cases:
        with pytest.raises(error) as info:
            call()
        assert words in str(info.value), str(info.value)
    assert len(stub.launches) == before


def test_cpu_tensors_are_refused() -> None:
    x, w = torch.randn(4, 256, dtype=torch.float16), torch.randn(64, dtype=torch.float16)
    with pytest.raises(cujit.TensorMatchError, match="'positions': device: expected cuda, got cpu:0"):
        qk_norm_rotary(torch.arange(4), x, x[:, :64], w, w, torch.randn(8, 64), head_size=64)


def test_fake_tensors_give_no_outputs() -> None:
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        x = torch.empty(5, 64, dtype=torch.bfloat16, device="cuda")
        w = torch.empty(16, dtype=torch.bfloat16, device="cuda")
        positions = torch.empty(5, dtype=torch.int64, device="cuda")
        cache = torch.empty(100, 16, device="cuda")
        assert torch.ops.cujit.qk_norm_rotary(positions, x[:, :48], x[:, 48:], w, w, cache, head_size=16) is None
