// C++20 in device code: concepts from <concepts>, std::type_identity_t from <type_traits>, a requires clause.
// Compiled with extra_cuda_cflags=["-std=c++20"], which replaces cujit's default -std=c++17.
#pragma once

#include <concepts>
#include <cstdint>
#include <type_traits>

namespace ported {

template <typename T>
concept Arithmetic = std::integral<T> || std::floating_point<T>;

// out[i] = alpha * x[i] + beta; alpha and beta take x's type (type_identity_t keeps them out of deduction).
template <Arithmetic T>
__global__ void axpb(T* __restrict__ out, const T* __restrict__ x, std::type_identity_t<T> alpha,
                     std::type_identity_t<T> beta, uint64_t n) {
  const uint64_t i = static_cast<uint64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n) out[i] = alpha * x[i] + beta;
}

// Integer division rounded up, only for integers.
template <typename T>
  requires std::integral<T>
__host__ __device__ constexpr T ceil_div(T a, T b) {
  return (a + b - 1) / b;
}
static_assert(ceil_div(10, 4) == 3);

}  // namespace ported
