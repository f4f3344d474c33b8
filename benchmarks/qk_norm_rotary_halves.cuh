/// @file qk_norm_rotary_halves.cuh
/// @brief A candidate form of qk_norm_rotary_kernel, timed against it by benchmarks/tune_qk_norm_rotary.py: each
/// lane holds both neox halves of its share of a head, so that a value's rotation partner sits in the same lane's
/// registers (no round trip through shared memory, no __syncwarp).
///
/// Scope: neox style, rotary_dim == head_dim == 2 * kGroupLanes * (16 / sizeof(T)), the 16-byte vector layout
/// (q, k, their row strides and both weights aligned), the cos/sin row read as in rotary_embedding_kernel.
///
/// Bits: lane m of the kGroupLanes lanes of a head holds the vectors at m * L and at head_dim / 2 + m * L (L values a
/// vector): those of lanes m and m + kGroupLanes of qk_rms_norm_kernel's layout for the same head (2 * kGroupLanes
/// lanes of one vector each). Adding the two vectors' sums of squares is the first step of that layout's butterfly
/// (offset kGroupLanes), and the steps after it are the same shuffles, so the normalised, rounded values are those
/// of qk_rms_norm_kernel, and their rotation (rotary_detail::rotate_pair, rounded once) is rotary_embedding_kernel's:
/// the result is bit for bit the two ops in sequence, which the benchmark checks.
///
/// Work split as in qk_norm_rotary_kernel: each group of kGroupLanes lanes takes `span` consecutive heads, kHeads
/// at a time, and loads a token's position and angles once for the heads of that token in its run.
#ifndef CUJIT_BENCHMARKS_QK_NORM_ROTARY_HALVES_CUH_
#define CUJIT_BENCHMARKS_QK_NORM_ROTARY_HALVES_CUH_

#include <cujit/base.cuh>
#include <cujit/pdl.cuh>

#include "../cujit/kernels/qk_norm_rotary.cuh"

template <typename T, typename C, typename P, bool kGemma, int kBlock, int kGroupLanes, int kHeads>
__global__ void __launch_bounds__(kBlock) qk_norm_rotary_halves_kernel(
    const P* __restrict__ positions, T* q, T* k, const T* __restrict__ q_weight, const T* __restrict__ k_weight,
    const C* __restrict__ cos_sin, uint32_t count, uint32_t q_heads, uint32_t heads_per_token, int64_t q_stride,
    int64_t k_stride, int64_t head_dim, uint64_t max_position, uint32_t span, float eps) {
  using F = rms_norm_detail::Fragment<true, T, kGroupLanes, 1>;  // one vector of one half
  constexpr int kL = F::kLanes;
  constexpr uint32_t kGroups = kBlock / kGroupLanes;
  static_assert(kGroupLanes <= cujit::kWarpSize / 2, "the layout it reproduces has 2 * kGroupLanes lanes a head");
  cujit::pdl_wait();
  const int lane = threadIdx.x % kGroupLanes;
  const uint32_t begin = (blockIdx.x * kGroups + threadIdx.x / kGroupLanes) * span;
  const uint32_t end = min(count, begin + span);
  const int64_t half = head_dim / 2;
  const int64_t first = static_cast<int64_t>(lane) * kL;
  const bool vector_cs = cujit::is_aligned(cos_sin, vec_io::access_bytes<C, kL>());

  float cos[kL], sin[kL];
  uint32_t angles_of = 0xffffffffu;
  bool fault = false;
  int64_t fault_pos = 0;
  uint32_t fault_token = 0;
#pragma unroll 1
  for (uint32_t step = 0; step < span; step += kHeads) {
    F x[kHeads], y[kHeads];
    T* rows[kHeads];
    const T* weights[kHeads];
    uint32_t token[kHeads];
    bool live[kHeads];
#pragma unroll
    for (int j = 0; j < kHeads; ++j) {
      const qk_norm_detail::Head<T> head(q, k, q_weight, k_weight, begin + step + j, end, q_heads,
                                         heads_per_token, q_stride, k_stride, head_dim);
      rows[j] = head.row + first;
      weights[j] = head.weight + first;
      token[j] = head.token;
      live[j] = head.live;
      x[j].load(rows[j], head.live ? kL : 0);
      y[j].load(rows[j] + half, head.live ? kL : 0);
    }
#pragma unroll
    for (int j = 0; j < kHeads; ++j) {
      if (live[j] && token[j] != angles_of) {
        angles_of = token[j];
        const int64_t pos = static_cast<int64_t>(positions[angles_of]);
        const bool pos_ok = static_cast<uint64_t>(pos) < max_position;
        if (!pos_ok && !fault) {
          fault = true;
          fault_pos = pos;
          fault_token = angles_of;
        }
        const C* const row = cos_sin + (pos_ok ? static_cast<uint64_t>(pos) : 0) * head_dim;
        vec_io::load_float<C, kL>(row + first, vector_cs, cos);
        vec_io::load_float<C, kL>(row + half + first, vector_cs, sin);
      }
      const float inv_rms = rms_norm_detail::inverse_rms(
          rms_norm_detail::row_sum<kBlock, kGroupLanes>(x[j].sum_squares() + y[j].sum_squares()), head_dim, eps);
      F wx, wy;
      wx.load(weights[j], live[j] ? kL : 0);
      wy.load(weights[j] + half, live[j] ? kL : 0);
      if (j + 1 == kHeads) cujit::pdl_launch_dependents();
      x[j].forget();
      y[j].forget();
      x[j].template normalize<kGemma>(wx, inv_rms);
      y[j].template normalize<kGemma>(wy, inv_rms);
      float a[kL], b[kL], out_a[kL], out_b[kL];
      qk_norm_rotary_detail::unpack<T>(x[j].v[0], a);
      qk_norm_rotary_detail::unpack<T>(y[j].v[0], b);
#pragma unroll
      for (int i = 0; i < kL; ++i) rotary_detail::rotate_pair(a[i], b[i], cos[i], sin[i], out_a[i], out_b[i]);
      x[j].v[0] = qk_norm_rotary_detail::pack<T>(out_a);
      y[j].v[0] = qk_norm_rotary_detail::pack<T>(out_b);
      if (live[j]) {
        x[j].store(rows[j], kL);
        y[j].store(rows[j] + half, kL);
      }
    }
  }
  if (fault && lane == 0) rotary_detail::position_fault(fault_pos, fault_token, max_position);
}

#endif  // CUJIT_BENCHMARKS_QK_NORM_ROTARY_HALVES_CUH_
