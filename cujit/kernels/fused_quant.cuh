/// @file fused_quant.cuh
/// @brief Fusions that end in FP8 (e4m3) quantization: SiLU-and-mul + per-group quantization.
///
/// silu_and_mul_quant_fp8_kernel: for x [tokens, 2d] (fp32, fp16 or bf16, rows at any stride),
///     y = round_T(silu(x[:, :d]) * x[:, d:])       (activation.cuh's SiLU in fp32, rounded to nearest even to T)
///     q, scales = per-group quantization of y      (fp8_quant.cuh's rule, groups of kGroup values)
/// so that q and scales are bit for bit those of per_token_group_quant_fp8(silu_and_mul(x)): y is rounded to the
/// input dtype exactly as silu_and_mul stores it, and the group's max, scale and quotients are those of
/// fp8_quant.cuh. y never reaches memory.
///
/// Layout: as per_token_group_quant_fp8_kernel, the groups of all rows in row-major order, kLanes threads of one
/// warp per group (16 threads of 8 bf16 values for groups of 128), each thread one 16-byte vector (or more, for
/// groups beyond 32 vectors) of the gate and of the up half, both loaded before any arithmetic; the group's max is
/// a shuffle over its lanes. Loads are element-wise when x, its row stride or d are not 16-byte multiples.
#ifndef CUJIT_KERNELS_FUSED_QUANT_CUH_
#define CUJIT_KERNELS_FUSED_QUANT_CUH_

#include <cujit/base.cuh>
#include <cujit/fp8.cuh>
#include <cujit/pdl.cuh>
#include <cujit/types.cuh>

#include "activation.cuh"
#include "fp8_quant.cuh"
#include "vec_io.cuh"

/// q [tokens, d] (contiguous) and scales[row * scale_row_stride + group * scale_group_stride] for the `groups` =
/// tokens * group_row groups of kGroup values. Launch kThreads threads per block and cdiv(groups, kThreads /
/// kLanes) blocks, kLanes = min(kGroup / (16 / sizeof(T)), 32). magic and shift: group_row's multiply-high divisor
/// (cujit.fp8_quant.divider).
template <typename T, int kGroup, int kThreads>
__global__ void __launch_bounds__(kThreads) silu_and_mul_quant_fp8_kernel(
    fp8_e4m3_t* __restrict__ q, float* __restrict__ scales, const T* __restrict__ x, int64_t x_stride, uint32_t d,
    uint32_t groups, uint32_t group_row, uint32_t magic, uint32_t shift, int64_t scale_row_stride,
    int64_t scale_group_stride) {
  using namespace fp8_quant_detail;
  constexpr int kVec = 16 / sizeof(T);
  constexpr int kLanes = kGroup / kVec < 32 ? kGroup / kVec : 32;
  constexpr int kWidth = kGroup / kLanes;  // values of a group per thread: kVec or more
  constexpr int kSlots = kThreads / kLanes;
  static_assert(kThreads % 32 == 0 && kGroup % kVec == 0 && (kGroup & (kGroup - 1)) == 0, "geometry");
  static_assert(kWidth % kVec == 0 && 32 % kLanes == 0, "a group is whole vectors of a power of two of lanes");
  cujit::pdl_wait();  // x comes from the previous kernel
  const bool vector = vector_ok<kVec>(x, q, x_stride, d);
  const uint32_t lane = threadIdx.x % kLanes;
  const uint32_t g = blockIdx.x * kSlots + threadIdx.x / kLanes;
  const bool live = g < groups;  // dead groups still take part in their warp's shuffles
  const uint32_t row = live ? row_of(g, group_row, magic, shift) : 0;
  const uint32_t col = live ? g - row * group_row : 0;
  const T* gate = x + static_cast<int64_t>(row) * x_stride + static_cast<uint64_t>(col) * kGroup + lane * kWidth;
  T a[kWidth], b[kWidth];
  if (live) {
    vec_io::load<T, kWidth>(gate, vector, a);
    vec_io::load<T, kWidth>(gate + d, vector, b);
  }
  cujit::pdl_launch_dependents();
  T y[kWidth];
#pragma unroll
  for (int i = 0; i < kWidth; ++i) {
    // The expression silu_and_mul_kernel evaluates, then its rounding to T.
    y[i] = cujit::from_float<T>(activation_detail::Silu::apply(cujit::to_float(a[i])) * cujit::to_float(b[i]));
  }
  uint32_t bits = live ? amax_bits<T, kWidth>(y, 0u) : 0u;
#pragma unroll
  for (int offset = kLanes / 2; offset > 0; offset /= 2) {
    bits = cujit::max_bits(bits, __shfl_xor_sync(0xffffffffu, bits, offset));
  }
  if (!live) return;
  const float scale = scale_of(__uint_as_float(bits));
  if (lane == 0) scales[row * scale_row_stride + col * scale_group_stride] = scale;
  quantize<true>(reinterpret_cast<uint8_t*>(q) + static_cast<uint64_t>(g) * kGroup + lane * kWidth, vector, y,
                 scale);
}

#endif  // CUJIT_KERNELS_FUSED_QUANT_CUH_
