/// Test kernels for cujit::divide_by_reciprocal (cujit/fp8.cuh) against the IEEE division.
#include <cujit/base.cuh>
#include <cujit/fp8.cuh>

/// Every pair (x significand, scale significand): x = 1 + i / 2^kBits (the significands of bf16 for kBits 7, of
/// fp16 for 10), scale = 1 + j / 2^23 for every j of this thread's grid-stride walk. Exponents do not matter for
/// the quotient's significand while nothing under- or overflows, which the range checks ensure. Counts the pairs
/// whose float quotient differs from __fdiv_rn into `mismatches`, and writes the first one found to `example`.
template <int kBits>
__global__ void reciprocal_division_significands(unsigned long long* mismatches, float* example) {
  for (uint64_t j : cujit::grid_stride(1u << 23)) {
    const float scale = __uint_as_float(0x3F800000u | static_cast<uint32_t>(j));
    const float r = __frcp_rn(scale);
    for (uint32_t i = 0; i < (1u << kBits); ++i) {
      const float x = __uint_as_float(0x3F800000u | (i << (23 - kBits)));
      const float got = cujit::divide_by_reciprocal(x, scale, r);
      const float want = __fdiv_rn(x, scale);
      if (__float_as_uint(got) != __float_as_uint(want)) {
        if (atomicAdd(mismatches, 1ull) == 0) {
          example[0] = x;
          example[1] = scale;
        }
      }
    }
  }
}

/// For n pairs of arbitrary float bits (x[k], scale[k]) (inf, NaN, zeros, subnormals included): the e4m3 byte of
/// x / scale by the path the quantization kernels take (the reciprocal form where reciprocal_division_exact
/// allows it, else __fdiv_rn) and by __fdiv_rn.
__global__ void reciprocal_division_bytes(const float* x, const float* scale, uint8_t* got, uint8_t* want,
                                          uint64_t n) {
  for (uint64_t k : cujit::grid_stride(n)) {
    const float s = scale[k];
    const float q = cujit::reciprocal_division_exact(s) ? cujit::divide_by_reciprocal(x[k], s, __frcp_rn(s))
                                                        : __fdiv_rn(x[k], s);
    got[k] = cujit::fp8_e4m3_saturate(q);
    want[k] = cujit::fp8_e4m3_saturate(__fdiv_rn(x[k], s));
  }
}
