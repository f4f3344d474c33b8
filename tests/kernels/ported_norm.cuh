// Kernels written the way public serving kernels are (vLLM, FlashInfer, SGLang): standard headers, CUB, a
// CUDA_VERSION check, enable_if overloads, a by-value parameter struct, a function-pointer template argument.
// They compile with cujit unchanged; tests/test_ported_kernels*.py check them.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <type_traits>
#include <utility>

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cub/block/block_reduce.cuh>

namespace ported {

// Parameters passed by value, as a struct.
struct NormParams {
  float eps;
  int hidden;
};

// Public RMSNorm kernels vectorize only the types they know; the bf16 specialisations need CUDA 12's headers.
template <typename T>
struct Packed {
  static constexpr bool vectorized = false;
};

#if CUDA_VERSION >= 12000
template <>
struct Packed<__half> {
  static constexpr bool vectorized = true;
  using type = __half2;
};
template <>
struct Packed<__nv_bfloat16> {
  static constexpr bool vectorized = true;
  using type = __nv_bfloat162;
};
#endif

__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename T>
__device__ __forceinline__ T from_float(float x) {
  if constexpr (std::is_same_v<T, __half>) {
    return __float2half_rn(x);
  } else if constexpr (std::is_same_v<T, __nv_bfloat16>) {
    return __float2bfloat16_rn(x);
  } else {
    return x;
  }
}

// The overload pair: which one a type gets is decided by CUDA_VERSION (through Packed). Each returns the path
// it stands for, so tests can see which one was chosen: 2 = vectorized, 1 = scalar.
template <typename T>
__host__ __device__ constexpr std::enable_if_t<Packed<T>::vectorized, int> norm_path() {
  return 2;
}
template <typename T>
__host__ __device__ constexpr std::enable_if_t<!Packed<T>::vectorized, int> norm_path() {
  return 1;
}

// out = rms_norm(in + residual) * weight; residual = in + residual. One block per row.
template <typename T, int kBlock>
__global__ void fused_add_rms_norm(T* __restrict__ out, T* __restrict__ residual, const T* __restrict__ in,
                                   const T* __restrict__ weight, NormParams p, int* path) {
  using Reduce = cub::BlockReduce<float, kBlock>;
  __shared__ typename Reduce::TempStorage storage;
  __shared__ float inv_rms;
  const int64_t row = blockIdx.x;
  const int hidden = p.hidden;
  float sum_sq = 0.0f;
  if constexpr (norm_path<T>() == 2) {
    // Two elements per step through the packed type (hidden is even for this path).
    using P = typename Packed<T>::type;
    auto* r2 = reinterpret_cast<P*>(residual + row * hidden);
    const auto* x2 = reinterpret_cast<const P*>(in + row * hidden);
    for (int i = threadIdx.x; i < hidden / 2; i += kBlock) {
      P v = __hadd2(x2[i], r2[i]);
      r2[i] = v;
      const float a = to_float(v.x), b = to_float(v.y);
      sum_sq += a * a + b * b;
    }
  } else {
    for (int i = threadIdx.x; i < hidden; i += kBlock) {
      const float v = to_float(in[row * hidden + i]) + to_float(residual[row * hidden + i]);
      residual[row * hidden + i] = from_float<T>(v);
      sum_sq += v * v;
    }
  }
  const float total = Reduce(storage).Sum(sum_sq);
  if (threadIdx.x == 0) inv_rms = rsqrtf(total / static_cast<float>(hidden) + p.eps);
  __syncthreads();
  for (int i = threadIdx.x; i < hidden; i += kBlock) {
    const float v = to_float(residual[row * hidden + i]);
    out[row * hidden + i] = from_float<T>(v * inv_rms * to_float(weight[i]));
  }
  if (row == 0 && threadIdx.x == 0) *path = norm_path<T>();
}

// Activations, passed to act_and_mul as function-pointer template arguments.
__device__ __forceinline__ float silu(float x) { return x / (1.0f + expf(-x)); }
__device__ __forceinline__ float gelu_tanh(float x) {
  constexpr float kBeta = M_SQRT2 * M_2_SQRTPI * 0.5f;  // sqrt(2 / pi), from the POSIX constants
  return 0.5f * x * (1.0f + tanhf(kBeta * (x + 0.044715f * x * x * x)));
}

// out[t, i] = act(x[t, i]) * x[t, d + i] for x of shape [tokens, 2 * d]. One block per token.
template <typename T, float (*Act)(float)>
__global__ void act_and_mul(T* __restrict__ out, const T* __restrict__ x, int d) {
  const int64_t token = blockIdx.x;
  for (int i = threadIdx.x; i < d; i += blockDim.x) {
    const float a = to_float(x[token * 2 * d + i]);
    const float b = to_float(x[token * 2 * d + d + i]);
    out[token * d + i] = from_float<T>(Act(a) * b);
  }
}

// The largest |x| of each row, starting from -infinity as max reductions do; uses <limits> and INFINITY.
template <typename T, int kBlock>
__global__ void row_abs_max(float* __restrict__ out, const T* __restrict__ x, int cols) {
  using Reduce = cub::BlockReduce<float, kBlock>;
  __shared__ typename Reduce::TempStorage storage;
  float m = -INFINITY;
  for (int i = threadIdx.x; i < cols; i += kBlock) m = std::fmax(m, std::fabs(to_float(x[blockIdx.x * cols + i])));
  const float total = Reduce(storage).Reduce(m, [](float a, float b) { return std::max(a, b); });
  if (threadIdx.x == 0) out[blockIdx.x] = cols ? total : -std::numeric_limits<float>::infinity();
}

}  // namespace ported
