// Instantiates FlashInfer's RMSNorm, fused add RMSNorm and gated-activation kernels from the headers of the
// published flashinfer-python wheel, which tests/test_public_kernels.py finds, copies with its listed guards of host
// code, and puts on the include path. Nothing of FlashInfer is in this repository.
//
// activation.cuh takes the activation as a template argument, float (*)(const float&); FlashInfer's bindings
// define theirs outside the headers, so these are written here.
#pragma once

#include <flashinfer/activation.cuh>
#include <flashinfer/norm.cuh>

namespace public_kernels {

__device__ __forceinline__ float silu(const float& x) { return x / (1.0f + expf(-x)); }

__device__ __forceinline__ float gelu(const float& x) { return 0.5f * x * (1.0f + erff(x * 0.70710678118654752f)); }

__device__ __forceinline__ float gelu_tanh(const float& x) {
  const float inner = 0.79788456080286536f * (x + 0.044715f * x * x * x);  // sqrt(2 / pi) * (x + 0.044715 x^3)
  return 0.5f * x * (1.0f + tanhf(inner));
}

}  // namespace public_kernels
