/// @file rotary_kv_cache.cuh
/// @brief Rotary embedding fused with the KV-cache store: q rotated in place, k rotated into the k cache, v copied
/// into the v cache, in one kernel; the cache may be fp8 e4m3 with per-tensor scales.
///
/// The result is bit for bit that of rotary_embedding (rotary.cuh) on q and k followed by store_kv_cache
/// (kv_cache.cuh) of the rotated k and v: the same rotation helper, the rotated k rounded to its dtype before the
/// fp8 conversion, the same conversion. k itself is left as it was (attention reads the keys from the cache), so
/// the fused kernel moves q (read and written), k and v (read) and the two cache rows (written): for 64 q / 8 kv
/// heads that is one read of k and one launch less than the unfused pair, and no k write back.
///
/// The head size, rotary dim and style are template parameters, so every loop below has compile-time bounds and
/// the vector width is the widest (up to 16 bytes) that divides the head size and the rotated span.
///
/// Work split: block (kChunks, rows) per token (grid.x) and group of units (grid.y), where the units of a token are
/// q's heads, then k's, then v's. threadIdx.x owns one chunk (the same offset in every head) and loads its cos/sin
/// values once per token; threadIdx.y walks the units of the block's range round-robin across the q / k / v
/// boundaries, so rows stay equally busy. Positions and slots are checked as in the unfused kernels: a position
/// outside [0, max_position) is never used as an address (row 0 stands in) and a slot >= num_slots writes
/// nothing; either makes the block trap at its end. A negative slot skips the cache writes of the token (q is
/// still rotated).
#ifndef CUJIT_KERNELS_ROTARY_KV_CACHE_CUH_
#define CUJIT_KERNELS_ROTARY_KV_CACHE_CUH_

#include "kv_cache.cuh"
#include "rotary.cuh"

namespace rotary_kv_cache_detail {

/// The widest power of two up to `limit` that divides both `a` and `b`.
CUJIT_HOST_DEVICE constexpr int widest(int limit, int a, int b) {
  int v = limit;
  while (v > 1 && (a % v != 0 || b % v != 0)) v /= 2;
  return v;
}

/// The compile-time geometry of one instantiation.
template <typename T, bool kNeox, int kHeadSize, int kRotaryDim>
struct Geometry {
  static_assert(kRotaryDim % 2 == 0 && kRotaryDim <= kHeadSize, "rotary dim: even and at most the head size");
  static constexpr int kSpan = kNeox ? kRotaryDim / 2 : kRotaryDim;         // values a row of chunks covers
  static constexpr int kVec = widest(static_cast<int>(16 / sizeof(T)), kSpan, kHeadSize);
  static_assert(kNeox || kVec % 2 == 0, "gpt-j needs an even head size");
  static constexpr int kChunks = kSpan / kVec;                               // threads along x
};

/// Copy chunks [c_begin, c_end) of heads h_first, h_first + blockDim.y, ... < h_end from src_row to dst_row (as
/// store_as converts them), kPer chunks per thread per step with their loads issued first; when not `write`, it
/// stops after the first loads.
template <bool kVector, typename T, typename OutT, int kVec, int kPer>
CUJIT_DEVICE void copy_heads(const T* src_row, OutT* dst_row, uint32_t h_first, uint32_t h_end, uint32_t head_size,
                             uint32_t c_begin, uint32_t c_end, float scale, bool write) {
#pragma unroll 1
  for (uint32_t h = h_first; h < h_end; h += blockDim.y) {
    const T* const src = src_row + static_cast<uint64_t>(h) * head_size;
    OutT* const dst = dst_row + static_cast<uint64_t>(h) * head_size;
#pragma unroll 1
    for (uint32_t c0 = c_begin + threadIdx.x; c0 < c_end; c0 += kPer * blockDim.x) {
      T x[kPer][kVec];
#pragma unroll
      for (int m = 0; m < kPer; ++m) {
        const uint32_t c = c0 + m * blockDim.x;
        if (c < c_end) vec_io::load<T, kVec>(src + c * kVec, kVector, x[m]);
      }
      if (!write) return;
#pragma unroll
      for (int m = 0; m < kPer; ++m) {
        const uint32_t c = c0 + m * blockDim.x;
        if (c < c_end) vec_io::store_as<T, OutT, kVec>(dst + c * kVec, kVector, x[m], scale);
      }
    }
  }
}

/// One token's units [begin, end) with chunks of kVec values; the caches are written when `write_kv`.
template <bool kVector, typename T, typename C, typename CacheT, bool kNeox, int kHeadSize, int kRotaryDim, int kVec>
CUJIT_DEVICE void fused_token(T* q_row, const T* k_row, const T* v_row, CacheT* kc_row, CacheT* vc_row,
                              const C* angle_row, uint32_t q_heads, uint32_t kv_heads, uint32_t begin, uint32_t end,
                              bool vector_cs, float ks, float vs, bool write_kv) {
  using rotary_detail::Angles;
  using rotary_detail::Chunk;
  using rotary_detail::first_head;
  constexpr int kPairs = Chunk<T, kNeox, kVec>::kPairs;
  constexpr uint32_t kHalf = kRotaryDim / 2;
  constexpr uint32_t kChunks = kHalf / kPairs;
  constexpr uint32_t kHeadChunks = kHeadSize / kVec;
  constexpr uint32_t kRotaryChunks = kRotaryDim / kVec;
  // Chunks of a v head (and of a k head's unrotated rest) per thread per step: up to 4 loads in flight.
  constexpr int kPer = (kHeadChunks + kChunks - 1) / kChunks < 4 ? (kHeadChunks + kChunks - 1) / kChunks : 4;
  constexpr int kTailPer = (kHeadChunks - kRotaryChunks + kChunks - 1) / kChunks < 4
                               ? (kHeadChunks - kRotaryChunks + kChunks - 1) / kChunks
                               : 4;
  const uint32_t k_base = q_heads;
  const uint32_t v_base = q_heads + kv_heads;
  // This row's first unit in each part, as indices local to the part.
  const uint32_t q_first = first_head(begin);
  const uint32_t q_end = min(end, k_base);
  const uint32_t k_first = first_head(max(begin, k_base)) - k_base;
  const uint32_t k_end = max(min(end, v_base), k_base) - k_base;
  const uint32_t v_first = first_head(max(begin, v_base)) - v_base;
  const uint32_t v_end = max(end, v_base) - v_base;
#pragma unroll 1
  for (uint32_t chunk = threadIdx.x; chunk < kChunks; chunk += blockDim.x) {
    Angles<C, kPairs> angles(angle_row, kHalf, chunk * kPairs, vector_cs);
    const uint32_t first = chunk * kVec;
    const uint32_t second = first + kHalf;
    rotary_detail::rotate_heads<kVector, T, T, C, kNeox, kVec>(q_row, q_row, q_first, q_end, kHeadSize, first,
                                                               second, angles, 1.0f, true);
    rotary_detail::rotate_heads<kVector, T, CacheT, C, kNeox, kVec>(k_row, kc_row, k_first, k_end, kHeadSize, first,
                                                                    second, angles, ks, write_kv);
  }
  if constexpr (kRotaryChunks < kHeadChunks) {  // partial rotary: the rest of each k head goes as it is
    copy_heads<kVector, T, CacheT, kVec, kTailPer>(k_row, kc_row, k_first, k_end, kHeadSize, kRotaryChunks,
                                                   kHeadChunks, ks, write_kv);
  }
  copy_heads<kVector, T, CacheT, kVec, kPer>(v_row, vc_row, v_first, v_end, kHeadSize, 0, kHeadChunks, vs, write_kv);
}

}  // namespace rotary_kv_cache_detail

/// Rotate q in place, write rotated k and v to the caches at each token's slot. Block (kChunks, rows) with kChunks
/// = Geometry<...>::kChunks, at most 256 threads; grid.x: tokens; grid.y: groups of units_per_block units of the
/// list (q heads, k heads, v heads). Caches [num_slots, kv_heads * kHeadSize] contiguous; k_scale and v_scale are
/// device pointers, read only for an fp8 cache.
template <typename T, typename C, typename CacheT, typename P, typename S, bool kNeox, int kHeadSize, int kRotaryDim>
__global__ void __launch_bounds__(256) rotary_embedding_with_kv_cache_kernel(
    const P* __restrict__ positions, T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
    const C* __restrict__ cos_sin, CacheT* __restrict__ k_cache, CacheT* __restrict__ v_cache,
    const S* __restrict__ slot_mapping, const float* __restrict__ k_scale, const float* __restrict__ v_scale,
    int64_t q_stride, int64_t k_stride, int64_t v_stride, uint32_t q_heads, uint32_t kv_heads, uint64_t max_position,
    uint64_t num_slots, uint32_t units_per_block) {
  using namespace rotary_kv_cache_detail;
  using G = Geometry<T, kNeox, kHeadSize, kRotaryDim>;
  constexpr int kVec = G::kVec;
  constexpr int kPairs = rotary_detail::Chunk<T, kNeox, kVec>::kPairs;
  const uint64_t token = blockIdx.x;
  const int64_t pos = static_cast<int64_t>(positions[token]);
  const int64_t slot = static_cast<int64_t>(slot_mapping[token]);
  const bool pos_ok = static_cast<uint64_t>(pos) < max_position;
  const bool slot_ok = slot < 0 || static_cast<uint64_t>(slot) < num_slots;
  const bool write_kv = slot >= 0 && slot_ok;

  const uint32_t begin = blockIdx.y * units_per_block;
  const uint32_t end = min(q_heads + 2 * kv_heads, begin + units_per_block);
  const uint64_t row = static_cast<uint64_t>(kv_heads) * kHeadSize;
  const uint64_t dst = (write_kv ? static_cast<uint64_t>(slot) : 0) * row;
  T* const q_row = q + token * q_stride;
  const T* const k_row = k + token * k_stride;
  const T* const v_row = v + token * v_stride;
  const C* const angle_row = cos_sin + (pos_ok ? static_cast<uint64_t>(pos) : 0) * kRotaryDim;
  // Issued now, waited for at the first fp8 store.
  const float ks = vec_io::is_fp8<CacheT> ? *k_scale : 1.0f;
  const float vs = vec_io::is_fp8<CacheT> ? *v_scale : 1.0f;
  const bool vector = cujit::is_aligned(q, vec_io::access_bytes<T, kVec>()) &&
                      cujit::is_aligned(k, vec_io::access_bytes<T, kVec>()) &&
                      cujit::is_aligned(v, vec_io::access_bytes<T, kVec>()) &&
                      cujit::is_aligned(k_cache, vec_io::access_bytes<CacheT, kVec>()) &&
                      cujit::is_aligned(v_cache, vec_io::access_bytes<CacheT, kVec>()) && q_stride % kVec == 0 &&
                      k_stride % kVec == 0 && v_stride % kVec == 0;
  const bool vector_cs = cujit::is_aligned(cos_sin, vec_io::access_bytes<C, kPairs>());
  if (vector) {
    fused_token<true, T, C, CacheT, kNeox, kHeadSize, kRotaryDim, kVec>(q_row, k_row, v_row, k_cache + dst,
                                                                        v_cache + dst, angle_row, q_heads, kv_heads,
                                                                        begin, end, vector_cs, ks, vs, write_kv);
  } else {
    // One value (neox: one of each half) or one gpt-j pair a chunk, as rotary.cuh's element path: chunks of kVec
    // values loaded one by one, kElementBatch heads a step, held 128 values a thread and made the whole kernel
    // take 202 registers (one block of 256 threads an SM), the vector path included.
    fused_token<false, T, C, CacheT, kNeox, kHeadSize, kRotaryDim, kNeox ? 1 : 2>(
        q_row, k_row, v_row, k_cache + dst, v_cache + dst, angle_row, q_heads, kv_heads, begin, end, false, ks, vs,
        write_kv);
  }
  if (!pos_ok) rotary_detail::position_error(pos, token, max_position);
  if (!slot_ok) kv_cache_detail::slot_error(slot, token, num_slots, threadIdx.x + threadIdx.y);
}

#endif  // CUJIT_KERNELS_ROTARY_KV_CACHE_CUH_
