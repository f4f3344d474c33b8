/// @file vec_io.cuh
/// @brief Loads and stores of a thread's chunk of N values, as 16-byte vectors or one value at a time; stores to
/// an fp8 e4m3 destination with a scale.
///
/// The rotary, KV-cache and FP8 kernels all move small fixed-size chunks whose start may or may not be aligned
/// (views of fused tensors, odd strides). Each helper takes a `vector` flag that the kernel computes once from its
/// pointers and strides: true gives accesses of min(16, N * sizeof(T)) bytes, false the element-wise path over the
/// same values. A chunk wider than 16 bytes is split into 16-byte accesses (never one wider access, which newer
/// GPUs would emit for a wider aligned type).
#ifndef CUJIT_KERNELS_VEC_IO_CUH_
#define CUJIT_KERNELS_VEC_IO_CUH_

#include <cujit/base.cuh>
#include <cujit/fp8.cuh>
#include <cujit/types.cuh>
#include <cujit/vec.cuh>

namespace vec_io {

/// Values of `T` per access for a chunk of `N` values.
template <typename T, int N>
CUJIT_HOST_DEVICE constexpr int access_values() {
  return (N * sizeof(T) > 16) ? static_cast<int>(16 / sizeof(T)) : N;
}

/// The bytes of one access of a chunk of `N` values of `T`: the alignment the vector path needs.
template <typename T, int N>
CUJIT_HOST_DEVICE constexpr uint64_t access_bytes() {
  return static_cast<uint64_t>(access_values<T, N>()) * sizeof(T);
}

/// Load `N` values at `p`.
template <typename T, int N>
CUJIT_DEVICE void load(const T* p, bool vector, T (&out)[N]) {
  constexpr int kAccess = access_values<T, N>();
  static_assert(N % kAccess == 0, "accesses must tile the chunk");
  if (vector) {
#pragma unroll
    for (int i = 0; i < N; i += kAccess) {
      const auto v = cujit::Vec<T, kAccess>::load(p + i);
#pragma unroll
      for (int j = 0; j < kAccess; ++j) out[i + j] = v[j];
    }
  } else {
#pragma unroll
    for (int i = 0; i < N; ++i) out[i] = p[i];
  }
}

/// Load `N` values at `p`, converted to float.
template <typename T, int N>
CUJIT_DEVICE void load_float(const T* p, bool vector, float (&out)[N]) {
  T raw[N];
  load<T, N>(p, vector, raw);
#pragma unroll
  for (int i = 0; i < N; ++i) out[i] = cujit::to_float(raw[i]);
}

/// Store `N` values at `p`.
template <typename T, int N>
CUJIT_DEVICE void store(T* p, bool vector, const T (&v)[N]) {
  constexpr int kAccess = access_values<T, N>();
  static_assert(N % kAccess == 0, "accesses must tile the chunk");
  if (vector) {
#pragma unroll
    for (int i = 0; i < N; i += kAccess) {
      cujit::Vec<T, kAccess> w;
#pragma unroll
      for (int j = 0; j < kAccess; ++j) w[j] = v[i + j];
      w.store(p + i);
    }
  } else {
#pragma unroll
    for (int i = 0; i < N; ++i) p[i] = v[i];
  }
}

/// Round `N` floats to `T` (to nearest even) and store them at `p`.
template <typename T, int N>
CUJIT_DEVICE void store_float(T* p, bool vector, const float (&v)[N]) {
  T r[N];
#pragma unroll
  for (int i = 0; i < N; ++i) r[i] = cujit::from_float<T>(v[i]);
  store<T, N>(p, vector, r);
}

/// Whether `T` is the fp8 e4m3 storage, which the stores below fill through a scale.
template <typename T>
constexpr bool is_fp8 = false;
template <>
constexpr bool is_fp8<fp8_e4m3_t> = true;

/// Store `N` values of `T` at `p` of dtype `OutT`: the same values when OutT is T, else the e4m3 bytes of
/// saturate(float(v) / scale) (an IEEE division, rounded to nearest even).
template <typename T, typename OutT, int N>
CUJIT_DEVICE void store_as(OutT* p, bool vector, const T (&v)[N], float scale) {
  if constexpr (is_fp8<OutT>) {
    float x[N];
#pragma unroll
    for (int i = 0; i < N; ++i) x[i] = cujit::to_float(v[i]) / scale;
    uint8_t bytes[N];
    if constexpr (N % 2 == 0) {
      cujit::fp8_e4m3_saturate<N>(x, bytes);
    } else {
#pragma unroll
      for (int i = 0; i < N; ++i) bytes[i] = cujit::fp8_e4m3_saturate(x[i]);
    }
    store<uint8_t, N>(reinterpret_cast<uint8_t*>(p), vector, bytes);
  } else {
    static_assert(sizeof(OutT) == sizeof(T), "a destination that is not fp8 has the source dtype");
    store<T, N>(reinterpret_cast<T*>(p), vector, v);
  }
}

/// Round `N` floats to `T` (to nearest even), then store them as store_as does.
template <typename T, typename OutT, int N>
CUJIT_DEVICE void store_float_as(OutT* p, bool vector, const float (&v)[N], float scale) {
  T r[N];
#pragma unroll
  for (int i = 0; i < N; ++i) r[i] = cujit::from_float<T>(v[i]);
  store_as<T, OutT, N>(p, vector, r, scale);
}

}  // namespace vec_io

#endif  // CUJIT_KERNELS_VEC_IO_CUH_
