// A kernel file with its host launcher beside it, not guarded: NVRTC rejects the launcher.
#include <cstdint>

__global__ void scale(float* x, float a, int64_t n) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i < n) x[i] *= a;
}

void launch_scale(float* x, float a, int64_t n) { scale<<<(n + 255) / 256, 256>>>(x, a, n); }
