/// @file cujit/rows.cuh
/// @brief Walk a row (or any flat range) with 16-byte vectors in its aligned middle and element accesses only
/// at its misaligned head and tail, whatever its length and wherever it starts.
///
/// A row of n values of T that starts at p splits at run time into three parts (`RowSplit`): the `head`, the
/// elements before p's first 16-byte boundary; the `body`, whole 16-byte vectors; the `tail`, what is left, fewer
/// than one vector's worth. The threads that share the row (`Threads`: the whole grid, a block, a warp, ...)
/// stride over the body one vector each, and over the head and the tail one element each. So a row of 4097 bf16
/// values, or a view that starts one element in, still moves all but at most 2 * 15 bytes with vector
/// accesses, and one compiled kernel serves every length and alignment: the split is computed inside the kernel.
///
///   row_read(x, n, threads, f)              f(i, x[i]) for each i            (reductions)
///   row_write(y, n, threads, f)             y[i] = f(i)
///   row_map(y, n, threads, f, a, b, ...)    y[i] = f(a[i], b[i], ...)        (one or more inputs)
///   RowReader<T>(a, split).vector(i)        a's values at the body vectors of another pointer's split
///                                           (for kernels that hold a row, e.g. rms_norm.cuh)
///
/// Each index of [0, n) is visited by exactly one thread of `threads`, exactly once. The functor is called per
/// element on both paths (a vector is loaded, then f is applied to each of its values), so the vector path and
/// the element path give the same bits.
///
/// Several pointers: row_map splits the row at the boundaries of its output y, so that every store in the body
/// is a full, aligned 16-byte vector. An input whose address differs from y's by a multiple of 16 bytes (the
/// common case: same-shaped contiguous tensors, or x and out of an in-place call) is read with aligned vectors
/// as well. An input at another offset (x sliced at x[1:], a weight row read against rows of odd width) is read
/// with shifted vectors: the two aligned 16-byte vectors that cover the wanted 16 bytes are loaded and the
/// bytes are funnel-shifted into place. That costs a second 16-byte load per vector (served by L1, since
/// neighbouring threads load the same vectors, so memory traffic does not grow) and a handful of integer
/// instructions; only the first and last vector of the body, where a covering vector would reach outside the
/// row, read that input element by element. No access ever reaches outside [p, p + n) of any pointer.
///
/// Requirements: every pointer is aligned to sizeof(T) (as every tensor of a torch or CuPy dtype is); an input
/// may be y itself (in place) but must not otherwise overlap y; the functor is a device functor, usually a
/// lambda; T is any dtype alias of cujit/types.cuh of 1, 2, 4 or 8 bytes (fp32, fp16, bf16, fp8, int8 ...
/// int64, fp64, bool). `kUnroll` (default 1) vectors per thread are loaded before the first is used. More than
/// one rarely pays: each shifted input then keeps two 16-byte vectors live per round, and the registers cost more
/// resident threads (bytes in flight) than the unrolling adds. Measured on an H100 (benchmarks/tune_rows.py, y = x
/// * a + b over 4097 rows of bf16, one block of 256 per row): 1 vector a thread (47 registers) 0.83-0.90x the
/// time of a copy of the same bytes at widths 4097, 8192, 2881 and a view one element in, 2 vectors (80
/// registers) 0.65-0.76x; launch bounds of 6 blocks of 256 per SM (40 registers) add 0.01-0.02x to the first.
/// (Those were measured while the body's stores compiled to four 4-byte pieces and a shifted read to five 4-byte
/// loads; vec.cuh now makes them one 16-byte store and two 16-byte loads.)
///
/// Light on purpose: base.cuh and vec.cuh only (no type traits, no standard headers).
#ifndef CUJIT_ROWS_CUH_
#define CUJIT_ROWS_CUH_

#include <cujit/base.cuh>
#include <cujit/vec.cuh>

namespace cujit {

#if defined(__CUDACC__)
/// The threads that walk one row together: this thread is number `rank` of `count`.
struct Threads {
  uint64_t rank;
  uint64_t count;

  /// Every thread of the grid (x dimension), for a flat range spread over the whole grid.
  static CUJIT_DEVICE Threads grid() { return Threads{global_thread_index(), global_thread_count()}; }
  /// The threads of this block (x dimension), for one row per block.
  static CUJIT_DEVICE Threads block() { return Threads{threadIdx.x, blockDim.x}; }
  /// Groups of `size` consecutive threads of a block, for one row per group (a warp: `size` = 32).
  static CUJIT_DEVICE Threads group(uint32_t size) { return Threads{threadIdx.x % size, size}; }
};
#endif

/// q = a / b and r = a % b (row and column of a flat index), with 32-bit division where both fit (several times cheaper than 64-bit).
CUJIT_DEVICE void divmod(uint64_t a, uint64_t b, uint64_t& q, uint64_t& r) {
  if (((a | b) >> 32) == 0) {
    const uint32_t q32 = static_cast<uint32_t>(a) / static_cast<uint32_t>(b);
    q = q32;
    r = static_cast<uint32_t>(a) - q32 * static_cast<uint32_t>(b);
  } else {
    q = a / b;
    r = a - q * b;
  }
}

/// Where the 16-byte vectors of a row of `n` values of T lie, relative to the address of its first element.
template <typename T>
struct RowSplit {
  static_assert(16 % sizeof(T) == 0 && sizeof(T) <= 8, "T must be 1, 2, 4 or 8 bytes");
  /// Values per 16-byte vector.
  static constexpr uint64_t kLanes = 16 / sizeof(T);

  uint64_t n;       ///< values in the row
  uint64_t head;    ///< values before the first 16-byte boundary (all n when the row ends before it)
  uint64_t vectors; ///< whole vectors after the head; the body is [head, head + vectors * kLanes)
  uint64_t tail;    ///< values after the body, fewer than kLanes

  CUJIT_HOST_DEVICE RowSplit(const T* p, uint64_t n) : n(n) {
    const uint64_t past = static_cast<uint64_t>(reinterpret_cast<uintptr_t>(p) % 16) / sizeof(T);
    const uint64_t to_boundary = past == 0 ? 0 : kLanes - past;
    head = to_boundary < n ? to_boundary : n;
    vectors = (n - head) / kLanes;
    tail = n - head - vectors * kLanes;
  }

  /// The index of the first value of body vector `v`.
  CUJIT_HOST_DEVICE uint64_t vector_start(uint64_t v) const { return head + v * kLanes; }
  /// The index of the first value of the tail.
  CUJIT_HOST_DEVICE uint64_t tail_start() const { return n - tail; }
};

#if defined(__CUDACC__)
namespace rows_detail {

using Words = Vec<uint32_t, 4>;

/// The 16 bytes that start `shift` bytes (1..15) into the 32 bytes lo, hi (little-endian, as the GPU is).
CUJIT_DEVICE Words funnel(const Words& lo, const Words& hi, uint32_t shift) {
  uint32_t w[5];
  // A switch rather than an indexed array: indexing registers with a run-time value would spill them to local
  // memory. `shift` is the same for a whole row, so the branch is uniform.
  switch (shift >> 2) {
    case 0: w[0] = lo[0]; w[1] = lo[1]; w[2] = lo[2]; w[3] = lo[3]; w[4] = hi[0]; break;
    case 1: w[0] = lo[1]; w[1] = lo[2]; w[2] = lo[3]; w[3] = hi[0]; w[4] = hi[1]; break;
    case 2: w[0] = lo[2]; w[1] = lo[3]; w[2] = hi[0]; w[3] = hi[1]; w[4] = hi[2]; break;
    default: w[0] = lo[3]; w[1] = hi[0]; w[2] = hi[1]; w[3] = hi[2]; w[4] = hi[3]; break;
  }
  const uint32_t bits = (shift & 3) * 8;
  Words out;
#pragma unroll
  for (int j = 0; j < 4; ++j) out[j] = __funnelshift_r(w[j], w[j + 1], bits);
  return out;
}

/// Reads of one input row at the vectors of a split made for another pointer (or for itself).
template <typename T>
class Reader {
 public:
  using V = Vec16<T>;
  static constexpr uint64_t kLanes = RowSplit<T>::kLanes;

  CUJIT_DEVICE Reader(const T* p, const RowSplit<T>& split) : p_(p), n_(split.n) {
    // Bytes past a 16-byte boundary at the start of the body; the same for every body vector.
    shift_ = static_cast<uint32_t>((reinterpret_cast<uintptr_t>(p + split.head)) % 16);
  }

  /// The kLanes values starting at index `first`, a body vector's start.
  CUJIT_DEVICE V vector(uint64_t first) const {
    if (shift_ == 0) return V::load(p_ + first);
    V v;
    const uint64_t byte = first * sizeof(T);
    if (byte >= shift_ && byte - shift_ + 32 <= n_ * sizeof(T)) {
      // Both covering vectors lie inside the row.
      // Both covering vectors whole (two 16-byte loads), then the wanted bytes funnel-shifted out of them.
      const uint32_t* lo = reinterpret_cast<const uint32_t*>(reinterpret_cast<const char*>(p_ + first) - shift_);
      v = vec_detail::bit_copy<V>(funnel(Words::load(lo), Words::load(lo + 4), shift_));
    } else {
#pragma unroll
      for (uint64_t k = 0; k < kLanes; ++k) v[k] = p_[first + k];
    }
    return v;
  }

  CUJIT_DEVICE T operator[](uint64_t i) const { return p_[i]; }

 private:
  const T* p_;
  uint64_t n_;
  uint32_t shift_;
};

/// Compile-time index lists, to expand "f(in[0], in[1], ...)" from an array.
template <int... I>
struct Indices {};
template <int N, int... I>
struct MakeIndices : MakeIndices<N - 1, N - 1, I...> {};
template <int... I>
struct MakeIndices<0, I...> {
  using type = Indices<I...>;
};

template <typename F, typename T, int K, int... I>
CUJIT_DEVICE T apply_lane(F& f, const Vec16<T> (&held)[K], int k, Indices<I...>) {
  return f(held[I][k]...);
}

template <typename F, typename T, int K, int... I>
CUJIT_DEVICE T apply_at(F& f, const Reader<T> (&in)[K], uint64_t i, Indices<I...>) {
  return f(in[I][i]...);
}

/// Calls `load(v)` for up to kUnroll body vectors of this thread, then `use(v, loaded)` for each: all loads of a
/// round are issued before the first use, which a store would otherwise prevent (it might alias a later load).
template <int kUnroll, typename Load, typename Use>
CUJIT_DEVICE void for_vectors(uint64_t vectors, const Threads& threads, Load load, Use use) {
  static_assert(kUnroll >= 1, "kUnroll must be at least 1");
  using Loaded = decltype(load(uint64_t{0}));
  const uint64_t step = threads.count * kUnroll;
  for (uint64_t v = threads.rank; v < vectors; v += step) {
    Loaded held[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      if (v + u * threads.count < vectors) held[u] = load(v + u * threads.count);
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      if (v + u * threads.count < vectors) use(v + u * threads.count, held[u]);
    }
  }
}

/// Calls `at(i)` for the head and tail indices of this thread.
template <typename T, typename At>
CUJIT_DEVICE void for_edges(const RowSplit<T>& split, const Threads& threads, At at) {
  for (uint64_t i = threads.rank; i < split.head; i += threads.count) at(i);
  for (uint64_t i = split.tail_start() + threads.rank; i < split.n; i += threads.count) at(i);
}

/// The loaded body vectors of K inputs.
template <typename T, int K>
struct Held {
  Vec16<T> in[K];
};

/// The body of row_map: y's body vectors of this thread, y = f(in...), kUnroll vectors of every input in flight.
template <int kUnroll, typename T, typename F, int K>
CUJIT_DEVICE void map_body(T* y, const RowSplit<T>& split, const Threads& threads, F& f, const Reader<T> (&in)[K]) {
  using Seq = typename MakeIndices<K>::type;
  using H = Held<T, K>;
  for_vectors<kUnroll>(
      split.vectors, threads,
      [&](uint64_t v) {
        H held;
#pragma unroll
        for (int j = 0; j < K; ++j) held.in[j] = in[j].vector(split.vector_start(v));
        return held;
      },
      [&](uint64_t v, const H& held) {
        Vec16<T> out;
#pragma unroll
        for (int k = 0; k < static_cast<int>(RowSplit<T>::kLanes); ++k) out[k] = apply_lane(f, held.in, k, Seq());
        out.store(y + split.vector_start(v));
      });
}

}  // namespace rows_detail

/// Reads of one row of T (at `p`) at the body vectors of a split made for another pointer of the same row length:
/// `RowReader<T>(p, split).vector(split.vector_start(v))` is the kLanes values of p's row that body vector v of
/// the split covers, loaded as one aligned vector when p is in phase with the split's pointer and as a shifted
/// vector otherwise; `reader[i]` is one value. For a kernel that holds a row in registers instead of mapping it
/// (a norm reads the whole row before it writes any of it), with its stores aligned to the split of its output.
template <typename T>
using RowReader = rows_detail::Reader<T>;

/// Calls `f(i, x[i])` for every index i of [0, n) that this thread owns, reading x with 16-byte vectors where
/// it is aligned: the loads of a reduction (sum, maximum, a norm's sum of squares). Which indices a thread owns
/// depends on x's alignment, so a result that depends on the order of f's calls (a float sum) may differ in its
/// last bits between alignments.
template <int kUnroll = 1, typename T, typename F>
CUJIT_DEVICE void row_read(const T* x, uint64_t n, const Threads& threads, F f) {
  const RowSplit<T> split(x, n);
  using V = Vec16<T>;
  rows_detail::for_vectors<kUnroll>(
      split.vectors, threads, [&](uint64_t v) { return V::load(x + split.vector_start(v)); },
      [&](uint64_t v, const V& held) {
        const uint64_t first = split.vector_start(v);
#pragma unroll
        for (uint64_t k = 0; k < RowSplit<T>::kLanes; ++k) f(first + k, held[k]);
      });
  rows_detail::for_edges(split, threads, [&](uint64_t i) { f(i, x[i]); });
}

/// `y[i] = f(i)` for every index i of [0, n) that this thread owns, storing with 16-byte vectors where y is
/// aligned.
template <typename T, typename F>
CUJIT_DEVICE void row_write(T* y, uint64_t n, const Threads& threads, F f) {
  const RowSplit<T> split(y, n);
  using V = Vec16<T>;
  rows_detail::for_vectors<1>(
      split.vectors, threads, [](uint64_t v) { return v; },
      [&](uint64_t v, uint64_t) {
        const uint64_t first = split.vector_start(v);
        V out;
#pragma unroll
        for (uint64_t k = 0; k < RowSplit<T>::kLanes; ++k) out[k] = f(first + k);
        out.store(y + first);
      });
  rows_detail::for_edges(split, threads, [&](uint64_t i) { y[i] = f(i); });
}

/// `y[i] = f(in[i]...)` for every index i of [0, n) that this thread owns, for one or more inputs of the same
/// dtype as y: `row_map(y, n, threads, f, x)` maps x, `row_map(y, n, threads, f, gate, up)` combines two rows.
/// Stores are 16-byte vectors at y's alignment; each input is read with aligned vectors when its offset from y
/// is a multiple of 16 bytes and with shifted vectors otherwise (see the top of this file). f returns a T.
template <int kUnroll = 1, typename T, typename F, typename... In>
CUJIT_DEVICE void row_map(T* y, uint64_t n, const Threads& threads, F f, const In*... inputs) {
  constexpr int K = sizeof...(In);
  static_assert(K >= 1, "row_map needs at least one input; row_write takes none");
  using Seq = typename rows_detail::MakeIndices<K>::type;
  const RowSplit<T> split(y, n);
  // A pointer to another dtype fails here, at the conversion to const T*.
  const rows_detail::Reader<T> in[K] = {rows_detail::Reader<T>(inputs, split)...};
  rows_detail::map_body<kUnroll>(y, split, threads, f, in);
  rows_detail::for_edges(split, threads, [&](uint64_t i) { y[i] = rows_detail::apply_at(f, in, i, Seq()); });
}
#endif

}  // namespace cujit

#endif  // CUJIT_ROWS_CUH_
