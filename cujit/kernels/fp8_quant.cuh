/// @file fp8_quant.cuh
/// @brief Dynamic and static FP8 (e4m3) quantization: per token, per tensor, per group of a token's values.
///
/// Rule shared by every kernel here, bit for bit the torch expression
///     amax  = x.abs().amax(...).float()                 (NaN propagates, as torch's amax)
///     scale = (amax / 448).clamp(min=kMinScale)         (dynamic scales; NaN stays NaN)
///     q     = (x.float() / scale).clamp(-448, 448).to(torch.float8_e4m3fn)
/// with an IEEE division and round to nearest even. kMinScale = 1 / (448 * 512), vLLM's floor for dynamic scales:
/// an all-zero row gets that scale and zeros, never 0 / 0. What inf and NaN inputs give follows from the rule: a
/// row (group, tensor) holding inf gets scale inf, its finite values quantize to 0 and its infs to NaN (inf / inf);
/// one holding NaN gets scale NaN and NaN everywhere.
///
/// The division: with kRecip (every op uses it), a scale in the range where cujit::divide_by_reciprocal equals
/// the IEEE quotient divides by one multiplication and two FMAs from the scale's reciprocal (computed once);
/// other scales (zero, inf, NaN, extreme static scales) take the IEEE division. Without kRecip every value takes
/// the IEEE division (the reference form, kept for comparisons).
///
/// x is [tokens, hidden] with rows at any stride (the values of a row contiguous); q is contiguous. Loads are
/// 16-byte vectors when x's pointer and row stride allow it, else element-wise over the same work split. Each
/// thread issues all of its loads before any arithmetic.
///
/// - per token: one block of kThreads threads per row; each thread keeps kVecs vectors of the row in registers
///   between the max and the quantization (rows longer than kThreads * kVecs vectors re-read the rest). Few tokens
///   take one vector per thread (short serial work per thread), many tokens four.
/// - per group: the groups of all rows in row-major order, kGroupsPerBlock consecutive ones per block; a group is
///   kLanes threads of one warp (16 lanes of one 16-byte vector each for 128 bf16 values) and its max a shuffle
///   over those lanes; each thread holds kVecs groups. A group's row comes from a multiply-high by a magic number
///   the host computes (no integer division). The scale of (row, group) goes to
///   scales[row * scale_row_stride + group * scale_group_stride] (row- or column-major).
/// - per tensor: the values in flat order, kThreads * kVecs vectors per block. A static scale is one kernel. A
///   dynamic scale needs the max of the whole tensor first: a first kernel of at most kMaxPartials blocks, each a
///   strided set of tiles so that the tensor is read front to back over time, writing one max per block, then the
///   quantization kernel, which reduces those maxima in every block (after issuing its loads) and walks the blocks
///   in reverse order, so that the first values it reads are the last ones the first kernel read, still in L2.
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

/// Blocks of the per-tensor max kernel at most (MAX_PARTIALS in cujit/fp8_quant.py).
constexpr int kMaxPartials = 256;

/// A dynamic scale from an absolute max: max(amax / 448, kMinScale), NaN kept.
CUJIT_DEVICE float scale_of(float amax) {
  const float scale = __fdiv_rn(amax, cujit::kFp8E4m3Max);
  return scale < kMinScale ? kMinScale : scale;  // a NaN compares false and stays
}

/// The larger abs_bits of `N` values.
template <typename T, int N>
CUJIT_DEVICE uint32_t amax_bits(const T (&v)[N], uint32_t acc) {
#pragma unroll
  for (int i = 0; i < N; ++i) acc = cujit::max_bits(acc, cujit::abs_bits(cujit::to_float(v[i])));
  return acc;
}

/// Division of many values by one scale: x / scale, bit for bit the IEEE quotient.
template <bool kRecip>
struct Divide {
  float scale;
  float recip;
  CUJIT_DEVICE float operator()(float x) const {
    if constexpr (kRecip) {
      return cujit::divide_by_reciprocal(x, scale, recip);
    } else {
      return __fdiv_rn(x, scale);
    }
  }
};

/// The e4m3 bytes of saturate(float(v[i]) / scale), stored at `q` (a vector store when `vector`).
template <typename T, int N, bool kRecip>
CUJIT_DEVICE void store_quantized(uint8_t* q, bool vector, const T (&v)[N], Divide<kRecip> divide) {
  float y[N];
#pragma unroll
  for (int i = 0; i < N; ++i) y[i] = divide(cujit::to_float(v[i]));
  if constexpr (N % 4 == 0) {
    if (vector) {  // whole words: no byte extraction between the conversions and the store
      uint32_t words[N / 4];
      cujit::fp8_e4m3_saturate<N>(y, words);
      vec_io::store<uint32_t, N / 4>(reinterpret_cast<uint32_t*>(q), true, words);
      return;
    }
  }
  uint8_t bytes[N];
  if constexpr (N % 2 == 0) {
    cujit::fp8_e4m3_saturate<N>(y, bytes);
  } else {
#pragma unroll
    for (int i = 0; i < N; ++i) bytes[i] = cujit::fp8_e4m3_saturate(y[i]);
  }
  vec_io::store<uint8_t, N>(q, vector, bytes);
}

/// store_quantized with the reciprocal form where kRecip and the scale allow it, the IEEE division otherwise.
template <bool kRecip, typename T, int N>
CUJIT_DEVICE void quantize(uint8_t* q, bool vector, const T (&v)[N], float scale) {
  if (kRecip && cujit::reciprocal_division_exact(scale)) {
    store_quantized<T, N, true>(q, vector, v, Divide<true>{scale, __frcp_rn(scale)});
  } else {
    store_quantized<T, N, false>(q, vector, v, Divide<false>{scale, 0.0f});
  }
}

/// Element offset of the flat index `e` of a [rows, hidden] tensor whose rows are `stride` apart.
CUJIT_DEVICE uint64_t strided_offset(uint64_t e, uint64_t hidden, int64_t stride) {
  if (static_cast<uint64_t>(stride) == hidden) return e;
  const uint64_t row = e / hidden;
  return row * static_cast<uint64_t>(stride) + (e - row * hidden);
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

// ------------------------------------------------------------------------------------------------ per token

/// Per token, one row: kVecs chunks of kVec values per thread kept in registers.
template <int kVec, int kThreads, int kVecs, bool kRecip, typename T>
CUJIT_DEVICE void quantize_row(const T* x_row, uint8_t* q_row, float* scale_out, const float* scale_ub,
                               uint32_t hidden) {
  constexpr bool kVector = kVec > 1;
  const uint32_t chunks = hidden / kVec;
  constexpr uint32_t kHeld = kVecs * kThreads;  // chunks kept in registers
  const float ub = scale_ub != nullptr ? *scale_ub : 0.0f;  // issued now, used after the reduction
  T v[kVecs][kVec];
#pragma unroll
  for (int i = 0; i < kVecs; ++i) {
    const uint32_t c = threadIdx.x + i * kThreads;
    if (c < chunks) vec_io::load<T, kVec>(x_row + c * kVec, kVector, v[i]);
  }
  uint32_t bits = 0;
#pragma unroll
  for (int i = 0; i < kVecs; ++i) {
    if (threadIdx.x + i * kThreads < chunks) bits = amax_bits<T, kVec>(v[i], bits);
  }
#pragma unroll 1
  for (uint32_t c = kHeld + threadIdx.x; c < chunks; c += kThreads) {
    T w[kVec];
    vec_io::load<T, kVec>(x_row + c * kVec, kVector, w);
    bits = amax_bits<T, kVec>(w, bits);
  }
  if constexpr (kThreads == cujit::kWarpSize) {
    bits = cujit::warp_reduce(bits, cujit::Max());
  } else {
    bits = cujit::block_reduce(bits, cujit::Max());
  }
  float amax = __uint_as_float(bits);
  if (scale_ub != nullptr) amax = amax > ub ? ub : amax;  // NaN stays, as torch's clamp(max=ub)
  const float scale = scale_of(amax);
  if (threadIdx.x == 0) *scale_out = scale;
#pragma unroll
  for (int i = 0; i < kVecs; ++i) {
    const uint32_t c = threadIdx.x + i * kThreads;
    if (c < chunks) quantize<kRecip>(q_row + c * kVec, kVector, v[i], scale);
  }
#pragma unroll 1
  for (uint32_t c = kHeld + threadIdx.x; c < chunks; c += kThreads) {
    T w[kVec];
    vec_io::load<T, kVec>(x_row + c * kVec, kVector, w);
    quantize<kRecip>(q_row + c * kVec, kVector, w, scale);
  }
}

// ------------------------------------------------------------------------------------------------ per group

/// How a block of kThreads threads splits groups of kGroup values of T on the vector path: kLanes threads of one
/// 16-byte vector (or more, for groups beyond 32 vectors) per group, kVecs groups per thread.
template <typename T, int kGroup, int kThreads, int kVecs>
struct GroupGeometry {
  static constexpr int kVec = 16 / sizeof(T);
  static constexpr int kLanes = kGroup / kVec < 32 ? kGroup / kVec : 32;
  /// Groups per block. The host computes the same number (cujit.fp8_quant.group_plan).
  static constexpr int kGroupsPerBlock = kVecs * kThreads / kLanes;
  static_assert(kThreads % 32 == 0 && kGroup % kVec == 0 && (kGroup & (kGroup - 1)) == 0, "geometry");
};

/// The row of group `g` < 2^31: g / group_row by a multiply-high (magic and shift from the host; a group_row of
/// 1 is g itself).
CUJIT_DEVICE uint32_t row_of(uint32_t g, uint32_t group_row, uint32_t magic, uint32_t shift) {
  return group_row == 1 ? g : __umulhi(g, magic) >> shift;
}

/// Groups [first, last) of the row-major list, kLanes threads of kWidth values per group, kSteps groups per
/// thread with all loads first. Every thread runs the same steps, so the shuffles always see their whole group.
template <int kVec, int kGroup, int kThreads, int kSteps, bool kRecip, typename T>
CUJIT_DEVICE void quantize_groups(const T* x, uint8_t* q, float* scales, int64_t x_stride, uint32_t group_row,
                                  uint32_t magic, uint32_t shift, uint32_t first, uint32_t last,
                                  int64_t scale_row_stride, int64_t scale_group_stride) {
  constexpr bool kVector = kVec > 1;
  constexpr int kLanes = kGroup / kVec < 32 ? kGroup / kVec : 32;
  constexpr int kWidth = kGroup / kLanes;    // values per thread of a group: kVec or more
  constexpr int kSlots = kThreads / kLanes;  // groups the block works on per step
  static_assert(kWidth % kVec == 0 && 32 % kLanes == 0, "a group is whole accesses of a power-of-two of lanes");
  const uint32_t lane = threadIdx.x % kLanes;
  const uint32_t slot = threadIdx.x / kLanes;
#pragma unroll 1
  for (uint32_t g0 = first; g0 < last; g0 += kSteps * kSlots) {
    T v[kSteps][kWidth];
    uint32_t rows[kSteps];
#pragma unroll
    for (int b = 0; b < kSteps; ++b) {
      const uint32_t g = g0 + b * kSlots + slot;
      rows[b] = 0;
      if (g < last) {
        rows[b] = row_of(g, group_row, magic, shift);
        const uint32_t col = g - rows[b] * group_row;
        const T* src = x + static_cast<int64_t>(rows[b]) * x_stride + static_cast<uint64_t>(col) * kGroup;
        vec_io::load<T, kWidth>(src + lane * kWidth, kVector, v[b]);
      }
    }
    uint32_t bits[kSteps];
#pragma unroll
    for (int b = 0; b < kSteps; ++b) {
      bits[b] = g0 + b * kSlots + slot < last ? amax_bits<T, kWidth>(v[b], 0u) : 0u;
#pragma unroll
      for (int offset = kLanes / 2; offset > 0; offset /= 2) {
        bits[b] = cujit::max_bits(bits[b], __shfl_xor_sync(0xffffffffu, bits[b], offset));
      }
    }
#pragma unroll
    for (int b = 0; b < kSteps; ++b) {
      const uint32_t g = g0 + b * kSlots + slot;
      if (g < last) {
        const float scale = scale_of(__uint_as_float(bits[b]));
        const uint32_t col = g - rows[b] * group_row;
        if (lane == 0) scales[rows[b] * scale_row_stride + col * scale_group_stride] = scale;
        // q is contiguous: group g starts at g * kGroup
        quantize<kRecip>(q + static_cast<uint64_t>(g) * kGroup + lane * kWidth, kVector, v[b], scale);
      }
    }
  }
}

// ------------------------------------------------------------------------------------------------ per tensor

/// Flat elements of x [rows, hidden] (rows `stride` apart), `total` of them, read as chunks of kVec values.
template <typename T>
struct Flat {
  const T* x;
  int64_t stride;
  uint64_t hidden;
  uint64_t total;
  bool contiguous;  // rows back to back (or one row): element e is at x + e
  bool vector;      // 16-byte vectors: x aligned, and rows of whole vectors unless contiguous

  /// The chunk of kVec values at flat index e (a multiple of kVec); values at or past `total` read as zero.
  template <int kVec>
  CUJIT_DEVICE void load(uint64_t e, T (&v)[kVec]) const {
    if (vector && e + kVec <= total) {
      vec_io::load<T, kVec>(x + (contiguous ? e : strided_offset(e, hidden, stride)), true, v);
    } else {
      // One division for the chunk, then the column steps on (a chunk may cross rows when hidden < kVec).
      uint64_t row = contiguous ? 0 : e / hidden;
      uint64_t col = contiguous ? e : e - row * hidden;
#pragma unroll
      for (int j = 0; j < kVec; ++j) {
        v[j] = e + j < total ? x[row * static_cast<uint64_t>(stride) + col] : cujit::from_float<T>(0.0f);
        if (++col == hidden && !contiguous) {
          ++row;
          col = 0;
        }
      }
    }
  }

  /// Quantize the chunk at flat index e into the contiguous q (a vector store when `q_vector`).
  template <bool kRecip, int kVec>
  CUJIT_DEVICE void store(uint8_t* q, uint64_t e, const T (&v)[kVec], float scale, bool q_vector) const {
    if (q_vector && e + kVec <= total) {
      quantize<kRecip>(q + e, true, v, scale);
    } else {
#pragma unroll
      for (int j = 0; j < kVec; ++j) {
        if (e + j < total) {
          const T one[1] = {v[j]};
          quantize<kRecip>(q + e + j, false, one, scale);
        }
      }
    }
  }
};

template <int kVec, typename T>
CUJIT_DEVICE Flat<T> flat_of(const T* x, int64_t x_stride, uint64_t hidden, uint64_t total) {
  const bool contiguous = static_cast<uint64_t>(x_stride) == hidden || total <= hidden;
  const bool vector = cujit::is_aligned(x, vec_io::access_bytes<T, kVec>()) &&
                      (contiguous || (x_stride % kVec == 0 && hidden % kVec == 0));
  return Flat<T>{x, x_stride, hidden, total, contiguous, vector};
}

/// The absolute max (bits) of this thread's chunks of the tiles first, first + step, ... (tiles of 4 * kThreads
/// chunks of kVec values; in tile t, chunks t * 4 * kThreads + i * kThreads + threadIdx.x for i < 4).
template <int kThreads, typename T>
CUJIT_DEVICE uint32_t tiles_amax(const Flat<T>& flat, uint64_t first, uint64_t step) {
  constexpr int kVec = 16 / sizeof(T);
  constexpr int kBatch = 4;
  constexpr uint64_t kTile = static_cast<uint64_t>(kBatch) * kThreads * kVec;
  uint32_t bits = 0;
#pragma unroll 1
  for (uint64_t base = first * kTile; base < flat.total; base += step * kTile) {
    T v[kBatch][kVec];
#pragma unroll
    for (int b = 0; b < kBatch; ++b) flat.template load<kVec>(base + (b * kThreads + threadIdx.x) * kVec, v[b]);
#pragma unroll
    for (int b = 0; b < kBatch; ++b) bits = amax_bits<T, kVec>(v[b], bits);
  }
  return bits;
}

}  // namespace fp8_quant_detail

/// Per-token dynamic quantization: one block (kThreads threads, a multiple of 32) per row; scales [tokens] (the
/// [tokens, 1] tensor). scale_ub, when not null, caps each row's absolute max (a device fp32 value).
template <typename T, int kThreads, int kVecs, bool kRecip>
__global__ void __launch_bounds__(kThreads, (1024 / kThreads > 0 ? 1024 / kThreads : 1))
    per_token_quant_fp8_kernel(const T* __restrict__ x, fp8_e4m3_t* __restrict__ q, float* __restrict__ scales,
                               const float* __restrict__ scale_ub, int64_t x_stride, uint32_t hidden) {
  using namespace fp8_quant_detail;
  static_assert(kThreads % 32 == 0 && kThreads <= 1024, "a block is whole warps");
  constexpr int kVec = 16 / sizeof(T);
  const uint64_t row = blockIdx.x;
  const T* x_row = x + row * x_stride;
  uint8_t* q_row = reinterpret_cast<uint8_t*>(q) + row * hidden;
  if (vector_ok<kVec>(x, q, x_stride, hidden)) {
    quantize_row<kVec, kThreads, kVecs, kRecip>(x_row, q_row, scales + row, scale_ub, hidden);
  } else {
    quantize_row<1, kThreads, kVecs, kRecip>(x_row, q_row, scales + row, scale_ub, hidden);
  }
}

/// Per-group dynamic quantization over the row-major list of `groups` (row, group) pairs, group_row per row.
/// Block b works on groups [b * kGroupsPerBlock, (b + 1) * kGroupsPerBlock) (GroupGeometry; the host computes
/// the same number). magic and shift: group_row's multiply-high divisor (cujit.fp8_quant.divider).
template <typename T, int kGroup, int kThreads, int kVecs, bool kRecip>
__global__ void __launch_bounds__(kThreads) per_token_group_quant_fp8_kernel(
    const T* __restrict__ x, fp8_e4m3_t* __restrict__ q, float* __restrict__ scales, int64_t x_stride, uint32_t hidden,
    uint32_t groups, uint32_t group_row, uint32_t magic, uint32_t shift, int64_t scale_row_stride,
    int64_t scale_group_stride) {
  using namespace fp8_quant_detail;
  using G = GroupGeometry<T, kGroup, kThreads, kVecs>;
  constexpr int kVec = G::kVec;
  const uint32_t first = blockIdx.x * G::kGroupsPerBlock;
  const uint32_t last = min(groups, first + G::kGroupsPerBlock);
  uint8_t* q8 = reinterpret_cast<uint8_t*>(q);
  if (vector_ok<kVec>(x, q, x_stride, hidden)) {
    quantize_groups<kVec, kGroup, kThreads, kVecs, kRecip>(x, q8, scales, x_stride, group_row, magic, shift, first,
                                                           last, scale_row_stride, scale_group_stride);
  } else {
    quantize_groups<1, kGroup, kThreads, 1, kRecip>(x, q8, scales, x_stride, group_row, magic, shift, first, last,
                                                    scale_row_stride, scale_group_stride);
  }
}

/// Per-tensor dynamic scale, first kernel: partial[blockIdx.x] = the absolute max (as float) of the tiles
/// blockIdx.x, blockIdx.x + gridDim.x, ... (tiles of 4 * kThreads vectors), gridDim.x <= kMaxPartials.
template <typename T, int kThreads>
__global__ void __launch_bounds__(kThreads) per_tensor_amax_kernel(const T* __restrict__ x, float* __restrict__ partial,
                                                                   int64_t x_stride, uint64_t hidden,
                                                                   uint64_t total) {
  using namespace fp8_quant_detail;
  constexpr int kVec = 16 / sizeof(T);
  const Flat<T> flat = flat_of<kVec>(x, x_stride, hidden, total);
  const uint32_t bits = tiles_amax<kThreads>(flat, blockIdx.x, gridDim.x);
  const uint32_t all = cujit::block_reduce(bits, cujit::Max());
  if (threadIdx.x == 0) partial[blockIdx.x] = __uint_as_float(all);
}

/// Per-tensor quantization: the scale is `*scale_in` when given (static), else from the `partials` maxima of the
/// first kernel. Block i quantizes the flat chunks of block gridDim.x - 1 - i (kThreads * kVecs vectors); the block
/// of the first chunks writes the scale to `*scale_out`.
template <typename T, int kThreads, int kVecs, bool kRecip>
__global__ void __launch_bounds__(kThreads) per_tensor_quant_fp8_kernel(
    const T* __restrict__ x, fp8_e4m3_t* __restrict__ q, const float* __restrict__ partial,
    const float* __restrict__ scale_in, float* __restrict__ scale_out, int64_t x_stride, uint64_t hidden,
    uint64_t total, uint32_t partials) {
  using namespace fp8_quant_detail;
  constexpr int kVec = 16 / sizeof(T);
  const Flat<T> flat = flat_of<kVec>(x, x_stride, hidden, total);
  const uint64_t index = gridDim.x - 1 - blockIdx.x;
  const uint64_t base = index * (static_cast<uint64_t>(kThreads) * kVecs * kVec);
  float scale = scale_in != nullptr ? *scale_in : 0.0f;
  T v[kVecs][kVec];
#pragma unroll
  for (int i = 0; i < kVecs; ++i) flat.template load<kVec>(base + (i * kThreads + threadIdx.x) * kVec, v[i]);
  if (scale_in == nullptr) {
    uint32_t bits = 0;
    for (uint32_t i = threadIdx.x; i < partials; i += kThreads) {
      bits = cujit::max_bits(bits, __float_as_uint(partial[i]));
    }
    scale = scale_of(__uint_as_float(cujit::block_reduce(bits, cujit::Max())));
  }
  if (index == 0 && threadIdx.x == 0) *scale_out = scale;
  uint8_t* q8 = reinterpret_cast<uint8_t*>(q);
  const bool q_vector = cujit::is_aligned(q8, kVec);
#pragma unroll
  for (int i = 0; i < kVecs; ++i) {
    flat.template store<kRecip, kVec>(q8, base + (i * kThreads + threadIdx.x) * kVec, v[i], scale, q_vector);
  }
}

#endif  // CUJIT_KERNELS_FP8_QUANT_CUH_
