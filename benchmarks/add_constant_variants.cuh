// Variants of add_constant_kernel for tuning its bandwidth (benchmarks/tune_add_constant.py).
#include <cujit/base.cuh>
#include <cujit/vec.cuh>

namespace tune {

template <int32_t kConstant>
__device__ __forceinline__ int32_t add(int32_t x) {
  return static_cast<int32_t>(static_cast<uint32_t>(x) + static_cast<uint32_t>(kConstant));
}

template <int32_t kConstant>
__device__ __forceinline__ int4 add4(int4 v) {
  return make_int4(add<kConstant>(v.x), add<kConstant>(v.y), add<kConstant>(v.z), add<kConstant>(v.w));
}

__device__ __forceinline__ int4 load_stream(const int4* p) { return __ldcs(p); }
__device__ __forceinline__ void store_stream(int4* p, int4 v) { __stcs(p, v); }

}  // namespace tune

/// One shot: each thread moves kUnroll vectors; kStream uses the streaming cache hints.
template <int32_t kConstant, int kBlock, int kUnroll, bool kStream>
__global__ void __launch_bounds__(kBlock) oneshot(int32_t* __restrict__ dst, const int32_t* __restrict__ src, uint64_t n) {
  const uint64_t chunks = n / 4;
  const uint64_t first = static_cast<uint64_t>(blockIdx.x) * (kBlock * kUnroll) + threadIdx.x;
  const int4* s = reinterpret_cast<const int4*>(src);
  int4* d = reinterpret_cast<int4*>(dst);
  int4 v[kUnroll];
#pragma unroll
  for (int u = 0; u < kUnroll; ++u) {
    const uint64_t i = first + static_cast<uint64_t>(u) * kBlock;
    if (i < chunks) v[u] = kStream ? tune::load_stream(s + i) : s[i];
  }
#pragma unroll
  for (int u = 0; u < kUnroll; ++u) {
    const uint64_t i = first + static_cast<uint64_t>(u) * kBlock;
    if (i < chunks) {
      const int4 w = tune::add4<kConstant>(v[u]);
      if (kStream) tune::store_stream(d + i, w); else d[i] = w;
    }
  }
}

/// Grid-stride: a fixed grid walks the array, kUnroll vectors per step.
template <int32_t kConstant, int kBlock, int kUnroll>
__global__ void __launch_bounds__(kBlock) gridstride(int32_t* __restrict__ dst, const int32_t* __restrict__ src, uint64_t n) {
  const uint64_t chunks = n / 4;
  const int4* s = reinterpret_cast<const int4*>(src);
  int4* d = reinterpret_cast<int4*>(dst);
  const uint64_t step = static_cast<uint64_t>(gridDim.x) * kBlock * kUnroll;
  for (uint64_t base = static_cast<uint64_t>(blockIdx.x) * kBlock * kUnroll + threadIdx.x; base < chunks; base += step) {
    int4 v[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const uint64_t i = base + static_cast<uint64_t>(u) * kBlock;
      if (i < chunks) v[u] = s[i];
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const uint64_t i = base + static_cast<uint64_t>(u) * kBlock;
      if (i < chunks) {
        d[i] = tune::add4<kConstant>(v[u]);
      }
    }
  }
}
