// Host emulation check of topk_softmax_kernel against a double-precision reference.
#include "cuda_host.h"
#include "checks.h"
#include "topk_softmax.cuh"

#include <algorithm>
#include <numeric>
#include <random>

/// The experts' config, as cujit/topk_softmax.py picks it.
void config(int experts, int& lanes, int& per_lane) {
  lanes = 8;
  while (lanes < 32 && lanes < experts) lanes *= 2;
  per_lane = 1;
  while (lanes * per_lane < experts) per_lane *= 2;
}

template <typename T, int kLanes, int kPerLane>
void launch(float* w, int32_t* ids, const T* x, int rows, int experts, int stride, int k, bool renorm) {
  constexpr int kBlock = 128;
  emu_launch(dim3((rows + kBlock / kLanes - 1) / (kBlock / kLanes)), dim3(kBlock), [&] {
    topk_softmax_kernel<T, kBlock, kLanes, kPerLane>(w, ids, x, rows, experts, stride, k, renorm);
  });
}

template <typename T>
void dispatch(int lanes, int per_lane, float* w, int32_t* ids, const T* x, int rows, int experts, int stride, int k,
              bool renorm) {
  if (lanes == 8) launch<T, 8, 1>(w, ids, x, rows, experts, stride, k, renorm);
  else if (lanes == 16) launch<T, 16, 1>(w, ids, x, rows, experts, stride, k, renorm);
  else if (per_lane == 1) launch<T, 32, 1>(w, ids, x, rows, experts, stride, k, renorm);
  else if (per_lane == 2) launch<T, 32, 2>(w, ids, x, rows, experts, stride, k, renorm);
  else if (per_lane == 4) launch<T, 32, 4>(w, ids, x, rows, experts, stride, k, renorm);
  else if (per_lane == 8) launch<T, 32, 8>(w, ids, x, rows, experts, stride, k, renorm);
  else launch<T, 32, 16>(w, ids, x, rows, experts, stride, k, renorm);
}

template <typename T>
int run(int rows, int experts, int k, bool renorm, int kind, std::mt19937& rng) {
  const int stride = experts + 3;
  std::vector<T> x(rows * stride);
  std::normal_distribution<float> nd(0.0f, 2.0f);
  for (auto& v : x) v = from_f<T>(nd(rng));
  for (int r = 0; r < rows; ++r) {
    T* row = x.data() + r * stride;
    if (kind == 1) {  // ties: a few values repeated across the row
      for (int e = 0; e < experts; ++e) row[e] = from_f<T>(static_cast<float>(rng() % 4));
    } else if (kind == 2 && r % 3 == 0) {  // a NaN in some rows
      row[rng() % experts] = from_f<T>(std::nanf(""));
    }
  }
  int lanes, per_lane;
  config(experts, lanes, per_lane);
  std::vector<float> w(rows * k, -7.0f);
  std::vector<int32_t> ids(rows * k, -7);
  dispatch<T>(lanes, per_lane, w.data(), ids.data(), x.data(), rows, experts, stride, k, renorm);
  int bad = 0;
  for (int r = 0; r < rows; ++r) {
    const T* row = x.data() + r * stride;
    std::vector<double> p(experts);
    bool nan = false;
    double top = -INFINITY;
    for (int e = 0; e < experts; ++e) {
      const double v = to_f(row[e]);
      if (v != v) nan = true; else top = std::max(top, v);
    }
    double sum = 0;
    for (int e = 0; e < experts; ++e) sum += (p[e] = std::exp(static_cast<double>(to_f(row[e])) - top));
    for (auto& v : p) v = nan ? NAN : v / sum;
    std::vector<int> order(experts);
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](int a, int b) {
      if (nan) return false;
      return p[a] > p[b];
    });
    double chosen = 0;
    for (int j = 0; j < k; ++j) chosen += p[order[j]];
    for (int j = 0; j < k; ++j) {
      const int got_id = ids[r * k + j];
      const double want_w = renorm ? p[order[j]] / chosen : p[order[j]];
      const float got_w = w[r * k + j];
      bool ok;
      if (nan) {
        ok = got_id == order[j] && got_w != got_w;
      } else {
        // The id: the reference's, or one of equal probability within float rounding (never past the k-th).
        ok = got_id >= 0 && got_id < experts &&
             std::abs(p[got_id] - p[order[j]]) <= 1e-6 * p[order[j]] + 1e-30 &&
             std::abs(got_w - want_w) <= 2e-6 * std::abs(want_w) + 1e-30;
        if (kind == 1) ok = ok && got_id == order[j];  // exact ties: the lower expert first
      }
      if (!ok && bad++ < 5)
        std::printf("  row %d rank %d: got expert %d w %.9g, want expert %d w %.9g\n", r, j, got_id, got_w, order[j],
                    want_w);
    }
  }
  return bad;
}

int main() {
  std::mt19937 rng(7);
  int failed = 0, n = 0;
  const int shapes[][2] = {{1, 1}, {3, 2}, {8, 8}, {6, 12}, {16, 16}, {20, 32}, {60, 64}, {64, 128},
                           {100, 160}, {128, 256}, {250, 512}, {512, 512}};
  for (auto [experts, _] : shapes) {
    (void)_;
    for (int k : {1, 2, 6, 8}) {
      if (k > experts) continue;
      for (int kind = 0; kind < 3; ++kind) {
        for (int renorm = 0; renorm < 2; ++renorm) {
          const int rows = 1 + static_cast<int>(rng() % 37);
          int bad = 0;
          switch ((n) % 3) {
            case 0: bad = run<float>(rows, experts, k, renorm, kind, rng); break;
            case 1: bad = run<bf16_t>(rows, experts, k, renorm, kind, rng); break;
            default: bad = run<fp16_t>(rows, experts, k, renorm, kind, rng); break;
          }
          ++n;
          if (bad) {
            ++failed;
            std::printf("FAIL experts %d k %d kind %d renorm %d rows %d dtype %d: %d bad\n", experts, k, kind, renorm,
                        rows, (n - 1) % 3, bad);
          }
        }
      }
    }
  }
  std::printf("%d of %d cases passed\n", n - failed, n);
  return failed ? 1 : 0;
}
