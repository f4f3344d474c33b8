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
/// x is [tokens, hidden] with rows at any stride (the values of a row contiguous); q is contiguous. Each thread
/// issues all of its loads before any arithmetic. Two paths:
/// - The vector path, where x's pointer and row stride and hidden allow 16-byte vectors (and q vectors of the same
///   values): every chunk of kLanes values is one 16-byte load and one store of kLanes bytes.
/// - The row path (kRows, chosen by the host per call: cujit/fp8_quant.py's ROW_PATH, GROUP_ROW_PATH and
///   TENSOR_ROW_PATH) for every other layout: odd hidden sizes of a strided x, views that start mid-vector (x[:, 1:]),
///   a q that starts mid-vector. Each row is split at x's own 16-byte boundaries (cujit::RowSplit): 16-byte loads
///   between the row's first and last boundary, single values before the first (the head) and after the last whole
///   vector (the tail). q's bytes of a vector then start at the same offset from an aligned address throughout a row:
///   one aligned store of kLanes bytes when that offset is 0 (x and q contiguous and equally aligned, odd hidden sizes
///   included), otherwise aligned words assembled across neighbouring lanes with a shuffle (store_realigned), so that a
///   warp's stores stay whole words but for the bytes at the ends of its run. The arithmetic is the same on both paths,
///   so they give the same bytes.
///
/// - per token: one block of kThreads threads per row; each thread keeps kVecs vectors of the row in registers
///   between the max and the quantization (rows longer than kThreads * kVecs vectors re-read the rest). Few tokens
///   take one vector per thread (short serial work per thread), many tokens four. On the row path the head and the
///   tail (fewer than kLanes values each) are one value per thread, kept as well; the plan is the vector path's.
/// - per group: the groups of all rows in row-major order, kGroupsPerBlock consecutive ones per block; a group is
///   kLanes threads of one warp (16 lanes of one 16-byte vector each for 128 bf16 values) and its max a shuffle
///   over those lanes; each thread holds kVecs groups. A group's row comes from a multiply-high by a magic number
///   the host computes (no integer division). The scale of (row, group) goes to
///   scales[row * scale_row_stride + group * scale_group_stride] (row- or column-major). A group is whole vectors
///   (hidden is a multiple of the group size, 16 or more), but it starts mid-vector when x's pointer or row stride
///   does: on the row path each lane still takes a run of 16 bytes of x at q's word boundaries, read as a
///   funnel-shifted pair of aligned vectors (quantize_groups_split).
/// - per tensor: the values in flat order, kThreads * kVecs vectors per block. A static scale is one kernel. A
///   dynamic scale needs the max of the whole tensor first: a first kernel of at most kMaxPartials blocks, each a
///   strided set of tiles so that the tensor is read front to back over time, writing one max per block, then the
///   quantization kernel, which reduces those maxima in every block (after issuing its loads) and walks the blocks
///   in reverse order, so that the first values it reads are the last ones the first kernel read, still in L2. On
///   the row path the unit is a chunk of SplitRows (a row's body vector, or its head, or its tail; a contiguous x
///   is one row) instead of a flat vector, in the same orders, and the quantization kernel strides over its blocks
///   so that any grid covers them.
#ifndef CUJIT_KERNELS_FP8_QUANT_CUH_
#define CUJIT_KERNELS_FP8_QUANT_CUH_

#include <cujit/base.cuh>
#include <cujit/fp8.cuh>
#include <cujit/reduce.cuh>
#include <cujit/rows.cuh>
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

/// The scale of one row from this thread's abs_bits maximum: reduced over the row's kThreads threads (a warp or
/// the block), clamped to `ub` where there is an upper bound, written by thread 0 and returned to every thread.
template <int kThreads>
CUJIT_DEVICE float row_scale(uint32_t bits, bool has_ub, float ub, float* scale_out) {
  if constexpr (kThreads == cujit::kWarpSize) {
    bits = cujit::warp_reduce(bits, cujit::Max());
  } else {
    bits = cujit::block_reduce(bits, cujit::Max());
  }
  float amax = __uint_as_float(bits);
  if (has_ub) amax = amax > ub ? ub : amax;  // NaN stays, as torch's clamp(max=ub)
  const float scale = scale_of(amax);
  if (threadIdx.x == 0) *scale_out = scale;
  return scale;
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

// ------------------------------------------------------------------------------------------------ rows at any alignment
// The row paths: x's rows split at x's own 16-byte boundaries (cujit::RowSplit), 16-byte loads in between, single
// values before the first boundary (the head) and after the last whole vector (the tail). The kLanes e4m3 bytes of
// a body vector then land in q at an offset that is the same for every vector of a row, but not always a multiple
// of kLanes (x a view that starts mid-vector, q a fresh tensor): store_realigned writes them as aligned words.

/// The e4m3 bytes of kLanes values (4 or 8) as one little-endian integer: value k in byte k.
template <int kLanes>
struct QBits;
template <>
struct QBits<4> {
  using type = uint32_t;
};
template <>
struct QBits<8> {
  using type = uint64_t;
};

/// The e4m3 bytes of saturate(float(v[i]) / scale), as quantize computes them (reciprocal form where kRecip and
/// the scale allow it), value i in byte i.
template <bool kRecip, typename T, int N>
CUJIT_DEVICE typename QBits<N>::type quantized_bits(const T (&v)[N], float scale) {
  float y[N];
  if (kRecip && cujit::reciprocal_division_exact(scale)) {
    const Divide<true> divide{scale, __frcp_rn(scale)};
#pragma unroll
    for (int i = 0; i < N; ++i) y[i] = divide(cujit::to_float(v[i]));
  } else {
    const Divide<false> divide{scale, 0.0f};
#pragma unroll
    for (int i = 0; i < N; ++i) y[i] = divide(cujit::to_float(v[i]));
  }
  uint32_t words[N / 4];
  cujit::fp8_e4m3_saturate<N>(y, words);
  typename QBits<N>::type bits = 0;
#pragma unroll
  for (int w = 0; w < N / 4; ++w) bits |= static_cast<typename QBits<N>::type>(words[w]) << (32 * w);
  return bits;
}

/// Stores the low `len` (< 8) bytes of `bits` at p, each access as wide as p's alignment and len allow.
CUJIT_DEVICE void store_narrow(uint8_t* p, uint64_t bits, uint32_t len) {
#pragma unroll 1
  while (len > 0) {
    const uintptr_t at = reinterpret_cast<uintptr_t>(p);
    if (len >= 4 && at % 4 == 0) {
      *reinterpret_cast<uint32_t*>(p) = static_cast<uint32_t>(bits);
      p += 4, bits >>= 32, len -= 4;
    } else if (len >= 2 && at % 2 == 0) {
      *reinterpret_cast<uint16_t*>(p) = static_cast<uint16_t>(bits);
      p += 2, bits >>= 16, len -= 2;
    } else {
      *p = static_cast<uint8_t>(bits);
      p += 1, bits >>= 8, len -= 1;
    }
  }
}

/// Stores this lane's sizeof(Bits) bytes `bits` at p (any address; null: nothing to store) with aligned accesses.
/// Every lane of the warp calls it together (1-D blocks of whole warps). An aligned p is one store. Otherwise p
/// splits the bytes at an aligned boundary: the lane stores the aligned word that starts there, completed with
/// the first bytes of the next lane when those follow its own in memory (consecutive vectors of a row), so that
/// a run of adjacent lanes writes whole aligned words and only the bytes before the run's first boundary and
/// after its last one go out in narrower aligned stores.
template <typename Bits>
CUJIT_DEVICE void store_realigned(uint8_t* p, Bits bits) {
  constexpr uint32_t kBytes = sizeof(Bits);
  const uint32_t lane = threadIdx.x % cujit::kWarpSize;
  const auto at = static_cast<unsigned long long>(reinterpret_cast<uintptr_t>(p));
  const unsigned long long next_at = __shfl_down_sync(0xffffffffu, at, 1);
  const unsigned long long prev_at = __shfl_up_sync(0xffffffffu, at, 1);
  const Bits next_bits = __shfl_down_sync(0xffffffffu, bits, 1);
  if (p == nullptr) return;
  const uint32_t shift = static_cast<uint32_t>(at % kBytes);
  if (shift == 0) {
    *reinterpret_cast<Bits*>(p) = bits;
    return;
  }
  const uint32_t low = kBytes - shift;  // bytes before the boundary
  if (lane == 0 || prev_at + kBytes != at) store_narrow(p, bits, low);  // else the previous lane's word has them
  if (lane + 1 < cujit::kWarpSize && next_at == at + kBytes) {
    *reinterpret_cast<Bits*>(p + low) = static_cast<Bits>((bits >> (8 * low)) | (next_bits << (8 * shift)));
  } else {
    store_narrow(p + low, bits >> (8 * low), shift);
  }
}

/// Quantizes the N values v (a 16-byte vector of x) to dst, or to nothing when dst is null: one aligned store when
/// `aligned` (dst's alignment to N bytes, the same for every vector of a row), else store_realigned, which needs
/// every lane of the warp to call it together (with a null dst where a lane has no vector).
template <bool kRecip, typename T, int N>
CUJIT_DEVICE void quantize_vector(uint8_t* dst, bool aligned, const T (&v)[N], float scale) {
  if (aligned) {
    if (dst != nullptr) quantize<kRecip>(dst, true, v, scale);
  } else {
    using Bits = typename QBits<N>::type;
    store_realigned(dst, dst != nullptr ? quantized_bits<kRecip>(v, scale) : Bits{0});
  }
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
  const float scale = row_scale<kThreads>(bits, scale_ub != nullptr, ub, scale_out);
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

/// Per token, one row at any alignment (the row path): the row split at x's 16-byte boundaries, kVecs body
/// vectors per thread kept in registers as quantize_row keeps its chunks, and the head and the tail (fewer than
/// kLanes values each) one value per thread, kept as well. q's bytes of a body vector go out as one aligned store
/// when q + head is aligned to kLanes (contiguous x and q, odd widths included), else through store_realigned.
template <int kThreads, int kVecs, bool kRecip, typename T>
CUJIT_DEVICE void quantize_row_split(const T* x_row, uint8_t* q_row, float* scale_out, const float* scale_ub,
                                     uint32_t hidden) {
  constexpr int kLanes = 16 / sizeof(T);
  static_assert(kThreads >= kLanes, "a thread per value of the head and of the tail");
  const cujit::RowSplit<T> split(x_row, hidden);
  const uint32_t vectors = static_cast<uint32_t>(split.vectors);
  const uint32_t head = static_cast<uint32_t>(split.head);
  const uint32_t tail_start = static_cast<uint32_t>(split.tail_start());
  constexpr uint32_t kHeld = kVecs * kThreads;  // vectors kept in registers
  const float ub = scale_ub != nullptr ? *scale_ub : 0.0f;  // issued now, used after the reduction
  const bool has_head = threadIdx.x < head;
  const bool has_tail = tail_start + threadIdx.x < hidden;
  const T edge[2] = {has_head ? x_row[threadIdx.x] : T(), has_tail ? x_row[tail_start + threadIdx.x] : T()};
  T v[kVecs][kLanes];
#pragma unroll
  for (int i = 0; i < kVecs; ++i) {
    const uint32_t c = threadIdx.x + i * kThreads;
    if (c < vectors) vec_io::load<T, kLanes>(x_row + split.vector_start(c), true, v[i]);
  }
  uint32_t bits = 0;
  if (has_head) bits = cujit::abs_bits(cujit::to_float(edge[0]));
  if (has_tail) bits = cujit::max_bits(bits, cujit::abs_bits(cujit::to_float(edge[1])));
#pragma unroll
  for (int i = 0; i < kVecs; ++i) {
    if (threadIdx.x + i * kThreads < vectors) bits = amax_bits<T, kLanes>(v[i], bits);
  }
#pragma unroll 1
  for (uint32_t c = kHeld + threadIdx.x; c < vectors; c += kThreads) {
    T w[kLanes];
    vec_io::load<T, kLanes>(x_row + split.vector_start(c), true, w);
    bits = amax_bits<T, kLanes>(w, bits);
  }
  const float scale = row_scale<kThreads>(bits, scale_ub != nullptr, ub, scale_out);
  if (has_head) quantize<kRecip>(q_row + threadIdx.x, false, {edge[0]}, scale);
  if (has_tail) quantize<kRecip>(q_row + tail_start + threadIdx.x, false, {edge[1]}, scale);
  // The same for every thread of the block: whole aligned stores, or store_realigned (which needs every lane).
  const bool q_aligned = cujit::is_aligned(q_row + head, kLanes);
#pragma unroll
  for (int i = 0; i < kVecs; ++i) {
    const uint32_t c = threadIdx.x + i * kThreads;
    quantize_vector<kRecip>(c < vectors ? q_row + split.vector_start(c) : nullptr, q_aligned, v[i], scale);
  }
  // The rest, read again; a warp steps together (store_realigned).
#pragma unroll 1
  for (uint32_t c0 = kHeld + threadIdx.x / cujit::kWarpSize * cujit::kWarpSize; c0 < vectors; c0 += kThreads) {
    const uint32_t c = c0 + threadIdx.x % cujit::kWarpSize;
    uint8_t* dst = c < vectors ? q_row + split.vector_start(c) : nullptr;
    T w[kLanes];
    if (dst != nullptr) vec_io::load<T, kLanes>(x_row + split.vector_start(c), true, w);
    quantize_vector<kRecip>(dst, q_aligned, w, scale);
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
      bits[b] = cujit::warp_reduce<kLanes>(bits[b], cujit::Max());
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

/// Groups [first, last) on the row path (x's pointer or row stride not aligned to vectors, or q not aligned to its
/// threads' stores), in the vector path's geometry: kLanes threads of a warp per group, lane l holding the group's
/// values [l * kVec, (l + 1) * kVec) (and kLanes * kVec further on, kPer runs in all), kSteps groups per thread with
/// all loads first. The runs line up with q's words (group g's bytes start at g * kGroup), not with x's vectors:
/// x is read at them through cujit::RowReader over the whole row, two aligned 16-byte loads and a funnel shift
/// where x is out of phase (element loads only at the row's first and last run, where a covering vector would
/// reach outside the row), and q is written with one store a lane (store_realigned: aligned words also where q is
/// not aligned). Every lane holds a whole run, so no lane stores byte by byte.
template <int kGroup, int kThreads, int kSteps, bool kRecip, typename T>
CUJIT_DEVICE void quantize_groups_split(const T* x, uint8_t* q, float* scales, int64_t x_stride, uint32_t group_row,
                                        uint32_t magic, uint32_t shift, uint32_t first, uint32_t last,
                                        int64_t scale_row_stride, int64_t scale_group_stride) {
  constexpr int kVec = 16 / sizeof(T);
  constexpr int kLanes = kGroup / kVec < 32 ? kGroup / kVec : 32;
  constexpr int kPer = kGroup / kVec / kLanes;  // runs per lane
  constexpr int kSlots = kThreads / kLanes;      // groups the block works on per step
  static_assert(kGroup % (kVec * kLanes) == 0 && 32 % kLanes == 0, "a group is whole runs of its lanes");
  using Bits = typename QBits<kVec>::type;
  const uint32_t lane = threadIdx.x % kLanes;
  const uint32_t slot = threadIdx.x / kLanes;
  // Runs at multiples of kVec from each row's start: the split of an aligned row (no head), which is where q's
  // words fall; x is read at those runs whatever its own alignment.
  const cujit::RowSplit<T> runs(static_cast<const T*>(nullptr), static_cast<uint64_t>(group_row) * kGroup);
#pragma unroll 1
  for (uint32_t g0 = first; g0 < last; g0 += kSteps * kSlots) {
    T v[kSteps][kPer][kVec];
    uint32_t rows[kSteps];
#pragma unroll
    for (int b = 0; b < kSteps; ++b) {
      const uint32_t g = g0 + b * kSlots + slot;
      rows[b] = 0;
      if (g < last) {
        rows[b] = row_of(g, group_row, magic, shift);
        const uint32_t col = g - rows[b] * group_row;
        const cujit::RowReader<T> reader(x + static_cast<int64_t>(rows[b]) * x_stride, runs);
#pragma unroll
        for (int k = 0; k < kPer; ++k) {
          const auto w = reader.vector(static_cast<uint64_t>(col) * kGroup + (lane + k * kLanes) * kVec);
#pragma unroll
          for (int e = 0; e < kVec; ++e) v[b][k][e] = w[e];
        }
      }
    }
    uint32_t bits[kSteps];
#pragma unroll
    for (int b = 0; b < kSteps; ++b) {
      bits[b] = 0;
      if (g0 + b * kSlots + slot < last) {
#pragma unroll
        for (int k = 0; k < kPer; ++k) bits[b] = amax_bits<T, kVec>(v[b][k], bits[b]);
      }
      bits[b] = cujit::warp_reduce<kLanes>(bits[b], cujit::Max());
    }
#pragma unroll
    for (int b = 0; b < kSteps; ++b) {
      const uint32_t g = g0 + b * kSlots + slot;
      const bool live = g < last;
      const float scale = scale_of(__uint_as_float(bits[b]));
      if (live && lane == 0) {
        scales[rows[b] * scale_row_stride + (g - rows[b] * group_row) * scale_group_stride] = scale;
      }
      uint8_t* group_q = q + static_cast<uint64_t>(g) * kGroup;  // q is contiguous: group g starts at g * kGroup
#pragma unroll
      for (int k = 0; k < kPer; ++k) {
        store_realigned(live ? group_q + (lane + k * kLanes) * kVec : nullptr,
                        live ? quantized_bits<kRecip>(v[b][k], scale) : Bits{0});
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

/// x [rows, hidden] at any alignment and row stride, as chunks of at most kLanes values for the row path: row r's
/// chunk j < vectors is its body vector j (a 16-byte load), chunk `vectors` its head and `vectors` + 1 its tail
/// (fewer than kLanes values each, loaded one by one); `slots` = hidden / kLanes + 2 chunks per row, the last one
/// empty when the head and the tail take the place of a vector. A contiguous x (or a single row) is one row of all
/// its values, split at its own 16-byte boundaries.
template <typename T>
struct SplitRows {
  static constexpr int kLanes = 16 / sizeof(T);
  const T* x;
  int64_t stride;
  uint64_t hidden;  // values per row
  uint64_t rows;
  uint64_t slots;   // chunks per row

  CUJIT_DEVICE SplitRows(const T* x, int64_t x_stride, uint64_t hidden, uint64_t total) : x(x), stride(x_stride) {
    const bool contiguous = static_cast<uint64_t>(x_stride) == hidden || total <= hidden;  // as flat_of
    this->hidden = contiguous ? total : hidden;
    rows = contiguous ? (total > 0 ? 1 : 0) : total / hidden;
    slots = this->hidden / kLanes + 2;
  }

  CUJIT_DEVICE uint64_t chunks() const { return rows * slots; }

  /// Loads chunk c into v (zeros after its `count` values, all zeros past the last chunk); `first` is the index
  /// of its first value in the contiguous q, `body` whether it is a whole 16-byte vector. Returns count.
  CUJIT_DEVICE uint32_t load(uint64_t c, T (&v)[kLanes], uint64_t& first, bool& body) const {
    uint64_t row, j;
    cujit::divmod(c, slots, row, j);
    uint32_t count = 0;
    first = 0;
    body = false;
    const T* xr = x + static_cast<int64_t>(row) * stride;
    if (row < rows) {
      const cujit::RowSplit<T> split(xr, hidden);
      if (j < split.vectors) {
        first = split.vector_start(j);
        count = kLanes;
        body = true;
      } else if (j == split.vectors) {
        count = static_cast<uint32_t>(split.head);
      } else if (j == split.vectors + 1) {
        first = split.tail_start();
        count = static_cast<uint32_t>(split.tail);
      }
    }
    if (body) {
      vec_io::load<T, kLanes>(xr + first, true, v);
    } else {
#pragma unroll
      for (int k = 0; k < kLanes; ++k) v[k] = k < count ? xr[first + k] : cujit::from_float<T>(0.0f);
    }
    first += row * hidden;
    return count;
  }
};

/// The absolute max (bits) of this thread's chunks of the tiles first, first + step, ... of a SplitRows (tiles
/// of 4 * kThreads chunks; in tile t, chunks t * 4 * kThreads + i * kThreads + threadIdx.x for i < 4).
template <int kThreads, typename T>
CUJIT_DEVICE uint32_t tiles_amax(const SplitRows<T>& src, uint64_t first, uint64_t step) {
  constexpr int kLanes = SplitRows<T>::kLanes;
  constexpr int kBatch = 4;
  constexpr uint64_t kTile = static_cast<uint64_t>(kBatch) * kThreads;
  const uint64_t chunks = src.chunks();
  uint32_t bits = 0;
#pragma unroll 1
  for (uint64_t base = first * kTile; base < chunks; base += step * kTile) {
    T v[kBatch][kLanes];
#pragma unroll
    for (int b = 0; b < kBatch; ++b) {
      uint64_t at;
      bool body;
      src.load(base + b * kThreads + threadIdx.x, v[b], at, body);
    }
#pragma unroll
    for (int b = 0; b < kBatch; ++b) bits = amax_bits<T, kLanes>(v[b], bits);
  }
  return bits;
}

/// The scale of the per-tensor quantization: `*scale_in` when given, else from the `partials` maxima of the
/// first kernel (every thread of the block calls it).
template <int kThreads>
CUJIT_DEVICE float tensor_scale(const float* partial, const float* scale_in, uint32_t partials) {
  if (scale_in != nullptr) return *scale_in;
  uint32_t bits = 0;
  for (uint32_t i = threadIdx.x; i < partials; i += kThreads) bits = cujit::max_bits(bits, __float_as_uint(partial[i]));
  return scale_of(__uint_as_float(cujit::block_reduce(bits, cujit::Max())));
}

/// Per tensor, the row path of the quantization kernel: blocks of kThreads * kVecs chunks of a SplitRows, in
/// reverse order of the blocks (as the vector path) and strided over the grid, so that any grid covers them.
template <int kThreads, int kVecs, bool kRecip, typename T>
CUJIT_DEVICE void quantize_split_rows(const SplitRows<T>& src, uint8_t* q, const float* partial,
                                      const float* scale_in, float* scale_out, uint32_t partials) {
  constexpr int kLanes = SplitRows<T>::kLanes;
  constexpr uint64_t kPerBlock = static_cast<uint64_t>(kThreads) * kVecs;
  const uint64_t blocks = (src.chunks() + kPerBlock - 1) / kPerBlock;
  float scale = 0.0f;
  bool have_scale = false;
  // Every block runs once at least: the one of index 0 writes the scale, also for an empty tensor.
#pragma unroll 1
  for (uint64_t index = gridDim.x - 1 - blockIdx.x; index < blocks || !have_scale; index += gridDim.x) {
    T v[kVecs][kLanes];
    uint64_t first[kVecs];
    uint32_t count[kVecs];
    bool body[kVecs];
#pragma unroll
    for (int i = 0; i < kVecs; ++i) count[i] = src.load(index * kPerBlock + i * kThreads + threadIdx.x, v[i], first[i], body[i]);
    if (!have_scale) {
      scale = tensor_scale<kThreads>(partial, scale_in, partials);
      have_scale = true;
      if (index == 0 && threadIdx.x == 0) *scale_out = scale;
    }
#pragma unroll
    for (int i = 0; i < kVecs; ++i) {
      store_realigned(body[i] ? q + first[i] : nullptr, quantized_bits<kRecip>(v[i], scale));
      if (!body[i]) {
#pragma unroll
        for (int k = 0; k < kLanes; ++k) {
          if (k < count[i]) quantize<kRecip>(q + first[i] + k, false, {v[i][k]}, scale);
        }
      }
    }
  }
}

}  // namespace fp8_quant_detail

/// Per-token dynamic quantization: one block (kThreads threads, a multiple of 32) per row; scales [tokens] (the
/// [tokens, 1] tensor). scale_ub, when not null, caps each row's absolute max (a device fp32 value). kRows, chosen
/// by the host: the row path (any alignment, stride and hidden), else the vector path, which does not test again
/// that x's pointer and row stride, hidden and q allow 16-byte vectors (cujit/fp8_quant.py: ROW_PATH).
template <typename T, int kThreads, int kVecs, bool kRecip, bool kRows = false>
__global__ void __launch_bounds__(kThreads, (1024 / kThreads > 0 ? 1024 / kThreads : 1))
    per_token_quant_fp8_kernel(const T* __restrict__ x, fp8_e4m3_t* __restrict__ q, float* __restrict__ scales,
                               const float* __restrict__ scale_ub, int64_t x_stride, uint32_t hidden) {
  using namespace fp8_quant_detail;
  static_assert(kThreads % 32 == 0 && kThreads <= 1024, "a block is whole warps");
  constexpr int kVec = 16 / sizeof(T);
  const uint64_t row = blockIdx.x;
  const T* x_row = x + row * x_stride;
  uint8_t* q_row = reinterpret_cast<uint8_t*>(q) + row * hidden;
  if constexpr (kRows) {
    quantize_row_split<kThreads, kVecs, kRecip>(x_row, q_row, scales + row, scale_ub, hidden);
  } else {
    quantize_row<kVec, kThreads, kVecs, kRecip>(x_row, q_row, scales + row, scale_ub, hidden);
  }
}

/// Per-group dynamic quantization over the row-major list of `groups` (row, group) pairs, group_row per row.
/// Block b works on groups [b * kGroupsPerBlock, (b + 1) * kGroupsPerBlock) (GroupGeometry; the host computes
/// the same number). magic and shift: group_row's multiply-high divisor (cujit.fp8_quant.divider). kRows, chosen by
/// the host: the row path (quantize_groups_split), else the vector path, which does not test again that x's
/// pointer and row stride allow 16-byte vectors and q its threads' stores (kWidth bytes each, in accesses of up to
/// 16: cujit/fp8_quant.py, GROUP_ROW_PATH).
template <typename T, int kGroup, int kThreads, int kVecs, bool kRecip, bool kRows = false>
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
  if constexpr (kRows) {
    quantize_groups_split<kGroup, kThreads, kVecs, kRecip>(x, q8, scales, x_stride, group_row, magic, shift, first,
                                                           last, scale_row_stride, scale_group_stride);
  } else {
    quantize_groups<kVec, kGroup, kThreads, kVecs, kRecip>(x, q8, scales, x_stride, group_row, magic, shift, first,
                                                           last, scale_row_stride, scale_group_stride);
  }
}

/// Per-tensor dynamic scale, first kernel: partial[blockIdx.x] = the absolute max (as float) of the tiles
/// blockIdx.x, blockIdx.x + gridDim.x, ... (tiles of 4 * kThreads vectors, or of 4 * kThreads chunks of a SplitRows
/// on the row path, kRows), gridDim.x <= kMaxPartials. Any grid covers the tensor.
template <typename T, int kThreads, bool kRows = false>
__global__ void __launch_bounds__(kThreads) per_tensor_amax_kernel(const T* __restrict__ x, float* __restrict__ partial,
                                                                   int64_t x_stride, uint64_t hidden,
                                                                   uint64_t total) {
  using namespace fp8_quant_detail;
  constexpr int kVec = 16 / sizeof(T);
  uint32_t bits;
  if constexpr (kRows) {
    bits = tiles_amax<kThreads>(SplitRows<T>(x, x_stride, hidden, total), blockIdx.x, gridDim.x);
  } else {
    bits = tiles_amax<kThreads>(flat_of<kVec>(x, x_stride, hidden, total), blockIdx.x, gridDim.x);
  }
  const uint32_t all = cujit::block_reduce(bits, cujit::Max());
  if (threadIdx.x == 0) partial[blockIdx.x] = __uint_as_float(all);
}

/// Per-tensor quantization: the scale is `*scale_in` when given (static), else from the `partials` maxima of the
/// first kernel, or with `partials` 0 (one block that holds the whole tensor; vector path only) from the block's
/// own values. Block i quantizes the flat chunks of block gridDim.x - 1 - i (kThreads * kVecs vectors); the block
/// of the first chunks writes the scale to `*scale_out`. kRows (the row path, chosen by the host where x's pointer,
/// or its row stride and hidden, do not allow 16-byte vectors): chunks of a SplitRows instead, the blocks strided
/// over the grid, so that any grid covers them.
template <typename T, int kThreads, int kVecs, bool kRecip, bool kRows = false>
__global__ void __launch_bounds__(kThreads) per_tensor_quant_fp8_kernel(
    const T* __restrict__ x, fp8_e4m3_t* __restrict__ q, const float* __restrict__ partial,
    const float* __restrict__ scale_in, float* __restrict__ scale_out, int64_t x_stride, uint64_t hidden,
    uint64_t total, uint32_t partials) {
  using namespace fp8_quant_detail;
  constexpr int kVec = 16 / sizeof(T);
  uint8_t* q8 = reinterpret_cast<uint8_t*>(q);
  if constexpr (kRows) {
    quantize_split_rows<kThreads, kVecs, kRecip>(SplitRows<T>(x, x_stride, hidden, total), q8, partial, scale_in,
                                                 scale_out, partials);
  } else {
    const Flat<T> flat = flat_of<kVec>(x, x_stride, hidden, total);
    const uint64_t index = gridDim.x - 1 - blockIdx.x;
    const uint64_t base = index * (static_cast<uint64_t>(kThreads) * kVecs * kVec);
    float scale = scale_in != nullptr ? *scale_in : 0.0f;
    T v[kVecs][kVec];
#pragma unroll
    for (int i = 0; i < kVecs; ++i) flat.template load<kVec>(base + (i * kThreads + threadIdx.x) * kVec, v[i]);
    if (scale_in == nullptr) {
      uint32_t bits = 0;
      if (partials == 0) {
        // One block holds the whole tensor: the maximum of its own values (zeros past the end add nothing).
#pragma unroll
        for (int i = 0; i < kVecs; ++i) bits = amax_bits<T, kVec>(v[i], bits);
      }
      for (uint32_t i = threadIdx.x; i < partials; i += kThreads) {
        bits = cujit::max_bits(bits, __float_as_uint(partial[i]));
      }
      scale = scale_of(__uint_as_float(cujit::block_reduce(bits, cujit::Max())));
    }
    if (index == 0 && threadIdx.x == 0) *scale_out = scale;
    const bool q_vector = cujit::is_aligned(q8, kVec);
#pragma unroll
    for (int i = 0; i < kVecs; ++i) {
      flat.template store<kRecip, kVec>(q8, base + (i * kThreads + threadIdx.x) * kVec, v[i], scale, q_vector);
    }
  }
}

#endif  // CUJIT_KERNELS_FP8_QUANT_CUH_
