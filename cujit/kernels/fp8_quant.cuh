/// @file fp8_quant.cuh
/// @brief Dynamic and static FP8 (e4m3) quantization: per token, per tensor, per group of a token's values.
///
/// Rule shared by every kernel here, bit for bit the torch expression
///     amax  = x.abs().amax(...).float()                 (NaN propagates, as torch's amax)
///     scale = (amax / 448).clamp(min=kMinScale)         (dynamic scales; NaN stays NaN)
///     q     = (x.float() / scale).clamp(-448, 448).to(torch.float8_e4m3fn)
/// with an IEEE division (not a multiplication by the reciprocal) and round to nearest even. kMinScale =
/// 1 / (448 * 512), vLLM's floor for dynamic scales: an all-zero row gets that scale and zeros, never 0 / 0.
/// What inf and NaN inputs give follows from the rule: a row (group, tensor) holding inf gets scale inf, its finite
/// values quantize to 0 and its infs to NaN (inf / inf); one holding NaN gets scale NaN and NaN everywhere.
///
/// x is [tokens, hidden] with rows at any stride (the values of a row contiguous); q is contiguous. Loads are
/// 16-byte vectors when x's pointer and row stride allow it, else element-wise over the same work split.
///
/// - per token: one block per row; each thread keeps up to kVecs vectors of the row in registers between the max
///   and the quantization, so the row is read once (rows longer than the block's registers re-read the rest).
/// - per group: a group of group_size values is kLanes threads (a 16-lane half-warp for 128 bf16 values, one
///   vector each); the max is a shuffle over those lanes; kBatch groups per thread with all loads issued first;
///   the scale of (row, group) goes to scales[row * scale_row_stride + group * scale_group_stride] (row- or
///   column-major).
/// - per tensor: a dynamic scale needs the max of the whole tensor before any value is quantized: one kernel
///   writes a max per block of a chunked split, a second kernel reduces those partial maxima (a few KB, in every
///   block) and quantizes the same chunks in reverse block order, so that the first chunks it reads are the last
///   ones the first kernel read, still in L2. A static scale skips the first kernel.
#ifndef CUJIT_KERNELS_FP8_QUANT_CUH_
#define CUJIT_KERNELS_FP8_QUANT_CUH_

#include <cujit/base.cuh>
#include <cujit/fp8.cuh>
#include <cujit/reduce.cuh>
#include <cujit/types.cuh>

#include "vec_io.cuh"

namespace fp8_quant_detail {

/// The floor of dynamic scales: 1 / (448 * 512).
constexpr float kMinScale = 1.0f / (448.0f * 512.0f);

/// A dynamic scale from an absolute max: max(amax / 448, kMinScale), NaN kept.
CUJIT_DEVICE float scale_of(float amax) {
  const float scale = amax / cujit::kFp8E4m3Max;
  return scale < kMinScale ? kMinScale : scale;  // a NaN compares false and stays
}

/// The larger abs_bits of `N` values.
template <typename T, int N>
CUJIT_DEVICE uint32_t amax_bits(const T (&v)[N], uint32_t acc) {
#pragma unroll
  for (int i = 0; i < N; ++i) acc = cujit::max_bits(acc, cujit::abs_bits(cujit::to_float(v[i])));
  return acc;
}

/// Element offset of the flat index `e` of a [rows, hidden] tensor whose rows are `stride` apart.
CUJIT_DEVICE uint64_t strided_offset(uint64_t e, uint64_t hidden, int64_t stride) {
  if (static_cast<uint64_t>(stride) == hidden) return e;
  const uint64_t row = e / hidden;
  return row * static_cast<uint64_t>(stride) + (e - row * hidden);
}

/// Per token, one row: kVecs chunks of kVec values per thread kept in registers.
template <int kVec, int kVecs, typename T>
CUJIT_DEVICE void quantize_row(const T* x_row, fp8_e4m3_t* q_row, float* scale_out, const float* scale_ub,
                               uint32_t hidden) {
  constexpr bool kVector = kVec > 1;
  const uint32_t chunks = hidden / kVec;
  const uint32_t held = kVecs * blockDim.x;  // chunks kept in registers
  const float ub = scale_ub != nullptr ? *scale_ub : 0.0f;  // issued now, used after the reduction
  T v[kVecs][kVec];
  uint32_t bits = 0;
#pragma unroll
  for (int i = 0; i < kVecs; ++i) {
    const uint32_t c = threadIdx.x + i * blockDim.x;
    if (c < chunks) vec_io::load<T, kVec>(x_row + c * kVec, kVector, v[i]);
  }
#pragma unroll
  for (int i = 0; i < kVecs; ++i) {
    if (threadIdx.x + i * blockDim.x < chunks) bits = amax_bits<T, kVec>(v[i], bits);
  }
#pragma unroll 1
  for (uint32_t c = held + threadIdx.x; c < chunks; c += blockDim.x) {
    T w[kVec];
    vec_io::load<T, kVec>(x_row + c * kVec, kVector, w);
    bits = amax_bits<T, kVec>(w, bits);
  }
  bits = cujit::block_reduce(bits, cujit::Max());
  float amax = __uint_as_float(bits);
  if (scale_ub != nullptr) amax = amax > ub ? ub : amax;  // NaN stays, as torch's clamp(max=ub)
  const float scale = scale_of(amax);
  if (threadIdx.x == 0) *scale_out = scale;
#pragma unroll
  for (int i = 0; i < kVecs; ++i) {
    const uint32_t c = threadIdx.x + i * blockDim.x;
    if (c < chunks) vec_io::store_as<T, fp8_e4m3_t, kVec>(q_row + c * kVec, kVector, v[i], scale);
  }
#pragma unroll 1
  for (uint32_t c = held + threadIdx.x; c < chunks; c += blockDim.x) {
    T w[kVec];
    vec_io::load<T, kVec>(x_row + c * kVec, kVector, w);
    vec_io::store_as<T, fp8_e4m3_t, kVec>(q_row + c * kVec, kVector, w, scale);
  }
}

/// Per group: one (row, group) pair per kLanes threads, kBatch pairs per thread per step; pairs [first, last).
template <int kVec, int kGroupSize, int kBatch, typename T>
CUJIT_DEVICE void quantize_groups(const T* x, fp8_e4m3_t* q, float* scales, int64_t x_stride, uint32_t hidden,
                                  uint32_t first, uint32_t last, int64_t scale_row_stride,
                                  int64_t scale_group_stride) {
  constexpr bool kVector = kVec > 1;
  constexpr int kChunks = kGroupSize / kVec;           // chunks of a group
  constexpr int kLanes = kChunks < 32 ? kChunks : 32;  // threads of a group
  constexpr int kPerLane = kChunks / kLanes;           // chunks of a group per thread
  static_assert(kChunks % kLanes == 0 && 32 % kLanes == 0, "a group is a power-of-two number of chunks");
  const uint32_t lane = threadIdx.x % kLanes;
  const uint32_t slot = threadIdx.x / kLanes;
  const uint32_t slots = blockDim.x / kLanes;  // groups the block works on at once
  const uint32_t group_row = hidden / kGroupSize;
  // Every thread runs the same number of steps, so the shuffles below always see their whole group.
#pragma unroll 1
  for (uint32_t g0 = first; g0 < last; g0 += kBatch * slots) {
    T v[kBatch][kPerLane][kVec];
    uint32_t bits[kBatch];
#pragma unroll
    for (int b = 0; b < kBatch; ++b) {
      const uint32_t g = g0 + b * slots + slot;
      bits[b] = 0;
      if (g < last) {
        const uint32_t row = g / group_row;
        const T* src = x + row * x_stride + static_cast<uint64_t>(g - row * group_row) * kGroupSize;
#pragma unroll
        for (int m = 0; m < kPerLane; ++m) vec_io::load<T, kVec>(src + (lane + m * kLanes) * kVec, kVector, v[b][m]);
      }
    }
#pragma unroll
    for (int b = 0; b < kBatch; ++b) {
      if (g0 + b * slots + slot < last) {
#pragma unroll
        for (int m = 0; m < kPerLane; ++m) bits[b] = amax_bits<T, kVec>(v[b][m], bits[b]);
      }
#pragma unroll
      for (int offset = kLanes / 2; offset > 0; offset /= 2) {
        bits[b] = cujit::max_bits(bits[b], __shfl_xor_sync(0xffffffffu, bits[b], offset));
      }
    }
#pragma unroll
    for (int b = 0; b < kBatch; ++b) {
      const uint32_t g = g0 + b * slots + slot;
      if (g < last) {
        const float scale = scale_of(__uint_as_float(bits[b]));
        const uint32_t row = g / group_row;
        const uint32_t col = g - row * group_row;
        if (lane == 0) scales[row * scale_row_stride + col * scale_group_stride] = scale;
        fp8_e4m3_t* dst = q + static_cast<uint64_t>(g) * kGroupSize;  // q is contiguous: group g starts at g * size
#pragma unroll
        for (int m = 0; m < kPerLane; ++m) {
          vec_io::store_as<T, fp8_e4m3_t, kVec>(dst + (lane + m * kLanes) * kVec, kVector, v[b][m], scale);
        }
      }
    }
  }
}

/// The absolute max of flat elements [begin, end) of x (bits), over the calling block.
template <int kVec, typename T>
CUJIT_DEVICE uint32_t chunk_amax(const T* x, int64_t x_stride, uint64_t hidden, uint64_t begin, uint64_t end) {
  constexpr bool kVector = kVec > 1;
  constexpr int kBatch = kVector ? 4 : 1;
  uint32_t bits = 0;
  const uint64_t step = static_cast<uint64_t>(blockDim.x) * kVec;
#pragma unroll 1
  for (uint64_t e0 = begin + threadIdx.x * kVec; e0 < end; e0 += kBatch * step) {
    T v[kBatch][kVec];
#pragma unroll
    for (int b = 0; b < kBatch; ++b) {
      const uint64_t e = e0 + b * step;
      if (e < end) vec_io::load<T, kVec>(x + strided_offset(e, hidden, x_stride), kVector, v[b]);
    }
#pragma unroll
    for (int b = 0; b < kBatch; ++b) {
      if (e0 + b * step < end) bits = amax_bits<T, kVec>(v[b], bits);
    }
  }
  return bits;
}

/// Quantize flat elements [begin, end) of x with `scale` into the contiguous q.
template <int kVec, typename T>
CUJIT_DEVICE void quantize_chunk(const T* x, fp8_e4m3_t* q, int64_t x_stride, uint64_t hidden, uint64_t begin,
                                 uint64_t end, float scale) {
  constexpr bool kVector = kVec > 1;
  constexpr int kBatch = kVector ? 4 : 1;
  const uint64_t step = static_cast<uint64_t>(blockDim.x) * kVec;
#pragma unroll 1
  for (uint64_t e0 = begin + threadIdx.x * kVec; e0 < end; e0 += kBatch * step) {
    T v[kBatch][kVec];
#pragma unroll
    for (int b = 0; b < kBatch; ++b) {
      const uint64_t e = e0 + b * step;
      if (e < end) vec_io::load<T, kVec>(x + strided_offset(e, hidden, x_stride), kVector, v[b]);
    }
#pragma unroll
    for (int b = 0; b < kBatch; ++b) {
      const uint64_t e = e0 + b * step;
      if (e < end) vec_io::store_as<T, fp8_e4m3_t, kVec>(q + e, kVector, v[b], scale);
    }
  }
}

/// Whether x's rows allow kVec-value vectors.
template <int kVec, typename T>
CUJIT_DEVICE bool vector_ok(const T* x, int64_t x_stride, uint64_t hidden) {
  return cujit::is_aligned(x, vec_io::access_bytes<T, kVec>()) && x_stride % kVec == 0 && hidden % kVec == 0;
}

/// Whether x's rows and the contiguous q allow kVec-value vectors.
template <int kVec, typename T>
CUJIT_DEVICE bool vector_ok(const T* x, const fp8_e4m3_t* q, int64_t x_stride, uint64_t hidden) {
  return vector_ok<kVec>(x, x_stride, hidden) && cujit::is_aligned(q, vec_io::access_bytes<fp8_e4m3_t, kVec>());
}

}  // namespace fp8_quant_detail

/// Per-token dynamic quantization: one block (kThreads threads) per row; scales [tokens] (the [tokens, 1] tensor).
/// scale_ub, when not null, caps each row's absolute max (a device fp32 value).
/// At least 1024 threads per SM (the register cap that keeps a row's vectors out of local memory).
template <typename T, int kThreads, int kVecs>
__global__ void __launch_bounds__(kThreads, 1024 / kThreads)
    per_token_quant_fp8_kernel(const T* __restrict__ x, fp8_e4m3_t* __restrict__ q, float* __restrict__ scales,
                               const float* __restrict__ scale_ub, int64_t x_stride, uint32_t hidden) {
  using namespace fp8_quant_detail;
  constexpr int kVec = 16 / sizeof(T);
  const uint64_t row = blockIdx.x;
  const T* x_row = x + row * x_stride;
  fp8_e4m3_t* q_row = q + row * hidden;
  if (vector_ok<kVec>(x, q, x_stride, hidden)) {
    quantize_row<kVec, kVecs>(x_row, q_row, scales + row, scale_ub, hidden);
  } else {
    quantize_row<1, kVecs>(x_row, q_row, scales + row, scale_ub, hidden);
  }
}

/// Per-group dynamic quantization over the row-major list of `groups` (row, group) pairs. Block b works on pairs
/// [b * groups_per_block, (b + 1) * groups_per_block); groups_per_block = kBatch * blockDim.x / kLanes of the vector
/// path (the host computes it the same way).
template <typename T, int kGroupSize>
__global__ void __launch_bounds__(256) per_token_group_quant_fp8_kernel(
    const T* __restrict__ x, fp8_e4m3_t* __restrict__ q, float* __restrict__ scales, int64_t x_stride, uint32_t hidden,
    uint32_t groups, uint32_t groups_per_block, int64_t scale_row_stride, int64_t scale_group_stride) {
  using namespace fp8_quant_detail;
  constexpr int kVec = 16 / sizeof(T);
  const uint32_t first = blockIdx.x * groups_per_block;
  const uint32_t last = min(groups, first + groups_per_block);
  if (vector_ok<kVec>(x, q, x_stride, hidden)) {
    constexpr int kChunks = kGroupSize / kVec;
    constexpr int kBatch = kChunks >= 128 ? 1 : (kChunks >= 64 ? 2 : 4);  // 4 vectors per thread per step
    quantize_groups<kVec, kGroupSize, kBatch>(x, q, scales, x_stride, hidden, first, last, scale_row_stride,
                                              scale_group_stride);
  } else {
    quantize_groups<1, kGroupSize, 1>(x, q, scales, x_stride, hidden, first, last, scale_row_stride,
                                      scale_group_stride);
  }
}

/// Per-tensor, first kernel: partial[b] = the absolute max (as float) of the b-th chunk of `chunk` elements.
/// With a static scale (scale_in not null) there is nothing to reduce and it returns at once.
template <typename T>
__global__ void __launch_bounds__(256) per_tensor_amax_kernel(const T* __restrict__ x, float* __restrict__ partial,
                                                              const float* __restrict__ scale_in, int64_t x_stride,
                                                              uint64_t hidden, uint64_t total, uint64_t chunk) {
  using namespace fp8_quant_detail;
  if (scale_in != nullptr) return;
  constexpr int kVec = 16 / sizeof(T);
  const uint64_t begin = blockIdx.x * chunk;
  const uint64_t end = begin + chunk < total ? begin + chunk : total;
  const uint32_t bits = vector_ok<kVec>(x, x_stride, hidden) ? chunk_amax<kVec>(x, x_stride, hidden, begin, end)
                                                                 : chunk_amax<1>(x, x_stride, hidden, begin, end);
  const uint32_t all = cujit::block_reduce(bits, cujit::Max());
  if (threadIdx.x == 0) partial[blockIdx.x] = __uint_as_float(all);
}

/// Per-tensor, second kernel: the scale is `*scale_in` when given (static), else from the `blocks` partial maxima;
/// block i quantizes chunk blocks - 1 - i; the block of chunk 0 writes the scale to `*scale_out`.
template <typename T>
__global__ void __launch_bounds__(256) per_tensor_quant_fp8_kernel(
    const T* __restrict__ x, fp8_e4m3_t* __restrict__ q, const float* __restrict__ partial,
    const float* __restrict__ scale_in, float* __restrict__ scale_out, int64_t x_stride, uint64_t hidden,
    uint64_t total, uint64_t chunk, uint32_t blocks) {
  using namespace fp8_quant_detail;
  constexpr int kVec = 16 / sizeof(T);
  float scale;
  if (scale_in != nullptr) {
    scale = *scale_in;
  } else {
    uint32_t bits = 0;
    for (uint32_t i = threadIdx.x; i < blocks; i += blockDim.x) {
      bits = cujit::max_bits(bits, __float_as_uint(partial[i]));
    }
    scale = scale_of(__uint_as_float(cujit::block_reduce(bits, cujit::Max())));
  }
  const uint64_t index = gridDim.x - 1 - blockIdx.x;
  if (index == 0 && threadIdx.x == 0) *scale_out = scale;
  const uint64_t begin = index * chunk;
  const uint64_t end = begin + chunk < total ? begin + chunk : total;
  if (begin >= end) return;
  if (vector_ok<kVec>(x, q, x_stride, hidden)) {
    quantize_chunk<kVec>(x, q, x_stride, hidden, begin, end, scale);
  } else {
    quantize_chunk<1>(x, q, x_stride, hidden, begin, end, scale);
  }
}

#endif  // CUJIT_KERNELS_FP8_QUANT_CUH_
