/// @file qk_norm_rotary.cuh
/// @brief Per-head RMSNorm of q and k fused with rotary embedding, in place, in one kernel (Qwen3 and Gemma 3
/// attention: q_norm / k_norm per head, then RoPE).
///
/// Every head of q and k becomes rope(round(rms_norm(head) * w)): the head normalised as qk_norm.cuh normalises it
/// (the same Fragment layout, reduction order and rounding, so the same bits), rounded once to the storage dtype,
/// then rotated as rotary.cuh rotates it (the same fused multiply-adds, rounded once more). The result is bit for
/// bit qk_rms_norm_kernel followed by rotary_embedding_kernel, with one read and one write of q and k instead of two
/// of each. Only the first rotary_dim values of each head are rotated (partial rotary); neox style pairs
/// (x[i], x[i + rotary_dim / 2]), gpt-j style (x[2i], x[2i + 1]); cos_sin [max_position, rotary_dim] holds cos in
/// the first half of a row and sin in the second.
///
/// Layout: as qk_rms_norm_kernel, one group of kRowThreads lanes of a warp per head, each lane holding kVecs
/// vectors' worth of it; a group takes a run of consecutive heads (see the kernel) and loads the cos/sin values of
/// its lanes' elements once per token of that run, while the token's first head is reduced.
/// A rotation pairs values that other lanes may hold. Two forms (the kernel's kHalves):
/// - the halves form, for the common case (neox style, the whole head rotated, the vector layout, heads of two
///   vectors' worth per lane pair): each lane holds a vector of the head's first half and its partner vector of
///   the second, so the rotation stays in registers;
/// - the exchanging form, for everything else: in neox style, and in the element layout (!kVector), each group
///   writes its normalised head to shared memory and reads the partners there after a __syncwarp (16-byte reads
///   when the halves are whole vectors); gpt-j pairs in the vector layout are neighbours in one lane.
///
/// Positions outside [0, max_position): the cos/sin row 0 stands in (nothing outside the cache is read) and the
/// first lane of each row group that met such a token prints the position and traps at its end, as
/// rotary_embedding_kernel does: the launch fails and the CUDA context is unusable afterwards.
#ifndef CUJIT_KERNELS_QK_NORM_ROTARY_CUH_
#define CUJIT_KERNELS_QK_NORM_ROTARY_CUH_

#include <cujit/base.cuh>
#include <cujit/pdl.cuh>
#include <cujit/types.cuh>

#include "qk_norm.cuh"
#include "rotary.cuh"

namespace qk_norm_rotary_detail {

/// The values of a 16-byte vector as floats, in memory order.
template <typename T>
CUJIT_DEVICE void unpack(const packed::Vec16Words<T>& v, float (&f)[packed::Vec16Words<T>::kValues]) {
  using P = packed::Packed<T>;
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    float w[P::kPerWord];
    P::unpack(v.w[j], w);
#pragma unroll
    for (int h = 0; h < P::kPerWord; ++h) f[j * P::kPerWord + h] = w[h];
  }
}

/// Floats rounded (to nearest even) into a 16-byte vector, in memory order.
template <typename T>
CUJIT_DEVICE packed::Vec16Words<T> pack(const float (&f)[packed::Vec16Words<T>::kValues]) {
  using P = packed::Packed<T>;
  packed::Vec16Words<T> v;
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    float w[P::kPerWord];
#pragma unroll
    for (int h = 0; h < P::kPerWord; ++h) w[h] = f[j * P::kPerWord + h];
    v.w[j] = P::pack(w);
  }
  return v;
}

/// The index of the cos/sin values of element e of a head (e < rotary_dim).
template <bool kNeox>
CUJIT_DEVICE int64_t angle_index(int64_t e, int64_t half) {
  return kNeox ? (e < half ? e : e - half) : e / 2;
}

/// The element that element e of a head is rotated with (e < rotary_dim).
template <bool kNeox>
CUJIT_DEVICE int64_t partner_of(int64_t e, int64_t half) {
  return kNeox ? (e < half ? e + half : e - half) : (e ^ 1);
}

/// The rotation of one head held by a group of lanes (rms_norm_detail::Fragment): the angles of the lane's
/// values, loaded early, and the rotation itself.
///
/// `first` is the offset of the lane's first value in the head (Fragment::thread_offset), `rotated` the number of
/// the head's values from `first` on that are rotated (rotary_dim - first; zero or less for a dead head or a lane
/// past the rotary part): value k of vector i is rotated when Fragment::slot(i, k) < rotated. `whole`: the vector
/// layout, and no vector straddles the end of the rotary part or (neox) of its first half, so that a vector's
/// angles are consecutive cos/sin values and its neox partners one aligned vector.
template <typename T, typename C, bool kNeox, bool kVector, int kRowThreads, int kVecs>
struct HeadRotation {
  using F = rms_norm_detail::Fragment<kVector, T, kRowThreads, kVecs>;
  using V = packed::Vec16Words<T>;
  static constexpr int kLanes = F::kLanes;
  /// cos/sin values a whole vector reads: one per value (neox), one per pair (gpt-j).
  static constexpr int kAngles = kNeox ? kLanes : kLanes / 2;
  /// Whether the group's values go through shared memory: neox partners, and any partners in the element layout.
  static constexpr bool kExchange = kNeox || !kVector;

  float cos[kVecs][kLanes];  // the angle of each held value (both values of a gpt-j pair hold theirs)
  float sin[kVecs][kLanes];

  /// Load the angles of the held values from the token's cos/sin row (`row`, `half` = rotary_dim / 2).
  /// `vector_cs`: whole vectors' angles may be read as vectors (the cache is aligned for them).
  CUJIT_DEVICE void load(const C* row, int64_t first, int64_t rotated, int64_t half, bool whole, bool vector_cs) {
#pragma unroll
    for (int i = 0; i < kVecs; ++i) {
      if (F::slot(i, 0) >= rotated) continue;  // the slots of a vector only grow with k
      if constexpr (kVector) {
        if (whole) {
          const int64_t j0 = angle_index<kNeox>(first + F::slot(i, 0), half);
          float c[kAngles], s[kAngles];
          vec_io::load_float<C, kAngles>(row + j0, vector_cs, c);
          vec_io::load_float<C, kAngles>(row + half + j0, vector_cs, s);
#pragma unroll
          for (int k = 0; k < kLanes; ++k) {
            cos[i][k] = c[kNeox ? k : k / 2];
            sin[i][k] = s[kNeox ? k : k / 2];
          }
          continue;
        }
      }
#pragma unroll
      for (int k = 0; k < kLanes; ++k) {
        if (F::slot(i, k) < rotated) {
          const int64_t j = angle_index<kNeox>(first + F::slot(i, k), half);
          cos[i][k] = cujit::to_float(row[j]);
          sin[i][k] = cujit::to_float(row[half + j]);
        }
      }
    }
  }

  /// Rotate the held (normalised, rounded) values of `held` in place. `staged` is the group's copy of the head in
  /// shared memory (written and synchronised by the caller when kExchange; unused otherwise).
  CUJIT_DEVICE void rotate(F& held, const T* staged, int64_t first, int64_t rotated, int64_t half,
                           bool whole) const {
#pragma unroll
    for (int i = 0; i < kVecs; ++i) {
      if (F::slot(i, 0) >= rotated) continue;
      float x[kLanes], p[kLanes], out[kLanes];
      unpack<T>(held.v[i], x);
      if constexpr (kVector && !kNeox) {
#pragma unroll
        for (int k = 0; k < kLanes; ++k) p[k] = x[k ^ 1];  // a vector starts at an even element
      } else if (kVector && whole) {
        unpack<T>(V::load(staged + partner_of<kNeox>(first + F::slot(i, 0), half)), p);
      } else {
#pragma unroll
        for (int k = 0; k < kLanes; ++k) {
          if (F::slot(i, k) < rotated) {
            p[k] = cujit::to_float(staged[partner_of<kNeox>(first + F::slot(i, k), half)]);
          }
        }
      }
#pragma unroll
      for (int k = 0; k < kLanes; ++k) {
        const int64_t e = first + F::slot(i, k);
        if (F::slot(i, k) >= rotated) {
          out[k] = x[k];
        } else if (kNeox ? e < half : (e & 1) == 0) {
          out[k] = rotary_detail::rotated_first(x[k], p[k], cos[i][k], sin[i][k]);
        } else {
          out[k] = rotary_detail::rotated_second(p[k], x[k], cos[i][k], sin[i][k]);
        }
      }
      held.v[i] = pack<T>(out);
    }
  }
};

/// The cos/sin row of a token's position, and the first position outside [0, max_position) that a lane group met
/// (row 0 stands in for it: nothing outside the cache is read).
struct PositionFault {
  bool seen = false;
  int64_t position = 0;
  uint32_t token = 0;

  /// The cache row of `token`'s position (0 for one outside the cache, which is recorded).
  template <typename P>
  CUJIT_DEVICE uint64_t row(const P* positions, uint32_t at, uint64_t max_position) {
    const int64_t pos = static_cast<int64_t>(positions[at]);
    const bool ok = static_cast<uint64_t>(pos) < max_position;
    if (!ok && !seen) {
      seen = true;
      position = pos;
      token = at;
    }
    return ok ? static_cast<uint64_t>(pos) : 0;
  }
  /// The group's first lane prints the recorded position and traps (rotary_embedding_kernel's failure).
  CUJIT_DEVICE void report(int lane, uint64_t max_position) const {
    if (seen && lane == 0) rotary_detail::position_fault(position, token, max_position);
  }
};

/// The exchanging form: a group of kRowThreads lanes per head in qk_rms_norm_kernel's layout, rotation partners
/// that other lanes hold read back through shared memory (see the top of the file). Every layout, style and
/// rotary_dim.
template <typename T, typename C, typename P, bool kNeox, bool kGemma, bool kVector, int kBlock, int kRowThreads,
          int kVecs, int kHeads>
CUJIT_DEVICE void norm_rotate_exchanging(
    const P* __restrict__ positions, T* q, T* k, const T* __restrict__ q_weight, const T* __restrict__ k_weight,
    const C* __restrict__ cos_sin, uint32_t count, uint32_t q_heads, uint32_t heads_per_token, int64_t q_stride,
    int64_t k_stride, int64_t head_dim, int64_t rotary_dim, uint64_t max_position, uint32_t span, float eps) {
  using namespace rms_norm_detail;
  using R = qk_norm_rotary_detail::HeadRotation<T, C, kNeox, kVector, kRowThreads, kVecs>;
  using F = typename R::F;
  static_assert(kRowThreads <= cujit::kWarpSize, "a head is normalised by lanes of one warp");
  static_assert(kHeads >= 1, "at least one head per step");
  static_assert(check_config<T, kBlock, kRowThreads, kVecs, kPathScalar, 1>());
  constexpr uint32_t kGroups = kBlock / kRowThreads;
  // Each group's normalised head, for the partners of its rotation (kExchange only).
  __shared__ __align__(16) uint32_t staged_words[R::kExchange ? kBlock * kVecs * 4 : 4];
  const int lane = threadIdx.x % kRowThreads;
  const uint32_t begin = (blockIdx.x * kGroups + threadIdx.x / kRowThreads) * span;
  const uint32_t end = min(count, begin + span);  // heads at or past `end` are dead: loaded and stored by none
  const int64_t first = F::thread_offset(lane);
  const int64_t half = rotary_dim / 2;
  const int64_t rotated = rotary_dim - first;  // the lane's values (from `first` on) that are rotated
  // Vectors whose angles and neox partners are whole vectors; the cache aligned for vector reads of them.
  const bool whole = kVector && rotary_dim % (kNeox ? 2 * F::kLanes : F::kLanes) == 0;
  const bool vector_cs = cujit::is_aligned(cos_sin, vec_io::access_bytes<C, R::kAngles>());
  T* const staged = reinterpret_cast<T*>(staged_words) + (threadIdx.x / kRowThreads) * F::kTile;

  R rotation;
  uint32_t angles_of = 0xffffffffu;  // the token whose angles `rotation` holds (none yet)
  PositionFault fault;
  // The trip count is the same for every group, so that the groups of a warp shuffle together; a dead head takes
  // part in the shuffles and touches no memory.
#pragma unroll 1
  for (uint32_t step = 0; step < span; step += kHeads) {
    qk_norm_detail::LaneHeads<T, F, kHeads> heads(
        q, k, q_weight, k_weight, begin + step, 1, end, q_heads, heads_per_token, q_stride, k_stride, head_dim,
        first, [&](int, const qk_norm_detail::Head<T>& head) {
          if (step == 0) F::prefetch(head.weight + first, head.live ? head_dim - first : 0);
        });
#pragma unroll
    for (int j = 0; j < kHeads; ++j) {
      if (heads.live[j] && heads.token[j] != angles_of) {  // the first head of a token: its position and angles
        angles_of = heads.token[j];
        rotation.load(cos_sin + fault.row(positions, angles_of, max_position) * rotary_dim, first, rotated, half,
                      whole, vector_cs);
      }
      heads.template normalize<kBlock, kRowThreads, kGemma>(j, head_dim, eps);
      if constexpr (R::kExchange) {
        __syncwarp();  // the group has read the previous head's partners before they are overwritten
        heads.held[j].store(staged + first, heads.left[j]);
        __syncwarp();
      }
      rotation.rotate(heads.held[j], staged, first, heads.live[j] ? rotated : 0, half, whole);
      heads.held[j].store(heads.rows[j], heads.left[j]);
    }
  }
  fault.report(lane, max_position);
}


/// The halves form (neox style, rotary_dim == head_dim, the vector layout, kVecs == 1): each of kRowThreads lanes
/// holds one vector of the head's first half and the vector half a head further, so that a value's rotation
/// partner sits in the same lane's registers: no shared memory, no __syncwarp, fewer registers. Lane m holds the
/// vectors at m * L and head_dim / 2 + m * L (L values a vector): those of lanes m and m + kRowThreads of
/// qk_rms_norm_kernel's layout of 2 * kRowThreads lanes of one vector each. Adding the two vectors' sums of squares
/// is the first step of that layout's butterfly, and the steps after it are the same shuffles, so the bits are
/// the exchanging form's (and the two ops'). Work split as in that form.
template <typename T, typename C, typename P, bool kGemma, int kBlock, int kRowThreads, int kHeads>
CUJIT_DEVICE void norm_rotate_halves(
    const P* __restrict__ positions, T* q, T* k, const T* __restrict__ q_weight, const T* __restrict__ k_weight,
    const C* __restrict__ cos_sin, uint32_t count, uint32_t q_heads, uint32_t heads_per_token, int64_t q_stride,
    int64_t k_stride, int64_t head_dim, uint64_t max_position, uint32_t span, float eps) {
  using F = rms_norm_detail::Fragment<true, T, kRowThreads, 1>;  // one vector of one half
  constexpr int kL = F::kLanes;
  constexpr uint32_t kGroups = kBlock / kRowThreads;
  static_assert(kRowThreads <= cujit::kWarpSize / 2, "the layout it reproduces has 2 * kRowThreads lanes a head");
  const int lane = threadIdx.x % kRowThreads;
  const uint32_t begin = (blockIdx.x * kGroups + threadIdx.x / kRowThreads) * span;
  const uint32_t end = min(count, begin + span);
  const int64_t half = head_dim / 2;
  const int64_t first = static_cast<int64_t>(lane) * kL;
  const bool vector_cs = cujit::is_aligned(cos_sin, vec_io::access_bytes<C, kL>());

  float cos[kL], sin[kL];
  uint32_t angles_of = 0xffffffffu;
  PositionFault fault;
#pragma unroll 1
  for (uint32_t step = 0; step < span; step += kHeads) {
    F x[kHeads], y[kHeads];
    T* rows[kHeads];
    const T* weights[kHeads];
    uint32_t token[kHeads];
    bool live[kHeads];
#pragma unroll
    for (int j = 0; j < kHeads; ++j) {
      const qk_norm_detail::Head<T> head(q, k, q_weight, k_weight, begin + step + j, end, q_heads, heads_per_token,
                                         q_stride, k_stride, head_dim);
      rows[j] = head.row + first;
      weights[j] = head.weight + first;
      token[j] = head.token;
      live[j] = head.live;
      x[j].load(rows[j], head.live ? kL : 0);
      y[j].load(rows[j] + half, head.live ? kL : 0);
    }
#pragma unroll
    for (int j = 0; j < kHeads; ++j) {
      if (live[j] && token[j] != angles_of) {  // the first head of a token: its position and angles
        angles_of = token[j];
        const C* const row = cos_sin + fault.row(positions, angles_of, max_position) * head_dim;
        vec_io::load_float<C, kL>(row + first, vector_cs, cos);
        vec_io::load_float<C, kL>(row + half + first, vector_cs, sin);
      }
      const float inv_rms = rms_norm_detail::inverse_rms(
          rms_norm_detail::row_sum<kBlock, kRowThreads>(x[j].sum_squares() + y[j].sum_squares()), head_dim, eps);
      F wx, wy;
      wx.load(weights[j], live[j] ? kL : 0);
      wy.load(weights[j] + half, live[j] ? kL : 0);
      if (j + 1 == kHeads) cujit::pdl_launch_dependents();
      x[j].forget();
      y[j].forget();
      x[j].template normalize<kGemma>(wx, inv_rms);
      y[j].template normalize<kGemma>(wy, inv_rms);
      float a[kL], b[kL], out_a[kL], out_b[kL];
      unpack<T>(x[j].v[0], a);
      unpack<T>(y[j].v[0], b);
#pragma unroll
      for (int i = 0; i < kL; ++i) rotary_detail::rotate_pair(a[i], b[i], cos[i], sin[i], out_a[i], out_b[i]);
      x[j].v[0] = pack<T>(out_a);
      y[j].v[0] = pack<T>(out_b);
      if (live[j]) {
        x[j].store(rows[j], kL);
        y[j].store(rows[j] + half, kL);
      }
    }
  }
  fault.report(lane, max_position);
}

}  // namespace qk_norm_rotary_detail

/// Normalise, then rotate, the `count` = tokens * (q_heads + kv_heads) heads of q and k in place (heads listed as
/// in qk_rms_norm_kernel: a token's q heads, then its k heads). Launch kBlock threads per block and
/// cdiv(count, kBlock / kRowThreads * span) blocks; rotary_dim even and at most head_dim. q and k must not
/// overlap. kVector is the host's choice, as for qk_rms_norm_kernel (the same choice gives the same bits).
///
/// kHalves picks the form: the halves form (norm_rotate_halves: neox, rotary_dim == head_dim, kVector, kVecs == 1,
/// head_dim == 2 * kRowThreads * (16 / sizeof(T))) or the exchanging form (every other call; head_dim at most
/// kRowThreads * kVecs * (16 / sizeof(T))). The host picks the halves form wherever it applies; both give the bits
/// of the two ops in sequence.
///
/// Each row group takes `span` consecutive heads of the list, kHeads at a time (all kHeads loaded before the first
/// is reduced, as in qk_rms_norm_kernel). Consecutive heads mostly belong to one token: the group loads a token's
/// position and angles when its first head comes up and keeps them for the token's next heads, so that the
/// dependent loads (position, then its cos/sin row) are paid once per token and group, not once per head, and one
/// set of angles is held in registers, not one per head in flight.
template <typename T, typename C, typename P, bool kNeox, bool kGemma, bool kVector, int kBlock, int kRowThreads,
          int kVecs, int kHeads, bool kHalves>
__global__ void __launch_bounds__(kBlock) qk_norm_rotary_kernel(
    const P* __restrict__ positions, T* q, T* k, const T* __restrict__ q_weight, const T* __restrict__ k_weight,
    const C* __restrict__ cos_sin, uint32_t count, uint32_t q_heads, uint32_t heads_per_token, int64_t q_stride,
    int64_t k_stride, int64_t head_dim, int64_t rotary_dim, uint64_t max_position, uint32_t span, float eps) {
  using namespace qk_norm_rotary_detail;
  cujit::pdl_wait();  // q, k and positions come from the previous kernels
  if constexpr (kHalves) {
    static_assert(kNeox && kVector && kVecs == 1, "the halves form: neox style, the vector layout, one vector a half");
    norm_rotate_halves<T, C, P, kGemma, kBlock, kRowThreads, kHeads>(positions, q, k, q_weight, k_weight, cos_sin,
                                                                      count, q_heads, heads_per_token, q_stride,
                                                                      k_stride, head_dim, max_position, span, eps);
  } else {
    norm_rotate_exchanging<T, C, P, kNeox, kGemma, kVector, kBlock, kRowThreads, kVecs, kHeads>(
        positions, q, k, q_weight, k_weight, cos_sin, count, q_heads, heads_per_token, q_stride, k_stride, head_dim,
        rotary_dim, max_position, span, eps);
  }
}

#endif  // CUJIT_KERNELS_QK_NORM_ROTARY_CUH_
