/// @file rms_norm.cuh
/// @brief RMSNorm and fused residual add + RMSNorm over the rows of a [rows, hidden] tensor (fp32, fp16, bf16).
///
/// rms_norm_kernel:            out = x * rsqrt(mean(x^2) + eps) * w
/// fused_add_rms_norm_kernel:  residual = round(residual + x); x = residual * rsqrt(mean(residual^2) + eps) * w
/// where w = weight, or 1 + weight when kGemma (the form Gemma models use). Everything is computed in fp32 from
/// the stored values and rounded once on the way out; the fused kernel normalises the rounded sum, as the
/// unfused `residual += x; x = rms_norm(residual)` does.
///
/// Layout: a group of kRowThreads threads owns one row (a sub-warp group, a warp, or several warps), and a block
/// of kBlock threads owns kBlock / kRowThreads consecutive rows. Each thread holds kVecs vectors' worth (16 bytes
/// each) of its row in registers, so that the row is read from memory once: the sum of squares is reduced
/// (register shuffles within a warp, then one shared-memory step across the warps of a row), and the same
/// registers are then scaled and written. One such "tile" covers kRowThreads * kVecs * 16 bytes of a row.
///
/// kPath, chosen by the host per call (the choice must be right: the vector path does not test alignment):
/// - kPathVector: the row fits in one tile, hidden is a multiple of the vector width and every row start (and
///   the weight) is 16-byte aligned: 16-byte loads and stores. The fast path.
/// - kPathScalar: the row fits in one tile, any alignment: element loads in a thread-interleaved order (thread t
///   of a row takes elements t, t + kRowThreads, ...), so that a warp's loads stay coalesced.
/// - kPathTiled: any hidden size: tile by tile in two passes, the second reading the row again (mostly from
///   L1/L2), with vectors where the alignment allows it (tested on the device). For rows beyond the largest
///   one-tile configuration.
///
/// Aliasing: out may be x (in place), so those two pointers carry no __restrict__; nor do x and residual of the
/// fused kernel, which must not overlap each other. Each thread loads every element it stores before storing it.
///
/// Programmatic dependent launch: every thread waits (cujit::pdl_wait) before its first global read and releases
/// the next kernel (cujit::pdl_launch_dependents) after its last one.
#include <cujit/base.cuh>
#include <cujit/pdl.cuh>
#include <cujit/reduce.cuh>
#include <cujit/types.cuh>

#include "packed.cuh"

namespace rms_norm_detail {

constexpr int kPathVector = 0;
constexpr int kPathScalar = 1;
constexpr int kPathTiled = 2;

/// The part of one tile of a row that one thread holds: kVecs * kLanes values, as kVecs 16-byte vectors of packed
/// 32-bit words (see packed.cuh).
///
/// With kVector, vector i of the thread with index t in its row group holds elements
/// [(i * kRowThreads + t) * kLanes, ... + kLanes) of the tile: consecutive threads read consecutive 16 bytes.
/// Without it, element k of vector i is element (i * kLanes + k) * kRowThreads + t: consecutive threads read
/// consecutive elements, so that scalar loads are coalesced too.
///
/// Loads and stores take the address of this thread's first element (`base`) and the number of elements of the
/// row from there on (`count`); the offset of every other element from `base` is a compile-time constant, so the
/// accesses use one base register with immediate offsets and the bounds tests compare with constants.
template <bool kVector, typename T, int kRowThreads, int kVecs>
struct Fragment {
  using P = packed::Packed<T>;
  using V = packed::Vec16Words<T>;
  static constexpr int kPerWord = P::kPerWord;
  static constexpr int kLanes = V::kValues;
  /// Elements of a row covered by one tile (all the row's threads together).
  static constexpr int64_t kTile = static_cast<int64_t>(kRowThreads) * kVecs * kLanes;

  V v[kVecs];

  /// Where the first element of the thread with index t in its row group lies in a tile.
  static CUJIT_HOST_DEVICE constexpr int64_t thread_offset(int t) { return kVector ? t * kLanes : t; }

  /// The offset of element k of vector i from the thread's first element.
  static CUJIT_HOST_DEVICE constexpr int64_t slot(int i, int k) {
    return kVector ? static_cast<int64_t>(i) * kRowThreads * kLanes + k
                   : (static_cast<int64_t>(i) * kLanes + k) * kRowThreads;
  }

  /// Load from `base`; elements at or past `count` read as zero (and add nothing to a sum of squares).
  CUJIT_DEVICE void load(const T* base, int64_t count) {
#pragma unroll
    for (int i = 0; i < kVecs; ++i) {
      if constexpr (kVector) {
        v[i] = slot(i, 0) < count ? V::load(base + slot(i, 0)) : V::zeros();
      } else {
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          uint32_t word = 0;
#pragma unroll
          for (int h = 0; h < kPerWord; ++h) {
            const int64_t at = slot(i, j * kPerWord + h);
            if (at < count) word |= P::load_one(base + at) << (16 * h);
          }
          v[i].w[j] = word;
        }
      }
    }
  }

  /// Store to `base`, the elements before `count` only.
  CUJIT_DEVICE void store(T* base, int64_t count) const {
#pragma unroll
    for (int i = 0; i < kVecs; ++i) {
      if constexpr (kVector) {
        if (slot(i, 0) < count) v[i].store(base + slot(i, 0));
      } else {
#pragma unroll
        for (int j = 0; j < 4; ++j) {
#pragma unroll
          for (int h = 0; h < kPerWord; ++h) {
            const int64_t at = slot(i, j * kPerWord + h);
            if (at < count) P::store_one(base + at, v[i].w[j] >> (16 * h));
          }
        }
      }
    }
  }

  /// Start bringing the 16-byte vectors at `base` into L1 without holding registers for them: the weights,
  /// needed only after the reduction, are on their way while it runs. Only the vector layout prefetches (one
  /// instruction per vector).
  static CUJIT_DEVICE void prefetch(const T* base, int64_t count) {
    if constexpr (kVector) {
#pragma unroll
      for (int i = 0; i < kVecs; ++i) {
        if (slot(i, 0) < count) asm volatile("prefetch.global.L1 [%0];" ::"l"(base + slot(i, 0)));
      }
    }
  }

  /// The sum of the squares of the held values, in fp32 (one partial sum per vector, then their sum).
  CUJIT_DEVICE float sum_squares() const {
    float total = 0.0f;
#pragma unroll
    for (int i = 0; i < kVecs; ++i) {
      float part = 0.0f;
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        float f[kPerWord];
        P::unpack(v[i].w[j], f);
#pragma unroll
        for (int h = 0; h < kPerWord; ++h) part = fmaf(f[h], f[h], part);
      }
      total += part;
    }
    return total;
  }

  /// this = round(this + other), element by element: the residual sum, rounded to the storage type.
  CUJIT_DEVICE void add(const Fragment& other) {
#pragma unroll
    for (int i = 0; i < kVecs; ++i) {
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        float a[kPerWord], b[kPerWord];
        P::unpack(v[i].w[j], a);
        P::unpack(other.v[i].w[j], b);
#pragma unroll
        for (int h = 0; h < kPerWord; ++h) a[h] += b[h];
        v[i].w[j] = P::pack(a);
      }
    }
  }

  /// Make the compiler forget what it knows about the held words (an empty asm that "rewrites" each one).
  /// Called between the reduction and the normalisation of 16-bit values: otherwise the compiler may keep the
  /// fp32 values unpacked for the sum of squares alive across the barrier, twice the registers of the packed
  /// words, instead of unpacking again (one or two cheap instructions per word).
  CUJIT_DEVICE void forget() {
    if constexpr (kPerWord > 1) {
#pragma unroll
      for (int i = 0; i < kVecs; ++i) {
#pragma unroll
        for (int j = 0; j < 4; ++j) asm volatile("" : "+r"(v[i].w[j]));
      }
    }
  }

  /// this = round(this * inv_rms * w), with w = weight (or 1 + weight when kGemma).
  template <bool kGemma>
  CUJIT_DEVICE void normalize(const Fragment& weight, float inv_rms) {
#pragma unroll
    for (int i = 0; i < kVecs; ++i) {
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        float x[kPerWord], w[kPerWord];
        P::unpack(v[i].w[j], x);
        P::unpack(weight.v[i].w[j], w);
#pragma unroll
        for (int h = 0; h < kPerWord; ++h) x[h] = x[h] * inv_rms * (kGemma ? 1.0f + w[h] : w[h]);
        v[i].w[j] = P::pack(x);
      }
    }
  }
};

/// The sum of `value` over the kRowThreads threads that own one row; every one of them gets the same result.
///
/// Groups of up to a warp reduce with a butterfly of register shuffles (lanes stay within their aligned group of
/// kRowThreads). Larger groups reduce each warp the same way (cujit::warp_sum), publish one partial per warp in
/// shared memory, and after one barrier every thread adds its row's partials in the same order: one barrier
/// instead of the two of a reduce-then-broadcast, and bit-identical results across the row. Call it from every
/// thread of the block, at most once per kernel (the shared partials are not reused).
template <int kBlock, int kRowThreads>
CUJIT_DEVICE float row_sum(float value) {
  if constexpr (kRowThreads == cujit::kWarpSize) {
    return cujit::warp_sum(value);
  } else if constexpr (kRowThreads < cujit::kWarpSize) {
#pragma unroll
    for (int offset = kRowThreads / 2; offset > 0; offset /= 2) {
      value += __shfl_xor_sync(0xffffffffu, value, offset);
    }
    return value;
  } else {
    constexpr int kWarpsPerRow = kRowThreads / cujit::kWarpSize;
    __shared__ float partial[kBlock / cujit::kWarpSize];
    value = cujit::warp_sum(value);
    const int warp = threadIdx.x / cujit::kWarpSize;
    if (threadIdx.x % cujit::kWarpSize == 0) partial[warp] = value;
    __syncthreads();
    const int first = warp / kWarpsPerRow * kWarpsPerRow;
    float total = 0.0f;
#pragma unroll
    for (int w = 0; w < kWarpsPerRow; ++w) total += partial[first + w];
    return total;
  }
}

/// 1 / sqrt(mean + eps) from the row's sum of squares.
CUJIT_DEVICE float inverse_rms(float sum_squares, int64_t hidden, float eps) {
  return rsqrtf(sum_squares / static_cast<float>(hidden) + eps);
}

/// RMSNorm of a row that fits in one tile. `out`, `x` and `weight` point at this thread's first element
/// (Fragment::thread_offset past the row start), `count` is the number of elements of the row from there on
/// (zero or less for a thread past the row's end or a row past the last).
template <bool kVector, typename T, int kBlock, int kRowThreads, int kVecs, bool kGemma>
CUJIT_DEVICE void rms_norm_tile(T* out, const T* x, const T* __restrict__ weight, int64_t hidden, int64_t count,
                                float eps) {
  using F = Fragment<kVector, T, kRowThreads, kVecs>;
  F row, w;
  row.load(x, count);
  F::prefetch(weight, count);
  const float inv_rms = inverse_rms(row_sum<kBlock, kRowThreads>(row.sum_squares()), hidden, eps);
  w.load(weight, count);
  cujit::pdl_launch_dependents();  // this thread's last global read has been issued
  row.forget();
  row.template normalize<kGemma>(w, inv_rms);
  row.store(out, count);
}

/// RMSNorm of a row of any length, tile by tile; arguments as for rms_norm_tile.
template <bool kVector, typename T, int kBlock, int kRowThreads, int kVecs, bool kGemma>
CUJIT_DEVICE void rms_norm_tiles(T* out, const T* x, const T* __restrict__ weight, int64_t hidden, int64_t count,
                                 float eps) {
  using F = Fragment<kVector, T, kRowThreads, kVecs>;
  float squares = 0.0f;
  for (int64_t begin = 0; begin < count; begin += F::kTile) {
    F part;
    part.load(x + begin, count - begin);
    squares += part.sum_squares();
  }
  const float inv_rms = inverse_rms(row_sum<kBlock, kRowThreads>(squares), hidden, eps);
  for (int64_t begin = 0; begin < count; begin += F::kTile) {
    F part, w;
    part.load(x + begin, count - begin);
    w.load(weight + begin, count - begin);
    part.template normalize<kGemma>(w, inv_rms);
    part.store(out + begin, count - begin);
  }
  cujit::pdl_launch_dependents();
}

/// Fused add + RMSNorm of a row that fits in one tile; arguments as for rms_norm_tile.
template <bool kVector, typename T, int kBlock, int kRowThreads, int kVecs, bool kGemma>
CUJIT_DEVICE void fused_add_rms_norm_tile(T* x, T* residual, const T* __restrict__ weight, int64_t hidden,
                                          int64_t count, float eps) {
  using F = Fragment<kVector, T, kRowThreads, kVecs>;
  F sum, w;
  {
    F in;
    in.load(x, count);
    sum.load(residual, count);
    F::prefetch(weight, count);
    sum.add(in);
  }
  // The new residual is final before the reduction: store it now, so that the store overlaps the reduction.
  sum.store(residual, count);
  sum.forget();  // keep the packed sums, not the fp32 values they were rounded from
  const float inv_rms = inverse_rms(row_sum<kBlock, kRowThreads>(sum.sum_squares()), hidden, eps);
  w.load(weight, count);
  cujit::pdl_launch_dependents();
  sum.forget();
  sum.template normalize<kGemma>(w, inv_rms);
  sum.store(x, count);
}

/// Fused add + RMSNorm of a row of any length, tile by tile; arguments as for rms_norm_tile.
template <bool kVector, typename T, int kBlock, int kRowThreads, int kVecs, bool kGemma>
CUJIT_DEVICE void fused_add_rms_norm_tiles(T* x, T* residual, const T* __restrict__ weight, int64_t hidden,
                                           int64_t count, float eps) {
  using F = Fragment<kVector, T, kRowThreads, kVecs>;
  float squares = 0.0f;
  for (int64_t begin = 0; begin < count; begin += F::kTile) {
    F in, sum;
    in.load(x + begin, count - begin);
    sum.load(residual + begin, count - begin);
    sum.add(in);
    sum.store(residual + begin, count - begin);
    squares += sum.sum_squares();
  }
  const float inv_rms = inverse_rms(row_sum<kBlock, kRowThreads>(squares), hidden, eps);
  // Each thread reads back the sums it stored itself above, in the same layout, so no barrier is needed.
  for (int64_t begin = 0; begin < count; begin += F::kTile) {
    F sum, w;
    sum.load(residual + begin, count - begin);
    w.load(weight + begin, count - begin);
    sum.template normalize<kGemma>(w, inv_rms);
    sum.store(x + begin, count - begin);
  }
  cujit::pdl_launch_dependents();
}

/// Where the calling thread works: its row (clamped to a valid one, so that pointers stay inside the tensors),
/// the offset of its first element in the row, and the number of elements of the row from there on.
template <bool kVector, typename T, int kBlock, int kRowThreads, int kVecs>
struct Position {
  int64_t row;
  int64_t first;
  int64_t count;

  CUJIT_DEVICE Position(int64_t rows, int64_t hidden) {
    const int64_t r = static_cast<int64_t>(blockIdx.x) * (kBlock / kRowThreads) + threadIdx.x / kRowThreads;
    row = r < rows ? r : 0;
    first = Fragment<kVector, T, kRowThreads, kVecs>::thread_offset(threadIdx.x % kRowThreads);
    count = r < rows ? hidden - first : 0;  // rows past the end still take part in the block's barrier
  }
};

/// Whether 16-byte vectors apply: whole vectors per row, every row start and the weight 16-byte aligned.
template <typename T>
CUJIT_DEVICE bool vectorizable(int64_t hidden, const T* a, int64_t a_stride, const T* b, int64_t b_stride,
                               const T* weight) {
  constexpr int64_t kLanes = 16 / sizeof(T);
  return hidden % kLanes == 0 && a_stride % kLanes == 0 && b_stride % kLanes == 0 && cujit::is_aligned(a, 16) &&
         cujit::is_aligned(b, 16) && cujit::is_aligned(weight, 16);
}

/// The register budget: a vector-path block asks for at least 1024 resident threads per SM (at most 64
/// registers per thread), enough rows in flight to cover the memory latency. The scalar paths hold one register
/// per value and get what they need (at most 255, or 65536 / kBlock).
template <int kBlock, int kPath>
constexpr int kMinBlocks = kPath == kPathVector && kBlock < 1024 ? 1024 / kBlock : 1;

template <typename T, int kBlock, int kRowThreads, int kVecs, int kPath>
CUJIT_HOST_DEVICE constexpr bool check_config() {
  static_assert(kBlock % kRowThreads == 0 && (kRowThreads & (kRowThreads - 1)) == 0, "rows must tile the block");
  static_assert(kRowThreads <= cujit::kWarpSize || kRowThreads % cujit::kWarpSize == 0, "whole warps per row");
  static_assert(kBlock % cujit::kWarpSize == 0 && kBlock <= 1024, "whole warps per block, at most 1024 threads");
  static_assert(kPath == kPathVector || kPath == kPathScalar || kPath == kPathTiled, "unknown path");
  return true;
}

}  // namespace rms_norm_detail

/// out[r, :] = rms_norm(x[r, :]) * w for r < rows. Rows are x_stride / out_stride elements apart (the last
/// dimension is contiguous); out may be x. Launch kBlock threads per block, cdiv(rows, kBlock / kRowThreads)
/// blocks; for kPathVector and kPathScalar, hidden must be at most kRowThreads * kVecs * (16 / sizeof(T)).
template <typename T, bool kGemma, int kPath, int kBlock, int kRowThreads, int kVecs>
__global__ void __launch_bounds__(kBlock, (rms_norm_detail::kMinBlocks<kBlock, kPath>))
    rms_norm_kernel(T* out, const T* x, const T* __restrict__ weight, int64_t rows, int64_t hidden,
                    int64_t x_stride, int64_t out_stride, float eps) {
  using namespace rms_norm_detail;
  static_assert(check_config<T, kBlock, kRowThreads, kVecs, kPath>());
  cujit::pdl_wait();  // x and weight may come from the previous kernel
  constexpr bool kVector = kPath == kPathVector;
  if constexpr (kPath == kPathTiled) {
    if (vectorizable(hidden, x, x_stride, out, out_stride, weight)) {
      const Position<true, T, kBlock, kRowThreads, kVecs> at(rows, hidden);
      rms_norm_tiles<true, T, kBlock, kRowThreads, kVecs, kGemma>(out + at.row * out_stride + at.first,
                                                                  x + at.row * x_stride + at.first,
                                                                  weight + at.first, hidden, at.count, eps);
    } else {
      const Position<false, T, kBlock, kRowThreads, kVecs> at(rows, hidden);
      rms_norm_tiles<false, T, kBlock, kRowThreads, kVecs, kGemma>(out + at.row * out_stride + at.first,
                                                                   x + at.row * x_stride + at.first,
                                                                   weight + at.first, hidden, at.count, eps);
    }
  } else {
    const Position<kVector, T, kBlock, kRowThreads, kVecs> at(rows, hidden);
    rms_norm_tile<kVector, T, kBlock, kRowThreads, kVecs, kGemma>(out + at.row * out_stride + at.first,
                                                                  x + at.row * x_stride + at.first,
                                                                  weight + at.first, hidden, at.count, eps);
  }
}

/// In place: residual[r, :] = round(residual[r, :] + x[r, :]), then x[r, :] = rms_norm(residual[r, :]) * w.
/// x and residual must not overlap. Launch as rms_norm_kernel.
template <typename T, bool kGemma, int kPath, int kBlock, int kRowThreads, int kVecs>
__global__ void __launch_bounds__(kBlock, (rms_norm_detail::kMinBlocks<kBlock, kPath>))
    fused_add_rms_norm_kernel(T* x, T* residual, const T* __restrict__ weight, int64_t rows, int64_t hidden,
                              int64_t x_stride, int64_t residual_stride, float eps) {
  using namespace rms_norm_detail;
  static_assert(check_config<T, kBlock, kRowThreads, kVecs, kPath>());
  cujit::pdl_wait();
  constexpr bool kVector = kPath == kPathVector;
  if constexpr (kPath == kPathTiled) {
    if (vectorizable(hidden, x, x_stride, residual, residual_stride, weight)) {
      const Position<true, T, kBlock, kRowThreads, kVecs> at(rows, hidden);
      fused_add_rms_norm_tiles<true, T, kBlock, kRowThreads, kVecs, kGemma>(
          x + at.row * x_stride + at.first, residual + at.row * residual_stride + at.first, weight + at.first,
          hidden, at.count, eps);
    } else {
      const Position<false, T, kBlock, kRowThreads, kVecs> at(rows, hidden);
      fused_add_rms_norm_tiles<false, T, kBlock, kRowThreads, kVecs, kGemma>(
          x + at.row * x_stride + at.first, residual + at.row * residual_stride + at.first, weight + at.first,
          hidden, at.count, eps);
    }
  } else {
    const Position<kVector, T, kBlock, kRowThreads, kVecs> at(rows, hidden);
    fused_add_rms_norm_tile<kVector, T, kBlock, kRowThreads, kVecs, kGemma>(
        x + at.row * x_stride + at.first, residual + at.row * residual_stride + at.first, weight + at.first, hidden,
        at.count, eps);
  }
}
