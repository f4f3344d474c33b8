/// @file cujit/vec.cuh
/// @brief Aligned vectors for 16-byte loads and stores, the widest single memory access a thread can make.
#ifndef CUJIT_VEC_CUH_
#define CUJIT_VEC_CUH_

#include <cujit/base.cuh>

namespace cujit {

/// `N` values of type `T` aligned to their total size, so that a load or store is one instruction.
template <typename T, int N>
struct alignas(sizeof(T) * N) Vec {
  T data[N];

  CUJIT_HOST_DEVICE T& operator[](int i) { return data[i]; }
  CUJIT_HOST_DEVICE const T& operator[](int i) const { return data[i]; }

  /// Load `N` values from `p`, which must be aligned to `sizeof(Vec)`.
  CUJIT_DEVICE static Vec load(const T* p) { return *reinterpret_cast<const Vec*>(p); }

  /// Store to `p`, which must be aligned to `sizeof(Vec)`.
  CUJIT_DEVICE void store(T* p) const { *reinterpret_cast<Vec*>(p) = *this; }
};

/// The vector of `T` that fills 16 bytes: 4 floats, 8 halves, 16 bytes.
template <typename T>
using Vec16 = Vec<T, 16 / sizeof(T)>;

}  // namespace cujit

#endif  // CUJIT_VEC_CUH_
