// Every standard header that cujit stands in for under NVRTC, and compile-time checks that each name means what
// it means in device code compiled by nvcc. tests/test_std_headers.py compiles it for sm_80 and sm_90.
#include <algorithm>
#include <array>
#include <assert.h>
#include <bit>
#include <cassert>
#include <cfloat>
#include <climits>
#include <cmath>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <cuda.h>
#include <float.h>
#include <functional>
#include <initializer_list>
#include <iostream>
#include <limits.h>
#include <limits>
#include <math.h>
#include <numeric>
#include <optional>
#include <span>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <tuple>
#include <type_traits>
#include <utility>

// <cmath>: float overloads stay float, integers become double, as with the host's <cmath>.
static_assert(std::is_same<decltype(std::sqrt(2.0f)), float>::value, "std::sqrt(float) is float");
static_assert(std::is_same<decltype(std::exp(2.0)), double>::value, "std::exp(double) is double");
static_assert(std::is_same<decltype(std::sqrt(2)), double>::value, "std::sqrt(int) is double");
static_assert(std::is_same<decltype(std::abs(-2)), int>::value, "std::abs(int) is int");
static_assert(std::is_same<decltype(std::isnan(1.0f)), bool>::value, "std::isnan is bool");
static_assert(M_PI > 3.14159 && M_PI < 3.1416 && M_SQRT1_2 * M_SQRT2 > 0.999 && M_2_SQRTPI > 1.128, "M_ constants");
static_assert(FP_NAN != FP_NORMAL, "classification macros");
// <cstdint>, <cstddef>, <climits>, <cfloat>, <limits>: one set of types, agreeing with libcu++.
static_assert(std::is_same<std::int64_t, long long>::value && std::is_same<int64_t, std::int64_t>::value, "");
static_assert(std::is_same<std::uint8_t, unsigned char>::value && sizeof(std::uintptr_t) == sizeof(void*), "");
static_assert(std::is_same<std::size_t, size_t>::value && sizeof(std::ptrdiff_t) == 8, "");
static_assert(std::is_same<std::nullptr_t, decltype(nullptr)>::value, "");
static_assert(INT32_MAX == INT_MAX && UINT64_MAX == ULLONG_MAX && SIZE_MAX == UINT64_MAX && CHAR_BIT == 8, "");
static_assert(std::numeric_limits<float>::max() == FLT_MAX && std::numeric_limits<int>::min() == INT_MIN, "");
static_assert(std::numeric_limits<double>::epsilon() == DBL_EPSILON, "");
// The trait and utility headers are libcu++'s, under std::.
static_assert(std::is_same_v<std::remove_cvref_t<const int&>, int> && std::is_integral_v<unsigned>, "");
static_assert(std::min(3, 4) == 3 && std::max(3, 4) == 4 && std::clamp(7, 0, 5) == 5, "");
static_assert(std::tuple_size<std::tuple<int, float>>::value == 2, "");
static_assert(std::bit_width(8u) == 4 && std::has_single_bit(64u), "");
static_assert(std::is_same<decltype(std::declval<std::pair<int, float>>().second), float>::value, "");
// The prelude: what nvcc's implicit includes declare.
static_assert(std::is_same<ushort, unsigned short>::value && std::is_same<uint, unsigned int>::value, "");
static_assert(std::is_same<ulong, unsigned long>::value, "");
// <cuda.h>: the version and the device-side driver types.
static_assert(CUDA_VERSION >= 12000 && sizeof(CUtensorMap) == 128 && alignof(CUtensorMap) == 64, "");
static_assert(sizeof(CUdeviceptr) == 8, "");

__device__ float twice(float x) { return 2.0f * x; }

// Uses the run-time side of the same names, so that their device code is generated too.
template <float (*F)(float)>
__global__ void use_std(float* out, int n) {
  std::array<float, 4> a{1.0f, 2.0f, 3.0f, 4.0f};
  const float sum = std::accumulate(a.begin(), a.end(), 0.0f);
  const float top = *std::max_element(a.begin(), a.end());
  auto pair = std::make_pair(n, 0.5f);
  float v = F(sum) + top + pair.second + std::sqrt(2.0f) + static_cast<float>(std::exp(1)) + std::fmax(0.0f, -1.0f);
  float w = -INFINITY;
  std::swap(v, w);
  assert(n >= 0);
  if (threadIdx.x == 0 && n < 0) printf("n = %d\n", n);
  std::memcpy(out, &w, sizeof(w));
  out[1] = v + static_cast<float>(std::isnan(NAN)) + std::numeric_limits<float>::lowest() * 0.0f;
  out[2] = static_cast<float>(std::clamp(n, 0, 3)) + static_cast<float>(M_PI);
}
