/// @file cujit/types.cuh
/// @brief The dtype aliases that `cujit.make_cpp_args` renders (fp16_t, bf16_t, fp8_e4m3_t, ...) and packed pairs.
///
/// Pulls in cuda_fp16.h, cuda_bf16.h and cuda_fp8.h (about 30 ms of NVRTC time): include it only where a
/// kernel uses these types. The aliases live in the global namespace because template arguments rendered by
/// make_cpp_args are spelled without a namespace.
#ifndef CUJIT_TYPES_CUH_
#define CUJIT_TYPES_CUH_

#include <cujit/base.cuh>

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>
#include <vector_types.h>

using fp16_t = __half;
using bf16_t = __nv_bfloat16;
using fp32_t = float;
using fp64_t = double;
using fp8_e4m3_t = __nv_fp8_e4m3;
using fp8_e5m2_t = __nv_fp8_e5m2;
/// Two values in one register, as the paired arithmetic instructions use them.
using fp16x2_t = __half2;
using bf16x2_t = __nv_bfloat162;
using fp8x2_e4m3_t = __nv_fp8x2_e4m3;
using fp8x2_e5m2_t = __nv_fp8x2_e5m2;
/// Complex numbers as (real, imaginary) pairs, the layout of torch and NumPy.
using complex64_t = float2;
using complex128_t = double2;

namespace cujit {

/// Conversions between a dtype and float, for kernels written once for several dtypes.
template <typename T>
struct Convert {
  CUJIT_HOST_DEVICE static float to_float(T x) { return static_cast<float>(x); }
  CUJIT_HOST_DEVICE static T from_float(float x) { return static_cast<T>(x); }
};

template <>
struct Convert<fp16_t> {
  CUJIT_DEVICE static float to_float(fp16_t x) { return __half2float(x); }
  CUJIT_DEVICE static fp16_t from_float(float x) { return __float2half_rn(x); }
};

template <>
struct Convert<bf16_t> {
  CUJIT_DEVICE static float to_float(bf16_t x) { return __bfloat162float(x); }
  CUJIT_DEVICE static bf16_t from_float(float x) { return __float2bfloat16_rn(x); }
};

template <>
struct Convert<fp8_e4m3_t> {
  CUJIT_DEVICE static float to_float(fp8_e4m3_t x) { return static_cast<float>(x); }
  CUJIT_DEVICE static fp8_e4m3_t from_float(float x) { return fp8_e4m3_t(x); }
};

template <>
struct Convert<fp8_e5m2_t> {
  CUJIT_DEVICE static float to_float(fp8_e5m2_t x) { return static_cast<float>(x); }
  CUJIT_DEVICE static fp8_e5m2_t from_float(float x) { return fp8_e5m2_t(x); }
};

/// `to_float(x)` for any dtype alias.
template <typename T>
CUJIT_DEVICE float to_float(T x) {
  return Convert<T>::to_float(x);
}

/// `from_float<T>(x)` for any dtype alias, rounding to nearest.
template <typename T>
CUJIT_DEVICE T from_float(float x) {
  return Convert<T>::from_float(x);
}

}  // namespace cujit

#endif  // CUJIT_TYPES_CUH_
