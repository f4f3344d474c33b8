// Host emulation check of cujit/rows.cuh (row_map of one and two inputs, row_write, row_read) through the test
// kernels of tests/kernels/rows_test.cuh: every offset of y and of a from a 16-byte boundary, an offset of b, lengths
// 0 to three vectors and past, odd lengths, for 1-, 2-, 4- and 8-byte dtypes; bit for bit, and every byte outside
// the rows untouched.
#include "cuda_host.h"
#include "checks.h"

#include <atomic>
#include <cstring>
#include <random>

inline double atomicAdd(double* p, double v) { return std::atomic_ref<double>(*p).fetch_add(v); }

#include "../kernels/rows_test.cuh"

constexpr unsigned char kPoison = 0x5A;
constexpr unsigned kBlock = 128;

template <typename T>
struct Rows {
  std::vector<int64_t> table;  // (y_at, a_at, b_at, n) per row
  size_t size = 0;
  explicit Rows(int lanes, const std::vector<int>& lengths, int b_offset) {
    size_t base = 0;
    for (int oy = 0; oy < lanes; ++oy)
      for (int oa = 0; oa < lanes; ++oa)
        for (int n : lengths) {
          table.insert(table.end(), {static_cast<int64_t>(base + oy), static_cast<int64_t>(base + oa),
                                     static_cast<int64_t>(base + b_offset), n});
          base += (std::max({oy, oa, b_offset}) + n + 2 * lanes) / lanes * lanes;
        }
    size = base + lanes;
  }
  uint64_t count() const { return table.size() / 4; }
};

template <typename T>
T small(std::mt19937& rng) { return rows_test::Arith<T>::of(static_cast<int64_t>(rng() % 9) - 4); }

template <typename T>
int check_map(const Rows<T>& rows, unsigned group, int inputs, std::mt19937& rng) {
  using A = rows_test::Arith<T>;
  std::vector<T> a(rows.size), b(rows.size), y(rows.size);
  for (auto& v : a) v = small<T>(rng);
  for (auto& v : b) v = small<T>(rng);
  std::memset(y.data(), kPoison, y.size() * sizeof(T));
  std::vector<T> want = y;
  const uint64_t count = rows.count();
  for (uint64_t c = 0; c < count; ++c) {
    const int64_t* at = rows.table.data() + 4 * c;
    for (int64_t i = 0; i < at[3]; ++i)
      want[at[0] + i] = inputs == 1 ? A::add(a[at[1] + i], a[at[1] + i]) : A::add(a[at[1] + i], b[at[2] + i]);
  }
  const unsigned blocks = static_cast<unsigned>((count + kBlock / group - 1) / (kBlock / group));
  emu_launch(dim3(blocks), dim3(kBlock), [&] {
    if (inputs == 1) rows_map1<T, 2>(y.data(), a.data(), rows.table.data(), count, group);
    else rows_map2<T>(y.data(), a.data(), b.data(), rows.table.data(), count, group);
  });
  int bad = 0;
  for (size_t i = 0; i < y.size(); ++i)
    if (!same_bits(y[i], want[i]) && bad++ < 3) std::printf("  map%d y[%zu] differs\n", inputs, i);
  return bad;
}

template <typename T>
int check_write_read(const Rows<T>& rows, unsigned group, std::mt19937& rng) {
  using A = rows_test::Arith<T>;
  std::vector<T> y(rows.size);
  std::memset(y.data(), kPoison, y.size() * sizeof(T));
  std::vector<T> want = y;
  const uint64_t count = rows.count();
  for (uint64_t c = 0; c < count; ++c) {
    const int64_t* at = rows.table.data() + 4 * c;
    for (int64_t i = 0; i < at[3]; ++i) want[at[0] + i] = A::of(i % 7 - 3);
  }
  const unsigned blocks = static_cast<unsigned>((count + kBlock / group - 1) / (kBlock / group));
  emu_launch(dim3(blocks), dim3(kBlock), [&] { rows_write<T>(y.data(), rows.table.data(), count, group); });
  int bad = 0;
  for (size_t i = 0; i < y.size(); ++i)
    if (!same_bits(y[i], want[i]) && bad++ < 3) std::printf("  write y[%zu] differs\n", i);
  // row_read over a: every element once, summed as (i + 1) * a[i].
  std::vector<T> a(rows.size);
  for (auto& v : a) v = small<T>(rng);
  std::vector<double> out(2 * count, 0.0);
  emu_launch(dim3(blocks), dim3(kBlock), [&] { rows_read<T>(out.data(), a.data(), rows.table.data(), count, group); });
  for (uint64_t c = 0; c < count; ++c) {
    const int64_t* at = rows.table.data() + 4 * c;
    double sum = 0;
    for (int64_t i = 0; i < at[3]; ++i) sum += static_cast<double>(i + 1) * A::value(a[at[1] + i]);
    if ((out[2 * c] != static_cast<double>(at[3]) || out[2 * c + 1] != sum) && bad++ < 3)
      std::printf("  read row %llu: %g calls, sum %g (want %lld, %g)\n", static_cast<unsigned long long>(c),
                  out[2 * c], out[2 * c + 1], static_cast<long long>(at[3]), sum);
  }
  return bad;
}

template <typename T>
int check(const char* name, std::mt19937& rng) {
  const int lanes = 16 / static_cast<int>(sizeof(T));
  std::vector<int> lengths;
  for (int n = 0; n <= 3 * lanes + 1; n += (lanes > 4 ? 3 : 1)) lengths.push_back(n);
  const Rows<T> many(lanes, lengths, 1 % lanes);
  const Rows<T> odd(lanes > 8 ? 8 : lanes, {2881, 4097}, lanes - 1);
  int bad = 0;
  for (unsigned group : {kBlock, 32u}) {
    bad += check_map<T>(many, group, 1, rng) + check_map<T>(many, group, 2, rng) + check_write_read<T>(many, group, rng);
  }
  bad += check_map<T>(odd, kBlock, 1, rng) + check_map<T>(odd, kBlock, 2, rng) + check_write_read<T>(odd, kBlock, rng);
  std::printf("%s: %s\n", name, bad ? "FAIL" : "ok");
  return bad ? 1 : 0;
}

int main() {
  std::mt19937 rng(5);
  const int failed = check<bf16_t>("bf16", rng) + check<fp16_t>("fp16", rng) + check<float>("fp32", rng) +
                     check<double>("fp64", rng) + check<int8_t>("int8", rng) + check<fp8_e4m3_t>("fp8_e4m3", rng) +
                     check<int64_t>("int64", rng);
  std::printf("%d of 7 cases passed\n", 7 - failed);
  return failed ? 1 : 0;
}
