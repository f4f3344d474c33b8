// Host emulation check of silu_and_mul_kernel and gelu_and_mul_kernel (erf and tanh forms) on the configurations
// and row layouts that cujit/silu_and_mul.py picks: the vector path and the row path (cujit/rows.cuh, segments of a
// long row over several groups, several short rows a block), x starting one element into its buffer; against a
// float64 reference, and every value of out past the rows untouched. The cases come from
// tests/test_emulated_kernels.py (activation_cases.inc).
#include "cuda_host.h"
#include "checks.h"
#include "activation.cuh"

#include <cstring>
#include <random>

/// kind: 0 silu, 1 gelu (erf), 2 gelu (tanh).
double reference(int kind, double a, double b) {
  if (kind == 0) return a / (1.0 + std::exp(-a)) * b;
  if (kind == 1) return 0.5 * a * (1.0 + std::erf(a / std::sqrt(2.0))) * b;
  const double inner = std::sqrt(2.0 / M_PI) * (a + 0.044715 * a * a * a);
  return 0.5 * a * (1.0 + std::tanh(inner)) * b;
}

template <typename T, bool kRows, int kBlock, int kVecs, int kKind>
int run(uint64_t d, uint64_t rows, int x_off, uint32_t group, uint64_t seg, uint64_t segs, unsigned grid,
        std::mt19937& rng) {
  std::normal_distribution<float> nd(0.0f, 2.0f);
  std::vector<T> xbuf(rows * 2 * d + x_off + 8), obuf(rows * d + 16);
  for (auto& v : xbuf) v = from_f<T>(nd(rng));
  std::memset(obuf.data(), 0x5A, obuf.size() * sizeof(T));
  const std::vector<T> o0 = obuf;
  const T* x = xbuf.data() + x_off;
  T* out = obuf.data();
  emu_launch(dim3(grid), dim3(kBlock), [&] {
    if constexpr (kKind == 0) silu_and_mul_kernel<T, kRows, kBlock, kVecs>(out, x, rows, d, group, seg, segs);
    else gelu_and_mul_kernel<T, kKind == 2, kRows, kBlock, kVecs>(out, x, rows, d, group, seg, segs);
  });
  int bad = 0;
  const double tol = tolerance<T>();
  for (uint64_t r = 0; r < rows; ++r)
    for (uint64_t i = 0; i < d; ++i) {
      const double want = reference(kKind, to_f(x[r * 2 * d + i]), to_f(x[r * 2 * d + d + i]));
      const double got = to_f(out[r * d + i]);
      if (!(std::abs(got - want) <= tol * std::abs(want) + 1e-5) && bad++ < 3)
        std::printf("  out[%llu, %llu] = %g, want %g\n", static_cast<unsigned long long>(r),
                    static_cast<unsigned long long>(i), got, want);
    }
  for (size_t i = rows * d; i < obuf.size(); ++i)
    if (!same_bits(obuf[i], o0[i]) && bad++ < 3) std::printf("  out[%zu] past the rows changed\n", i);
  return bad;
}

int main() {
  std::mt19937 rng(13);
  int failed = 0, n = 0;
#define CASE(T, ROWS_PATH, BLOCK, VECS, KIND, D, ROWS, X_OFF, GROUP, SEG, SEGS, GRID)                                \
  {                                                                                                                  \
    ++n;                                                                                                             \
    const int bad = run<T, ROWS_PATH, BLOCK, VECS, KIND>(D, ROWS, X_OFF, GROUP, SEG, SEGS, GRID, rng);               \
    if (bad) {                                                                                                       \
      ++failed;                                                                                                      \
      std::printf("FAIL %s row_path %d kind %d d %d rows %d x_off %d: %d bad\n", #T, ROWS_PATH, KIND, D, ROWS,       \
                  X_OFF, bad);                                                                                       \
    }                                                                                                                \
  }
#include "activation_cases.inc"
  std::printf("%d of %d cases passed\n", n - failed, n);
  return failed ? 1 : 0;
}
