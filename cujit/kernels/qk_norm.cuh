/// @file qk_norm.cuh
/// @brief Per-head RMSNorm of q and k in place, both in one launch (Qwen3 and Gemma 3 attention).
///
/// q is [tokens, q_heads * head_dim] and k [tokens, kv_heads * head_dim], rows at any stride (views of a fused
/// qkv tensor), the values of a row contiguous. Every head of every token is one row of head_dim values,
/// normalised as rms_norm normalises a row (rms_norm.cuh: fp32 from the stored values, rounded once):
///     head = head * rsqrt(mean(head^2) + eps) * w,   w = q_weight or k_weight ([head_dim]), or 1 + w when kGemma
///
/// Layout: the heads of all tokens in order (a token's q heads, then its k heads), kHeads per group of
/// kRowThreads (8, 16 or 32) lanes of a warp, each lane holding kVecs vectors' worth of each head in registers
/// (rms_norm's Fragment, with 16-byte vectors when kVector and element loads otherwise): one read and one write of
/// every value, and a reduction of shuffles only. kVector is the host's choice: head_dim a whole number of
/// vectors, and q, k, their row strides and both weights 16-byte aligned.
#ifndef CUJIT_KERNELS_QK_NORM_CUH_
#define CUJIT_KERNELS_QK_NORM_CUH_

#include <cujit/base.cuh>
#include <cujit/pdl.cuh>

#include "rms_norm.cuh"

namespace qk_norm_detail {

/// Where one head lies: its first element and its weight, in q or in k, and its token.
template <typename T>
struct Head {
  T* row;
  const T* weight;
  uint32_t token;
  bool live;

  /// Head `g` of the list of all tokens' heads (heads_per_token = q_heads + kv_heads), or a dead one past the end
  /// (pointing at q's first head, so that addresses stay inside the tensors).
  CUJIT_DEVICE Head(T* q, T* k, const T* q_weight, const T* k_weight, uint32_t g, uint32_t count,
                    uint32_t q_heads, uint32_t heads_per_token, int64_t q_stride, int64_t k_stride,
                    int64_t head_dim) {
    live = g < count;
    const uint32_t at = live ? g : 0;
    token = at / heads_per_token;
    const uint32_t h = at - token * heads_per_token;
    if (h < q_heads) {
      row = q + token * q_stride + static_cast<int64_t>(h) * head_dim;
      weight = q_weight;
    } else {
      row = k + token * k_stride + static_cast<int64_t>(h - q_heads) * head_dim;
      weight = k_weight;
    }
  }
};

/// The kHeads heads of one row group as one lane holds them: where each lies from this lane's first element on,
/// and its values (rms_norm's Fragment F), loaded by the constructor for all heads before any is reduced. Head j is
/// number base + j * step of the list of all tokens' heads; a dead head (past the end) loads and stores nothing
/// but still takes part in the shuffles. `then(j, head)` runs after head j's loads are issued (with its Head): a
/// kernel's own loads of that head (its position, say) go out in the same round.
template <typename T, typename F, int kHeads>
struct LaneHeads {
  T* rows[kHeads];           ///< this lane's first element of each head
  const T* weights[kHeads];  ///< the head's weight at the same element
  int64_t left[kHeads];      ///< the head's values from there on (0 for a dead head)
  uint32_t token[kHeads];
  bool live[kHeads];
  F held[kHeads];

  template <typename Then>
  CUJIT_DEVICE LaneHeads(T* q, T* k, const T* q_weight, const T* k_weight, uint32_t base, uint32_t step,
                         uint32_t count, uint32_t q_heads, uint32_t heads_per_token, int64_t q_stride,
                         int64_t k_stride, int64_t head_dim, int64_t first, Then then) {
#pragma unroll
    for (int j = 0; j < kHeads; ++j) {
      const Head<T> head(q, k, q_weight, k_weight, base + j * step, count, q_heads, heads_per_token, q_stride,
                         k_stride, head_dim);
      rows[j] = head.row + first;
      weights[j] = head.weight + first;
      token[j] = head.token;
      live[j] = head.live;
      left[j] = head.live ? head_dim - first : 0;
      held[j].load(rows[j], left[j]);
      then(j, head);
    }
  }

  /// Normalise head j in place (rounded to T): its reduction over the group's lanes, then its weight. After the
  /// last head's weight load this thread's global reads are all issued: the next kernel is released there.
  template <int kBlock, int kRowThreads, bool kGemma>
  CUJIT_DEVICE void normalize(int j, int64_t head_dim, float eps) {
    const float inv_rms = rms_norm_detail::inverse_rms(
        rms_norm_detail::row_sum<kBlock, kRowThreads>(held[j].sum_squares()), head_dim, eps);
    F w;
    w.load(weights[j], left[j]);
    if (j + 1 == kHeads) cujit::pdl_launch_dependents();
    held[j].forget();
    held[j].template normalize<kGemma>(w, inv_rms);
  }
};

}  // namespace qk_norm_detail

/// Normalise the `count` = tokens * (q_heads + kv_heads) heads of q and k in place. Launch kBlock threads per
/// block and cdiv(count, kBlock / kRowThreads * kHeads) blocks; head_dim at most kRowThreads * kVecs * (16 /
/// sizeof(T)). q and k must not overlap.
///
/// Each row group takes kHeads heads: all of them are loaded before the first is reduced, so that kHeads vectors a
/// lane are in flight (one 16-byte vector of one head is too few bytes per SM to cover the memory latency when a
/// head is 8 to 32 lanes' work), and a block does kHeads times the work of one launch slot. The heads of a block
/// interleave: step j of its row groups takes heads j * groups + 0, 1, ..., so that each load of a warp is one
/// contiguous run of heads.
template <typename T, bool kGemma, bool kVector, int kBlock, int kRowThreads, int kVecs, int kHeads>
__global__ void __launch_bounds__(kBlock)
    qk_rms_norm_kernel(T* q, T* k, const T* __restrict__ q_weight, const T* __restrict__ k_weight, uint32_t count,
                       uint32_t q_heads, uint32_t heads_per_token, int64_t q_stride, int64_t k_stride,
                       int64_t head_dim, float eps) {
  using namespace rms_norm_detail;
  static_assert(kRowThreads <= cujit::kWarpSize, "a head is normalised by lanes of one warp");
  static_assert(kHeads >= 1, "at least one head per row group");
  static_assert(check_config<T, kBlock, kRowThreads, kVecs, kPathScalar, 1>());
  using F = Fragment<kVector, T, kRowThreads, kVecs>;
  constexpr uint32_t kGroups = kBlock / kRowThreads;
  cujit::pdl_wait();  // q and k come from the previous kernel
  const uint32_t base = blockIdx.x * kGroups * kHeads + threadIdx.x / kRowThreads;
  const int64_t first = F::thread_offset(threadIdx.x % kRowThreads);
  qk_norm_detail::LaneHeads<T, F, kHeads> heads(q, k, q_weight, k_weight, base, kGroups, count, q_heads,
                                                heads_per_token, q_stride, k_stride, head_dim, first,
                                                [](int, const qk_norm_detail::Head<T>&) {});
#pragma unroll
  for (int j = 0; j < kHeads; ++j) {
    heads.template normalize<kBlock, kRowThreads, kGemma>(j, head_dim, eps);
    heads.held[j].store(heads.rows[j], heads.left[j]);
  }
}

#endif  // CUJIT_KERNELS_QK_NORM_CUH_
