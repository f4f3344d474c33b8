"""cujit::divide_by_reciprocal (cujit/fp8.cuh), the quotient the FP8 quantization kernels use, against the IEEE
division: every pair of bf16 and fp16 significands with every float significand of the scale (the quotient's
significand depends on nothing else while nothing under- or overflows), and the e4m3 bytes of random float pairs
over the whole float range, specials included (fp32 inputs: 2^46 significand pairs are too many to walk; the
random pairs and the proof at divide_by_reciprocal cover them)."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest

import cujit

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.gpu
KERNELS = str(Path(__file__).parent / "kernels" / "fp8_division_test.cuh")


@functools.cache
def _module() -> cujit.JitModule:
    return cujit.load_jit("fp8_division_test", cuda_files=[KERNELS], cuda_wrappers=[
        ("bf16", "reciprocal_division_significands<7>"), ("fp16", "reciprocal_division_significands<10>"),
        ("bytes", "reciprocal_division_bytes")])


@pytest.mark.parametrize("kind", ["bf16", "fp16"])
def test_every_significand_pair_gives_the_ieee_quotient(kind: str) -> None:
    mismatches = torch.zeros(1, dtype=torch.int64, device="cuda")
    example = torch.zeros(2, device="cuda")
    cujit.LaunchKernel(1024, 256)(getattr(_module(), kind), mismatches, example)
    assert mismatches.item() == 0, f"x = {example[0].item()!r}, scale = {example[1].item()!r}"


def _bits_to_float(bits: torch.Tensor) -> torch.Tensor:
    """Floats of the given 32-bit patterns (held in int64)."""
    return torch.where(bits >= 1 << 31, bits - (1 << 32), bits).to(torch.int32).view(torch.float32)


def test_e4m3_bytes_over_the_whole_float_range() -> None:
    gen = torch.Generator(device="cuda").manual_seed(0)
    n = 1 << 24
    sbits = torch.randint(0, 1 << 32, (n,), device="cuda", generator=gen, dtype=torch.int64)
    xbits = torch.randint(0, 1 << 32, (n,), device="cuda", generator=gen, dtype=torch.int64)
    # Half the x near scale * 2^k (k in [-20, 11]) so that the quotients land in and around the e4m3 range.
    shift = torch.randint(-20, 12, (n,), device="cuda", generator=gen)
    exponent = ((sbits >> 23) & 0xFF) + shift
    near = (xbits & ~(0xFF << 23)) | (exponent.clamp(1, 254) << 23)
    xbits = torch.where(torch.arange(n, device="cuda") % 2 == 0, near, xbits)
    specials = torch.tensor([0.0, -0.0, float("inf"), float("-inf"), float("nan"), 1e-45, -1e-45, 2.0**-60,
                             2.0**125, 2.0**-61, 2.0**126, 448.0, 464.0, 2.0**-10, 3 * 2.0**-10, 1.0625],
                            device="cuda")
    x = torch.cat([_bits_to_float(xbits), specials.repeat_interleave(len(specials))])
    scale = torch.cat([_bits_to_float(sbits), specials.repeat(len(specials))])
    got = torch.empty(len(x), dtype=torch.uint8, device="cuda")
    want = torch.empty_like(got)
    cujit.LaunchKernel(4096, 256)(_module().bytes, x, scale, got, want, len(x))
    nan = (want & 0x7F) == 0x7F
    same = (got == want) | (nan & ((got & 0x7F) == 0x7F))
    assert bool(same.all()), (x[~same][:5].tolist(), scale[~same][:5].tolist())
    # and the reference itself is torch's: x / scale with tensors, clamped, converted
    ref = (x / scale).clamp(-448, 448).to(torch.float8_e4m3fn).view(torch.uint8)
    ref_nan = (ref & 0x7F) == 0x7F
    assert bool(((ref == want) | (ref_nan & nan)).all())

