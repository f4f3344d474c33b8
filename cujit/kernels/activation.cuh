/// @file activation.cuh
/// @brief Gated activations: out[..., :] = act(x[..., :d]) * x[..., d:] for SiLU and GELU (erf and tanh forms).
///
/// x is [rows, 2 * d] and out is [rows, d], both contiguous (fp32, fp16 or bf16); out must not overlap x. Each
/// output value is computed in fp32 from the two stored inputs and rounded once, the same expression on every path
/// (so every path gives the same bits):
/// - SiLU:       silu(a) = a / (1 + exp(-a))
/// - GELU:       gelu(a) = a / 2 * (1 + erf(a / sqrt(2)))
/// - GELU tanh:  a / 2 * (1 + tanh(u)) with u = sqrt(2 / pi) * (a + 0.044715 a^3), computed as the identical
///               a / (1 + exp(-2u)): one exponential instead of a tanh.
/// The exponentials use the hardware's exp2 (relative error about 1e-6 in fp32, far below a bf16 or fp16 step).
///
/// Two paths, a template parameter (kRows) that the host chooses per call (cujit/silu_and_mul.py: the value
/// `vector`, the one place the condition is tested; the vector path does not test it again):
///
/// The vector path, when d is a multiple of the vector width and x and out are 16-byte aligned (so every row of
/// gate, up and out is): a flat grid over the output's 16-byte vectors (rows * d / kLanes of them). Each thread
/// handles kVecs vectors spaced one block apart (so that every load instruction of a warp reads 512 contiguous
/// bytes), issuing all its loads before any arithmetic. The launch bounds keep a thread within 40 registers, so
/// that six blocks of 256 threads (48 KB of loads in flight) are resident per SM. The inputs are read once, so they
/// are loaded with the streaming hint (evict-first); the output is stored normally, as the next kernel reads it. A
/// thread finds its row with one division and steps to its next vectors with adds and compares.
///
/// The row path, for every other d and alignment (odd widths such as 4097 or 2881, views that start mid-vector):
/// rows of out cut into segments (cujit/silu_and_mul.py's row_layout: a whole row when one round of a group holds
/// it, else segments of about equal length), one segment per group of `group` threads (a power of two up to the
/// block: a block per long row, several rows per block for short ones), walked with cujit::row_map
/// (cujit/rows.cuh). Stores are 16-byte vectors between each segment's first and last 16-byte boundary of out,
/// single elements before and after; gate and up, whose rows start at other offsets than out's when d is odd,
/// are read with shifted 16-byte vectors (two aligned loads funnel-shifted into place). kVecs (2) vectors a thread
/// are loaded before the first is used; the launch bounds allow 85 registers, what the two shifted inputs take
/// without spilling, so three blocks of 256 threads (48 KB of loads in flight) are resident per SM.
#include <cujit/base.cuh>
#include <cujit/pdl.cuh>
#include <cujit/rows.cuh>
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

/// Walks a thread's items of a [rows, width] array: from flat index `first` on, every `step` items. Keeps
/// (row, column), and the step as whole rows plus a remainder, so that each step is two adds and a compare (no
/// branch, no division) and the loads of all steps can be issued back to back.
struct RowWalker {
  uint64_t row;
  uint64_t col;

  CUJIT_DEVICE RowWalker(uint64_t first, uint64_t width) { cujit::divmod(first, width, row, col); }

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
  cujit::divmod(kBlock, width, step_rows, step_cols);
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

/// The row path: any d and alignment. Each row of out is cut into `segs` segments of `seg` values (the last one
/// shorter; one segment when the row fits), and each segment is walked by a group of `group` threads (a power of
/// two dividing kBlock, so kBlock / group segments per block, in order) with cujit::row_map: 16-byte stores between
/// out's 16-byte boundaries, gate and up read with aligned or shifted 16-byte vectors whatever their offset from
/// out, single elements only at a segment's edges, kVecs vectors a thread in flight.
template <typename Act, typename T, int kBlock, int kVecs>
CUJIT_DEVICE void act_and_mul_rows(T* __restrict__ out, const T* __restrict__ x, uint64_t rows, uint64_t d,
                                   uint32_t group, uint64_t seg, uint64_t segs) {
  const uint64_t per_block = kBlock / group;
  uint64_t row, first;
  cujit::divmod(blockIdx.x * per_block + threadIdx.x / group, segs, row, first);
  if (row < rows) {
    first *= seg;
    const uint64_t n = d - first < seg ? d - first : seg;
    const T* gate = x + row * 2 * d + first;
    cujit::row_map<kVecs>(
        out + row * d + first, n, cujit::Threads::group(group),
        [](T a, T b) { return cujit::from_float<T>(Act::apply(cujit::to_float(a)) * cujit::to_float(b)); }, gate,
        gate + d);
  }
  cujit::pdl_launch_dependents();
}

/// Blocks per SM that the launch bounds ask for: 1536 threads for the vector path (at most 40 registers a thread:
/// 48 KB of loads in flight per SM at one vector a thread), 1024 for the row path at one vector a thread (at most
/// 64 registers: its segment arithmetic and shifted reads take 59-63 unbounded at sm_90, and a cap of 48 or 40
/// spills). The row path once took two vectors a thread at 768 threads (85 registers); row_map at one vector a
/// thread measured 0.89x a copy's time against 0.73x at two (benchmarks/tune_rows.py, H100, rows of 4097 bf16,
/// one block of 256 per row).
template <bool kRows, int kBlock>
constexpr int kMinBlocks = (kRows ? 1024 : 1536) / kBlock;

/// The path kRows (the row path) or not (the vector path), as the host chose it (the vector path does not test
/// alignment).
template <typename Act, typename T, bool kRows, int kBlock, int kVecs>
CUJIT_DEVICE void act_and_mul(T* __restrict__ out, const T* __restrict__ x, uint64_t rows, uint64_t d, uint32_t group,
                              uint64_t seg, uint64_t segs) {
  static_assert(kBlock % 32 == 0 && kBlock <= 1024 && kVecs >= 1, "whole warps per block, at least one vector");
  cujit::pdl_wait();  // x comes from the previous kernel
  if constexpr (kRows) {
    act_and_mul_rows<Act, T, kBlock, kVecs>(out, x, rows, d, group, seg, segs);
  } else {
    act_and_mul_vectors<Act, T, kBlock, kVecs>(out, x, rows, d);
  }
}

}  // namespace activation_detail

/// out[r, :] = silu(x[r, :d]) * x[r, d:] for r < rows. kBlock threads per block. The vector path (kRows false;
/// only for d a multiple of 16 / sizeof(T) with x and out 16-byte aligned): cdiv(rows * d, kBlock * kVecs *
/// (16 / sizeof(T))) blocks, and group, seg and segs unused. The row path: cdiv(rows * segs, kBlock / group)
/// blocks, segs = cdiv(d, seg).
template <typename T, bool kRows, int kBlock, int kVecs>
__global__ void __launch_bounds__(kBlock, activation_detail::kMinBlocks<kRows, kBlock>)
    silu_and_mul_kernel(T* __restrict__ out, const T* __restrict__ x, uint64_t rows, uint64_t d, uint32_t group,
                        uint64_t seg, uint64_t segs) {
  using namespace activation_detail;
  act_and_mul<Silu, T, kRows, kBlock, kVecs>(out, x, rows, d, group, seg, segs);
}

/// out[r, :] = gelu(x[r, :d]) * x[r, d:] for r < rows, with the tanh approximation when kTanh. Launch as
/// silu_and_mul_kernel.
template <typename T, bool kTanh, bool kRows, int kBlock, int kVecs>
__global__ void __launch_bounds__(kBlock, activation_detail::kMinBlocks<kRows, kBlock>)
    gelu_and_mul_kernel(T* __restrict__ out, const T* __restrict__ x, uint64_t rows, uint64_t d, uint32_t group,
                        uint64_t seg, uint64_t segs) {
  using namespace activation_detail;
  if constexpr (kTanh) {
    act_and_mul<GeluTanh, T, kRows, kBlock, kVecs>(out, x, rows, d, group, seg, segs);
  } else {
    act_and_mul<GeluErf, T, kRows, kBlock, kVecs>(out, x, rows, d, group, seg, segs);
  }
}
