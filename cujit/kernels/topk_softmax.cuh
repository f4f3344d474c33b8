/// @file topk_softmax.cuh
/// @brief MoE router: the k largest probabilities of softmax(logits) per token, with their expert ids.
///
/// For each row of logits [tokens, experts] (fp32, fp16 or bf16, rows at any stride):
///     p       = softmax(float(logits[row]))            (in fp32: exp(x - max) / sum)
///     ids     = the k experts of largest p, by descending p; equal p: the lower expert id first
///     weights = p[ids], divided by their sum when renormalize
/// as vLLM's and SGLang's topk_softmax define it. A row holding NaN gets NaN probabilities, which rank above every
/// number (as torch.topk ranks them): its ids are then the lowest ones and its weights NaN.
///
/// Layout: kRowLanes lanes of one warp own a row (8, 16 or 32: several rows per warp for few experts), lane l
/// holding experts l, l + kRowLanes, ... (kPerLane of them, in registers; consecutive lanes read consecutive
/// logits). The max and the sum are shuffle reductions over the row's lanes; then k rounds, each a shuffle
/// reduction of (probability, expert) pairs that every lane of the row sees, after which the owner of the winner
/// drops it. Lane r of the row writes the result of round r (k is at most 8, and kRowLanes at least 8).
#ifndef CUJIT_KERNELS_TOPK_SOFTMAX_CUH_
#define CUJIT_KERNELS_TOPK_SOFTMAX_CUH_

#include <cujit/base.cuh>
#include <cujit/pdl.cuh>
#include <cujit/reduce.cuh>
#include <cujit/types.cuh>

namespace topk_softmax_detail {

/// The most experts a row may take (k) at most: one lane of the row writes each.
constexpr int kMaxTopk = 8;

/// Whether (a, ia) ranks before (b, ib): larger first, NaN above every number, the lower expert on a tie.
CUJIT_DEVICE bool ranks_before(float a, int ia, float b, int ib) {
  const bool a_nan = a != a;
  const bool b_nan = b != b;
  if (a_nan != b_nan) return a_nan;
  if (a > b) return true;
  return (a == b || a_nan) && ia < ib;
}

/// Reduce over the kRowLanes lanes of a row (an aligned group of lanes within one warp).
template <int kRowLanes, typename Op>
CUJIT_DEVICE float row_reduce(float value, Op op) {
#pragma unroll
  for (int offset = kRowLanes / 2; offset > 0; offset /= 2) {
    value = op(value, __shfl_xor_sync(0xffffffffu, value, offset));
  }
  return value;
}

/// max that ignores NaN unless both are NaN (fmaxf): the row's NaN then reaches every probability through the
/// sum, not the max.
struct MaxNumber {
  CUJIT_DEVICE float operator()(float a, float b) const { return fmaxf(a, b); }
};

}  // namespace topk_softmax_detail

/// weights[r, :] and ids[r, :] (k each, contiguous rows) for r < rows. kBlock threads per block own
/// kBlock / kRowLanes rows; launch cdiv(rows, kBlock / kRowLanes) blocks. Requires experts <= kRowLanes *
/// kPerLane and 1 <= k <= min(experts, kMaxTopk).
template <typename T, int kBlock, int kRowLanes, int kPerLane>
__global__ void __launch_bounds__(kBlock)
    topk_softmax_kernel(float* __restrict__ weights, int32_t* __restrict__ ids, const T* __restrict__ logits,
                        int64_t rows, int32_t experts, int64_t stride, int32_t k, bool renormalize) {
  using namespace topk_softmax_detail;
  static_assert(kRowLanes >= kMaxTopk && kRowLanes <= 32 && (kRowLanes & (kRowLanes - 1)) == 0, "lanes per row");
  static_assert(kBlock % 32 == 0 && kBlock <= 1024, "whole warps per block");
  cujit::pdl_wait();  // the logits come from the previous kernel
  const int lane = threadIdx.x % kRowLanes;
  const int64_t r = static_cast<int64_t>(blockIdx.x) * (kBlock / kRowLanes) + threadIdx.x / kRowLanes;
  const bool live = r < rows;  // rows past the end still take part in the shuffles of their warp
  const T* in = logits + (live ? r : 0) * stride;
  float p[kPerLane];
#pragma unroll
  for (int j = 0; j < kPerLane; ++j) {
    const int e = j * kRowLanes + lane;
    p[j] = live && e < experts ? cujit::to_float(in[e]) : -__int_as_float(0x7f800000);
  }
  cujit::pdl_launch_dependents();
  float top = -__int_as_float(0x7f800000);
#pragma unroll
  for (int j = 0; j < kPerLane; ++j) top = fmaxf(top, p[j]);
  top = row_reduce<kRowLanes>(top, MaxNumber());
  float sum = 0.0f;
#pragma unroll
  for (int j = 0; j < kPerLane; ++j) {
    p[j] = j * kRowLanes + lane < experts ? expf(p[j] - top) : 0.0f;
    sum += p[j];
  }
  sum = row_reduce<kRowLanes>(sum, cujit::Sum());
#pragma unroll
  for (int j = 0; j < kPerLane; ++j) p[j] = p[j] / sum;

  // Experts past the row and experts already taken hold -1: below every probability, never NaN.
#pragma unroll
  for (int j = 0; j < kPerLane; ++j) {
    if (j * kRowLanes + lane >= experts) p[j] = -1.0f;
  }
  float mine = 0.0f;  // the weight of round `lane`
  int mine_id = 0;
  float chosen = 0.0f;  // the sum of the chosen weights, in round order
#pragma unroll 1
  for (int round = 0; round < k; ++round) {
    float best = p[0];
    int best_id = lane;
#pragma unroll
    for (int j = 1; j < kPerLane; ++j) {
      if (ranks_before(p[j], j * kRowLanes + lane, best, best_id)) {
        best = p[j];
        best_id = j * kRowLanes + lane;
      }
    }
#pragma unroll
    for (int offset = kRowLanes / 2; offset > 0; offset /= 2) {
      const float other = __shfl_xor_sync(0xffffffffu, best, offset);
      const int other_id = __shfl_xor_sync(0xffffffffu, best_id, offset);
      if (ranks_before(other, other_id, best, best_id)) {
        best = other;
        best_id = other_id;
      }
    }
    if (lane == round) {
      mine = best;
      mine_id = best_id;
    }
    chosen += best;
#pragma unroll
    for (int j = 0; j < kPerLane; ++j) {
      if (j * kRowLanes + lane == best_id) p[j] = -1.0f;
    }
  }
  if (live && lane < k) {
    weights[r * k + lane] = renormalize ? mine / chosen : mine;
    ids[r * k + lane] = mine_id;
  }
}

#endif  // CUJIT_KERNELS_TOPK_SOFTMAX_CUH_
