// One kernel per device header, for tests/test_headers_gpu.py.
#include <cujit/base.cuh>
#include <cujit/check.cuh>
#include <cujit/reduce.cuh>
#include <cujit/types.cuh>
#include <cujit/vec.cuh>

/// out[i] = i for i in [0, n), through the grid-stride range.
__global__ void iota_grid_stride(int64_t* out, uint64_t n) {
  for (uint64_t i : cujit::grid_stride(n)) out[i] = static_cast<int64_t>(i);
}

/// out[0] = sum over irange(begin, end), out[1] = div_ceil(a, b), out[2] = is_aligned(p + offset, 16).
__global__ void integer_helpers(int64_t* out, uint64_t begin, uint64_t end, int64_t a, int64_t b, int32_t offset) {
  int64_t total = 0;
  for (uint64_t i : cujit::irange(begin, end)) total += static_cast<int64_t>(i);
  out[0] = total;
  out[1] = cujit::div_ceil(a, b);
  out[2] = cujit::is_aligned(reinterpret_cast<const char*>(out) + offset, 16) ? 1 : 0;
}

/// dst = src * 2 with 16-byte vectors of T (n a multiple of the vector width).
template <typename T>
__global__ void double_vec16(T* dst, const T* src, uint64_t n) {
  using V = cujit::Vec16<T>;
  constexpr int kWidth = sizeof(V) / sizeof(T);
  const uint64_t i = cujit::global_thread_index() * kWidth;
  if (i >= n) return;
  V v = V::load(src + i);
#pragma unroll
  for (int k = 0; k < kWidth; ++k) v[k] = cujit::from_float<T>(cujit::to_float(v[k]) * 2.0f);
  v.store(dst + i);
}

/// out[warp] = sum of in over each full warp; out[gridDim-wide block slot] = block sum, max, min.
__global__ void reductions(float* warp_sums, float* block_out, const float* in) {
  const float x = in[blockIdx.x * blockDim.x + threadIdx.x];
  const float w = cujit::warp_sum(x);
  if (threadIdx.x % cujit::kWarpSize == 0) warp_sums[(blockIdx.x * blockDim.x + threadIdx.x) / cujit::kWarpSize] = w;
  const float total = cujit::block_sum(x);
  const float top = cujit::block_reduce(x, cujit::Max());
  const float bottom = cujit::block_reduce(x, cujit::Min());
  if (threadIdx.x == 0) {
    block_out[3 * blockIdx.x + 0] = total;
    block_out[3 * blockIdx.x + 1] = top;
    block_out[3 * blockIdx.x + 2] = bottom;
  }
}

/// Passes when every value is non-negative; traps (with a message) otherwise.
__global__ void check_non_negative(const int32_t* values, uint64_t n) {
  for (uint64_t i : cujit::grid_stride(n)) CUJIT_DEVICE_CHECK(values[i] >= 0, "values must be non-negative");
}
