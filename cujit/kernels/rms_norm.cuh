/// @file rms_norm.cuh
/// @brief RMSNorm and fused residual add + RMSNorm over the rows of a [rows, hidden] tensor (fp32, fp16, bf16).
///
/// rms_norm_kernel:            out = x * rsqrt(mean(x^2) + eps) * w
/// fused_add_rms_norm_kernel:  residual = round(residual + x); x = residual * rsqrt(mean(residual^2) + eps) * w
/// where w = weight, or 1 + weight when kGemma (the form Gemma models use). Everything is computed in fp32 from
/// the stored values and rounded once on the way out; the fused kernel normalises the rounded sum, as the
/// unfused `residual += x; x = rms_norm(residual)` does.
///
/// Both kernels run one body (rms_norm_detail::norm), each path written once: a compile-time kFusedAdd selects
/// where a row comes from and what is written besides the normalised row (RowTensors). The path ids and the
/// limits that the host plan (cujit/rms_norm.py) must agree with are in norm_plan.cuh, which it reads.
///
/// Layout: a group of kRowThreads threads owns one row at a time (a sub-warp group, a warp, or several warps), and
/// a block of kBlock threads owns kBlock / kRowThreads * kRows consecutive rows. Each thread holds kVecs vectors'
/// worth (16 bytes each) of its row in registers, so that the row is read from memory once: the sum of squares is
/// reduced (register shuffles within a warp, then one shared-memory step across the warps of a row), and the same
/// registers are then scaled and written. One such "tile" covers kRowThreads * kVecs * 16 bytes of a row.
///
/// kPath, chosen by the host per call (the choice must be right: the vector paths do not test alignment):
/// - kPathVector: the row fits in one tile, hidden is a multiple of the vector width and every row start (and
///   the weight) is 16-byte aligned: 16-byte loads and stores, the weight loaded with the row and kept in
///   registers; each row group normalises up to kRows rows in turn, the next row's loads in flight while the
///   current one is reduced and written. The fast path.
/// - kPathPhased: rows that are not 16-byte aligned (an odd hidden size, a sliced x) and a 16-byte aligned
///   weight: each row split at the 16-byte boundaries of the tensor written row by row (out; residual for the
///   fused form), 16-byte vector stores in its body and element accesses up to its first boundary and after its
///   last whole vector. x may lie at any offset from that tensor: it is read with shifted vectors
///   (cujit/rows.cuh), and the fused form writes it element by element where it is out of phase. The weight is
///   copied once per block to shared memory and read there at the row's alignment. The body's vectors must fit
///   the tile (hidden / kLanes of them at most, the head and tail held besides). Rows looped over as for
///   kPathVector.
/// - kPathScalar: the row fits in one tile, any alignment: element loads in a thread-interleaved order (thread t
///   of a row takes elements t, t + kRowThreads, ...), so that a warp's loads stay coalesced.
/// - kPathTiled: any hidden size: tile by tile in two passes, the second reading the row again (mostly from
///   L1/L2), with vectors where the alignment allows it (tested on the device). For rows beyond the largest
///   one-tile configuration.
/// - kPathVectorLate: as kPathVector for one row per group, but the weight is loaded after the reduction (only
///   prefetched before it): fewer registers held across the barrier, one more cache round trip per row.
/// - kPathPhasedDirect: as kPathPhased, but the weight is read from global memory at each row's split (shifted
///   vectors, mostly L1 hits) instead of a shared-memory copy: no copy, no barrier before the first row, no
///   bank conflicts of the copy's word reads. Chosen by no rule: on an H100 it ranged from 1% faster to 6%
///   slower than kPathPhased at odd bf16 widths and offsets (docs/performance.md); benchmarks/tune_norms.py
///   times it.
///
/// Aliasing: out may be x (in place), so those two pointers carry no __restrict__; nor do x and residual of the
/// fused kernel, which must not overlap each other. Each thread loads every element it stores before storing it.
///
/// Programmatic dependent launch: every thread waits (cujit::pdl_wait) before its first global read and releases
/// the next kernel (cujit::pdl_launch_dependents) after its last one.
#ifndef CUJIT_KERNELS_RMS_NORM_CUH_
#define CUJIT_KERNELS_RMS_NORM_CUH_

#include <cujit/base.cuh>
#include <cujit/pdl.cuh>
#include <cujit/reduce.cuh>
#include <cujit/rows.cuh>
#include <cujit/types.cuh>

#include "norm_plan.cuh"
#include "packed.cuh"

namespace rms_norm_detail {

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

  /// Load the vectors of `reader`'s row that start at element `first` + slot(i, 0) of it (the index of this
  /// thread's first element in the row, whose body vectors the reader's split places); vectors at or past
  /// `count` read as zero. For a row that is not in phase with the tensor whose split the kernel follows: each
  /// vector is a shifted one (see cujit/rows.cuh), or an aligned load when the row happens to be in phase.
  CUJIT_DEVICE void load(const cujit::RowReader<T>& reader, int64_t first, int64_t count) {
    static_assert(kVector, "a row reader follows the vector layout");
#pragma unroll
    for (int i = 0; i < kVecs; ++i) {
      if (slot(i, 0) < count) {
        const cujit::Vec16<T> got = reader.vector(static_cast<uint64_t>(first + slot(i, 0)));
        const uint4 bits = *reinterpret_cast<const uint4*>(&got);
        v[i] = {{bits.x, bits.y, bits.z, bits.w}};
      } else {
        v[i] = V::zeros();
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

  /// Store to `base`, the vectors before `count` only, element by element: for a row that is not in phase with
  /// the split the vectors follow (`base` not 16-byte aligned). Vector layout only.
  CUJIT_DEVICE void store_elements(T* base, int64_t count) const {
    static_assert(kVector, "element stores of whole vectors follow the vector layout");
#pragma unroll
    for (int i = 0; i < kVecs; ++i) {
      if (slot(i, 0) < count) {
#pragma unroll
        for (int j = 0; j < 4; ++j) {
#pragma unroll
          for (int h = 0; h < kPerWord; ++h) P::store_one(base + slot(i, 0) + j * kPerWord + h, v[i].w[j] >> (16 * h));
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
#if defined(__CUDA_ARCH__)  // PTX: device code only (a host compiler running this code skips the hint)
        if (slot(i, 0) < count) asm volatile("prefetch.global.L1 [%0];" ::"l"(base + slot(i, 0)));
#endif
      }
    }
  }

  /// Load from a copy of the weight in shared memory (`staged`, 32-bit words, element 0 at the first word's low
  /// end) whose element `first` is this thread's first element, at any element alignment; vectors at or past
  /// `count` read as zero. Vector layout only. A 16-bit vector that starts at an odd element straddles five
  /// words: each word of it is the funnel shift of two neighbours.
  CUJIT_DEVICE void load_staged(const uint32_t* staged, int64_t first, int64_t count) {
    static_assert(kVector, "staged weights follow the vector layout");
#pragma unroll
    for (int i = 0; i < kVecs; ++i) {
      if (slot(i, 0) >= count) {
        v[i] = V::zeros();
        continue;
      }
      const int64_t at = first + slot(i, 0);
      if constexpr (kPerWord == 1) {
#pragma unroll
        for (int j = 0; j < 4; ++j) v[i].w[j] = staged[at + j];
      } else {
        const uint32_t* words = staged + (at >> 1);
        if (at & 1) {
#pragma unroll
          for (int j = 0; j < 4; ++j) v[i].w[j] = __funnelshift_r(words[j], words[j + 1], 16);
        } else {
#pragma unroll
          for (int j = 0; j < 4; ++j) v[i].w[j] = words[j];
        }
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

/// row_sum for kernels that reduce several rows in turn: the same sums, with the shared partials in one of two
/// buffers, `parity` (0 or 1) alternating from one call to the next. Two buffers and one barrier per call are
/// enough: a warp can write the partials of call k + 1 while a slower warp still reads those of call k, but not
/// those of call k + 2, which come after the barrier of call k + 1 that the slower warp has not passed yet.
template <int kBlock, int kRowThreads>
CUJIT_DEVICE float row_sum_alternating(float value, int parity) {
  if constexpr (kRowThreads <= cujit::kWarpSize) {
    return row_sum<kBlock, kRowThreads>(value);
  } else {
    constexpr int kWarps = kBlock / cujit::kWarpSize;
    constexpr int kWarpsPerRow = kRowThreads / cujit::kWarpSize;
    __shared__ float partial[2][kWarps];
    value = cujit::warp_sum(value);
    const int warp = threadIdx.x / cujit::kWarpSize;
    if (threadIdx.x % cujit::kWarpSize == 0) partial[parity][warp] = value;
    __syncthreads();
    const int first = warp / kWarpsPerRow * kWarpsPerRow;
    float total = 0.0f;
#pragma unroll
    for (int w = 0; w < kWarpsPerRow; ++w) total += partial[parity][first + w];
    return total;
  }
}

/// 1 / sqrt(mean + eps) from the row's sum of squares.
CUJIT_DEVICE float inverse_rms(float sum_squares, int64_t hidden, float eps) {
  return rsqrtf(sum_squares / static_cast<float>(hidden) + eps);
}

/// The rows a norm kernel reads and writes, and the one difference between its two forms. Plain RMSNorm
/// (kFusedAdd false) reads x and writes the normalised rows to out. The fused form reads x and residual, writes
/// round(residual + x) back to residual and the normalised sums to x (out is x; residual is unused when plain).
/// The pointers point at one row's (or one thread's) first element, or at row 0 of the tensors with their strides.
template <typename T, bool kFusedAdd>
struct RowTensors {
  T* out;
  const T* x;
  T* residual;
  int64_t out_stride;
  int64_t x_stride;
  int64_t residual_stride;

  /// The same tensors `row` rows and `first` elements on.
  CUJIT_DEVICE RowTensors at(int64_t row, int64_t first) const {
    return {out + row * out_stride + first, x + row * x_stride + first,
            kFusedAdd ? residual + row * residual_stride + first : nullptr, out_stride, x_stride, residual_stride};
  }
  /// The tensor besides x that is read or written row by row, and whose alignment must match x's.
  CUJIT_DEVICE const T* other() const { return kFusedAdd ? residual : out; }
  CUJIT_DEVICE int64_t other_stride() const { return kFusedAdd ? residual_stride : out_stride; }
  /// The rows that are normalised, once the fused form has stored the sums: x, or residual.
  CUJIT_DEVICE const T* normalized() const { return kFusedAdd ? residual : x; }

  /// Issue the loads of row `row` (at `first`, `where...` as the held type's load takes it): into `held` the
  /// row, or for the fused form the residual, with x's values in `in` to be added by combine() once they are
  /// needed. Deferring the add keeps the loads of a next row in flight across the reduction of the current one.
  template <typename H, typename... Where>
  CUJIT_DEVICE void load(H& held, H& in, int64_t row, int64_t first, const Where&... where) const {
    if constexpr (kFusedAdd) {
      in.load(x + row * x_stride + first, where...);
      held.load(residual + row * residual_stride + first, where...);
    } else {
      held.load(x + row * x_stride + first, where...);
    }
  }
  /// The fused form's held = round(residual + x); nothing for the plain form.
  template <typename H>
  static CUJIT_DEVICE void combine(H& held, const H& in) {
    if constexpr (kFusedAdd) held.add(in);
  }
  /// The fused form's new residual is final before the reduction: stored at once, so that the store overlaps the
  /// reduction. Nothing for the plain form.
  template <typename H, typename... Where>
  CUJIT_DEVICE void store_sum(const H& held, int64_t row, int64_t first, const Where&... where) const {
    if constexpr (kFusedAdd) held.store(residual + row * residual_stride + first, where...);
  }
  /// Store the normalised row.
  template <typename H, typename... Where>
  CUJIT_DEVICE void store(const H& held, int64_t row, int64_t first, const Where&... where) const {
    held.store(out + row * out_stride + first, where...);
  }
};

/// RMSNorm (or fused add + RMSNorm) of a row that fits in one tile. `io` and `weight` point at this thread's
/// first element (Fragment::thread_offset past the row start), `count` is the number of elements of the row from
/// there on (zero or less for a thread past the row's end or a row past the last).
template <bool kVector, typename T, int kBlock, int kRowThreads, int kVecs, bool kGemma, bool kFusedAdd>
CUJIT_DEVICE void norm_tile(const RowTensors<T, kFusedAdd>& io, const T* __restrict__ weight, int64_t hidden,
                            int64_t count, float eps) {
  using F = Fragment<kVector, T, kRowThreads, kVecs>;
  F row, w;
  {
    F in;
    io.load(row, in, 0, 0, count);
    F::prefetch(weight, count);
    io.combine(row, in);
  }
  io.store_sum(row, 0, 0, count);
  if constexpr (kFusedAdd) row.forget();  // keep the packed sums, not the fp32 values they were rounded from
  const float inv_rms = inverse_rms(row_sum<kBlock, kRowThreads>(row.sum_squares()), hidden, eps);
  w.load(weight, count);
  cujit::pdl_launch_dependents();  // this thread's last global read has been issued
  row.forget();
  row.template normalize<kGemma>(w, inv_rms);
  io.store(row, 0, 0, count);
}

/// The second pass of the tiled paths: out = src * inv_rms * weight (or (1 + weight)), tile by tile; each thread
/// reads and writes the same elements of every tile as in the first pass.
template <bool kVector, typename T, int kRowThreads, int kVecs, bool kGemma>
CUJIT_DEVICE void normalize_tiles(T* out, const T* src, const T* __restrict__ weight, int64_t count, float inv_rms) {
  using F = Fragment<kVector, T, kRowThreads, kVecs>;
  for (int64_t begin = 0; begin < count; begin += F::kTile) {
    F part, w;
    part.load(src + begin, count - begin);
    w.load(weight + begin, count - begin);
    part.template normalize<kGemma>(w, inv_rms);
    part.store(out + begin, count - begin);
  }
}

/// RMSNorm (or fused add + RMSNorm) of a row of any length, tile by tile; arguments as for norm_tile.
template <bool kVector, typename T, int kBlock, int kRowThreads, int kVecs, bool kGemma, bool kFusedAdd>
CUJIT_DEVICE void norm_tiles(const RowTensors<T, kFusedAdd>& io, const T* __restrict__ weight, int64_t hidden,
                             int64_t count, float eps) {
  using F = Fragment<kVector, T, kRowThreads, kVecs>;
  float squares = 0.0f;
  for (int64_t begin = 0; begin < count; begin += F::kTile) {
    F part, in;
    io.load(part, in, 0, begin, count - begin);
    io.combine(part, in);
    io.store_sum(part, 0, begin, count - begin);
    squares += part.sum_squares();
  }
  const float inv_rms = inverse_rms(row_sum<kBlock, kRowThreads>(squares), hidden, eps);
  // The fused form reads back the sums each thread stored itself above, in the same layout: no barrier needed.
  normalize_tiles<kVector, T, kRowThreads, kVecs, kGemma>(io.out, io.normalized(), weight, count, inv_rms);
  cujit::pdl_launch_dependents();
}

// ------------------------------------------------------------------------------------------------ row loops
/// The rows of the calling thread's row group in a kernel where each group normalises up to kRows rows in turn:
/// at step k the block's kGroups groups take rows (blockIdx.x * kRows + k) * kGroups + group. `steps`, the
/// number of steps the block takes, is the same for all its threads (the reductions have barriers).
template <int kBlock, int kRowThreads, int kRows>
struct RowLoop {
  static constexpr int kGroups = kBlock / kRowThreads;
  int64_t rows;
  int steps;

  CUJIT_DEVICE explicit RowLoop(int64_t rows_) : rows(rows_) {
    if constexpr (kRows == 1) {
      steps = 1;  // a constant, so that the compiler drops the loads of a next row that never comes
    } else {
      const int64_t left = rows - static_cast<int64_t>(blockIdx.x) * kRows * kGroups;  // >= 1: the grid fits
      steps = left >= static_cast<int64_t>(kRows) * kGroups ? kRows
                                                             : static_cast<int>((left + kGroups - 1) / kGroups);
    }
  }
  /// The group's row at step 0 (possibly past the last row).
  static CUJIT_DEVICE int64_t first() {
    return static_cast<int64_t>(blockIdx.x) * kRows * kGroups + threadIdx.x / kRowThreads;
  }
  /// `row` if it is a row (and the step one the block takes), else row 0: pointers stay inside the tensors.
  CUJIT_DEVICE int64_t clamp(int64_t row, int k) const { return k < steps && row < rows ? row : 0; }
  /// `count` for a row, 0 (nothing loaded or stored) for a step past the end.
  CUJIT_DEVICE int64_t count(int64_t row, int k, int64_t count) const {
    return k < steps && row < rows ? count : 0;
  }
};

/// RMSNorm (or fused add + RMSNorm) with 16-byte vectors (kPathVector), up to kRows rows per row group. The
/// weight is loaded together with the first row and kept in registers for all of them, so that no load waits
/// behind a reduction; and the next row's loads are issued before the current row is reduced, so that they are in
/// flight while it is reduced, scaled and stored. Registers: three fragments (the row, the next row, the weight);
/// four for the fused form (the sum, the next x and residual, the weight).
template <typename T, int kBlock, int kRowThreads, int kVecs, int kRows, bool kGemma, bool kFusedAdd>
CUJIT_DEVICE void norm_rows(const RowTensors<T, kFusedAdd>& io, const T* __restrict__ weight, int64_t rows,
                            int64_t hidden, float eps) {
  using F = Fragment<true, T, kRowThreads, kVecs>;
  using L = RowLoop<kBlock, kRowThreads, kRows>;
  const L loop(rows);
  const int64_t first = F::thread_offset(threadIdx.x % kRowThreads);
  const int64_t count = hidden - first;
  int64_t row = L::first();
  F held, w;
  {
    F in;
    io.load(held, in, loop.clamp(row, 0), first, loop.count(row, 0, count));
    w.load(weight + first, count);
    io.combine(held, in);
  }
#pragma unroll 1
  for (int k = 0; k < loop.steps; ++k) {
    const int64_t at = loop.clamp(row, k), here = loop.count(row, k, count);
    io.store_sum(held, at, first, here);
    const int64_t next_row = row + L::kGroups;
    F next, next_in;
    io.load(next, next_in, loop.clamp(next_row, k + 1), first, loop.count(next_row, k + 1, count));
    if (k + 1 == loop.steps) cujit::pdl_launch_dependents();  // this thread's last global read has been issued
    if constexpr (kFusedAdd) held.forget();  // keep the packed sums, not the fp32 values they were rounded from
    const float inv_rms =
        inverse_rms(row_sum_alternating<kBlock, kRowThreads>(held.sum_squares(), k & 1), hidden, eps);
    held.forget();
    held.template normalize<kGemma>(w, inv_rms);
    io.store(held, at, first, here);
    io.combine(next, next_in);
    held = next;
    row = next_row;
  }
}

// ------------------------------------------------------------------------------------------------ odd rows
/// Rows that are not 16-byte aligned or not a whole number of vectors (kPathPhased) split as cujit::RowSplit
/// does (cujit/rows.cuh): `head` elements up to the first 16-byte boundary, `vectors` whole vectors, then `tail`
/// elements, fewer than one vector's worth each. The split follows the tensor that is written row by row (out,
/// or residual for the fused form); a split of zero elements (all parts empty) stands for no row.
template <typename T>
using Split = cujit::RowSplit<T>;

/// The elements in the body of a split.
template <typename T>
CUJIT_DEVICE int64_t body_elements(const Split<T>& split) {
  return static_cast<int64_t>(split.vectors * Split<T>::kLanes);
}

/// The head and tail elements of a row that thread t of its row group holds: head element t (if t < head) and
/// tail element t (if t < tail), each as the bits of one value in the low end of a 32-bit word (zero if absent).
/// `t` is below kRowThreads, which is at least a vector's worth of elements (check_config).
template <typename T>
struct Edges {
  using P = packed::Packed<T>;
  static constexpr int kPerWord = P::kPerWord;
  uint32_t head = 0;
  uint32_t tail = 0;

  static CUJIT_DEVICE float value(uint32_t bits) {
    float f[kPerWord];
    P::unpack(bits, f);
    return f[0];
  }
  static CUJIT_DEVICE uint32_t bits(float value) {
    float f[kPerWord] = {value};
    return P::pack(f);
  }

  CUJIT_DEVICE void load(const T* row, const Split<T>& split, uint32_t t) {
    if (t < split.head) head = P::load_one(row + t);
    if (t < split.tail) tail = P::load_one(row + split.tail_start() + t);
  }
  CUJIT_DEVICE void store(T* row, const Split<T>& split, uint32_t t) const {
    if (t < split.head) P::store_one(row + t, head);
    if (t < split.tail) P::store_one(row + split.tail_start() + t, tail);
  }
  /// this = round(this + other).
  CUJIT_DEVICE void add(const Edges& other) {
    head = bits(value(head) + value(other.head));
    tail = bits(value(tail) + value(other.tail));
  }
  CUJIT_DEVICE float sum_squares() const {
    const float h = value(head), t = value(tail);
    return fmaf(h, h, t * t);
  }
  /// this = round(this * inv_rms * w), with w read from `weight` (StagedWeight or DirectWeight).
  template <bool kGemma, typename W>
  CUJIT_DEVICE void normalize(const W& weight, const Split<T>& split, uint32_t t, float inv_rms) {
    if (t < split.head) {
      const float w = value(weight.bits(t));
      head = bits(value(head) * inv_rms * (kGemma ? 1.0f + w : w));
    }
    if (t < split.tail) {
      const float w = value(weight.bits(static_cast<int64_t>(split.tail_start() + t)));
      tail = bits(value(tail) * inv_rms * (kGemma ? 1.0f + w : w));
    }
  }
};

/// One row of the phased layout held by one thread: its share of the row's body vectors, and its edge elements.
/// A row in phase with the split is read and written with 16-byte vectors; one out of phase is read with shifted
/// vectors (RowReader) and written element by element.
template <typename T, int kRowThreads, int kVecs>
struct PhasedRow {
  using F = Fragment<true, T, kRowThreads, kVecs>;
  F body;
  Edges<T> edges;

  /// This thread's first body element in the row, and the body elements from there on.
  static CUJIT_DEVICE int64_t first(const Split<T>& split, uint32_t t) {
    return static_cast<int64_t>(split.head) + F::thread_offset(t);
  }
  static CUJIT_DEVICE int64_t count(const Split<T>& split, uint32_t t) {
    return body_elements(split) - F::thread_offset(t);
  }

  CUJIT_DEVICE void load(const T* row, const Split<T>& split, uint32_t t) {
    body.load(cujit::RowReader<T>(row, split), first(split, t), count(split, t));
    edges.load(row, split, t);
  }
  CUJIT_DEVICE void store(T* row, const Split<T>& split, uint32_t t) const {
    if (cujit::is_aligned(row + split.head, 16)) {
      body.store(row + first(split, t), count(split, t));
    } else {
      body.store_elements(row + first(split, t), count(split, t));
    }
    edges.store(row, split, t);
  }
  CUJIT_DEVICE void add(const PhasedRow& other) {
    body.add(other.body);
    edges.add(other.edges);
  }
  CUJIT_DEVICE float sum_squares() const { return body.sum_squares() + edges.sum_squares(); }
  CUJIT_DEVICE void forget() { body.forget(); }
  template <bool kGemma, typename W>
  CUJIT_DEVICE void normalize(const W& weight, const Split<T>& split, uint32_t t, float inv_rms) {
    F w;
    weight.load(w, split, first(split, t), count(split, t));
    body.template normalize<kGemma>(w, inv_rms);
    edges.template normalize<kGemma>(weight, split, t, inv_rms);
  }
};

/// Copy weight[0, hidden) into shared memory as 32-bit words (16-byte vectors, then the elements after the last
/// whole one), for a block that reads it at every row's alignment. The weight must be 16-byte aligned; hidden at
/// most kWords * 4 / sizeof(T). Call from every thread; the caller's barrier makes the copy visible.
template <typename T, int kBlock, int kVectors>
CUJIT_DEVICE void stage_weight(uint32_t* staged, const T* __restrict__ weight, int64_t hidden) {
  using V = packed::Vec16Words<T>;
  constexpr int kSteps = (kVectors + kBlock - 1) / kBlock;
  const int64_t vectors = hidden / V::kValues;
  V held[kSteps];
#pragma unroll
  for (int m = 0; m < kSteps; ++m) {
    const int64_t v = threadIdx.x + static_cast<int64_t>(m) * kBlock;
    held[m] = v < vectors ? V::load(weight + v * V::kValues) : V::zeros();
  }
  const int64_t rest = vectors * V::kValues + threadIdx.x;
  const uint32_t last = rest < hidden ? packed::Packed<T>::load_one(weight + rest) : 0u;
#pragma unroll
  for (int m = 0; m < kSteps; ++m) {
    const int64_t v = threadIdx.x + static_cast<int64_t>(m) * kBlock;
    if (v < vectors) {
      *reinterpret_cast<uint4*>(staged + 4 * v) = make_uint4(held[m].w[0], held[m].w[1], held[m].w[2], held[m].w[3]);
    }
  }
  if (rest < hidden) packed::Packed<T>::store_one(reinterpret_cast<T*>(staged) + rest, last);
}

/// Shared memory for the staged weight of a phased kernel: a row's worth of vectors, plus the word that a
/// funnel shift of the last vector may read.
template <typename T, int kRowThreads, int kVecs>
constexpr int kStagedWords = kRowThreads * kVecs * 4 + 4;

/// Where a phased row's weight comes from (kPathPhased): the block's copy of it in shared memory, read at the
/// row's alignment. Copied once per block (stage), visible after a barrier.
template <typename T, int kBlock, int kVectors>
struct StagedWeight {
  static constexpr bool kBarrier = true;
  uint32_t* words;
  const T* weight;

  CUJIT_DEVICE void stage(int64_t hidden) const { stage_weight<T, kBlock, kVectors>(words, weight, hidden); }
  /// Fragment `w`'s vectors at this thread's body elements [first, first + count) of a row split as `split`.
  template <typename F>
  CUJIT_DEVICE void load(F& w, const Split<T>&, int64_t first, int64_t count) const {
    w.load_staged(words, first, count);
  }
  /// The bits of element j, in the low end of a word.
  CUJIT_DEVICE uint32_t bits(int64_t j) const {
    if constexpr (packed::Packed<T>::kPerWord == 1) {
      return words[j];
    } else {
      return words[j >> 1] >> (16 * (j & 1));
    }
  }
};

/// Where a phased row's weight comes from (kPathPhasedDirect): global memory, read through a RowReader at the
/// row's split (shifted vectors, mostly served by L1: every row of a block reads the same weight). No copy, no
/// barrier, no shared memory.
template <typename T>
struct DirectWeight {
  static constexpr bool kBarrier = false;
  const T* weight;

  CUJIT_DEVICE void stage(int64_t) const {}
  template <typename F>
  CUJIT_DEVICE void load(F& w, const Split<T>& split, int64_t first, int64_t count) const {
    w.load(cujit::RowReader<T>(weight, split), first, count);
  }
  CUJIT_DEVICE uint32_t bits(int64_t j) const { return packed::Packed<T>::load_one(weight + j); }
};

/// RMSNorm (or fused add + RMSNorm) of rows that are not 16-byte aligned (kPathPhased): each row split at the
/// 16-byte boundaries of out (of residual for the fused form), vector stores in the body and element accesses at
/// the head and tail; x read through a RowReader at any offset (and, for the fused form, written element by
/// element in the body when it is out of phase with residual). The weight comes from `source` (StagedWeight or
/// DirectWeight). Rows are looped over as in norm_rows.
template <typename T, int kBlock, int kRowThreads, int kVecs, int kRows, bool kGemma, bool kFusedAdd, typename W>
CUJIT_DEVICE void norm_phased(const RowTensors<T, kFusedAdd>& io, const W& source, int64_t rows, int64_t hidden,
                              float eps) {
  using R = PhasedRow<T, kRowThreads, kVecs>;
  using L = RowLoop<kBlock, kRowThreads, kRows>;
  const L loop(rows);
  const uint32_t t = threadIdx.x % kRowThreads;
  // The split of row `at` at step k (of no elements past the last row).
  const auto split_of = [&](int64_t row, int k) {
    const int64_t at = loop.clamp(row, k);
    return Split<T>(io.other() + at * io.other_stride(), static_cast<uint64_t>(loop.count(row, k, hidden)));
  };
  int64_t row = L::first();
  Split<T> split = split_of(row, 0);
  R held;
  {
    R in;
    io.load(held, in, loop.clamp(row, 0), 0, split, t);
    source.stage(hidden);
    io.combine(held, in);
  }
  if constexpr (W::kBarrier) __syncthreads();
#pragma unroll 1
  for (int k = 0; k < loop.steps; ++k) {
    const int64_t at = loop.clamp(row, k);
    io.store_sum(held, at, 0, split, t);
    const int64_t next_row = row + L::kGroups;
    const Split<T> next_split = split_of(next_row, k + 1);
    R next, next_in;
    io.load(next, next_in, loop.clamp(next_row, k + 1), 0, next_split, t);
    if (k + 1 == loop.steps) cujit::pdl_launch_dependents();
    if constexpr (kFusedAdd) held.forget();
    const float inv_rms =
        inverse_rms(row_sum_alternating<kBlock, kRowThreads>(held.sum_squares(), k & 1), hidden, eps);
    held.forget();
    held.template normalize<kGemma>(source, split, t, inv_rms);
    io.store(held, at, 0, split, t);
    io.combine(next, next_in);
    held = next;
    split = next_split;
    row = next_row;
  }
}

// ------------------------------------------------------------------------------------------------ one row per group
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

/// The register budget: the vector and phased paths ask for at least kMinResidentThreads (1024) resident threads
/// per SM (at most 64 registers per thread), enough rows in flight to cover the memory latency. The scalar paths
/// hold one register per value and get what they need (at most 255, or 65536 / kBlock).
template <int kBlock, int kPath>
constexpr int kMinBlocks = kPath != kPathScalar && kPath != kPathTiled && kBlock < kMinResidentThreads
                               ? kMinResidentThreads / kBlock
                               : 1;

template <typename T, int kBlock, int kRowThreads, int kVecs, int kPath, int kRows>
CUJIT_HOST_DEVICE constexpr bool check_config() {
  static_assert(kBlock % kRowThreads == 0 && (kRowThreads & (kRowThreads - 1)) == 0, "rows must tile the block");
  static_assert(kRowThreads <= cujit::kWarpSize || kRowThreads % cujit::kWarpSize == 0, "whole warps per row");
  static_assert(kBlock % cujit::kWarpSize == 0 && kBlock <= 1024, "whole warps per block, at most 1024 threads");
  constexpr bool kPhased = kPath == kPathPhased || kPath == kPathPhasedDirect;
  static_assert(kPath >= kPathVector && kPath <= kPathPhasedDirect, "unknown path");
  static_assert(kRows >= 1 && (kRows == 1 || kPath == kPathVector || kPhased),
                "only the vector and phased paths loop over rows");
  static_assert(!kPhased || kRowThreads >= static_cast<int>(16 / sizeof(T)),
                "a phased row's head and tail need a thread per element");
  static_assert(kPath != kPathPhased || kStagedWords<T, kRowThreads, kVecs> * 4 <= kMaxStagedBytes,
                "the staged weight must fit in static shared memory");
  return true;
}

/// The body of both norm kernels: the path kPath over the rows of `io` (pointing at row 0).
template <typename T, bool kGemma, int kPath, int kBlock, int kRowThreads, int kVecs, int kRows, bool kFusedAdd>
CUJIT_DEVICE void norm(const RowTensors<T, kFusedAdd>& io, const T* __restrict__ weight, int64_t rows,
                       int64_t hidden, float eps) {
  static_assert(check_config<T, kBlock, kRowThreads, kVecs, kPath, kRows>());
  cujit::pdl_wait();  // x, residual and weight may come from the previous kernel
  if constexpr (kPath == kPathVector) {
    norm_rows<T, kBlock, kRowThreads, kVecs, kRows, kGemma>(io, weight, rows, hidden, eps);
  } else if constexpr (kPath == kPathPhased) {
    __shared__ __align__(16) uint32_t staged[kStagedWords<T, kRowThreads, kVecs>];
    const StagedWeight<T, kBlock, kRowThreads * kVecs> source{staged, weight};
    norm_phased<T, kBlock, kRowThreads, kVecs, kRows, kGemma>(io, source, rows, hidden, eps);
  } else if constexpr (kPath == kPathPhasedDirect) {
    norm_phased<T, kBlock, kRowThreads, kVecs, kRows, kGemma>(io, DirectWeight<T>{weight}, rows, hidden, eps);
  } else if constexpr (kPath == kPathTiled) {
    if (vectorizable(hidden, io.x, io.x_stride, io.other(), io.other_stride(), weight)) {
      const Position<true, T, kBlock, kRowThreads, kVecs> at(rows, hidden);
      norm_tiles<true, T, kBlock, kRowThreads, kVecs, kGemma>(io.at(at.row, at.first), weight + at.first, hidden,
                                                              at.count, eps);
    } else {
      const Position<false, T, kBlock, kRowThreads, kVecs> at(rows, hidden);
      norm_tiles<false, T, kBlock, kRowThreads, kVecs, kGemma>(io.at(at.row, at.first), weight + at.first, hidden,
                                                               at.count, eps);
    }
  } else {
    constexpr bool kVector = kPath == kPathVectorLate;
    const Position<kVector, T, kBlock, kRowThreads, kVecs> at(rows, hidden);
    norm_tile<kVector, T, kBlock, kRowThreads, kVecs, kGemma>(io.at(at.row, at.first), weight + at.first, hidden,
                                                              at.count, eps);
  }
}

}  // namespace rms_norm_detail

/// out[r, :] = rms_norm(x[r, :]) * w for r < rows. Rows are x_stride / out_stride elements apart (the last
/// dimension is contiguous); out may be x. Launch kBlock threads per block and
/// cdiv(rows, kBlock / kRowThreads * kRows) blocks. hidden must be at most kRowThreads * kVecs * (16 / sizeof(T))
/// (floor(hidden / (16 / sizeof(T))) at most kRowThreads * kVecs for kPathPhased), except for kPathTiled.
template <typename T, bool kGemma, int kPath, int kBlock, int kRowThreads, int kVecs, int kRows>
__global__ void __launch_bounds__(kBlock, (rms_norm_detail::kMinBlocks<kBlock, kPath>))
    rms_norm_kernel(T* out, const T* x, const T* __restrict__ weight, int64_t rows, int64_t hidden,
                    int64_t x_stride, int64_t out_stride, float eps) {
  using namespace rms_norm_detail;
  const RowTensors<T, false> io{out, x, nullptr, out_stride, x_stride, 0};
  norm<T, kGemma, kPath, kBlock, kRowThreads, kVecs, kRows>(io, weight, rows, hidden, eps);
}

/// In place: residual[r, :] = round(residual[r, :] + x[r, :]), then x[r, :] = rms_norm(residual[r, :]) * w.
/// x and residual must not overlap. Launch as rms_norm_kernel.
template <typename T, bool kGemma, int kPath, int kBlock, int kRowThreads, int kVecs, int kRows>
__global__ void __launch_bounds__(kBlock, (rms_norm_detail::kMinBlocks<kBlock, kPath>))
    fused_add_rms_norm_kernel(T* x, T* residual, const T* __restrict__ weight, int64_t rows, int64_t hidden,
                              int64_t x_stride, int64_t residual_stride, float eps) {
  using namespace rms_norm_detail;
  const RowTensors<T, true> io{x, x, residual, x_stride, x_stride, residual_stride};
  norm<T, kGemma, kPath, kBlock, kRowThreads, kVecs, kRows>(io, weight, rows, hidden, eps);
}

#endif  // CUJIT_KERNELS_RMS_NORM_CUH_
