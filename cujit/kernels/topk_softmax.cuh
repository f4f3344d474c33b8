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
/// logits). Then k rounds; in each, every lane of the row learns the round's winner, and its owner drops it.
///
/// A probability ranks by a 32-bit rank word (rank_word: its bits plus one, NaN's word the largest, 0 for an expert
/// taken or past the row), so a round is two unsigned reductions over the row's lanes: the largest word, then the
/// lowest expert holding it (equal probabilities: the lower expert first). From sm_80, for rows of a whole warp
/// (more than 16 experts), each is one redux.sync (cujit::warp_reduce of an unsigned Max or Min), and the row's max
/// of the softmax is one more, through an order-preserving map of the floats; rows of 8 or 16 lanes reduce by
/// shuffles. A row is one warp's serial chain of k rounds, and at many tokens the warps' instructions share the
/// SM's issue slots, so the instructions and the dependent steps of a round set the time at 1 token and at 4097
/// alike. Rounds that compared (value, expert, NaN) pairs field by field through five shuffle steps took, for a
/// row of 256 experts with k = 8, 16,935 cycles at 6.8 cycles per issued instruction, about 2,500 instructions
/// (H100, Nsight Compute; 6.8 us a call at 1 token, 15.8 us at 4097).
#ifndef CUJIT_KERNELS_TOPK_SOFTMAX_CUH_
#define CUJIT_KERNELS_TOPK_SOFTMAX_CUH_

#include <cujit/base.cuh>
#include <cujit/pdl.cuh>
#include <cujit/reduce.cuh>
#include <cujit/types.cuh>

namespace topk_softmax_detail {

/// The most experts a row may take (k) at most: one lane of the row writes each.
constexpr int kMaxTopk = 8;

/// The rank word of probability p (>= 0 or NaN): p's bits plus one (a non-negative float's bits order as its
/// value); NaN gets the largest word, above every number, as torch.topk ranks it. Word 0 ranks below every
/// probability: an expert past the row, or one already taken.
CUJIT_DEVICE uint32_t rank_word(float p) { return p != p ? 0xffffffffu : __float_as_uint(fabsf(p)) + 1u; }

/// The probability of a rank word (NaN for NaN's word).
CUJIT_DEVICE float word_value(uint32_t word) {
  return word == 0xffffffffu ? __int_as_float(0x7fffffff) : __uint_as_float(word - 1u);
}

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
  const bool live = r < rows;  // rows past the end still take part in their warp's reductions
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
  // The row's max as one unsigned reduction. A NaN that fmaxf skipped, or one that the map ranks first, makes
  // every probability of the row NaN all the same (through the sum, or through x - top).
  top = __uint_as_float(cujit::float_of_order_key(
      cujit::warp_reduce<kRowLanes>(cujit::float_order_key(__float_as_uint(top)), cujit::Max())));
  float sum = 0.0f;
#pragma unroll
  for (int j = 0; j < kPerLane; ++j) {
    p[j] = j * kRowLanes + lane < experts ? expf(p[j] - top) : 0.0f;
    sum += p[j];
  }
  sum = cujit::warp_reduce<kRowLanes>(sum, cujit::Sum());

  // Experts past the row, and experts once taken, hold word 0.
  uint32_t words[kPerLane];
#pragma unroll
  for (int j = 0; j < kPerLane; ++j) {
    words[j] = j * kRowLanes + lane < experts ? rank_word(p[j] / sum) : 0u;
  }
  uint32_t mine = 0;         // the word of round `lane`
  uint32_t mine_expert = 0;  // and its expert
  float chosen = 0.0f;       // the sum of the chosen weights, in round order
  constexpr uint32_t kNone = 0xffffffffu;  // no expert of this lane holds the round's word
#pragma unroll 1
  for (int round = 0; round < k; ++round) {
    uint32_t best = words[0];
#pragma unroll
    for (int j = 1; j < kPerLane; ++j) best = max(best, words[j]);
    best = cujit::warp_reduce<kRowLanes>(best, cujit::Max());
    // This lane's lowest expert holding the round's word (its experts rise with j), then the row's lowest.
    uint32_t expert = kNone;
#pragma unroll
    for (int j = kPerLane - 1; j >= 0; --j) {
      if (words[j] == best) expert = static_cast<uint32_t>(j * kRowLanes + lane);
    }
    expert = cujit::warp_reduce<kRowLanes>(expert, cujit::Min());
    if (lane == round) {
      mine = best;
      mine_expert = expert;
    }
    chosen += word_value(best);
#pragma unroll
    for (int j = 0; j < kPerLane; ++j) {
      if (static_cast<uint32_t>(j * kRowLanes + lane) == expert) words[j] = 0u;
    }
  }
  if (live && lane < k) {
    const float weight = word_value(mine);
    weights[r * k + lane] = renormalize ? weight / chosen : weight;
    ids[r * k + lane] = static_cast<int32_t>(mine_expert);
  }
}

#endif  // CUJIT_KERNELS_TOPK_SOFTMAX_CUH_
