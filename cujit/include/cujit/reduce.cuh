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
/// Reduce `value` over the 32 lanes of a full warp; every lane gets the result. With kLanes (a power of two up to
/// 32, e.g. `warp_reduce<8>(v, Max())`), over each aligned group of kLanes lanes instead, every lane getting its
/// group's result; the whole warp must still call it.
template <int kLanes = kWarpSize, typename T, typename Op = Sum>
CUJIT_DEVICE T warp_reduce(T value, Op op = Op()) {
  static_assert(kLanes > 0 && kLanes <= kWarpSize && (kLanes & (kLanes - 1)) == 0, "kLanes: a power of two <= 32");
#pragma unroll
  for (int offset = kLanes / 2; offset > 0; offset /= 2) {
    value = op(value, __shfl_xor_sync(0xffffffffu, value, offset));
  }
  return value;
}

/// Sum over a full warp.
template <typename T>
CUJIT_DEVICE T warp_sum(T value) {
  return warp_reduce(value, Sum());
}

/// The mask of this lane's aligned group of kLanes lanes (a power of two up to 32).
template <int kLanes>
CUJIT_DEVICE unsigned lane_group_mask() {
  static_assert(kLanes > 0 && kLanes <= kWarpSize && (kLanes & (kLanes - 1)) == 0, "kLanes: a power of two <= 32");
  if constexpr (kLanes == kWarpSize) {
    return 0xffffffffu;
  } else {
    const unsigned first = (threadIdx.x % kWarpSize) & ~static_cast<unsigned>(kLanes - 1);
    return ((1u << kLanes) - 1u) << first;
  }
}

/// The largest (warp_umax) or smallest (warp_umin) unsigned 32-bit value over each aligned group of kLanes lanes;
/// every lane gets its group's result, and the whole warp must call it. From sm_80 on this is one redux.sync per
/// call (a single instruction where the shuffle tree takes log2(kLanes) dependent exchanges); before, the tree.
/// Signed or float values reduce through an order-preserving map to unsigned (see float_order_key).
template <int kLanes = kWarpSize>
CUJIT_DEVICE unsigned warp_umax(unsigned value) {
#if (defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800) || defined(CUJIT_EMULATE_REDUX)
  return __reduce_max_sync(lane_group_mask<kLanes>(), value);
#else
  return warp_reduce<kLanes>(value, Max());
#endif
}

template <int kLanes = kWarpSize>
CUJIT_DEVICE unsigned warp_umin(unsigned value) {
#if (defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800) || defined(CUJIT_EMULATE_REDUX)
  return __reduce_min_sync(lane_group_mask<kLanes>(), value);
#else
  return warp_reduce<kLanes>(value, Min());
#endif
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
