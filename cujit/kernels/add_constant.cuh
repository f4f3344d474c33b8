/// @file add_constant.cuh
/// @brief dst[i] = src[i] + kConstant for int32, the running example of docs/guide.md.
///
/// Memory-bound: each thread moves one 16-byte vector (4 values), and the grid covers the whole tensor, the
/// layout that measured fastest on an H200 (1.00x torch's copy_ on 1 GiB; more vectors per thread and
/// grid-stride loops were 2-10% slower, see benchmarks/tune_add_constant.py). Pointers that are not 16-byte
/// aligned (views that start mid-vector) take a scalar path over the same chunks; the last n % 4 values are
/// done by block 0. Indices are 64-bit, so tensors of 2**31 elements and more work. dst may be src (in place).
#include <cujit/base.cuh>
#include <cujit/vec.cuh>

namespace add_constant_detail {

constexpr int kBlock = 256;  // threads per block; cujit/add_constant.py launches with the same number
constexpr int kLanes = 4;    // int32 values per 16-byte vector

/// Wrapping addition, as torch's int32 `x + c` behaves (signed overflow would be undefined in C++).
template <int32_t kConstant>
CUJIT_DEVICE int32_t add(int32_t x) {
  return static_cast<int32_t>(static_cast<uint32_t>(x) + static_cast<uint32_t>(kConstant));
}

}  // namespace add_constant_detail

template <int32_t kConstant>
__global__ void __launch_bounds__(add_constant_detail::kBlock)
    add_constant_kernel(int32_t* __restrict__ dst, const int32_t* __restrict__ src, uint64_t n) {
  using namespace add_constant_detail;
  using V = cujit::Vec<int32_t, kLanes>;
  const uint64_t chunks = n / kLanes;
  const uint64_t i = cujit::global_thread_index();
  if (i < chunks) {
    if (cujit::is_aligned(dst, sizeof(V)) && cujit::is_aligned(src, sizeof(V))) {
      V v = V::load(src + i * kLanes);
#pragma unroll
      for (int k = 0; k < kLanes; ++k) v[k] = add<kConstant>(v[k]);
      v.store(dst + i * kLanes);
    } else {
#pragma unroll
      for (int k = 0; k < kLanes; ++k) dst[i * kLanes + k] = add<kConstant>(src[i * kLanes + k]);
    }
  }
  if (blockIdx.x == 0 && threadIdx.x < n % kLanes) {
    const uint64_t j = chunks * kLanes + threadIdx.x;
    dst[j] = add<kConstant>(src[j]);
  }
}
