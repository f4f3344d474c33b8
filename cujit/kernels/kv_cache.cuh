/// @file kv_cache.cuh
/// @brief Store each token's k and v rows into the KV cache at the token's slot; optional fp8 e4m3 cache.
///
/// Layout: k, v [tokens, kv_heads * head_size] rows at any stride (the heads of a row contiguous); caches
/// [num_slots, kv_heads * head_size] contiguous, which covers the paged form [num_blocks, block_size, kv_heads,
/// head_size] with slot = block * block_size + offset. A token's row is one contiguous run in the source and in
/// the cache, so the store is a gather-free copy of `row` values per token.
///
/// Slots: negative skips the token (padding). A slot >= num_slots writes nothing and makes the kernel trap at the
/// end of that token's work (one thread prints the slot): the launch fails, as torch's indexing asserts make it
/// fail, and nothing outside the cache is written. Two tokens with the same slot: each value of the row ends up
/// from one of them, which one is not defined.
///
/// fp8 cache (CacheT = fp8_e4m3_t): value stored = saturate_e4m3(float(x) / scale), the IEEE division (not a
/// multiplication by the reciprocal), rounded to nearest even; scale is read from device memory (no host sync).
///
/// Work split: a group of kGroup threads per token (blockDim.x / kGroup tokens per block). Each thread moves
/// chunks of kVec values (16 bytes of the source when alignment allows), kBatch chunks of k and of v per step
/// (kElementBatch single values on the element-wise path), with every load of a step issued before its stores.
/// The loads do not wait for the slot (only the stores use it), so the slot's load latency overlaps the first data
/// loads: the slot is first tested after the first step's loads (store_rows). Tested at the top, as the source
/// once did, the compiler made every thread wait for the slot before any other load (two round trips a token).
///
/// Rows that are not whole aligned 16-byte vectors (odd widths, views that start mid-vector, slots whose rows start
/// mid-vector) into a cache of k's dtype go through cujit/rows.cuh instead: 16-byte stores at the cache row's
/// boundaries, k and v read with aligned or shifted 16-byte vectors, element accesses only at the two ends. An fp8
/// cache's odd rows keep the element-wise path (rows.cuh maps a dtype to itself).
#ifndef CUJIT_KERNELS_KV_CACHE_CUH_
#define CUJIT_KERNELS_KV_CACHE_CUH_

#include <cujit/base.cuh>
#include <cujit/check.cuh>
#include <cujit/fp8.cuh>
#include <cujit/rows.cuh>
#include <cujit/types.cuh>

#include "vec_io.cuh"

namespace kv_cache_detail {

/// Chunks of k (and of v) a thread loads per step on the vector path.
constexpr int kBatch = 2;

/// Values of k (and of v) a thread loads per step on the element-wise path. One a step would leave each thread a
/// single round trip of 4 bytes (bf16) in flight, far from what keeps DRAM busy; eight put 32 bytes in flight.
constexpr int kElementBatch = 8;

/// Whether A and B are one type (without <type_traits>).
template <typename A, typename B>
constexpr bool kSame = false;
template <typename A>
constexpr bool kSame<A, A> = true;

/// Print (lane 0 of the token's group) and trap when a token's slot is at or past the cache's end.
CUJIT_DEVICE void slot_error(int64_t slot, uint64_t token, uint64_t num_slots, uint32_t lane) {
  if (lane == 0) {
    printf("cujit kv cache: slot %lld of token %llu is outside the cache's %llu slots\n", static_cast<long long>(slot),
           static_cast<unsigned long long>(token), static_cast<unsigned long long>(num_slots));
    __trap();
  }
}

/// One step of a token's rows: kSteps chunks of k and of v from chunk c0 on, kGroup chunks apart.
template <bool kVector, typename T, int kVec, int kGroup, int kSteps>
struct Step {
  T kx[kSteps][kVec];
  T vx[kSteps][kVec];

  CUJIT_DEVICE void load(const T* k_row, const T* v_row, uint32_t c0, uint32_t chunks) {
#pragma unroll
    for (int b = 0; b < kSteps; ++b) {
      const uint32_t c = c0 + b * kGroup;
      if (c < chunks) {
        vec_io::load<T, kVec>(k_row + c * kVec, kVector, kx[b]);
        vec_io::load<T, kVec>(v_row + c * kVec, kVector, vx[b]);
      }
    }
  }

  template <typename CacheT>
  CUJIT_DEVICE void store(CacheT* kc_row, CacheT* vc_row, uint32_t c0, uint32_t chunks, float ks, float vs) const {
#pragma unroll
    for (int b = 0; b < kSteps; ++b) {
      const uint32_t c = c0 + b * kGroup;
      if (c < chunks) {
        vec_io::store_as<T, CacheT, kVec>(kc_row + c * kVec, kVector, kx[b], ks);
        vec_io::store_as<T, CacheT, kVec>(vc_row + c * kVec, kVector, vx[b], vs);
      }
    }
  }
};

/// One token's rows: kBatch chunks of k and of v per step on the vector path, kElementBatch single values on the
/// element-wise path, every load of a step issued before its stores. The slot is first looked at after the first
/// step's loads (its row, and whether the token writes at all), so that those loads go out before the slot's own
/// load returns: with the slot tested first, the compiler made every thread wait for it before any other load.
/// A token writes where its slot is in [0, num_slots).
template <bool kVector, typename T, typename CacheT, typename S, int kVec, int kGroup>
CUJIT_DEVICE void store_rows(const T* k_row, const T* v_row, CacheT* k_cache, CacheT* v_cache, S slot,
                             uint64_t num_slots, uint32_t row, uint32_t chunks, uint32_t lane, float ks, float vs) {
  constexpr int kSteps = kVector ? kBatch : kElementBatch;
  using St = Step<kVector, T, kVec, kGroup, kSteps>;
  St first;
  first.load(k_row, v_row, lane, chunks);
  const bool write = slot >= 0 && static_cast<uint64_t>(slot) < num_slots;
  if (!write) return;  // a skipped token: its first loads only overlapped the slot's latency
  const uint64_t dst = static_cast<uint64_t>(slot) * row;
  CacheT* const kc_row = k_cache + dst;
  CacheT* const vc_row = v_cache + dst;
  first.store(kc_row, vc_row, lane, chunks, ks, vs);
#pragma unroll 1
  for (uint32_t c0 = lane + kSteps * kGroup; c0 < chunks; c0 += kSteps * kGroup) {
    St step;
    step.load(k_row, v_row, c0, chunks);
    step.store(kc_row, vc_row, c0, chunks, ks, vs);
  }
}

}  // namespace kv_cache_detail

/// Copy k and v rows (row = kv_heads * head_size values) to their cache slots.
/// grid.x = cdiv(tokens, blockDim.x / kGroup); k_scale and v_scale are device pointers, read only for an fp8 cache.
template <typename T, typename CacheT, typename S, int kVec, int kGroup>
__global__ void __launch_bounds__(256) store_kv_cache_kernel(
    const T* __restrict__ k, const T* __restrict__ v, CacheT* __restrict__ k_cache, CacheT* __restrict__ v_cache,
    const S* __restrict__ slot_mapping, const float* __restrict__ k_scale, const float* __restrict__ v_scale,
    int64_t k_stride, int64_t v_stride, uint32_t row, uint64_t num_slots, uint32_t tokens) {
  using namespace kv_cache_detail;
  const uint32_t lane = threadIdx.x % kGroup;
  const uint64_t token = static_cast<uint64_t>(blockIdx.x) * (blockDim.x / kGroup) + threadIdx.x / kGroup;
  if (token >= tokens) return;
  const S slot = slot_mapping[token];
  const bool vector = cujit::is_aligned(k, vec_io::access_bytes<T, kVec>()) &&
                      cujit::is_aligned(v, vec_io::access_bytes<T, kVec>()) &&
                      cujit::is_aligned(k_cache, vec_io::access_bytes<CacheT, kVec>()) &&
                      cujit::is_aligned(v_cache, vec_io::access_bytes<CacheT, kVec>()) && k_stride % kVec == 0 &&
                      v_stride % kVec == 0 && row % kVec == 0;
  const T* const k_row = k + token * k_stride;
  const T* const v_row = v + token * v_stride;
  // Issued now, waited for at the first fp8 store.
  const float ks = vec_io::is_fp8<CacheT> ? *k_scale : 1.0f;
  const float vs = vec_io::is_fp8<CacheT> ? *v_scale : 1.0f;
  // A cache of k's dtype takes rows.cuh unless its chunks are whole 16-byte vectors at aligned addresses.
  constexpr bool kRows = kSame<T, CacheT> && kVec * sizeof(T) < 16;
  if (vector && !kRows) {
    store_rows<true, T, CacheT, S, kVec, kGroup>(k_row, v_row, k_cache, v_cache, slot, num_slots, row, row / kVec,
                                                 lane, ks, vs);
  } else if constexpr (kSame<T, CacheT>) {
    if (slot >= 0 && static_cast<uint64_t>(slot) < num_slots) {  // rows.cuh
      // Two vectors of a row a thread in flight: 4097 values of bf16 are 512 vectors, two rounds of 256 threads.
      const uint64_t dst = static_cast<uint64_t>(slot) * row;
      const cujit::Threads threads{lane, kGroup};
      const auto same = [](T x) { return x; };
      cujit::row_map<2>(k_cache + dst, row, threads, same, k_row);
      cujit::row_map<2>(v_cache + dst, row, threads, same, v_row);
    }
  } else {
    store_rows<false, T, CacheT, S, 1, kGroup>(k_row, v_row, k_cache, v_cache, slot, num_slots, row, row, lane, ks,
                                               vs);
  }
  if (slot >= 0 && static_cast<uint64_t>(slot) >= num_slots) {
    slot_error(static_cast<int64_t>(slot), token, num_slots, lane);
  }
}

#endif  // CUJIT_KERNELS_KV_CACHE_CUH_
