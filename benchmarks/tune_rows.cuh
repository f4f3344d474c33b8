/// @file tune_rows.cuh
/// @brief Candidate forms of a cujit::row_map kernel, for benchmarks/tune_rows.py: the guide's y = x * a + b
/// over rows (a and b per column), one block of 256 threads per row, written with row_map at 1 or 2 vectors a
/// thread in flight, with or without launch bounds that cap the registers, and with the thread's first head and
/// tail element loaded before the body (so that the edges' memory latency overlaps the body's instead of
/// following it).
///
/// Registers (sm_90, NVRTC 13.0, bf16; none spill): row_map<2> 80 (3 blocks of 256 per SM), row_map<1> 47 (5),
/// row_map<2> bounded to 4 blocks 64, row_map<1> bounded to 6 blocks 40; edges first at 1 vector 64, bounded 40;
/// Liger's form at 8 values of each input a thread 54, at 16 values 99.
#include <cujit/base.cuh>
#include <cujit/rows.cuh>
#include <cujit/types.cuh>
#include <cujit/vec.cuh>

namespace tune_rows {

template <typename T>
struct Affine {
  CUJIT_DEVICE T operator()(T x, T a, T b) const {
    return cujit::from_float<T>(cujit::to_float(x) * cujit::to_float(a) + cujit::to_float(b));
  }
};

template <typename F, typename T, int K, int... I>
CUJIT_DEVICE T apply_values(const F& f, const T (&v)[K], cujit::rows_detail::Indices<I...>) {
  return f(v[I]...);
}

/// cujit::row_map, except that this thread's first head and first tail element are loaded before the body.
template <int kUnroll, typename T, typename F, typename... In>
CUJIT_DEVICE void row_map_edges_first(T* y, uint64_t n, const cujit::Threads& threads, F f, const In*... inputs) {
  namespace d = cujit::rows_detail;
  constexpr int K = sizeof...(In);
  using Seq = typename d::MakeIndices<K>::type;
  const cujit::RowSplit<T> split(y, n);
  const d::Reader<T> in[K] = {d::Reader<T>(inputs, split)...};
  const uint64_t head_index = threads.rank;
  const uint64_t tail_index = split.tail_start() + threads.rank;
  const bool has_head = head_index < split.head;
  const bool has_tail = tail_index < split.n;
  T head[K], tail[K];
#pragma unroll
  for (int j = 0; j < K; ++j) {
    if (has_head) head[j] = in[j][head_index];
    if (has_tail) tail[j] = in[j][tail_index];
  }
  d::map_body<kUnroll>(y, split, threads, f, in);
  if (has_head) y[head_index] = apply_values(f, head, Seq());
  if (has_tail) y[tail_index] = apply_values(f, tail, Seq());
  // Groups narrower than a vector's lanes own more than one edge element.
  for (uint64_t i = head_index + threads.count; i < split.head; i += threads.count) {
    y[i] = d::apply_at(f, in, i, Seq());
  }
  for (uint64_t i = tail_index + threads.count; i < split.n; i += threads.count) y[i] = d::apply_at(f, in, i, Seq());
}

/// One block per row: the row of y at blockIdx.x * y_stride, of x at blockIdx.x * x_stride.
template <bool kEdgesFirst, int kUnroll, typename T>
CUJIT_DEVICE void affine_row(T* y, const T* x, const T* a, const T* b, uint64_t cols, uint64_t x_stride,
                             uint64_t y_stride) {
  T* yr = y + blockIdx.x * y_stride;
  const T* xr = x + blockIdx.x * x_stride;
  if constexpr (kEdgesFirst) {
    row_map_edges_first<kUnroll>(yr, cols, cujit::Threads::block(), Affine<T>(), xr, a, b);
  } else {
    cujit::row_map<kUnroll>(yr, cols, cujit::Threads::block(), Affine<T>(), xr, a, b);
  }
}

}  // namespace tune_rows

/// Without launch bounds: the compiler takes the registers it wants.
template <bool kEdgesFirst, int kUnroll, typename T>
__global__ void affine_free(T* y, const T* x, const T* a, const T* b, uint64_t cols, uint64_t x_stride,
                            uint64_t y_stride) {
  tune_rows::affine_row<kEdgesFirst, kUnroll>(y, x, a, b, cols, x_stride, y_stride);
}

/// Launch bounds that ask for kBlocks blocks of 256 per SM, which caps the registers at 65536 / (256 * kBlocks).
template <bool kEdgesFirst, int kUnroll, int kBlocks, typename T>
__global__ void __launch_bounds__(256, kBlocks)
    affine_bounded(T* y, const T* x, const T* a, const T* b, uint64_t cols, uint64_t x_stride, uint64_t y_stride) {
  tune_rows::affine_row<kEdgesFirst, kUnroll>(y, x, a, b, cols, x_stride, y_stride);
}

/// Liger's form, for comparison: every value loaded alone (a warp's loads of one input are one coalesced run),
/// kPer values of each input a thread loaded before any is used; no vectors and no split, so the row's alignment
/// does not matter. Against row_map it trades 16-byte accesses for more bytes in flight per thread.
template <int kPer, typename T>
__global__ void __launch_bounds__(256)
    affine_elements(T* y, const T* x, const T* a, const T* b, uint64_t cols, uint64_t x_stride, uint64_t y_stride) {
  T* yr = y + blockIdx.x * y_stride;
  const T* xr = x + blockIdx.x * x_stride;
  const tune_rows::Affine<T> f;
#pragma unroll 1
  for (uint64_t c0 = threadIdx.x; c0 < cols; c0 += kPer * blockDim.x) {
    T xv[kPer], av[kPer], bv[kPer];
#pragma unroll
    for (int k = 0; k < kPer; ++k) {
      const uint64_t c = c0 + k * blockDim.x;
      if (c < cols) {
        xv[k] = xr[c];
        av[k] = a[c];
        bv[k] = b[c];
      }
    }
#pragma unroll
    for (int k = 0; k < kPer; ++k) {
      const uint64_t c = c0 + k * blockDim.x;
      if (c < cols) yr[c] = f(xv[k], av[k], bv[k]);
    }
  }
}
