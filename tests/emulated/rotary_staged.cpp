// Host emulation check of rotary_embedding_kernel's staged form against a direct per-pair rotation.
#include "cuda_host.h"
#include "checks.h"
#include "rotary.cuh"

#include <cstring>
#include <random>

/// tokens, q and k heads, head size D, rotary dim R, q's and k's offsets (values past a 16-byte boundary), heads per
/// block, style.
struct Case { int tokens, qh, kh, D, R, q_off, k_off, per_block; bool neox; };

template <typename T, bool kNeox>
int run(const Case& c, std::mt19937& rng) {
  const int QW = c.qh * c.D, KW = c.kh * c.D;
  const int QS = QW + c.q_off + 3, KS = KW + c.k_off + 5;  // rows apart by more than their width
  const int P = 64;
  std::vector<T> qbuf(c.tokens * QS + 16), kbuf(c.tokens * KS + 16), q0, k0;
  std::normal_distribution<float> nd;
  for (auto& v : qbuf) v = from_f<T>(nd(rng));
  for (auto& v : kbuf) v = from_f<T>(nd(rng));
  q0 = qbuf; k0 = kbuf;
  std::vector<float> cs(P * c.R);
  for (auto& v : cs) v = nd(rng);
  std::vector<int64_t> pos(c.tokens);
  for (auto& p : pos) p = rng() % P;
  // operator new aligns the buffers to 16 bytes, so q_off and k_off are the offsets past a 16-byte boundary.
  T* q = qbuf.data() + c.q_off;
  T* k = kbuf.data() + c.k_off;
  const int heads = c.qh + c.kh;
  const unsigned groups = (heads + c.per_block - 1) / c.per_block;
  emu_launch(dim3(c.tokens, groups, 1), dim3(256, 1, 1), [&] {
    rotary_embedding_kernel<T, float, int64_t, kNeox, 1, true>(pos.data(), q, k, cs.data(), QS, KS, c.qh, c.kh,
                                                                  c.D, c.R, P, c.per_block);
  });
  int bad = 0;
  auto check = [&](std::vector<T>& got, std::vector<T>& before, int off, int stride, int nh, const char* what) {
    for (int t = 0; t < c.tokens; ++t) {
      const float* crow = cs.data() + pos[t] * c.R;
      for (int h = 0; h < nh; ++h) {
        const T* b = before.data() + off + t * stride + h * c.D;
        const T* g = got.data() + off + t * stride + h * c.D;
        std::vector<T> want(b, b + c.D);
        const int half = c.R / 2;
        for (int i = 0; i < half; ++i) {
          const int ia = c.neox ? i : 2 * i, ib = c.neox ? i + half : 2 * i + 1;
          const float a = to_f(b[ia]), bb = to_f(b[ib]), co = crow[i], si = crow[half + i];
          want[ia] = from_f<T>(std::fmaf(a, co, -(bb * si)));
          want[ib] = from_f<T>(std::fmaf(bb, co, a * si));
        }
        for (int i = 0; i < c.D; ++i)
          if (!same_bits(g[i], want[i]) && bad++ < 5)
            std::printf("  %s token %d head %d [%d]: got %g want %g\n", what, t, h, i, to_f(g[i]), to_f(want[i]));
      }
    }
    // Everything outside the rows' heads is untouched.
    for (size_t i = 0; i < got.size(); ++i) {
      const long rel = static_cast<long>(i) - off;
      const bool inside = rel >= 0 && rel / stride < c.tokens && rel % stride < nh * c.D;
      if (!inside && !same_bits(got[i], before[i]) && bad++ < 5) std::printf("  %s [%zu] outside changed\n", what, i);
    }
  };
  check(qbuf, q0, c.q_off, QS, c.qh, "q");
  check(kbuf, k0, c.k_off, KS, c.kh, "k");
  return bad;
}

int main() {
  std::mt19937 rng(1234);
  const Case cases[] = {
      {3, 17, 4, 241, 240, 0, 0, 21, true},  {2, 17, 4, 241, 240, 0, 0, 5, true},  {2, 4, 1, 128, 128, 1, 1, 5, true},
      {2, 4, 1, 128, 128, 1, 3, 2, true},    {2, 5, 2, 67, 66, 0, 0, 7, true},     {2, 5, 2, 67, 66, 2, 1, 1, true},
      {2, 3, 1, 128, 64, 1, 1, 4, true},     {1, 2, 2, 100, 20, 3, 0, 3, true},    {2, 3, 1, 6, 2, 1, 2, 4, true},
      {2, 17, 4, 241, 240, 0, 0, 21, false}, {2, 4, 1, 128, 128, 1, 1, 5, false},  {2, 5, 2, 67, 66, 2, 1, 3, false},
      {2, 3, 1, 128, 64, 1, 1, 4, false},    {1, 1, 1, 1024, 1024, 1, 1, 2, true}, {1, 1, 1, 1026, 1024, 1, 1, 1, false},
  };
  int failed = 0, n = 0;
  for (const Case& c : cases) {
    for (int dt = 0; dt < 3; ++dt) {
      Case cc = c;
      int bad;
      if (dt == 0) bad = c.neox ? run<bf16_t, true>(cc, rng) : run<bf16_t, false>(cc, rng);
      else if (dt == 1) bad = c.neox ? run<fp16_t, true>(cc, rng) : run<fp16_t, false>(cc, rng);
      else bad = c.neox ? run<float, true>(cc, rng) : run<float, false>(cc, rng);
      ++n;
      if (bad) {
        ++failed;
        std::printf("FAIL dtype %d tokens %d heads %d+%d D %d R %d offsets %d/%d per_block %d neox %d: %d bad\n", dt,
                    c.tokens, c.qh, c.kh, c.D, c.R, c.q_off, c.k_off, c.per_block, c.neox, bad);
      }
    }
  }
  std::printf("%d of %d cases passed\n", n - failed, n);
  return failed ? 1 : 0;
}
