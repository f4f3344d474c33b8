// Host emulation check of store_kv_cache_kernel: every path (aligned vectors, cujit/rows.cuh rows, element-wise fp8)
// against a direct copy, with rows that start anywhere and slots that skip tokens.
#include "cuda_host.h"
#include "checks.h"
#include "kv_cache.cuh"

#include <algorithm>
#include <cstring>
#include <random>

/// (vec, group) as cujit/store_kv_cache.py's launch_plan picks them.
void plan(int row, int itemsize, int& vec, int& group) {
  vec = 16 / itemsize;
  while (vec > 1 && row % vec) vec /= 2;
  const int chunks = row / vec;
  group = 32;
  while (group < 256 && group * 2 < chunks) group *= 2;
}

template <typename T, typename C, int kVec, int kGroup>
void launch(const T* k, const T* v, C* kc, C* vc, const int64_t* slots, const float* ks, const float* vs, int kst,
            int vst, int row, int num_slots, int tokens) {
  emu_launch(dim3((tokens + 256 / kGroup - 1) / (256 / kGroup)), dim3(256), [&] {
    store_kv_cache_kernel<T, C, int64_t, kVec, kGroup>(k, v, kc, vc, slots, ks, vs, kst, vst, row, num_slots,
                                                        tokens);
  });
}

template <typename T, typename C, int kVec>
void by_group(int group, const T* k, const T* v, C* kc, C* vc, const int64_t* s, const float* ks, const float* vs,
              int kst, int vst, int row, int n, int t) {
  if (group == 32) launch<T, C, kVec, 32>(k, v, kc, vc, s, ks, vs, kst, vst, row, n, t);
  else if (group == 64) launch<T, C, kVec, 64>(k, v, kc, vc, s, ks, vs, kst, vst, row, n, t);
  else if (group == 128) launch<T, C, kVec, 128>(k, v, kc, vc, s, ks, vs, kst, vst, row, n, t);
  else launch<T, C, kVec, 256>(k, v, kc, vc, s, ks, vs, kst, vst, row, n, t);
}

template <typename T, typename C>
int run(int tokens, int row, int k_off, int v_off, int cache_off, std::mt19937& rng) {
  const int kst = row + k_off + 1, vst = row + v_off + 3, num_slots = tokens + 5;
  std::vector<T> kbuf(tokens * kst + 16), vbuf(tokens * vst + 16);
  std::normal_distribution<float> nd(0.0f, 50.0f);
  for (auto& x : kbuf) x = from_f<T>(nd(rng));
  for (auto& x : vbuf) x = from_f<T>(nd(rng));
  // The caches are views `cache_off` values into their buffers: rows start mid-vector when that or row is odd.
  std::vector<C> kcbuf(num_slots * row + 16), vcbuf(num_slots * row + 16);
  for (auto& x : kcbuf) x = from_f<C>(1.5f);
  for (auto& x : vcbuf) x = from_f<C>(-2.5f);
  const std::vector<C> kc0 = kcbuf, vc0 = vcbuf;
  std::vector<int64_t> slots(num_slots);
  for (int i = 0; i < num_slots; ++i) slots[i] = i;
  std::shuffle(slots.begin(), slots.end(), rng);
  slots.resize(tokens);
  for (int t = 0; t < tokens; t += 4) slots[t] = -1;  // padding
  const float kscale = 0.75f, vscale = 3.0f;
  const T* k = kbuf.data() + k_off;
  const T* v = vbuf.data() + v_off;
  C* kc = kcbuf.data() + cache_off;
  C* vc = vcbuf.data() + cache_off;
  int vec, group;
  plan(row, sizeof(T), vec, group);
  if (vec == 8) by_group<T, C, 8>(group, k, v, kc, vc, slots.data(), &kscale, &vscale, kst, vst, row, num_slots, tokens);
  else if (vec == 4) by_group<T, C, 4>(group, k, v, kc, vc, slots.data(), &kscale, &vscale, kst, vst, row, num_slots, tokens);
  else if (vec == 2) by_group<T, C, 2>(group, k, v, kc, vc, slots.data(), &kscale, &vscale, kst, vst, row, num_slots, tokens);
  else by_group<T, C, 1>(group, k, v, kc, vc, slots.data(), &kscale, &vscale, kst, vst, row, num_slots, tokens);
  std::vector<C> kwant = kc0, vwant = vc0;
  for (int t = 0; t < tokens; ++t) {
    if (slots[t] < 0) continue;
    for (int i = 0; i < row; ++i) {
      const size_t at = cache_off + slots[t] * row + i;
      if constexpr (sizeof(C) == 1) {
        kwant[at] = C(to_f(k[t * kst + i]) / kscale);
        vwant[at] = C(to_f(v[t * vst + i]) / vscale);
      } else {
        kwant[at] = k[t * kst + i];
        vwant[at] = v[t * vst + i];
      }
    }
  }
  int bad = 0;
  for (size_t i = 0; i < kcbuf.size(); ++i) {
    if (!same_bits(kcbuf[i], kwant[i]) && bad++ < 5) std::printf("  k_cache[%zu] differs\n", i);
    if (!same_bits(vcbuf[i], vwant[i]) && bad++ < 5) std::printf("  v_cache[%zu] differs\n", i);
  }
  return bad;
}

int main() {
  std::mt19937 rng(99);
  int failed = 0, n = 0;
  for (int row : {1, 7, 15, 64, 1024, 2881, 4097, 4096}) {
    for (int offs : {0, 1, 2, 3}) {
      const int k_off = offs, v_off = (offs * 3) % 4, cache_off = offs % 2;
      const int tokens = row > 1024 ? 5 : 9;
      int bad[4] = {run<bf16_t, bf16_t>(tokens, row, k_off, v_off, cache_off, rng),
                    run<fp16_t, fp16_t>(tokens, row, k_off, v_off, cache_off, rng),
                    run<float, float>(tokens, row, k_off, v_off, cache_off, rng),
                    run<bf16_t, fp8_e4m3_t>(tokens, row, k_off, v_off, cache_off, rng)};
      for (int d = 0; d < 4; ++d) {
        ++n;
        if (bad[d]) {
          ++failed;
          std::printf("FAIL row %d offsets k %d v %d cache %d dtype %d: %d bad\n", row, k_off, v_off, cache_off, d,
                      bad[d]);
        }
      }
    }
  }
  std::printf("%d of %d cases passed\n", n - failed, n);
  return failed ? 1 : 0;
}
