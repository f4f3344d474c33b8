/// @file rotary.cuh
/// @brief Rotary position embedding, in place on q and k: neox (rotate halves) and gpt-j (interleaved pairs).
///
/// Layout: q [tokens, q_heads * head_size] and k [tokens, k_heads * head_size], rows at any stride (views of a
/// fused qkv tensor), heads contiguous; cos_sin [max_position, rotary_dim], cos in the first half of a row and sin
/// in the second (the layout vLLM and SGLang build). Only the first rotary_dim values of each head change.
///
/// For each pair (a, b) of a head with angle (cos c, sin s): a' = a c - b s, b' = b c + a s, in fp32 with explicit
/// fused multiply-adds (so that every kernel that includes this file rounds the same way), then rounded once to the
/// storage dtype. A pair is (x[i], x[i + rotary_dim / 2]) in neox style and (x[2i], x[2i + 1]) in gpt-j style;
/// both use cos[i], sin[i].
///
/// Work split: block (chunks, rows) per token (grid.x) and group of heads (grid.y). threadIdx.x owns one chunk
/// of kVec values (a 16-byte vector when the dims allow; for neox kVec values of each half) at the same offset in
/// every head, so it loads its cos/sin values once per token and reuses them for all the heads it visits;
/// threadIdx.y walks the heads of q then k round-robin. A thread's cos/sin loads go out at the start of its walk
/// with its first heads' loads right behind them, so a token costs the position's round trip, then one for the
/// angles and the heads together (in the SASS the compiler waits for the position first: it is the same for the
/// whole block and goes to uniform registers). Pointers and strides that do not allow the vector width take an
/// element-wise path.
///
/// Staged form (kStaged, chosen by the host where that vector width is under 8 bytes or the pointers and strides do
/// not allow it: odd head sizes, rows that start mid-vector): a block of 256 threads copies its heads of q and of k,
/// each a contiguous run of the row, into shared memory with cujit/rows.cuh (16-byte vectors in the aligned
/// middle, element accesses only at the two ends), rotates the pairs there, and copies the runs back the same way.
/// Its accesses to q and k are then as wide as a copy's, whatever the head size or the offset. It writes back every
/// value of its heads, the ones past rotary_dim unchanged: at rotary_dim < head_size it moves more bytes than the
/// rotation needs.
///
/// Positions outside [0, max_position): the token's cos/sin row is never read (row 0 stands in) and the block
/// traps at its end, after one thread prints the position. The launch fails as torch's indexing asserts make it
/// fail (cujit.device_check() or the next synchronising call raises) and the CUDA context is unusable afterwards,
/// so the values written for that token are never observed; nothing outside q, k and the cache is accessed. The
/// check costs one compare and a select.
#ifndef CUJIT_KERNELS_ROTARY_CUH_
#define CUJIT_KERNELS_ROTARY_CUH_

#include <cujit/base.cuh>
#include <cujit/check.cuh>
#include <cujit/rows.cuh>
#include <cujit/types.cuh>
#include <cujit/vec.cuh>

#include "vec_io.cuh"

namespace rotary_detail {

/// Heads handled per thread per step on the vector path, with all their loads issued before the first rotation:
/// two 16-byte loads per thread per step in either style (a neox head chunk is already two loads). More would
/// cost registers (occupancy) for the same bytes in flight.
template <bool kNeox>
constexpr int kBatch = kNeox ? 1 : 2;

/// Heads handled per thread per step on the element-wise path. Its chunks are one value (neox: one in each half)
/// or one gpt-j pair, 4 bytes of bf16 a head; one head a step would leave each thread a single round trip of 4
/// bytes in flight, far from what keeps DRAM busy. Eight heads a step put 32 bytes in flight for 16 registers.
constexpr int kElementBatch = 8;

/// The first value of the rotated pair (a, b): a c - b s, one fused multiply-add over the rounded b s.
CUJIT_DEVICE float rotated_first(float a, float b, float c, float s) { return __fmaf_rn(a, c, -(b * s)); }

/// The second value of the rotated pair (a, b): b c + a s, one fused multiply-add over the rounded a s.
CUJIT_DEVICE float rotated_second(float a, float b, float c, float s) { return __fmaf_rn(b, c, a * s); }

/// The rotation of one pair, the single rounding rule of every rotary kernel (rotated_first, rotated_second; a
/// kernel that holds only one value of a pair calls the one it needs).
CUJIT_DEVICE void rotate_pair(float a, float b, float c, float s, float& a_out, float& b_out) {
  a_out = rotated_first(a, b, c, s);
  b_out = rotated_second(a, b, c, s);
}

/// One thread's share of the rotary part of a head: kVec values (neox: kVec in each half).
///
/// `first` is the offset of the chunk in the head, `second` (neox only) the offset of its partner half.
template <typename T, bool kNeox, int kVec>
struct Chunk {
  static constexpr int kPairs = kNeox ? kVec : kVec / 2;  // cos/sin values per chunk
  static_assert(kNeox || kVec % 2 == 0, "gpt-j chunks hold whole pairs");

  T x[kVec];
  T y[kNeox ? kVec : 1];

  CUJIT_DEVICE void load(const T* head, uint32_t first, uint32_t second, bool vector) {
    vec_io::load<T, kVec>(head + first, vector, x);
    if constexpr (kNeox) vec_io::load<T, kVec>(head + second, vector, y);
  }

  /// The rotated values as floats, in memory order: out_x for the chunk, out_y for its neox partner.
  CUJIT_DEVICE void rotate(const float (&cos)[kPairs], const float (&sin)[kPairs], float (&out_x)[kVec],
                           float (&out_y)[kNeox ? kVec : 1]) const {
    if constexpr (kNeox) {
#pragma unroll
      for (int i = 0; i < kVec; ++i) {
        rotate_pair(cujit::to_float(x[i]), cujit::to_float(y[i]), cos[i], sin[i], out_x[i], out_y[i]);
      }
    } else {
#pragma unroll
      for (int i = 0; i < kPairs; ++i) {
        rotate_pair(cujit::to_float(x[2 * i]), cujit::to_float(x[2 * i + 1]), cos[i], sin[i], out_x[2 * i],
                    out_x[2 * i + 1]);
      }
      out_y[0] = 0.0f;
    }
  }
};

/// Print and trap: the calling thread's token had a position outside the cache.
CUJIT_DEVICE void position_fault(int64_t pos, uint64_t token, uint64_t max_position) {
  printf("cujit rotary: position %lld of token %llu is outside the cos_sin_cache rows [0, %llu)\n",
         static_cast<long long>(pos), static_cast<unsigned long long>(token),
         static_cast<unsigned long long>(max_position));
  __trap();
}

/// Print (one thread of the block) and trap when a block's token had a position outside the cache.
CUJIT_DEVICE void position_error(int64_t pos, uint64_t token, uint64_t max_position) {
  if (threadIdx.x == 0 && threadIdx.y == 0) position_fault(pos, token, max_position);
}

/// The cos and sin values of one chunk of one token, read once and reused for every head. They are loaded when
/// made, at the top of a chunk's walk, so that their loads and the first heads' loads are in flight together
/// (a load made on first use, behind a branch, went out only after the first heads had arrived).
template <typename C, int kPairs>
struct Angles {
  float cos[kPairs];
  float sin[kPairs];

  CUJIT_DEVICE Angles(const C* row, uint32_t half, uint32_t offset, bool vector) {
    vec_io::load_float<C, kPairs>(row + offset, vector, cos);
    vec_io::load_float<C, kPairs>(row + half + offset, vector, sin);
  }
};

/// The first index of [begin, ...) that row threadIdx.y handles when the rows of the block take a list of heads
/// round-robin; walking a list in parts (q's heads, then k's) with it keeps the rows equally busy.
CUJIT_DEVICE uint32_t first_head(uint32_t begin) {
  return begin + (threadIdx.y + blockDim.y - begin % blockDim.y) % blockDim.y;
}

/// Rotate one chunk of heads h_first, h_first + blockDim.y, ... < end of one token from `src_row` into `dst_row`
/// (the same row for in place; heads head_size values apart in both), each head's chunk at `first` (and `second`
/// for neox). The rotated values are rounded to T, then stored as vec_io::store_as does (to T, or to fp8 through
/// `scale`), unless `write` is false. The vector path batches kBatch heads per step, the element-wise path
/// kElementBatch, all loads of a step issued first.
template <bool kVector, typename T, typename OutT, typename C, bool kNeox, int kVec>
CUJIT_DEVICE void rotate_heads(const T* src_row, OutT* dst_row, uint32_t h_first, uint32_t end, uint32_t head_size,
                               uint32_t first, uint32_t second, const Angles<C, Chunk<T, kNeox, kVec>::kPairs>& angles,
                               float scale, bool write) {
  using Ch = Chunk<T, kNeox, kVec>;
  constexpr int kSteps = kVector ? kBatch<kNeox> : kElementBatch;
#pragma unroll 1
  for (uint32_t h0 = h_first; h0 < end; h0 += kSteps * blockDim.y) {
    Ch heads[kSteps];
#pragma unroll
    for (int b = 0; b < kSteps; ++b) {
      const uint32_t h = h0 + b * blockDim.y;
      if (h < end) heads[b].load(src_row + static_cast<uint64_t>(h) * head_size, first, second, kVector);
    }
    if (!write) break;
#pragma unroll
    for (int b = 0; b < kSteps; ++b) {
      const uint32_t h = h0 + b * blockDim.y;
      if (h < end) {
        float out_x[kVec];
        float out_y[kNeox ? kVec : 1];
        heads[b].rotate(angles.cos, angles.sin, out_x, out_y);
        OutT* const dst = dst_row + static_cast<uint64_t>(h) * head_size;
        vec_io::store_float_as<T, OutT, kVec>(dst + first, kVector, out_x, scale);
        if constexpr (kNeox) vec_io::store_float_as<T, OutT, kVec>(dst + second, kVector, out_y, scale);
      }
    }
  }
}

/// Rotate the heads [begin, end) of the list (q's heads, then k's) of one token in place, chunks of kVec values;
/// threadIdx.x walks the chunks of a head (one pass when blockDim.x covers them).
template <bool kVector, typename T, typename C, bool kNeox, int kVec>
CUJIT_DEVICE void rotate_token(T* q_row, T* k_row, const C* angle_row, uint32_t q_heads, uint32_t begin, uint32_t end,
                               uint32_t head_size, uint32_t half, bool vector_cs) {
  constexpr int kPairs = Chunk<T, kNeox, kVec>::kPairs;
  const uint32_t chunks = half / kPairs;
  const uint32_t q_first = first_head(begin);
  const uint32_t q_end = min(end, q_heads);
  const uint32_t k_first = first_head(max(begin, q_heads)) - q_heads;
  const uint32_t k_end = max(end, q_heads) - q_heads;
#pragma unroll 1
  for (uint32_t chunk = threadIdx.x; chunk < chunks; chunk += blockDim.x) {
    Angles<C, kPairs> angles(angle_row, half, chunk * kPairs, vector_cs);
    const uint32_t first = chunk * kVec;
    const uint32_t second = first + half;  // the neox partner; unused by gpt-j
    rotate_heads<kVector, T, T, C, kNeox, kVec>(q_row, q_row, q_first, q_end, head_size, first, second, angles,
                                                1.0f, true);
    rotate_heads<kVector, T, T, C, kNeox, kVec>(k_row, k_row, k_first, k_end, head_size, first, second, angles,
                                                1.0f, true);
  }
}

/// The staged form's shared memory: q's run, then k's, each placed at its global run's offset within 16 bytes so
/// that the copies move aligned 16-byte vectors on both sides.
template <typename T>
struct StagedRuns {
  T* q;
  T* k;

  CUJIT_DEVICE StagedRuns(void* shared, const T* q_run, uint32_t q_count, const T* k_run) {
    constexpr uint32_t kLanes = 16 / sizeof(T);
    T* const base = static_cast<T*>(shared);
    q = base + phase(q_run);
    // k's run starts at the next 16-byte boundary after q's run, plus its own phase.
    const uint32_t k_base = (phase(q_run) + q_count + kLanes - 1) / kLanes * kLanes;
    k = base + k_base + phase(k_run);
  }

  /// Values of T between p and the 16-byte boundary below it.
  static CUJIT_DEVICE uint32_t phase(const T* p) {
    return static_cast<uint32_t>(reinterpret_cast<uintptr_t>(p) % 16) / sizeof(T);
  }
};

/// Rotate the pairs of `heads` heads of head_size values staged at `run`, in place in shared memory, with the
/// angles of one token. The threads of the block take the pairs in turn, head after head.
template <typename T, typename C, bool kNeox>
CUJIT_DEVICE void rotate_staged(T* run, uint32_t heads, uint32_t head_size, uint32_t half, const C* angle_row) {
  const uint32_t pairs = heads * half;
  uint32_t h = threadIdx.x / half;  // blockDim.x may exceed half: start in the thread's head
  uint32_t i = threadIdx.x - h * half;
  for (uint32_t p = threadIdx.x; p < pairs; p += blockDim.x) {
    T* const head = run + h * head_size;
    const uint32_t a_at = kNeox ? i : 2 * i;
    const uint32_t b_at = kNeox ? i + half : 2 * i + 1;
    float a_out, b_out;
    rotate_pair(cujit::to_float(head[a_at]), cujit::to_float(head[b_at]), cujit::to_float(angle_row[i]),
                cujit::to_float(angle_row[half + i]), a_out, b_out);
    head[a_at] = cujit::from_float<T>(a_out);
    head[b_at] = cujit::from_float<T>(b_out);
    // The next pair of this thread: blockDim.x further, across as many heads as that spans.
    i += blockDim.x;
    while (i >= half) {
      i -= half;
      ++h;
    }
  }
}

/// The staged form of one block: heads [begin, end) of q's then k's of one token (see the top of the file).
template <typename T, typename C, bool kNeox>
CUJIT_DEVICE void rotate_token_staged(T* q_row, T* k_row, const C* angle_row, uint32_t q_heads, uint32_t begin,
                                      uint32_t end, uint32_t head_size, uint32_t half) {
  const uint32_t q_begin = min(begin, q_heads), q_end = min(end, q_heads);
  const uint32_t k_begin = max(begin, q_heads) - q_heads, k_end = max(end, q_heads) - q_heads;
  T* const q_run = q_row + static_cast<uint64_t>(q_begin) * head_size;
  T* const k_run = k_row + static_cast<uint64_t>(k_begin) * head_size;
  const uint32_t q_count = (q_end - q_begin) * head_size, k_count = (k_end - k_begin) * head_size;
  const StagedRuns<T> staged(cujit::dynamic_shared<void>(), q_run, q_count, k_run);
  const cujit::Threads threads = cujit::Threads::block();
  const auto same = [](T v) { return v; };
  // Four vectors a thread in flight: a run of a few KB is then one round trip for a block of 256.
  cujit::row_map<4>(staged.q, q_count, threads, same, static_cast<const T*>(q_run));
  cujit::row_map<4>(staged.k, k_count, threads, same, static_cast<const T*>(k_run));
  __syncthreads();
  rotate_staged<T, C, kNeox>(staged.q, q_end - q_begin, head_size, half, angle_row);
  rotate_staged<T, C, kNeox>(staged.k, k_end - k_begin, head_size, half, angle_row);
  __syncthreads();
  cujit::row_map<4>(q_run, q_count, threads, same, static_cast<const T*>(staged.q));
  cujit::row_map<4>(k_run, k_count, threads, same, static_cast<const T*>(staged.k));
}

}  // namespace rotary_detail

/// Rotate q and k in place. Block (x, y), at most 256 threads: x over the chunks of a head (rotary_dim / 2 / kVec
/// of them in neox style, rotary_dim / kVec in gpt-j style), y over heads. grid.x: tokens; grid.y: groups of
/// heads_per_block heads, counted over q's heads then k's. kStaged: the staged form, blocks of 256 threads (x) with
/// dynamic shared memory for the block's runs (rotary_embedding.py: staged_plan); kVec is then unused.
template <typename T, typename C, typename P, bool kNeox, int kVec, bool kStaged>
__global__ void __launch_bounds__(256) rotary_embedding_kernel(
    const P* __restrict__ positions, T* q, T* k, const C* __restrict__ cos_sin, int64_t q_stride, int64_t k_stride,
    uint32_t q_heads, uint32_t k_heads, uint32_t head_size, uint32_t rotary_dim, uint64_t max_position,
    uint32_t heads_per_block) {
  using namespace rotary_detail;
  const uint64_t token = blockIdx.x;
  const int64_t pos = static_cast<int64_t>(positions[token]);
  const bool pos_ok = static_cast<uint64_t>(pos) < max_position;

  const uint32_t half = rotary_dim / 2;
  const uint32_t begin = blockIdx.y * heads_per_block;
  const uint32_t end = min(q_heads + k_heads, begin + heads_per_block);
  T* const q_row = q + token * q_stride;
  T* const k_row = k + token * k_stride;
  const C* const angle_row = cos_sin + (pos_ok ? static_cast<uint64_t>(pos) : 0) * rotary_dim;
  if constexpr (kStaged) {
    rotate_token_staged<T, C, kNeox>(q_row, k_row, angle_row, q_heads, begin, end, head_size, half);
  } else {
    constexpr int kPairs = Chunk<T, kNeox, kVec>::kPairs;
    const bool vector = cujit::is_aligned(q, vec_io::access_bytes<T, kVec>()) &&
                        cujit::is_aligned(k, vec_io::access_bytes<T, kVec>()) && q_stride % kVec == 0 &&
                        k_stride % kVec == 0 && head_size % kVec == 0 && half % kPairs == 0;
    if (vector) {
      const bool vector_cs = cujit::is_aligned(cos_sin, vec_io::access_bytes<C, kPairs>());
      rotate_token<true, T, C, kNeox, kVec>(q_row, k_row, angle_row, q_heads, begin, end, head_size, half,
                                            vector_cs);
    } else {
      rotate_token<false, T, C, kNeox, kNeox ? 1 : 2>(q_row, k_row, angle_row, q_heads, begin, end, head_size,
                                                     half, false);
    }
  }
  if (!pos_ok) position_error(pos, token, max_position);
}

#endif  // CUJIT_KERNELS_ROTARY_CUH_
