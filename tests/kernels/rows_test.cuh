// Kernels over cujit/rows.cuh for tests/test_rows_gpu.py (GPU) and tests/test_rows_compile.py (every dtype,
// sm_80 and sm_90, no GPU).
//
// The "cases" kernels run many rows in one launch: row c has `n` values at element offsets y_at, a_at and b_at of
// the buffers, given as cases[4 * c + 0..3] = (y_at, a_at, b_at, n), and is walked by a group of `group` threads
// of a block (group == blockDim.x: one row per block, through Threads::block()). So one launch covers every
// combination of head, tail and the alignment of each pointer.
#include <cujit/base.cuh>
#include <cujit/rows.cuh>
#include <cujit/types.cuh>

namespace rows_test {

/// Arithmetic that is exact for the small integer values the tests use (|v| <= 8), in every dtype: integers
/// natively (wrapping through the unsigned type of the same width), floats through float.
template <typename T>
struct Arith {
  static CUJIT_DEVICE T add(T a, T b) { return static_cast<T>(a + b); }
  static CUJIT_DEVICE T of(int64_t v) { return static_cast<T>(v); }
  static CUJIT_DEVICE double value(T v) { return static_cast<double>(v); }
};

template <typename T>
struct FloatArith {
  static CUJIT_DEVICE T add(T a, T b) { return cujit::from_float<T>(cujit::to_float(a) + cujit::to_float(b)); }
  static CUJIT_DEVICE T of(int64_t v) { return cujit::from_float<T>(static_cast<float>(v)); }
  static CUJIT_DEVICE double value(T v) { return static_cast<double>(cujit::to_float(v)); }
};
template <>
struct Arith<fp16_t> : FloatArith<fp16_t> {};
template <>
struct Arith<bf16_t> : FloatArith<bf16_t> {};
template <>
struct Arith<fp8_e4m3_t> : FloatArith<fp8_e4m3_t> {};
template <>
struct Arith<fp8_e5m2_t> : FloatArith<fp8_e5m2_t> {};
template <>
struct Arith<bool> {
  static CUJIT_DEVICE bool add(bool a, bool b) { return a != b; }  // addition modulo 2
  static CUJIT_DEVICE bool of(int64_t v) { return (v & 1) != 0; }
  static CUJIT_DEVICE double value(bool v) { return v ? 1.0 : 0.0; }
};

/// The row of the group this thread belongs to, and the group as cujit::Threads.
struct Case {
  uint64_t index;
  cujit::Threads threads;
  CUJIT_DEVICE explicit Case(uint32_t group)
      : index(static_cast<uint64_t>(blockIdx.x) * (blockDim.x / group) + threadIdx.x / group),
        threads(group == blockDim.x ? cujit::Threads::block() : cujit::Threads::group(group)) {}
};

}  // namespace rows_test

/// y[i] = a[i] + a[i] for each row of `cases`.
template <typename T, int kUnroll>
__global__ void rows_map1(T* y, const T* a, const int64_t* cases, uint64_t count, uint32_t group) {
  using A = rows_test::Arith<T>;
  const rows_test::Case c(group);
  if (c.index >= count) return;
  const int64_t* at = cases + 4 * c.index;
  cujit::row_map<kUnroll>(y + at[0], static_cast<uint64_t>(at[3]), c.threads, [](T x) { return A::add(x, x); },
                          a + at[1]);
}

/// y[i] = a[i] + b[i] for each row of `cases`: the three pointers may each have their own alignment.
template <typename T>
__global__ void rows_map2(T* y, const T* a, const T* b, const int64_t* cases, uint64_t count, uint32_t group) {
  using A = rows_test::Arith<T>;
  const rows_test::Case c(group);
  if (c.index >= count) return;
  const int64_t* at = cases + 4 * c.index;
  cujit::row_map(y + at[0], static_cast<uint64_t>(at[3]), c.threads, [](T p, T q) { return A::add(p, q); },
                 a + at[1], b + at[2]);
}

/// y[i] = T(i % 7 - 3) for each row of `cases`.
template <typename T>
__global__ void rows_write(T* y, const int64_t* cases, uint64_t count, uint32_t group) {
  using A = rows_test::Arith<T>;
  const rows_test::Case c(group);
  if (c.index >= count) return;
  const int64_t* at = cases + 4 * c.index;
  cujit::row_write(y + at[0], static_cast<uint64_t>(at[3]), c.threads,
                   [](uint64_t i) { return A::of(static_cast<int64_t>(i % 7) - 3); });
}

/// For each row c of `cases` (reading a at a_at): out[2c] = the number of calls of the visitor, out[2c + 1] = the
/// sum of (i + 1) * a[i]; both are exact in double for the sizes the tests use.
template <typename T>
__global__ void rows_read(double* out, const T* a, const int64_t* cases, uint64_t count, uint32_t group) {
  using A = rows_test::Arith<T>;
  const rows_test::Case c(group);
  if (c.index >= count) return;
  const int64_t* at = cases + 4 * c.index;
  double calls = 0.0;
  double sum = 0.0;
  cujit::row_read(a + at[1], static_cast<uint64_t>(at[3]), c.threads, [&](uint64_t i, T v) {
    calls += 1.0;
    sum += static_cast<double>(i + 1) * A::value(v);
  });
  atomicAdd(out + 2 * c.index, calls);
  atomicAdd(out + 2 * c.index + 1, sum);
}

/// y[i] = a[i] + b[i] for i in [0, n), the whole grid walking one flat range.
template <typename T>
__global__ void flat_map2(T* y, const T* a, const T* b, uint64_t n) {
  using A = rows_test::Arith<T>;
  cujit::row_map(y, n, cujit::Threads::grid(), [](T p, T q) { return A::add(p, q); }, a, b);
}
