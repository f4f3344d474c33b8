/// @file odd_widths.cuh
/// @brief y = x * a + b over rows (a and b per column), written twice for benchmarks/odd_widths.py: the usual way
/// (16-byte vectors only when the row is whole vectors and every pointer is aligned, element by element
/// otherwise) and with cujit/rows.cuh (vectors between each row's first and last 16-byte boundary). One block
/// per row; rows of x and y are `x_stride` and `y_stride` elements apart.
#include <cujit/base.cuh>
#include <cujit/rows.cuh>
#include <cujit/types.cuh>
#include <cujit/vec.cuh>

namespace odd_widths {

template <typename T>
CUJIT_DEVICE T affine(T x, T a, T b) {
  return cujit::from_float<T>(cujit::to_float(x) * cujit::to_float(a) + cujit::to_float(b));
}

}  // namespace odd_widths

/// Vectorized only when it is easy: cols a multiple of the vector width and every row start aligned.
template <typename T>
__global__ void affine_aligned_only(T* y, const T* x, const T* a, const T* b, uint64_t cols, uint64_t x_stride,
                                    uint64_t y_stride) {
  using V = cujit::Vec16<T>;
  constexpr uint64_t kLanes = 16 / sizeof(T);
  const T* xr = x + blockIdx.x * x_stride;
  T* yr = y + blockIdx.x * y_stride;
  const bool vector = cols % kLanes == 0 && cujit::is_aligned(xr, 16) && cujit::is_aligned(yr, 16) &&
                      cujit::is_aligned(a, 16) && cujit::is_aligned(b, 16);
  if (vector) {
    for (uint64_t c : cujit::StridedRange(threadIdx.x * kLanes, cols, blockDim.x * kLanes)) {
      const V xv = V::load(xr + c);
      const V av = V::load(a + c);
      const V bv = V::load(b + c);
      V out;
#pragma unroll
      for (uint64_t k = 0; k < kLanes; ++k) out[k] = odd_widths::affine(xv[k], av[k], bv[k]);
      out.store(yr + c);
    }
  } else {
    for (uint64_t c : cujit::StridedRange(threadIdx.x, cols, blockDim.x)) yr[c] = odd_widths::affine(xr[c], a[c], b[c]);
  }
}

/// The same with cujit::row_map: every row at full width, whatever its length and alignment.
template <typename T>
__global__ void affine_rows(T* y, const T* x, const T* a, const T* b, uint64_t cols, uint64_t x_stride,
                            uint64_t y_stride) {
  cujit::row_map(y + blockIdx.x * y_stride, cols, cujit::Threads::block(),
                 [](T v, T s, T t) { return odd_widths::affine(v, s, t); }, x + blockIdx.x * x_stride, a, b);
}
