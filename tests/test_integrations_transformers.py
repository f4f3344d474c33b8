"""cujit.integrations.transformers on the CPU: what patch() replaces, that unpatch() restores it, the refusals.

The wiring (layouts, the rotary table and positions, the stacked gate/up GEMM, decode with a KV cache) is checked
end to end on the CPU by swapping cujit's ops for plain torch stand-ins of the same contract and comparing the
patched model's fp32 logits with the unpatched model's. The kernels themselves are checked on the GPU
(tests/test_integrations_transformers_gpu.py).
"""

from __future__ import annotations

from typing import Any

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import cujit  # noqa: E402
from cujit.integrations import transformers as cujit_hf  # noqa: E402

# Tiny configurations, one per family: 2 layers, hidden 64, 4 heads of 16 (2 kv heads), vocab 128.
COMMON = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, head_dim=16, vocab_size=128, max_position_embeddings=256)
FAMILIES = {
    "llama": transformers.LlamaConfig,
    "qwen2": transformers.Qwen2Config,
    "qwen3": transformers.Qwen3Config,
    "mistral": transformers.MistralConfig,
    "gemma": transformers.GemmaConfig,
    "gemma2": transformers.Gemma2Config,
    "gemma3": transformers.Gemma3TextConfig,
}
QK_NORM = {"qwen3", "gemma3"}
GEMMA = {"gemma", "gemma2", "gemma3"}


def tiny(family: str, dtype: torch.dtype = torch.float32, **extra: object) -> torch.nn.Module:
    torch.manual_seed(0)
    config = FAMILIES[family](**{**COMMON, **extra})
    model = transformers.AutoModelForCausalLM.from_config(config).to(dtype).eval()
    if family in GEMMA:  # Gemma's norms start at zero weight ((1 + w) form): give them values that matter
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name.endswith("norm.weight"):
                    p.normal_(0, 0.1)
    return model


def expected_names(model: torch.nn.Module, family: str) -> dict[str, list[str]]:
    norms, heads, mlps, rotary, attention = [], [], [], [], []
    for name, m in model.named_modules():
        kind = type(m).__name__
        if kind.endswith("RMSNorm"):
            (heads if name.rpartition(".")[2] in ("q_norm", "k_norm") else norms).append(name)
        elif kind.endswith("MLP"):
            mlps.append(name)
        elif kind.endswith("RotaryEmbedding"):
            rotary.append(name)
        elif kind.endswith("Attention"):
            attention.append(name)
    out = {"rms_norm": sorted(norms), "mlp": sorted(mlps), "rotary": rotary, "attention": attention}
    if family in QK_NORM:
        out["qk_norm"] = sorted(heads)
    return out


def snapshot(model: torch.nn.Module) -> tuple[dict[str, object], dict[str, object], dict[str, torch.Tensor]]:
    modules = dict(model.named_modules())
    params = dict(model.named_parameters())
    values = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return modules, params, values


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_patch_replaces_the_expected_modules_and_unpatch_restores_them(family: str) -> None:
    model = tiny(family)
    expected = expected_names(model, family)
    modules, params, values = snapshot(model)
    keys = list(model.state_dict())
    assert len(expected["rms_norm"]) >= 5 and len(expected["mlp"]) == 2 and len(expected["attention"]) == 2
    assert (len(expected.get("qk_norm", [])) == 4) == (family in QK_NORM)

    classes = {name: type(m) for name, m in modules.items()}
    handle = cujit_hf.patch(model)
    assert handle.active and not handle.skipped
    assert {k: sorted(v) for k, v in handle.replaced.items()} == expected
    # every module keeps its identity; a patched one gets a class of cujit's in front of its own
    after = dict(model.named_modules())
    assert after.keys() == modules.keys() and all(after[k] is modules[k] for k in modules)
    patched = {n for names in expected.values() for n in names}
    for name, module in after.items():
        if name not in patched:
            assert type(module) is classes[name]
            continue
        assert type(module).__bases__[1] is classes[name] and isinstance(module, classes[name])
        assert type(module).__module__ == "cujit.integrations.transformers"
    for name in expected["rms_norm"]:
        assert type(after[name]).__bases__[0] is cujit_hf.CujitRMSNorm
        assert after[name]._cujit_gemma == (family in GEMMA)
    for name in expected.get("qk_norm", []):
        assert type(after[name]).__bases__[0] is cujit_hf.CujitHeadRMSNorm
    for name in expected["mlp"]:
        mlp = after[name]
        assert isinstance(mlp, cujit_hf.CujitGatedMLP)
        assert mlp._cujit_activation == ("gelu_tanh" if family in GEMMA else "silu")
        # gate and up are views of the stacked weight; nothing is held twice
        assert mlp.gate_proj.weight.data_ptr() == mlp._cujit_gate_up_weight.data_ptr()
        torch.testing.assert_close(mlp._cujit_gate_up_weight, torch.cat([values[f"{name}.gate_proj.weight"],
                                                                         values[f"{name}.up_proj.weight"]]),
                                   rtol=0, atol=0)
    for name in expected["rotary"]:
        assert isinstance(after[name], cujit_hf.CujitRotaryTable)
    for name in expected["attention"]:
        assert isinstance(after[name], cujit_hf.CujitAttention)
    assert all("forward" not in vars(m) for m in model.modules())
    # same parameters, keys and values
    assert list(model.state_dict()) == keys
    assert all(params[k] is p for k, p in model.named_parameters())

    handle.unpatch()
    assert not handle.active and not hasattr(model, "_cujit_patch")
    after = dict(model.named_modules())
    assert after.keys() == modules.keys() and all(after[k] is modules[k] for k in modules)
    assert all(type(m) is classes[name] for name, m in after.items())
    assert not any(key.startswith("_cujit") for m in model.modules() for key in vars(m))
    assert all(params[k] is p for k, p in model.named_parameters())
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, values[k], rtol=0, atol=0)
    mlp = model.get_submodule(expected["mlp"][0])
    assert mlp.gate_proj.weight.untyped_storage().data_ptr() != mlp.up_proj.weight.untyped_storage().data_ptr()
    handle.unpatch()  # a second call does nothing


def test_context_manager_and_the_modeling_module_is_untouched() -> None:
    from transformers.models.llama import modeling_llama

    model, other = tiny("llama"), tiny("llama")
    rope, norm_cls, forward = (modeling_llama.apply_rotary_pos_emb, modeling_llama.LlamaRMSNorm,
                               modeling_llama.LlamaAttention.forward)
    with cujit_hf.patch(model) as handle:
        assert handle.active
        assert modeling_llama.apply_rotary_pos_emb is rope and modeling_llama.LlamaRMSNorm is norm_cls
        assert modeling_llama.LlamaAttention.forward is forward
        assert not any(isinstance(m, cujit_hf.CujitRMSNorm) for m in other.modules())  # per instance
        attn = model.model.layers[0].self_attn
        # while torch.compile traces, the class's own forward; else cujit's rebuilt copy of it
        assert forward in vars(cujit_hf).values() and type(attn).forward.__globals__ is vars(cujit_hf)
        rotating = type(attn)._cujit_rotating
        assert rotating is not forward and rotating.__code__ is forward.__code__  # same decorators, if any
        caller = rotating
        while "apply_rotary_pos_emb" not in caller.__code__.co_names:
            caller = caller.__wrapped__
        applied = caller.__globals__["apply_rotary_pos_emb"]
        assert applied is cujit_hf.apply_rotary_pos_emb and applied is not rope
    assert not handle.active
    assert type(model.model.norm) is norm_cls


def test_patch_twice_refused_and_options() -> None:
    model = tiny("qwen3")
    with cujit_hf.patch(model, mlp=False, rotary=False, qk_norm=False) as handle:
        assert set(handle.replaced) == {"rms_norm"}
        with pytest.raises(cujit.CujitError, match="already patched"):
            cujit_hf.patch(model)
    with cujit_hf.patch(model, norms=False, mlp=False, rotary=False) as handle:
        assert set(handle.replaced) == {"qk_norm"}


def test_unsupported_model_type() -> None:
    config = transformers.GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=64, n_positions=32)
    model = transformers.AutoModelForCausalLM.from_config(config)
    with pytest.raises(cujit.CujitError, match=r"model type 'gpt2' \(GPT2LMHeadModel\) is not supported; supported: "
                                               r"gemma, gemma2, gemma3, gemma3_text, llama, mistral, qwen2, qwen3"):
        cujit_hf.patch(model)
    with pytest.raises(TypeError, match=r"expected a torch\.nn\.Module, got str"):
        cujit_hf.patch("llama")  # type: ignore[arg-type]


def test_unsupported_activation_is_skipped_with_its_reason() -> None:
    model = tiny("llama", hidden_act="relu")
    with cujit_hf.patch(model) as handle:
        assert "mlp" not in handle.replaced
        assert handle.skipped == [f"model.layers.{i}.mlp: activation ReLU has no cujit op" for i in range(2)]
        assert "rms_norm" in handle.replaced


@pytest.mark.parametrize("family", ["llama", "qwen3", "gemma3"])
def test_autograd_recording_is_refused(family: str) -> None:
    model = tiny(family)
    ids = torch.tensor([[1, 2, 3]])
    with cujit_hf.patch(model):
        with pytest.raises(cujit.CujitError, match=r"RMSNorm: .*autograd is recording.*torch.no_grad\(\)"):
            model(ids)
        norm = model.model.norm
        x = torch.randn(2, 64, requires_grad=True)
        with pytest.raises(cujit.CujitError, match="autograd is recording"):
            norm(x)
        mlp = model.model.layers[0].mlp
        with pytest.raises(cujit.CujitError, match=r"gated MLP: .*autograd is recording"):
            mlp(torch.randn(2, 64))  # the weights require grad
        q = torch.randn(1, 4, 3, 16, requires_grad=True)
        k = torch.randn(1, 2, 3, 16)
        cos = sin = torch.ones(1, 3, 16)
        with pytest.raises(cujit.CujitError, match=r"rotary embedding: .*autograd is recording"):
            cujit_hf.apply_rotary_pos_emb(q, k, cos, sin)
        # Without autograd recording, the CPU input is refused by name (the ops run on CUDA tensors).
        with torch.no_grad(), pytest.raises(cujit.CujitError, match="RMSNorm: cujit's ops run on CUDA tensors"):
            norm(x)
        with torch.inference_mode(), pytest.raises(cujit.CujitError, match=r"CUDA tensors, got an input on cpu"):
            model(ids)


def test_weights_moved_after_patching_are_detected(monkeypatch: pytest.MonkeyPatch) -> None:
    stand_ins(monkeypatch)
    model = tiny("llama")
    with cujit_hf.patch(model), torch.no_grad():
        model.model.layers[0].mlp.gate_proj.weight.data = model.model.layers[0].mlp.gate_proj.weight.data.clone()
        with pytest.raises(cujit.CujitError, match=r"moved or cast after patching\): unpatch and patch again"):
            model(torch.tensor([[1, 2]]))


# ---------------------------------------------------------------------------------------------- stand-ins
def _rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6, *, gemma: bool = False,
              out: torch.Tensor | None = None) -> torch.Tensor:
    assert x.dim() == 2 and x.stride(-1) == 1 and weight.dtype == x.dtype and out is None
    x32 = x.float()
    w = (1 + weight.float()) if gemma else weight.float()
    return (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps) * w).to(x.dtype)


def _silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    assert x.is_contiguous()
    d = x.shape[-1] // 2
    return (torch.nn.functional.silu(x[..., :d].float()) * x[..., d:].float()).to(x.dtype)


def _gelu_and_mul(x: torch.Tensor, approximate: str = "none") -> torch.Tensor:
    assert x.is_contiguous()
    d = x.shape[-1] // 2
    return (torch.nn.functional.gelu(x[..., :d].float(), approximate=approximate) * x[..., d:].float()).to(x.dtype)


def _rotary(positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor, table: torch.Tensor, *,
            is_neox: bool = True, head_size: int | None = None) -> None:
    assert is_neox and q.dim() == 2 and k.dim() == 2 and positions.shape == (q.shape[0],) == (k.shape[0],)
    dim = table.shape[1]
    # The op's contract: 2-D q and k need the head size (rotary_embedding refuses them without it).
    assert head_size == dim, f"head_size={head_size} for a table of width {dim}"
    half = dim // 2
    cos, sin = table[positions, :half].float()[:, None], table[positions, half:].float()[:, None]
    for x in (q, k):
        heads = x.unflatten(1, (-1, dim))
        a, b = heads[..., :half].float(), heads[..., half:].float()
        heads.copy_(torch.cat((a * cos - b * sin, b * cos + a * sin), dim=-1).to(x.dtype))


def stand_ins(monkeypatch: pytest.MonkeyPatch) -> None:
    """Torch stand-ins of the ops' contracts, and CPU tensors accepted."""
    monkeypatch.setattr(cujit_hf, "rms_norm", _rms_norm)
    monkeypatch.setattr(cujit_hf, "silu_and_mul", _silu_and_mul)
    monkeypatch.setattr(cujit_hf, "gelu_and_mul", _gelu_and_mul)
    monkeypatch.setattr(cujit_hf, "rotary_embedding", _rotary)
    monkeypatch.setattr(cujit_hf, "_require_cuda", lambda what, x: None)


def greedy_logits(model: torch.nn.Module, ids: torch.Tensor, steps: int,
                  position_ids: torch.Tensor | None = None) -> list[torch.Tensor]:
    """Prefill then ``steps`` decode steps with a KV cache, feeding the unpatched model's greedy tokens."""
    cache = transformers.DynamicCache(config=model.config)
    out = model(ids, past_key_values=cache, position_ids=position_ids, use_cache=True)
    logits = [out.logits]
    nxt = out.logits[:, -1:].argmax(-1)
    for _ in range(steps):
        out = model(nxt, past_key_values=out.past_key_values, use_cache=True)
        logits.append(out.logits)
        nxt = out.logits[:, -1:].argmax(-1)
    return logits


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_patched_wiring_matches_the_model_with_torch_stand_ins(family: str, monkeypatch: pytest.MonkeyPatch) -> None:
    stand_ins(monkeypatch)
    model = tiny(family)
    ids = torch.randint(0, 128, (2, 9), generator=torch.Generator().manual_seed(1))
    per_row = torch.stack([torch.arange(9), torch.arange(3, 12)])  # a cos/sin of batch 2, not 1
    with torch.no_grad():
        want = greedy_logits(model, ids, 3)
        want_rows = model(ids, position_ids=per_row).logits
        with cujit_hf.patch(model) as handle:
            assert len(handle.replaced["mlp"]) == 2
            got = greedy_logits(model, ids, 3)
            got_rows = model(ids, position_ids=per_row).logits
        again = greedy_logits(model, ids, 3)
    for w, g, a in zip(want, got, again, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(a, w, rtol=0, atol=0)
    torch.testing.assert_close(got_rows, want_rows, rtol=1e-4, atol=1e-5)


def test_rotary_table_layout() -> None:
    cos = torch.arange(2 * 3 * 4, dtype=torch.float32).reshape(2, 3, 4)
    sin = -cos
    table, positions = cujit_hf.rotary_table(cos, sin, 2)
    assert table.shape == (6, 4) and positions.tolist() == [0, 1, 2, 3, 4, 5]
    torch.testing.assert_close(table[4], torch.tensor([16.0, 17.0, -16.0, -17.0]))
    table, positions = cujit_hf.rotary_table(cos[:1], sin[:1], 3)
    assert table.shape == (3, 4) and positions.tolist() == [0, 1, 2] * 3
    with pytest.raises(cujit.CujitError, match=r"expected cos and sin of shape \[4 or 1, seq, dim\]"):
        cujit_hf.rotary_table(cos, sin, 4)


@pytest.mark.parametrize("under_compile", cujit_hf.UNDER_COMPILE)
def test_under_torch_compile_the_patched_parts_run_the_models_code_or_cujits(under_compile: str,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    # "model": while Dynamo traces, every patched part runs the model's own code, so the compiled graph is the
    # unpatched model's; "cujit": the ops (here their torch stand-ins, counted) are traced into the graph. Eager
    # calls use the ops either way.
    stand_ins(monkeypatch)
    calls: list[str] = []
    for name in ("rms_norm", "silu_and_mul", "rotary_embedding"):
        def counted(*args: object, _op: object = getattr(cujit_hf, name), _name: str = name,
                    **kwargs: object) -> object:
            calls.append(_name)
            return _op(*args, **kwargs)  # type: ignore[operator]

        monkeypatch.setattr(cujit_hf, name, counted)
    model = tiny("qwen3")
    ids = torch.randint(0, 128, (2, 9), generator=torch.Generator().manual_seed(4))
    ops = {"rms_norm", "silu_and_mul", "rotary_embedding"}
    with torch.no_grad():
        want = model(ids).logits
        with cujit_hf.patch(model, under_compile=under_compile):
            calls.clear()
            eager = model(ids).logits
            assert set(calls) == ops
            torch._dynamo.reset()
            calls.clear()
            compiled = torch.compile(model, backend="eager", fullgraph=True)
            got = compiled(ids).logits
            traced = set(calls)
        torch._dynamo.reset()
    assert traced == (set() if under_compile == "model" else ops)
    torch.testing.assert_close(eager, want, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_under_compile_values_are_checked() -> None:
    with pytest.raises(cujit.CujitError, match="under_compile must be one of 'model', 'cujit', got 'torch'"):
        cujit_hf.patch(tiny("llama"), under_compile="torch")


def _guard_count(compiled_forward: object) -> int:
    """Leaf guards of the one compiled frame of ``compiled_forward``'s code (torch's guard-manager tree)."""
    from torch._dynamo.eval_frame import _debug_get_cache_entry_list

    entries = _debug_get_cache_entry_list(compiled_forward.__code__)  # type: ignore[attr-defined]
    assert len(entries) == 1

    def count(manager: Any) -> int:
        children = list(manager.get_child_managers())
        if hasattr(manager, "get_key_value_managers"):  # a dict's guards hang off its key and value managers
            children += [m for pair in manager.get_key_value_managers().values() for m in pair if m is not None]
        return len(manager.get_leaf_guards()) + sum(count(c) for c in children)

    return count(entries[0].guard_manager.root)


@pytest.mark.parametrize("family", ["llama", "qwen3", "gemma3"])
def test_the_compiled_patched_model_checks_the_unpatched_models_guards(family: str) -> None:
    # Under under_compile="model" the compiled graph is the unpatched model's; what the patch must not add is host
    # work a call: Dynamo's guards, checked on every call. Reaching the model's forward through the instance (a bound
    # method of the original module, or super()) cost about 24 guards a layer; through globals, 5-10.
    from torch._dynamo import eval_frame

    if not hasattr(eval_frame, "_debug_get_cache_entry_list"):
        pytest.skip("this torch cannot list a frame's guards")
    layers = 6
    model = tiny(family, num_hidden_layers=layers)
    ids = torch.randint(0, 128, (1, 3), generator=torch.Generator().manual_seed(5))
    counts = []
    with torch.no_grad():
        for patched in (False, True):
            torch._dynamo.reset()
            handle = cujit_hf.patch(model) if patched else None
            torch.compile(model, backend="eager", fullgraph=True)(ids)
            counts.append(_guard_count(type(model).forward))
            if handle is not None:
                handle.unpatch()
    torch._dynamo.reset()
    unpatched, patched_count = counts
    assert unpatched > 100
    assert patched_count <= unpatched + 12 * layers + 20, counts  # Gemma 3 on torch 2.11: 974 against 915
