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
///
/// A pair travels as one 64-bit key whose unsigned order is the rank order (rank_key), so a step of a round is a
/// 64-bit max. A row is one warp's serial chain of k rounds, and at many tokens the warps' instructions share the
/// SM's issue slots, so the instructions per round set the time at 1 token and at 4097 alike. Comparing (value,
/// expert, NaN) pairs field by field, a row of 256 experts with k = 8 took 16,935 cycles at 6.8 cycles per issued
/// instruction, about 2,500 instructions (H100, Nsight Compute; 6.8 us a call at 1 token, 15.8 us at 4097).
#ifndef CUJIT_KERNELS_TOPK_SOFTMAX_CUH_
#define CUJIT_KERNELS_TOPK_SOFTMAX_CUH_

#include <cujit/base.cuh>
#include <cujit/pdl.cuh>
#include <cujit/reduce.cuh>
#include <cujit/types.cuh>

namespace topk_softmax_detail {

/// The most experts a row may take (k) at most: one lane of the row writes each.
constexpr int kMaxTopk = 8;

/// The rank key of probability p (>= 0 or NaN) of `expert`: p's bits plus one in the high word (a non-negative
/// float's bits order as its value; NaN gets the largest word, above every number, as torch.topk ranks it), the
/// expert's complement in the low word (equal probabilities: the lower expert first). Key 0 ranks below every
/// probability: an expert past the row, or one already taken.
CUJIT_DEVICE uint64_t rank_key(float p, int expert) {
  const uint32_t high = p != p ? 0xffffffffu : __float_as_uint(fabsf(p)) + 1u;
  return (static_cast<uint64_t>(high) << 32) | static_cast<uint32_t>(~expert);
}

/// The probability of a key (NaN for NaN's key).
CUJIT_DEVICE float key_value(uint64_t key) {
  const uint32_t high = static_cast<uint32_t>(key >> 32);
  return high == 0xffffffffu ? __int_as_float(0x7fffffff) : __uint_as_float(high - 1u);
}

/// The expert of a key.
CUJIT_DEVICE int key_expert(uint64_t key) { return static_cast<int>(~static_cast<uint32_t>(key)); }

CUJIT_DEVICE uint64_t max_key(uint64_t a, uint64_t b) { return a > b ? a : b; }

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

  // Experts past the row, and experts once taken, hold key 0.
  uint64_t keys[kPerLane];
#pragma unroll
  for (int j = 0; j < kPerLane; ++j) {
    const int e = j * kRowLanes + lane;
    keys[j] = e < experts ? rank_key(p[j] / sum, e) : 0;
  }
  uint64_t mine = 0;    // the key of round `lane`
  float chosen = 0.0f;  // the sum of the chosen weights, in round order
#pragma unroll 1
  for (int round = 0; round < k; ++round) {
    uint64_t best = keys[0];
#pragma unroll
    for (int j = 1; j < kPerLane; ++j) best = max_key(best, keys[j]);
#pragma unroll
    for (int offset = kRowLanes / 2; offset > 0; offset /= 2) {
      best = max_key(best, __shfl_xor_sync(0xffffffffu, best, offset));
    }
    if (lane == round) mine = best;
    chosen += key_value(best);
#pragma unroll
    for (int j = 0; j < kPerLane; ++j) {
      if (keys[j] == best) keys[j] = 0;
    }
  }
  if (live && lane < k) {
    const float weight = key_value(mine);
    weights[r * k + lane] = renormalize ? weight / chosen : weight;
    ids[r * k + lane] = key_expert(mine);
  }
}

#endif  // CUJIT_KERNELS_TOPK_SOFTMAX_CUH_
