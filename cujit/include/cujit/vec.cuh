/// @file cujit/vec.cuh
/// @brief Aligned vectors for 16-byte loads and stores, the widest single memory access a thread can make.
#ifndef CUJIT_VEC_CUH_
#define CUJIT_VEC_CUH_

#include <cujit/base.cuh>

namespace cujit {

namespace vec_detail {
/// Plain 32-bit words of 4, 8 or 16 bytes. A vector of 2-byte values assembled value by value (a map's outputs)
/// and stored as itself is emitted as 4-byte pieces (st.global.v2.u16); moved as words it is one access.
template <int kBytes>
struct alignas(kBytes) Words {
  uint32_t w[kBytes / 4];
};

/// The bytes of one object as another's, without type punning through pointers (which alias analysis may
/// reorder): memcpy, a built-in under NVRTC, __builtin_memcpy elsewhere. Compiles to register moves. `from` is
/// taken by value: a reference into global memory would be copied from there byte by byte.
template <typename To, typename From>
CUJIT_HOST_DEVICE To bit_copy(From from) {
  static_assert(sizeof(To) == sizeof(From), "bit_copy: sizes differ");
  To to;
#if defined(__CUDACC_RTC__)
  memcpy(&to, &from, sizeof(To));
#else
  __builtin_memcpy(&to, &from, sizeof(To));
#endif
  return to;
}
}  // namespace vec_detail

/// `N` values of type `T` aligned to their total size, so that a load or store is one instruction (vectors of 4, 8
/// or 16 bytes move as 32-bit words: see vec_detail::Words).
template <typename T, int N>
struct alignas(sizeof(T) * N) Vec {
  T data[N];

  CUJIT_HOST_DEVICE T& operator[](int i) { return data[i]; }
  CUJIT_HOST_DEVICE const T& operator[](int i) const { return data[i]; }

  /// Load `N` values from `p`, which must be aligned to `sizeof(Vec)`.
  CUJIT_DEVICE static Vec load(const T* p) {
    if constexpr (sizeof(Vec) == 4 || sizeof(Vec) == 8 || sizeof(Vec) == 16) {
      using W = vec_detail::Words<sizeof(Vec)>;
      return vec_detail::bit_copy<Vec>(*reinterpret_cast<const W*>(p));
    } else {
      return *reinterpret_cast<const Vec*>(p);
    }
  }

  /// Store to `p`, which must be aligned to `sizeof(Vec)`.
  CUJIT_DEVICE void store(T* p) const {
    if constexpr (sizeof(Vec) == 4 || sizeof(Vec) == 8 || sizeof(Vec) == 16) {
      using W = vec_detail::Words<sizeof(Vec)>;
      *reinterpret_cast<W*>(p) = vec_detail::bit_copy<W>(*this);
    } else {
      *reinterpret_cast<Vec*>(p) = *this;
    }
  }
};

/// The vector of `T` that fills 16 bytes: 4 floats, 8 halves, 16 bytes.
template <typename T>
using Vec16 = Vec<T, 16 / sizeof(T)>;

}  // namespace cujit

#endif  // CUJIT_VEC_CUH_
