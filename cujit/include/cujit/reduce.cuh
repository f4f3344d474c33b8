/// @file cujit/reduce.cuh
/// @brief Warp and block reductions built on register shuffles.
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
