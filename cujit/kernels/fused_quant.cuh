/// @file fused_quant.cuh
/// @brief Fusions that end in FP8 (e4m3) quantization: SiLU-and-mul + per-group quantization, and residual add +
/// RMSNorm + per-token or per-group quantization.
///
/// silu_and_mul_quant_fp8_kernel: for x [tokens, 2d] (fp32, fp16 or bf16, rows at any stride),
///     y = round_T(silu(x[:, :d]) * x[:, d:])       (activation.cuh's SiLU in fp32, rounded to nearest even to T)
///     q, scales = per-group quantization of y      (fp8_quant.cuh's rule, groups of kGroup values)
/// so that q and scales are bit for bit those of per_token_group_quant_fp8(silu_and_mul(x)): y is rounded to the
/// input dtype exactly as silu_and_mul stores it, and the group's max, scale and quotients are those of
/// fp8_quant.cuh. y never reaches memory.
///
/// Layout: as per_token_group_quant_fp8_kernel, the groups of all rows in row-major order, kLanes threads of one
/// warp per group (16 threads of 8 bf16 values for groups of 128), each thread one 16-byte vector (or more, for
/// groups beyond 32 vectors) of the gate and of the up half, both loaded before any arithmetic; the group's max is
/// a shuffle over its lanes. Loads are element-wise when x, its row stride or d are not 16-byte multiples.
#ifndef CUJIT_KERNELS_FUSED_QUANT_CUH_
#define CUJIT_KERNELS_FUSED_QUANT_CUH_

#include <cujit/base.cuh>
#include <cujit/fp8.cuh>
#include <cujit/pdl.cuh>
#include <cujit/reduce.cuh>
#include <cujit/rows.cuh>
#include <cujit/types.cuh>

#include "activation.cuh"
#include "fp8_quant.cuh"
#include "packed.cuh"
#include "rms_norm.cuh"
#include "vec_io.cuh"

/// q [tokens, d] (contiguous) and scales[row * scale_row_stride + group * scale_group_stride] for the `groups` =
/// tokens * group_row groups of kGroup values. Launch kThreads threads per block and cdiv(groups, kThreads /
/// kLanes) blocks, kLanes = min(kGroup / (16 / sizeof(T)), 32). magic and shift: group_row's multiply-high divisor
/// (cujit.fp8_quant.divider).
template <typename T, int kGroup, int kThreads>
__global__ void __launch_bounds__(kThreads) silu_and_mul_quant_fp8_kernel(
    fp8_e4m3_t* __restrict__ q, float* __restrict__ scales, const T* __restrict__ x, int64_t x_stride, uint32_t d,
    uint32_t groups, uint32_t group_row, uint32_t magic, uint32_t shift, int64_t scale_row_stride,
    int64_t scale_group_stride) {
  using namespace fp8_quant_detail;
  constexpr int kVec = 16 / sizeof(T);
  constexpr int kLanes = kGroup / kVec < 32 ? kGroup / kVec : 32;
  constexpr int kWidth = kGroup / kLanes;  // values of a group per thread: kVec or more
  constexpr int kSlots = kThreads / kLanes;
  static_assert(kThreads % 32 == 0 && kGroup % kVec == 0 && (kGroup & (kGroup - 1)) == 0, "geometry");
  static_assert(kWidth % kVec == 0 && 32 % kLanes == 0, "a group is whole vectors of a power of two of lanes");
  cujit::pdl_wait();  // x comes from the previous kernel
  const bool vector = vector_ok<kVec>(x, q, x_stride, d);
  const uint32_t lane = threadIdx.x % kLanes;
  const uint32_t g = blockIdx.x * kSlots + threadIdx.x / kLanes;
  const bool live = g < groups;  // dead groups still take part in their warp's shuffles
  const uint32_t row = live ? row_of(g, group_row, magic, shift) : 0;
  const uint32_t col = live ? g - row * group_row : 0;
  const T* gate = x + static_cast<int64_t>(row) * x_stride + static_cast<uint64_t>(col) * kGroup + lane * kWidth;
  T a[kWidth], b[kWidth];
  if (live) {
    vec_io::load<T, kWidth>(gate, vector, a);
    vec_io::load<T, kWidth>(gate + d, vector, b);
  }
  cujit::pdl_launch_dependents();
  T y[kWidth];
#pragma unroll
  for (int i = 0; i < kWidth; ++i) {
    // The expression silu_and_mul_kernel evaluates, then its rounding to T.
    y[i] = cujit::from_float<T>(activation_detail::Silu::apply(cujit::to_float(a[i])) * cujit::to_float(b[i]));
  }
  const uint32_t bits = cujit::warp_reduce<kLanes>(live ? amax_bits<T, kWidth>(y, 0u) : 0u, cujit::Max());
  if (!live) return;
  const float scale = scale_of(__uint_as_float(bits));
  if (lane == 0) scales[row * scale_row_stride + col * scale_group_stride] = scale;
  quantize<true>(reinterpret_cast<uint8_t*>(q) + static_cast<uint64_t>(g) * kGroup + lane * kWidth, vector, y,
                 scale);
}

namespace fused_quant_detail {

/// One row of fused_add_rms_norm_quant_fp8_kernel held in registers (kVecs > 0): the row's 16-byte vectors spread
/// over the block as rms_norm.cuh's vector layout spreads them (rms_norm_detail::Fragment: thread t holds
/// vectors t, t + kThreads, ...), x and the residual loaded once, the sum stored at once, the block's sum of
/// squares reduced, and y formed, reduced to its maxima and quantized from the same registers: the row crosses
/// memory once each way. The host picks it when hidden is a whole number of vectors, every row start, the weight
/// and q are 16-byte aligned, the row fits kThreads * kVecs vectors and a group spans 1 to 32 threads' vectors.
/// A group of kGroup values is kGroup / kLanes consecutive threads' vector i, so its maximum is a shuffle among
/// them. Pointers are at this row's first element.
template <typename T, int kGroup, bool kGemma, int kThreads, int kVecs>
CUJIT_DEVICE void add_norm_quant_held(uint8_t* out, float* scales, const T* x, T* res, const T* __restrict__ weight,
                                      int64_t hidden, int64_t scale_group_stride, float eps) {
  using F = rms_norm_detail::Fragment<true, T, kThreads, kVecs>;
  using P = packed::Packed<T>;
  constexpr int kLanes = F::kLanes;
  constexpr int kPerWord = P::kPerWord;
  static_assert(kGroup == 0 || (kGroup >= kLanes && kGroup / kLanes <= cujit::kWarpSize),
                "a group is whole vectors of at most one warp");
  const int64_t first = F::thread_offset(threadIdx.x);
  const int64_t count = hidden - first;  // zero or less: a thread past the row's end
  F held, w;
  {
    F in;
    in.load(x + first, count);
    held.load(res + first, count);
    F::prefetch(weight + first, count);
    held.add(in);
  }
  held.store(res + first, count);
  held.forget();  // keep the packed sums, not the fp32 values they were rounded from
  const float inv_rms =
      rms_norm_detail::inverse_rms(rms_norm_detail::row_sum<kThreads, kThreads>(held.sum_squares()), hidden, eps);
  w.load(weight + first, count);
  cujit::pdl_launch_dependents();  // this thread's last global read has been issued
  held.forget();
  held.template normalize<kGemma>(w, inv_rms);  // y, rounded to T; zeros past the row's end
  float y[kVecs][kLanes];
  uint32_t bits[kVecs];
#pragma unroll
  for (int i = 0; i < kVecs; ++i) {
    bits[i] = 0;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      float f[kPerWord];
      P::unpack(held.v[i].w[j], f);
#pragma unroll
      for (int h = 0; h < kPerWord; ++h) {
        y[i][j * kPerWord + h] = f[h];
        bits[i] = cujit::max_bits(bits[i], cujit::abs_bits(f[h]));
      }
    }
  }
  if constexpr (kGroup == 0) {
    uint32_t all = 0;
#pragma unroll
    for (int i = 0; i < kVecs; ++i) all = cujit::max_bits(all, bits[i]);
    const float scale = fp8_quant_detail::scale_of(__uint_as_float(cujit::block_reduce(all, cujit::Max())));
    if (threadIdx.x == 0) scales[0] = scale;
#pragma unroll
    for (int i = 0; i < kVecs; ++i) {
      if (F::slot(i, 0) < count) fp8_quant_detail::quantize<true>(out + first + F::slot(i, 0), true, y[i], scale);
    }
  } else {
    constexpr int kGroupThreads = kGroup / kLanes;
#pragma unroll
    for (int i = 0; i < kVecs; ++i) {
      const uint32_t group_bits = cujit::warp_reduce<kGroupThreads>(bits[i], cujit::Max());
      const int64_t at = first + F::slot(i, 0);
      if (at < hidden) {  // a group lies wholly inside the row or wholly past it
        const float scale = fp8_quant_detail::scale_of(__uint_as_float(group_bits));
        if (threadIdx.x % kGroupThreads == 0) scales[at / kGroup * scale_group_stride] = scale;
        fp8_quant_detail::quantize<true>(out + at, true, y[i], scale);
      }
    }
  }
}

/// One row of fused_add_rms_norm_quant_fp8_kernel per token (kGroup == 0) held in registers at any alignment
/// (kVecs < 0, -kVecs vectors a thread): the row splits at the residual's own 16-byte boundaries
/// (cujit::RowSplit), so that its loads and stores are whole vectors between single-element edges (head and tail,
/// one element each for the first threads); x and the weight are read at those same indices with aligned or
/// funnel-shifted vectors (cujit::rows_detail::Reader), and q is written at its own alignment with
/// fp8_quant_detail::store_realigned. The host picks it for per-token rows that do not take the aligned path
/// and whose vectors fit kThreads * -kVecs. Pointers are at this row's first element.
template <typename T, int kThreads, int kVecs, bool kGemma>
CUJIT_DEVICE void add_norm_quant_split(uint8_t* out, float* scale_out, const T* x, T* res,
                                       const T* __restrict__ weight, int64_t hidden, float eps) {
  using V = cujit::Vec16<T>;
  using Reader = cujit::rows_detail::Reader<T>;
  constexpr int kLanes = static_cast<int>(cujit::RowSplit<T>::kLanes);
  static_assert(kThreads >= kLanes, "a thread per value of the head and of the tail");
  const cujit::RowSplit<T> split(res, static_cast<uint64_t>(hidden));
  const Reader in(x, split), w(weight, split);
  const uint64_t t = threadIdx.x;
  const uint64_t tail_at = split.tail_start() + t;
  const bool has_head = t < split.head;
  const bool has_tail = tail_at < split.n;
  // This thread's values: body vectors t, t + kThreads, ... and its head and tail elements (edge[0], edge[1]).
  V held[kVecs];
  T edge[2] = {T(), T()};
  {
    V added[kVecs];
#pragma unroll
    for (int i = 0; i < kVecs; ++i) {
      const uint64_t c = t + static_cast<uint64_t>(i) * kThreads;
      if (c < split.vectors) {
        held[i] = V::load(res + split.vector_start(c));
        added[i] = in.vector(split.vector_start(c));
      }
    }
    T edge_in[2] = {T(), T()};
    if (has_head) edge[0] = res[t], edge_in[0] = x[t];
    if (has_tail) edge[1] = res[tail_at], edge_in[1] = x[tail_at];
#pragma unroll
    for (int i = 0; i < kVecs; ++i) {
#pragma unroll
      for (int k = 0; k < kLanes; ++k) {
        held[i][k] = cujit::from_float<T>(cujit::to_float(held[i][k]) + cujit::to_float(added[i][k]));
      }
    }
#pragma unroll
    for (int e = 0; e < 2; ++e) edge[e] = cujit::from_float<T>(cujit::to_float(edge[e]) + cujit::to_float(edge_in[e]));
  }
  float squares = 0.0f;
#pragma unroll
  for (int i = 0; i < kVecs; ++i) {
    const uint64_t c = t + static_cast<uint64_t>(i) * kThreads;
    if (c < split.vectors) {
      held[i].store(res + split.vector_start(c));
#pragma unroll
      for (int k = 0; k < kLanes; ++k) {
        const float f = cujit::to_float(held[i][k]);
        squares = fmaf(f, f, squares);
      }
    }
  }
  if (has_head) res[t] = edge[0];
  if (has_tail) res[tail_at] = edge[1];
#pragma unroll
  for (int e = 0; e < 2; ++e) {
    const float f = cujit::to_float(edge[e]);  // zero where absent
    squares = fmaf(f, f, squares);
  }
  const float inv_rms = rms_norm_detail::inverse_rms(cujit::block_sum(squares), hidden, eps);
  // y = round_T(sum * inv_rms * w), as rms_norm.cuh forms it; its largest magnitude.
  auto normalized = [&](T sum, T weight_value) {
    const float wf = cujit::to_float(weight_value);
    return cujit::from_float<T>(cujit::to_float(sum) * inv_rms * (kGemma ? 1.0f + wf : wf));
  };
  uint32_t bits = 0;
#pragma unroll
  for (int i = 0; i < kVecs; ++i) {
    const uint64_t c = t + static_cast<uint64_t>(i) * kThreads;
    if (c < split.vectors) {
      const V wv = w.vector(split.vector_start(c));
#pragma unroll
      for (int k = 0; k < kLanes; ++k) {
        held[i][k] = normalized(held[i][k], wv[k]);
        bits = cujit::max_bits(bits, cujit::abs_bits(cujit::to_float(held[i][k])));
      }
    }
  }
  if (has_head) edge[0] = normalized(edge[0], weight[t]);
  if (has_tail) edge[1] = normalized(edge[1], weight[tail_at]);
  cujit::pdl_launch_dependents();  // this thread's last global read has been issued
  if (has_head) bits = cujit::max_bits(bits, cujit::abs_bits(cujit::to_float(edge[0])));
  if (has_tail) bits = cujit::max_bits(bits, cujit::abs_bits(cujit::to_float(edge[1])));
  const float scale = fp8_quant_detail::scale_of(__uint_as_float(cujit::block_reduce(bits, cujit::Max())));
  if (t == 0) scale_out[0] = scale;
  if (has_head) fp8_quant_detail::quantize<true>(out + t, false, {edge[0]}, scale);
  if (has_tail) fp8_quant_detail::quantize<true>(out + tail_at, false, {edge[1]}, scale);
  // The same for every thread of the block: whole aligned stores, or store_realigned (which needs every lane).
  const bool q_aligned = cujit::is_aligned(out + split.head, kLanes);
#pragma unroll
  for (int i = 0; i < kVecs; ++i) {
    const uint64_t c = t + static_cast<uint64_t>(i) * kThreads;
    fp8_quant_detail::quantize_vector<true>(c < split.vectors ? out + split.vector_start(c) : nullptr, q_aligned,
                                            held[i].data, scale);
  }
}

}  // namespace fused_quant_detail

/// fused_add_rms_norm_quant_fp8_kernel, one block per row:
///     residual = round_T(residual + x)                           (stored: the residual stream, in place)
///     y        = round_T(residual * rsqrt(mean(residual^2) + eps) * w),  w = weight, or 1 + weight when kGemma
///     q, scales = fp8_quant.cuh's rule over y: per row (kGroup == 0) or per group of kGroup values
/// y is what fused_add_rms_norm writes to x, rounded the same way; it never reaches memory.
///
/// kVecs > 0: the row held in registers, kVecs 16-byte vectors a thread (fused_quant_detail::add_norm_quant_held;
/// aligned rows only, the host checks). kVecs < 0, per token only: the row held in registers at the residual's
/// alignment, -kVecs vectors a thread, whatever the hidden size and the alignment of each tensor
/// (fused_quant_detail::add_norm_quant_split). kVecs == 0: any hidden size, any alignment, in three passes. Pass 1 adds
/// and stores the residual with cujit::row_map (16-byte vectors wherever the row allows) and sums the squares of
/// the rounded sums; after the block's reduction, pass 2 reads the residual row back (from L1/L2: the block just
/// wrote it) to form y and its maxima, and pass 3 forms y again and quantizes it. Per group, each warp takes
/// groups w, w + warps, ..., its lanes striding over the group's values.
template <typename T, int kGroup, bool kGemma, int kThreads, int kVecs>
__global__ void __launch_bounds__(kThreads) fused_add_rms_norm_quant_fp8_kernel(
    fp8_e4m3_t* __restrict__ q, float* __restrict__ scales, const T* x, T* residual, const T* __restrict__ weight,
    int64_t hidden, int64_t x_stride, int64_t residual_stride, int64_t scale_row_stride,
    int64_t scale_group_stride, float eps) {
  using namespace fp8_quant_detail;
  static_assert(kThreads % 32 == 0 && kThreads <= 1024, "whole warps per block");
  static_assert(kGroup == 0 || (kGroup >= 16 && (kGroup & (kGroup - 1)) == 0), "a group is a power of two");
  cujit::pdl_wait();  // x and residual come from the previous kernel
  const int64_t row = blockIdx.x;
  const T* in = x + row * x_stride;
  T* res = residual + row * residual_stride;
  uint8_t* out = reinterpret_cast<uint8_t*>(q) + row * hidden;
  if constexpr (kVecs > 0) {
    fused_quant_detail::add_norm_quant_held<T, kGroup, kGemma, kThreads, kVecs>(
        out, scales + row * scale_row_stride, in, res, weight, hidden, scale_group_stride, eps);
    return;
  } else if constexpr (kVecs < 0) {
    static_assert(kGroup == 0, "the split path quantizes per token");
    fused_quant_detail::add_norm_quant_split<T, kThreads, -kVecs, kGemma>(out, scales + row * scale_row_stride, in,
                                                                          res, weight, hidden, eps);
    return;
  }
  float squares = 0.0f;
  cujit::row_map(res, static_cast<uint64_t>(hidden), cujit::Threads::block(), [&](T r, T v) {
    const T sum = cujit::from_float<T>(cujit::to_float(r) + cujit::to_float(v));
    const float f = cujit::to_float(sum);
    squares = fmaf(f, f, squares);
    return sum;
  }, static_cast<const T*>(res), in);
  cujit::pdl_launch_dependents();
  // block_sum's barriers also make this block's residual stores visible to all of its threads.
  const float inv_rms = rsqrtf(cujit::block_sum(squares) / static_cast<float>(hidden) + eps);
  auto normalized = [&](int64_t i) {
    const float w = cujit::to_float(weight[i]);
    return cujit::from_float<T>(cujit::to_float(res[i]) * inv_rms * (kGemma ? 1.0f + w : w));
  };
  if constexpr (kGroup == 0) {
    uint32_t bits = 0;
    for (int64_t i = threadIdx.x; i < hidden; i += kThreads) {
      bits = cujit::max_bits(bits, cujit::abs_bits(cujit::to_float(normalized(i))));
    }
    const float scale = scale_of(__uint_as_float(cujit::block_reduce(bits, cujit::Max())));
    if (threadIdx.x == 0) scales[row * scale_row_stride] = scale;
    for (int64_t i = threadIdx.x; i < hidden; i += kThreads) {
      const T one[1] = {normalized(i)};
      quantize<true>(out + i, false, one, scale);
    }
  } else {
    const int lane = threadIdx.x % cujit::kWarpSize;
    const int64_t groups = hidden / kGroup;
    for (int64_t g = threadIdx.x / cujit::kWarpSize; g < groups; g += kThreads / cujit::kWarpSize) {
      const int64_t first = g * kGroup;
      uint32_t bits = 0;
      for (int i = lane; i < kGroup; i += cujit::kWarpSize) {
        bits = cujit::max_bits(bits, cujit::abs_bits(cujit::to_float(normalized(first + i))));
      }
      const float scale = scale_of(__uint_as_float(cujit::warp_reduce(bits, cujit::Max())));
      if (lane == 0) scales[row * scale_row_stride + g * scale_group_stride] = scale;
      for (int i = lane; i < kGroup; i += cujit::kWarpSize) {
        const T one[1] = {normalized(first + i)};
        quantize<true>(out + first + i, false, one, scale);
      }
    }
  }
}

#endif  // CUJIT_KERNELS_FUSED_QUANT_CUH_
