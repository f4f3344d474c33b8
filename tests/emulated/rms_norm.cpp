// Host emulation check of rms_norm_kernel and fused_add_rms_norm_kernel on the configurations the ops' rule picks
// (cujit/rms_norm.py): every path (vectors, element loads, phased, tiled), plain and Gemma weights, x one element
// into its rows, a weight that is not 16-byte aligned, against a float64 reference; the fused form's residual bit
// for bit; every value outside the rows untouched. The cases come from tests/test_emulated_kernels.py, which asks
// the rule for each shape's configuration and writes them to rms_norm_cases.inc.
#include "cuda_host.h"
#include "checks.h"

#include "rms_norm.cuh"

#include <cstring>
#include <random>

template <typename T, bool kGemma, int kPath, int kBlock, int kRowThreads, int kVecs, int kRows, bool kFused>
int run(int hidden, int tokens, int x_off, int w_off, int x_stride, std::mt19937& rng) {
  const float eps = 1e-6f;
  std::normal_distribution<float> nd;
  std::vector<T> xbuf(static_cast<size_t>(tokens) * x_stride + x_off + 16);
  std::vector<T> rbuf(static_cast<size_t>(tokens) * hidden + 16), obuf(static_cast<size_t>(tokens) * hidden + 16);
  std::vector<T> wbuf(hidden + w_off + 8);
  for (auto& v : xbuf) v = from_f<T>(nd(rng));
  for (auto& v : rbuf) v = from_f<T>(nd(rng));
  for (auto& v : wbuf) v = from_f<T>(nd(rng) * 0.5f + (kGemma ? 0.0f : 1.0f));
  std::memset(obuf.data(), 0x5A, obuf.size() * sizeof(T));
  const std::vector<T> x0 = xbuf, r0 = rbuf, o0 = obuf;
  T* x = xbuf.data() + x_off;
  T* residual = rbuf.data();
  T* out = obuf.data();
  const T* w = wbuf.data() + w_off;
  const unsigned blocks = (tokens + kBlock / kRowThreads * kRows - 1) / (kBlock / kRowThreads * kRows);
  emu_launch(dim3(blocks), dim3(kBlock), [&] {
    if constexpr (kFused) {
      fused_add_rms_norm_kernel<T, kGemma, kPath, kBlock, kRowThreads, kVecs, kRows>(x, residual, w, tokens, hidden,
                                                                                      x_stride, hidden, eps);
    } else {
      rms_norm_kernel<T, kGemma, kPath, kBlock, kRowThreads, kVecs, kRows>(out, x, w, tokens, hidden, x_stride,
                                                                           hidden, eps);
    }
  });
  int bad = 0;
  const double tol = tolerance<T>();
  std::vector<T> row(hidden);
  for (int t = 0; t < tokens; ++t) {
    const T* xr = x0.data() + x_off + static_cast<size_t>(t) * x_stride;
    for (int i = 0; i < hidden; ++i) {
      row[i] = kFused ? from_f<T>(to_f(r0[static_cast<size_t>(t) * hidden + i]) + to_f(xr[i])) : xr[i];
      if (kFused && !same_bits(rbuf[static_cast<size_t>(t) * hidden + i], row[i]) && bad++ < 3)
        std::printf("  residual[%d, %d] differs\n", t, i);
    }
    double squares = 0;
    for (int i = 0; i < hidden; ++i) squares += static_cast<double>(to_f(row[i])) * to_f(row[i]);
    const double inv = 1.0 / std::sqrt(squares / hidden + eps);
    const T* got = kFused ? x + static_cast<size_t>(t) * x_stride : out + static_cast<size_t>(t) * hidden;
    for (int i = 0; i < hidden; ++i) {
      const double wi = to_f(w[i]) + (kGemma ? 1.0 : 0.0);
      const double want = static_cast<double>(to_f(row[i])) * inv * wi;
      const double g = to_f(got[i]);
      if (!(std::abs(g - want) <= tol * std::abs(want) + 1e-6) && bad++ < 3)
        std::printf("  out[%d, %d] = %g, want %g\n", t, i, g, want);
    }
  }
  // Nothing outside the rows: the bytes of x between and after its rows, and out's poison past the rows.
  for (size_t i = 0; i < xbuf.size(); ++i) {
    const long rel = static_cast<long>(i) - x_off;
    const bool inside = rel >= 0 && rel / x_stride < tokens && rel % x_stride < hidden;
    if ((!kFused || !inside) && !same_bits(xbuf[i], x0[i]) && bad++ < 3) std::printf("  x[%zu] changed\n", i);
  }
  for (size_t i = static_cast<size_t>(tokens) * hidden; i < obuf.size(); ++i)
    if (!same_bits(obuf[i], o0[i]) && bad++ < 3) std::printf("  out[%zu] past the rows changed\n", i);
  if (kFused)
    for (size_t i = static_cast<size_t>(tokens) * hidden; i < rbuf.size(); ++i)
      if (!same_bits(rbuf[i], r0[i]) && bad++ < 3) std::printf("  residual[%zu] past the rows changed\n", i);
  return bad;
}

int main() {
  std::mt19937 rng(11);
  int failed = 0, n = 0;
#define CASE(T, GEMMA, PATH, BLOCK, ROW_THREADS, VECS, ROWS, FUSED, HIDDEN, TOKENS, X_OFF, W_OFF, X_STRIDE)          \
  {                                                                                                                  \
    ++n;                                                                                                             \
    const int bad = run<T, GEMMA, PATH, BLOCK, ROW_THREADS, VECS, ROWS, FUSED>(HIDDEN, TOKENS, X_OFF, W_OFF,         \
                                                                              X_STRIDE, rng);                       \
    if (bad) {                                                                                                       \
      ++failed;                                                                                                      \
      std::printf("FAIL %s gemma %d path %d block %d row_threads %d vecs %d rows %d fused %d hidden %d tokens %d "   \
                  "x_off %d w_off %d: %d bad\n", #T, GEMMA, PATH, BLOCK, ROW_THREADS, VECS, ROWS, FUSED, HIDDEN,     \
                  TOKENS, X_OFF, W_OFF, bad);                                                                        \
    }                                                                                                                \
  }
#include "rms_norm_cases.inc"
  std::printf("%d of %d cases passed\n", n - failed, n);
  return failed ? 1 : 0;
}
