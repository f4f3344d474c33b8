// Kernels that exercise the launch path: scalar packing, by-value records, ordering, shared memory, faults.
#include <cujit/base.cuh>
#include <cujit/types.cuh>

__global__ void scalars(float* out, float f, double d, int32_t i, uint8_t u8, bool b, int64_t l, fp16_t h, bf16_t bf) {
  out[0] = f;
  out[1] = static_cast<float>(d);
  out[2] = static_cast<float>(i);
  out[3] = static_cast<float>(u8);
  out[4] = b ? 1.0f : 0.0f;
  out[5] = static_cast<float>(l);
  out[6] = __half2float(h);
  out[7] = __bfloat162float(bf);
}

/// Writes the double it was given, bit for bit, to tell a float32 argument from a float64 one.
__global__ void exact_float(double* out, float f) { out[0] = static_cast<double>(f); }

struct Pair {
  int32_t a;
  float b;
};

__global__ void by_value(float* out, Pair p) {
  out[0] = static_cast<float>(p.a);
  out[1] = p.b;
}

/// Busy-waits about `cycles` clock cycles, then sets flag[0] = value.
__global__ void spin_then_set(int32_t* flag, int64_t cycles, int32_t value) {
  const long long start = clock64();
  while (clock64() - start < cycles) {
  }
  flag[0] = value;
}

__global__ void copy_one(int32_t* dst, const int32_t* src) { dst[0] = src[0]; }

/// Reverses `blockDim.x` floats through dynamic shared memory of `blockDim.x * stride` floats.
__global__ void reverse_smem(float* out, const float* in, int32_t stride) {
  extern __shared__ float buffer[];
  buffer[threadIdx.x * stride] = in[threadIdx.x];
  __syncthreads();
  out[threadIdx.x] = buffer[(blockDim.x - 1 - threadIdx.x) * stride];
}

__global__ void trap_now() { __trap(); }

template <typename T>
__global__ void fill(T* out, T value, uint64_t n) {
  for (uint64_t i : cujit::grid_stride(n)) out[i] = value;
}
