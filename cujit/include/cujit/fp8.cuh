/// @file cujit/fp8.cuh
/// @brief Saturating float -> fp8 e4m3 conversion with round-to-nearest-even, and a NaN-propagating absolute max.
///
/// The conversion is the one `(x).clamp(-448, 448).to(torch.float8_e4m3fn)` performs: round to nearest even,
/// finite values beyond +-448 and +-inf saturate to +-448, NaN stays NaN (0x7F). On sm_89 and newer it is one
/// `cvt.rn.satfinite.e4m3x2.f32` per pair; older GPUs take the CUDA header's exact software path, which gives the
/// same bytes.
///
/// Quantizing divides many values by one scale. An IEEE division is a reciprocal, four FMAs, a range check and a
/// branch per value; `divide_by_reciprocal` gives the same float with one multiplication and two FMAs per value
/// from the scale's correctly rounded reciprocal, where `reciprocal_division_exact(scale)` allows it.
#ifndef CUJIT_FP8_CUH_
#define CUJIT_FP8_CUH_

#include <cujit/base.cuh>
#include <cujit/types.cuh>

namespace cujit {

/// The largest finite e4m3 (fn) value.
constexpr float kFp8E4m3Max = 448.0f;

/// One float to e4m3 bits, saturating.
CUJIT_DEVICE uint8_t fp8_e4m3_saturate(float x) {
  return static_cast<uint8_t>(__nv_cvt_float_to_fp8(x, __NV_SATFINITE, __NV_E4M3));
}

/// Two floats to e4m3 bits, saturating; `lo` lands in the low byte (the lower address).
CUJIT_DEVICE uint16_t fp8x2_e4m3_saturate(float lo, float hi) {
  return static_cast<uint16_t>(__nv_cvt_float2_to_fp8x2(make_float2(lo, hi), __NV_SATFINITE, __NV_E4M3));
}

/// `N` floats (N a multiple of 4) to e4m3 bytes packed four to a word, the first value in the low byte (the
/// lower address): two conversions and one byte permute per word.
template <int N>
CUJIT_DEVICE void fp8_e4m3_saturate(const float (&x)[N], uint32_t (&out)[N / 4]) {
  static_assert(N % 4 == 0, "convert whole words");
#pragma unroll
  for (int i = 0; i < N; i += 4) {
    const uint32_t lo = fp8x2_e4m3_saturate(x[i], x[i + 1]);
    const uint32_t hi = fp8x2_e4m3_saturate(x[i + 2], x[i + 3]);
    out[i / 4] = lo | (hi << 16);
  }
}

/// `N` floats (N even) to `N` e4m3 bytes in `out`, saturating, two per conversion.
template <int N>
CUJIT_DEVICE void fp8_e4m3_saturate(const float (&x)[N], uint8_t (&out)[N]) {
  static_assert(N % 2 == 0, "convert an even number of values");
#pragma unroll
  for (int i = 0; i < N; i += 2) {
    const uint16_t pair = fp8x2_e4m3_saturate(x[i], x[i + 1]);
    out[i] = static_cast<uint8_t>(pair & 0xFFu);
    out[i + 1] = static_cast<uint8_t>(pair >> 8);
  }
}

/// Whether `divide_by_reciprocal(x, scale, __frcp_rn(scale))` equals the IEEE quotient x / scale (round to
/// nearest even) for every float x, as far as the quotient's e4m3 conversion can tell: 2^-60 <= |scale| <= 2^125.
/// False for zero, subnormal, huge, infinite and NaN scales, which take the IEEE division.
CUJIT_DEVICE bool reciprocal_division_exact(float scale) {
  const uint32_t bits = __float_as_uint(scale) & 0x7FFFFFFFu;
  return bits >= 0x21800000u && bits <= 0x7E000000u;  // 2^-60 and 2^125
}

/// x / scale, round to nearest even, from r = __frcp_rn(scale) (a scale that reciprocal_division_exact allows).
///
/// q0 = x * r is within one ulp of the quotient; the residual x - q0 * scale is then exact in an FMA and
/// q0 + residual * r rounds to the correctly rounded quotient (Markstein's theorem for a correctly rounded
/// reciprocal), as long as nothing under- or overflows. That holds for 2^-20 <= |q0| <= 2^100 with the scale's
/// range above (the residual is a multiple of ulp(scale) * ulp(q0) >= 2^-126). Outside that range q0 itself is
/// returned: below 2^-20 the quotient converts to a signed zero, as q0 does (same sign); above 2^100 it saturates
/// to +-448, as q0 does; inf and NaN give what the division gives. The corrected quotient is written with the
/// residual negated (q0 - (q0 * scale - x) * r) so that x = -0 gives -0, as the division does. Checked
/// exhaustively against the IEEE division for every pair of bf16 and fp16 significands with every float
/// significand of the scale (tests/test_fp8_division_gpu.py).
CUJIT_DEVICE float divide_by_reciprocal(float x, float scale, float r) {
  const float q0 = __fmul_rn(x, r);
  const float q1 = __fmaf_rn(-__fmaf_rn(q0, scale, -x), r, q0);
  const float m = fabsf(q0);  // two compares with the |.| operand modifier; NaN fails both and returns q0
  return m >= 0x1p-20f && m <= 0x1p100f ? q1 : q0;
}

/// The bits of |x|. For non-negative floats the integer order is the numeric order and every NaN is above +inf,
/// so an unsigned max over these bits is an absolute max that propagates NaN (as torch's amax does), in one
/// instruction and with no special case.
CUJIT_DEVICE uint32_t abs_bits(float x) { return __float_as_uint(x) & 0x7FFFFFFFu; }

/// The largest of two abs_bits values (NaN wins).
CUJIT_DEVICE uint32_t max_bits(uint32_t a, uint32_t b) { return a > b ? a : b; }

}  // namespace cujit

#endif  // CUJIT_FP8_CUH_
