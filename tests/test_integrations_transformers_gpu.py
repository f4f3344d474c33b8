"""cujit.integrations.transformers on the GPU: patched models' logits against the unpatched model's.

For each family (a small random model: 2 layers, hidden 256, 4 heads of 64, 2 kv heads, vocab 512), prefill of a
batch of 2 x 33 tokens, then 4 decode steps with a KV cache, feeding the unpatched model's greedy tokens to both.

Tolerances:
- fp32 models: patched against unpatched within rtol 1e-4, atol 1e-4 x the logits' largest magnitude (the ops
  compute in fp32 as torch does; sums run in another order, and gate/up are one GEMM instead of two). TF32 is off.
- bf16 models: patched and unpatched each against an fp32 reference (the same bf16 weights in fp32): the patched
  model's largest error is at most 1.5x the unpatched model's plus 1% of the logits' largest magnitude. The ops
  round once where torch rounds after each step, and the rotary angles stay in fp32, so the patched model is
  expected to be as close to the reference or closer; 1.5x leaves room for the bf16 GEMMs' own noise, which both
  share. Patched against unpatched directly: within 5% of the logits' largest magnitude.
"""

from __future__ import annotations

import copy

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import cujit  # noqa: E402
from cujit.integrations import transformers as cujit_hf  # noqa: E402
from tests.test_integrations_transformers import FAMILIES  # noqa: E402

pytestmark = pytest.mark.gpu

COMMON = dict(hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, head_dim=64, vocab_size=512, max_position_embeddings=512)
GEMMA = {"gemma", "gemma2", "gemma3"}
STEPS = 4


@pytest.fixture(autouse=True)
def _no_tf32() -> object:
    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32 = old


def model_of(family: str, dtype: torch.dtype) -> torch.nn.Module:
    torch.manual_seed(0)
    config = FAMILIES[family](**COMMON)
    model = transformers.AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):  # Gemma's start at 0, Llama's at 1: give every norm weight a spread
                p.add_(torch.randn_like(p) * 0.1)
    return model.to("cuda", dtype)


def run(model: torch.nn.Module, ids: torch.Tensor, tokens: list[torch.Tensor] | None = None
        ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Prefill and STEPS decode steps; the tokens fed are ``tokens`` or this model's greedy choices."""
    with torch.inference_mode():
        out = model(ids, past_key_values=transformers.DynamicCache(config=model.config), use_cache=True)
        logits, fed = [out.logits.float()], []
        for step in range(STEPS):
            nxt = tokens[step] if tokens is not None else out.logits[:, -1:].argmax(-1)
            fed.append(nxt)
            out = model(nxt, past_key_values=out.past_key_values, use_cache=True)
            logits.append(out.logits.float())
    return logits, fed


def max_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max())


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_fp32_patched_matches_unpatched(family: str) -> None:
    model = model_of(family, torch.float32)
    ids = torch.randint(0, 512, (2, 33), device="cuda", generator=torch.Generator("cuda").manual_seed(1))
    want, fed = run(model, ids)
    with cujit_hf.patch(model) as handle:
        assert not handle.skipped and set(handle.replaced) >= {"rms_norm", "mlp", "rotary", "attention"}
        got, _ = run(model, ids, fed)
    for step, (w, g) in enumerate(zip(want, got, strict=True)):
        scale = float(w.abs().max())
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-4 * scale, msg=lambda m, s=step: f"step {s}: {m}")
    again, _ = run(model, ids, fed)  # unpatched again: the original model, bit for bit
    for w, a in zip(want, again, strict=True):
        torch.testing.assert_close(a, w, rtol=0, atol=0)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_bf16_patched_is_as_close_to_fp32_as_unpatched(family: str) -> None:
    model = model_of(family, torch.bfloat16)
    reference = copy.deepcopy(model).float()
    ids = torch.randint(0, 512, (2, 33), device="cuda", generator=torch.Generator("cuda").manual_seed(1))
    eager, fed = run(model, ids)
    ref, _ = run(reference, ids, fed)
    with cujit_hf.patch(model):
        patched, _ = run(model, ids, fed)
    for step, (r, e, p) in enumerate(zip(ref, eager, patched, strict=True)):
        scale = float(r.abs().max())
        e_err, p_err = max_err(e, r), max_err(p, r)
        assert p_err <= 1.5 * e_err + 0.01 * scale, (
            f"{family} step {step}: patched bf16 is {p_err:.4g} from fp32, unpatched bf16 {e_err:.4g} "
            f"(logits up to {scale:.3g})")
        assert max_err(p, e) <= 0.05 * scale, f"{family} step {step}: patched - unpatched {max_err(p, e):.4g}"


@pytest.mark.parametrize("family", ["llama", "gemma3"])
def test_generate_greedy_tokens(family: str) -> None:
    """generate() (greedy) of the patched bf16 model: the first new token is the unpatched model's, or a near tie."""
    model = model_of(family, torch.bfloat16)
    ids = torch.randint(0, 512, (2, 17), device="cuda", generator=torch.Generator("cuda").manual_seed(2))
    kwargs = dict(max_new_tokens=8, do_sample=False, pad_token_id=0)
    want = model.generate(ids, **kwargs)
    with cujit_hf.patch(model):
        got = model.generate(ids, **kwargs)
    assert got.shape == want.shape and torch.equal(got[:, : ids.shape[1]], ids)
    # Random weights give near ties, where one bf16 rounding may flip a token and the rest of the sequence with it.
    # The first new token comes from the prefill logits: the same token, or one whose unpatched logit is within 2%
    # of the logits' largest magnitude of the unpatched choice's.
    with torch.inference_mode():
        last = model(ids).logits[:, -1].float()
    first_want, first_got = want[:, ids.shape[1]], got[:, ids.shape[1]]
    rows = torch.arange(ids.shape[0], device="cuda")
    gap = (last[rows, first_want] - last[rows, first_got]).abs()
    assert bool((gap <= 0.02 * last.abs().max()).all()), (first_want, first_got, gap)


@pytest.mark.parametrize("under_compile", cujit_hf.UNDER_COMPILE)
def test_torch_compile_of_patched_model(under_compile: str) -> None:
    """The patched model compiles without graph breaks and gives the eager patched model's logits, with the model's
    own code in the graph ("model") or cujit's ops ("cujit")."""
    model = model_of("qwen3", torch.bfloat16)
    ids = torch.randint(0, 512, (1, 64), device="cuda", generator=torch.Generator("cuda").manual_seed(3))
    with cujit_hf.patch(model, under_compile=under_compile), torch.inference_mode():
        want = model(ids).logits
        torch._dynamo.reset()
        compiled = torch.compile(model, fullgraph=True)
        got = compiled(ids).logits
    torch.testing.assert_close(got.float(), want.float(), rtol=2e-2, atol=2e-2 * float(want.abs().max()))


def test_cuda_tensors_required_message_names_the_part() -> None:
    model = model_of("llama", torch.bfloat16)
    with cujit_hf.patch(model), torch.no_grad():
        x = torch.randn(3, 256, dtype=torch.float32, device="cuda")
        with pytest.raises(cujit.CujitError, match=r"expected the weight in the input's dtype torch\.float32"):
            model.model.norm(x)
