/// @file activation.cuh
/// @brief Gated activations: out[..., :] = act(x[..., :d]) * x[..., d:] for SiLU and GELU (erf and tanh forms).
///
/// x is [rows, 2 * d] and out is [rows, d], both contiguous (fp32, fp16 or bf16). Each output value is computed
/// in fp32 from the two stored inputs and rounded once:
/// - SiLU:       silu(a) = a / (1 + exp(-a))
/// - GELU:       gelu(a) = a / 2 * (1 + erf(a / sqrt(2)))
/// - GELU tanh:  a / 2 * (1 + tanh(u)) with u = sqrt(2 / pi) * (a + 0.044715 a^3), computed as the identical
///               a / (1 + exp(-2u)): one exponential instead of a tanh.
/// The exponentials use the hardware's exp2 (relative error about 1e-6 in fp32, far below a bf16 or fp16 step).
///
/// Layout: a flat grid over the output's 16-byte vectors (rows * d / kLanes of them). Each thread handles kVecs
/// vectors spaced one block apart (so that every load instruction of a warp reads 512 contiguous bytes), issuing
/// all its loads before any arithmetic. The launch bounds keep a thread within 40 registers, so that six blocks
/// of 256 threads (48 KB of loads in flight) are resident per SM. The inputs are read once, so they are loaded
/// with the streaming hint (evict-first); the output is stored normally, as the next kernel reads it. A thread
/// finds its row with one division and steps to its next vectors with adds and compares.
///
/// When d is not a multiple of the vector width or a pointer is not 16-byte aligned, the same grid walks
/// elements instead of vectors, kLanes per vector slot, again spaced so that a warp's accesses are contiguous.
/// out must not overlap x.
#include <cujit/base.cuh>
#include <cujit/pdl.cuh>
#include <cujit/types.cuh>

#include "packed.cuh"

namespace activation_detail {

/// a * sigmoid(a).
struct Silu {
  static CUJIT_DEVICE float apply(float a) { return __fdividef(a, 1.0f + __expf(-a)); }
};

/// The exact GELU, with the error function.
struct GeluErf {
  static CUJIT_DEVICE float apply(float a) { return 0.5f * a * (1.0f + erff(a * 0.7071067811865476f)); }
};

/// The tanh approximation of GELU: a / 2 * (1 + tanh(u)) == a * sigmoid(2u).
struct GeluTanh {
  static CUJIT_DEVICE float apply(float a) {
    const float u = 0.7978845608028654f * fmaf(0.044715f * a, a * a, a);
    return __fdividef(a, 1.0f + __expf(-2.0f * u));
  }
};

/// q = a / b and r = a % b, with 32-bit division where both fit (several times cheaper than 64-bit).
CUJIT_DEVICE void divide(uint64_t a, uint64_t b, uint64_t& q, uint64_t& r) {
  if (((a | b) >> 32) == 0) {
    const uint32_t q32 = static_cast<uint32_t>(a) / static_cast<uint32_t>(b);
    q = q32;
    r = static_cast<uint32_t>(a) - q32 * static_cast<uint32_t>(b);
  } else {
    q = a / b;
    r = a - q * b;
  }
}

/// Walks a thread's items of a [rows, width] array: from flat index `first` on, every `step` items. Keeps
/// (row, column), and the step as whole rows plus a remainder, so that each step is two adds and a compare (no
/// branch, no division) and the loads of all steps can be issued back to back.
struct RowWalker {
  uint64_t row;
  uint64_t col;

  CUJIT_DEVICE RowWalker(uint64_t first, uint64_t width) { divide(first, width, row, col); }

  /// Step by `step_rows` rows and `step_cols` columns (step_cols < width).
  CUJIT_DEVICE void advance(uint64_t step_rows, uint64_t step_cols, uint64_t width) {
    col += step_cols;
    row += step_rows;
    const bool wrap = col >= width;
    col = wrap ? col - width : col;
    row = wrap ? row + 1 : row;
  }
};

/// The vector path: d a multiple of the vector width, x and out 16-byte aligned.
template <typename Act, typename T, int kBlock, int kVecs>
CUJIT_DEVICE void act_and_mul_vectors(T* __restrict__ out, const T* __restrict__ x, uint64_t rows, uint64_t d) {
  using V = packed::Vec16Words<T>;
  using P = packed::Packed<T>;
  constexpr int kPerWord = P::kPerWord;
  constexpr int kLanes = V::kValues;
  const uint64_t width = d / kLanes;  // output vectors per row
  const uint64_t first = static_cast<uint64_t>(blockIdx.x) * (kBlock * kVecs) + threadIdx.x;
  uint64_t step_rows, step_cols;
  divide(kBlock, width, step_rows, step_cols);
  V a[kVecs], b[kVecs];
  {
    RowWalker at(first, width);
#pragma unroll
    for (int i = 0; i < kVecs; ++i) {
      if (at.row < rows) {
        const T* in = x + at.row * 2 * d + at.col * kLanes;
        a[i] = V::load_streaming(in);
        b[i] = V::load_streaming(in + d);
      }
      at.advance(step_rows, step_cols, width);
    }
  }
  cujit::pdl_launch_dependents();  // this thread's last global read has been issued
  RowWalker at(first, width);  // walking again costs less than keeping every address in registers
#pragma unroll
  for (int i = 0; i < kVecs; ++i) {
    if (at.row < rows) {
      V y;
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        float fa[kPerWord], fb[kPerWord];
        P::unpack(a[i].w[j], fa);
        P::unpack(b[i].w[j], fb);
#pragma unroll
        for (int h = 0; h < kPerWord; ++h) fa[h] = Act::apply(fa[h]) * fb[h];
        y.w[j] = P::pack(fa);
      }
      y.store(out + at.row * d + at.col * kLanes);
    }
    at.advance(step_rows, step_cols, width);
  }
}

/// The element path: any d and alignment. Each vector slot of the grid stands for kLanes elements, spaced one
/// block apart so that a warp's accesses are contiguous; a thread handles its kVecs * kLanes elements two at a
/// time (a fallback: four loads in flight a thread, but no spilled registers and the vector path's occupancy).
template <typename Act, typename T, int kBlock, int kVecs>
CUJIT_DEVICE void act_and_mul_elements(T* __restrict__ out, const T* __restrict__ x, uint64_t rows, uint64_t d) {
  constexpr int kItems = kVecs * (16 / sizeof(T));
  constexpr int kGroup = 2;
  const uint64_t first = static_cast<uint64_t>(blockIdx.x) * (kBlock * kItems) + threadIdx.x;
  uint64_t step_rows, step_cols;
  divide(kBlock, d, step_rows, step_cols);
  RowWalker at(first, d);
#pragma unroll 1
  for (int group = 0; group < kItems / kGroup; ++group) {
    const RowWalker start = at;
    T a[kGroup], b[kGroup];
#pragma unroll
    for (int i = 0; i < kGroup; ++i) {
      if (at.row < rows) {
        const T* in = x + at.row * 2 * d + at.col;
        a[i] = in[0];
        b[i] = in[d];
      }
      at.advance(step_rows, step_cols, d);
    }
    if (group + 1 == kItems / kGroup) cujit::pdl_launch_dependents();
    RowWalker store_at = start;
#pragma unroll
    for (int i = 0; i < kGroup; ++i) {
      if (store_at.row < rows) {
        const float y = Act::apply(cujit::to_float(a[i])) * cujit::to_float(b[i]);
        out[store_at.row * d + store_at.col] = cujit::from_float<T>(y);
      }
      store_at.advance(step_rows, step_cols, d);
    }
  }
}

template <typename Act, typename T, int kBlock, int kVecs>
CUJIT_DEVICE void act_and_mul(T* __restrict__ out, const T* __restrict__ x, uint64_t rows, uint64_t d) {
  static_assert(kBlock % 32 == 0 && kBlock <= 1024 && kVecs >= 1, "whole warps per block, at least one vector");
  cujit::pdl_wait();  // x comes from the previous kernel
  constexpr uint64_t kLanes = 16 / sizeof(T);
  if (d % kLanes == 0 && cujit::is_aligned(x, 16) && cujit::is_aligned(out, 16)) {
    act_and_mul_vectors<Act, T, kBlock, kVecs>(out, x, rows, d);
  } else {
    act_and_mul_elements<Act, T, kBlock, kVecs>(out, x, rows, d);
  }
}

}  // namespace activation_detail

/// out[r, :] = silu(x[r, :d]) * x[r, d:] for r < rows. Launch kBlock threads per block and
/// cdiv(rows * d, kBlock * kVecs * (16 / sizeof(T))) blocks.
template <typename T, int kBlock, int kVecs>
__global__ void __launch_bounds__(kBlock, 1536 / kBlock)
    silu_and_mul_kernel(T* __restrict__ out, const T* __restrict__ x, uint64_t rows, uint64_t d) {
  activation_detail::act_and_mul<activation_detail::Silu, T, kBlock, kVecs>(out, x, rows, d);
}

/// out[r, :] = gelu(x[r, :d]) * x[r, d:] for r < rows, with the tanh approximation when kTanh. Launch as
/// silu_and_mul_kernel.
template <typename T, bool kTanh, int kBlock, int kVecs>
__global__ void __launch_bounds__(kBlock, 1536 / kBlock)
    gelu_and_mul_kernel(T* __restrict__ out, const T* __restrict__ x, uint64_t rows, uint64_t d) {
  if constexpr (kTanh) {
    activation_detail::act_and_mul<activation_detail::GeluTanh, T, kBlock, kVecs>(out, x, rows, d);
  } else {
    activation_detail::act_and_mul<activation_detail::GeluErf, T, kBlock, kVecs>(out, x, rows, d);
  }
}
