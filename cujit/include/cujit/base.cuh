/// @file cujit/base.cuh
/// @brief Fixed-width integers, qualifiers, div_ceil and the device-side grid-stride range.
///
/// The root of every cujit header. It includes only <cstddef> and <cstdint>, which under NVRTC are cujit's light
/// stand-ins, so a kernel that needs only integers pays no extra compile time.
#ifndef CUJIT_BASE_CUH_
#define CUJIT_BASE_CUH_

// Under NVRTC these are cujit's stand-ins (cujit/include_nvrtc), a few declarations each; elsewhere (clangd, a
// host compiler) the real ones.
#include <cstddef>
#include <cstdint>

/// A function callable on host and device, inlined.
#define CUJIT_HOST_DEVICE __host__ __device__ __forceinline__
/// A device function, inlined.
#define CUJIT_DEVICE __device__ __forceinline__

namespace cujit {

/// Round-up integer division: the number of blocks of size `b` that cover `a` items.
template <typename T>
CUJIT_HOST_DEVICE constexpr T div_ceil(T a, T b) {
  return (a + b - 1) / b;
}

/// Whether pointer `p` is a multiple of `bytes` (a power of two).
template <typename T>
CUJIT_HOST_DEVICE bool is_aligned(const T* p, uint64_t bytes) {
  return (reinterpret_cast<uintptr_t>(p) & (bytes - 1)) == 0;
}

/// A half-open range [begin, end) walked with a fixed step; the device counterpart of the guide's irange.
class StridedRange {
 public:
  class Iterator {
   public:
    CUJIT_HOST_DEVICE Iterator(uint64_t value, uint64_t step) : value_(value), step_(step) {}
    CUJIT_HOST_DEVICE uint64_t operator*() const { return value_; }
    CUJIT_HOST_DEVICE Iterator& operator++() {
      value_ += step_;
      return *this;
    }
    // Ranges end where value >= end, so "not equal" means "still below the end".
    CUJIT_HOST_DEVICE bool operator!=(const Iterator& end) const { return value_ < end.value_; }

   private:
    uint64_t value_;
    uint64_t step_;
  };

  CUJIT_HOST_DEVICE StridedRange(uint64_t begin, uint64_t end, uint64_t step) : begin_(begin), end_(end), step_(step) {}
  CUJIT_HOST_DEVICE Iterator begin() const { return Iterator(begin_, step_); }
  CUJIT_HOST_DEVICE Iterator end() const { return Iterator(end_, step_); }

 private:
  uint64_t begin_;
  uint64_t end_;
  uint64_t step_;
};

/// [begin, end) with step 1, on host or device.
CUJIT_HOST_DEVICE StridedRange irange(uint64_t begin, uint64_t end) { return StridedRange(begin, end, 1); }

/// [0, end) with step 1, on host or device.
CUJIT_HOST_DEVICE StridedRange irange(uint64_t end) { return StridedRange(0, end, 1); }

#if defined(__CUDACC__)
/// This thread's index in the whole grid (x dimension), 64-bit.
CUJIT_DEVICE uint64_t global_thread_index() {
  return static_cast<uint64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
}

/// The number of threads in the whole grid (x dimension), 64-bit.
CUJIT_DEVICE uint64_t global_thread_count() { return static_cast<uint64_t>(gridDim.x) * blockDim.x; }

/// The indices [0, n) that this thread visits in a grid-stride loop: `for (auto i : cujit::grid_stride(n))`.
CUJIT_DEVICE StridedRange grid_stride(uint64_t n) {
  return StridedRange(global_thread_index(), n, global_thread_count());
}
#endif

#if defined(__CUDACC__) && !defined(CUJIT_HOST_EMULATION)
/// The block's dynamic shared memory (the bytes the launch asks for), 16-byte aligned, as T*. One declaration
/// for every kernel of a translation unit: two `extern __shared__` arrays of different types in one unit do not
/// compile. (tests/emulated/cuda_host.h gives its own.)
template <typename T>
CUJIT_DEVICE T* dynamic_shared() {
  extern __shared__ uint4 cujit_dynamic_shared[];
  return reinterpret_cast<T*>(cujit_dynamic_shared);
}
#endif

}  // namespace cujit

#endif  // CUJIT_BASE_CUH_
