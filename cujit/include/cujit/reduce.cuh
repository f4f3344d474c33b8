/// @file cujit/reduce.cuh
/// @brief Warp and block reductions: register shuffles, and redux.sync for unsigned max and min.
#ifndef CUJIT_REDUCE_CUH_
#define CUJIT_REDUCE_CUH_

#include <cujit/base.cuh>

namespace cujit {

constexpr int kWarpSize = 32;

/// Sum.
struct Sum {
  template <typename T>
  CUJIT_HOST_DEVICE T operator()(T a, T b) const { return a + b; }
};

/// Maximum.
struct Max {
  template <typename T>
  CUJIT_HOST_DEVICE T operator()(T a, T b) const { return a > b ? a : b; }
};

/// Minimum.
struct Min {
  template <typename T>
  CUJIT_HOST_DEVICE T operator()(T a, T b) const { return a < b ? a : b; }
};

/// An unsigned key whose order is the order of the float x: a non-negative x gets its bits with the sign bit set,
/// a negative one its bits inverted. +0 ranks above -0; a NaN with the sign bit clear ranks above +inf, one with it
/// set below -inf. float_of_order_key inverts it.
CUJIT_HOST_DEVICE unsigned float_order_key(unsigned float_bits) {
  return float_bits ^ ((float_bits >> 31) ? 0xffffffffu : 0x80000000u);
}

CUJIT_HOST_DEVICE unsigned float_of_order_key(unsigned key) {
  return key ^ ((key >> 31) ? 0x80000000u : 0xffffffffu);
}

#if defined(__CUDACC__)
#if (defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800) || defined(CUJIT_EMULATE_REDUX)
#define CUJIT_REDUX 1  // redux.sync: a warp's unsigned 32-bit max, min, sum and bit ops in one instruction
#endif

namespace reduce_detail {
template <typename A, typename B>
constexpr bool kSame = false;
template <typename A>
constexpr bool kSame<A, A> = true;

/// The butterfly: log2(kLanes) dependent exchanges, every lane ending with its group's result.
template <int kLanes, typename T, typename Op>
CUJIT_DEVICE T shuffle_reduce(T value, Op op) {
#pragma unroll
  for (int offset = kLanes / 2; offset > 0; offset /= 2) {
    value = op(value, __shfl_xor_sync(0xffffffffu, value, offset));
  }
  return value;
}
}  // namespace reduce_detail

/// Reduce `value` over the 32 lanes of a full warp; every lane gets the result. With kLanes (a power of two up to
/// 32, e.g. `warp_reduce<8>(v, Max())`), over each aligned group of kLanes lanes instead, every lane getting its
/// group's result; the whole warp must still call it. Over a full warp, an unsigned 32-bit Max or Min is one
/// redux.sync from sm_80 on (a maximum of float bits, as the FP8 scales take it, included), where the butterfly
/// takes five dependent exchanges. Over part of a warp the butterfly stays: redux.sync would need the group's mask
/// from the lane id, and the SASS then spends on the mask and a warp sync what it saves on the exchanges.
template <int kLanes = kWarpSize, typename T, typename Op = Sum>
CUJIT_DEVICE T warp_reduce(T value, Op op = Op()) {
  static_assert(kLanes > 0 && kLanes <= kWarpSize && (kLanes & (kLanes - 1)) == 0, "kLanes: a power of two <= 32");
#if defined(CUJIT_REDUX)
  constexpr bool kWhole = kLanes == kWarpSize && reduce_detail::kSame<T, unsigned>;
  if constexpr (kWhole && reduce_detail::kSame<Op, Max>) {
    return __reduce_max_sync(0xffffffffu, value);
  } else if constexpr (kWhole && reduce_detail::kSame<Op, Min>) {
    return __reduce_min_sync(0xffffffffu, value);
  } else {
    return reduce_detail::shuffle_reduce<kLanes>(value, op);
  }
#else
  return reduce_detail::shuffle_reduce<kLanes>(value, op);
#endif
}

/// Sum over a full warp.
template <typename T>
CUJIT_DEVICE T warp_sum(T value) {
  return warp_reduce(value, Sum());
}

/// Reduce `value` over the whole block (blockDim.x a multiple of 32, at most 1024 threads); every thread gets the
/// result. Uses 32 values of shared memory and two barriers; call it from every thread of the block.
template <typename T, typename Op = Sum>
CUJIT_DEVICE T block_reduce(T value, Op op = Op()) {
  __shared__ T partial[kWarpSize];
  const int lane = threadIdx.x % kWarpSize;
  const int warp = threadIdx.x / kWarpSize;
  const int warps = blockDim.x / kWarpSize;
  value = warp_reduce(value, op);
  if (lane == 0) partial[warp] = value;
  __syncthreads();
  // Warp 0 combines the per-warp partials with a shuffle tree; a lane adds its neighbour only when that
  // neighbour holds a real partial, so no identity element is needed and any op works.
  T total = partial[lane < warps ? lane : 0];
  if (warp == 0) {
#pragma unroll
    for (int offset = kWarpSize / 2; offset > 0; offset /= 2) {
      T other = __shfl_down_sync(0xffffffffu, total, offset);
      if (lane + offset < warps) total = op(total, other);
    }
    if (lane == 0) partial[0] = total;
  }
  __syncthreads();
  total = partial[0];
  __syncthreads();  // partial may be reused by a following call
  return total;
}

/// Sum over the whole block.
template <typename T>
CUJIT_DEVICE T block_sum(T value) {
  return block_reduce(value, Sum());
}
#endif

}  // namespace cujit

#endif  // CUJIT_REDUCE_CUH_
