/// @file cujit/fp8.cuh
/// @brief Saturating float -> fp8 e4m3 conversion with round-to-nearest-even, and a NaN-propagating absolute max.
///
/// The conversion is the one `(x).clamp(-448, 448).to(torch.float8_e4m3fn)` performs: round to nearest even,
/// finite values beyond +-448 and +-inf saturate to +-448, NaN stays NaN (0x7F). On sm_89 and newer it is one
/// `cvt.rn.satfinite.e4m3x2.f32` per pair; older GPUs take the CUDA header's exact software path, which gives the
/// same bytes.
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

/// The bits of |x|. For non-negative floats the integer order is the numeric order and every NaN is above +inf,
/// so an unsigned max over these bits is an absolute max that propagates NaN (as torch's amax does), in one
/// instruction and with no special case.
CUJIT_DEVICE uint32_t abs_bits(float x) { return __float_as_uint(x) & 0x7FFFFFFFu; }

/// The largest of two abs_bits values (NaN wins).
CUJIT_DEVICE uint32_t max_bits(uint32_t a, uint32_t b) { return a > b ? a : b; }

}  // namespace cujit

#endif  // CUJIT_FP8_CUH_
