/// @file ops_test.cuh
/// @brief Small kernels that exercise the op API: strided rows, several outputs, in-place tensors, optional tensors,
/// two launches with a scratch buffer, and every scalar parameter type. Simple enough to check against torch.
#include <cujit/base.cuh>
#include <cujit/reduce.cuh>
#include <cujit/types.cuh>

/// out[r, c] = x[r, c] * w[c] * alpha, rows strided.
template <typename T>
__global__ void scale_rows(T* out, const T* x, const T* w, int64_t rows, int64_t cols, int64_t x_stride,
                           int64_t out_stride, float alpha) {
  const int64_t r = blockIdx.x;
  if (r >= rows) return;
  for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) {
    const float v = cujit::to_float(x[r * x_stride + c]) * cujit::to_float(w[c]) * alpha;
    out[r * out_stride + c] = cujit::from_float<T>(v);
  }
}

/// mins[r] and maxs[r] of each row of a contiguous [rows, cols] tensor (one warp per row).
template <typename T>
__global__ void minmax_rows(float* mins, float* maxs, const T* x, int64_t rows, int64_t cols) {
  const int64_t r = blockIdx.x;
  if (r >= rows) return;
  float lo = 3.4e38f, hi = -3.4e38f;
  for (int64_t c = threadIdx.x; c < cols; c += 32) {
    const float v = cujit::to_float(x[r * cols + c]);
    lo = fminf(lo, v);
    hi = fmaxf(hi, v);
  }
  lo = cujit::warp_reduce(lo, cujit::Min());
  hi = cujit::warp_reduce(hi, cujit::Max());
  if (threadIdx.x == 0) {
    mins[r] = lo;
    maxs[r] = hi;
  }
}

/// y += a * x, in place on y.
template <typename T>
__global__ void axpy(T* y, const T* x, float a, int64_t n) {
  for (uint64_t i : cujit::grid_stride(n)) y[i] = cujit::from_float<T>(cujit::to_float(y[i]) + a * cujit::to_float(x[i]));
}

/// out = x * (*scale) where a scale tensor is given, else out = x.
template <typename T, bool kScaled>
__global__ void maybe_scaled(T* out, const T* x, const float* scale, int64_t n) {
  const float s = kScaled ? *scale : 1.0f;
  for (uint64_t i : cujit::grid_stride(n)) out[i] = cujit::from_float<T>(cujit::to_float(x[i]) * s);
}

/// First pass of a sum: each block adds its chunk into partials[block].
__global__ void partial_sums(float* partials, const float* x, int64_t n) {
  float acc = 0.0f;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    acc += x[i];
  }
  acc = cujit::block_sum(acc);
  if (threadIdx.x == 0) partials[blockIdx.x] = acc;
}

/// Second pass: one block adds the partials.
__global__ void finish_sum(float* total, const float* partials, int64_t count) {
  float acc = 0.0f;
  for (int64_t i = threadIdx.x; i < count; i += blockDim.x) acc += partials[i];
  acc = cujit::block_sum(acc);
  if (threadIdx.x == 0) total[0] = acc;
}

struct Pair {
  int32_t a;
  float b;
};

/// Writes every scalar it receives, converted to double, so a test can read back what was packed.
__global__ void all_types(double* out, int8_t a, uint8_t b, int16_t c, uint16_t d, int32_t e, uint32_t f, int64_t g,
                          uint64_t h, float i, double j, bool k, fp16_t l, bf16_t m, Pair n) {
  out[0] = a;
  out[1] = b;
  out[2] = c;
  out[3] = d;
  out[4] = e;
  out[5] = f;
  out[6] = static_cast<double>(g);
  out[7] = static_cast<double>(h);
  out[8] = i;
  out[9] = j;
  out[10] = k ? 1.0 : 0.0;
  out[11] = __half2float(l);
  out[12] = __bfloat162float(m);
  out[13] = n.a;
  out[14] = n.b;
}
