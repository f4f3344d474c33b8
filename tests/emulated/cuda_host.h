/// @file cuda_host.h
/// @brief Runs a kernel's device code on the host, for tests on machines without a GPU.
///
/// Each CUDA thread of a block is a std::thread; blocks run one after another; __syncthreads is a barrier of the
/// block; a warp shuffle goes through 32 slots and a barrier of the warp, so every lane of a warp must reach the
/// same shuffles (as the kernels tested here do). Dynamic shared memory is an array the test defines, shared by
/// the blocks in turn. Only the built-ins the tested kernels use are here; compile with g++ -std=c++20 -pthread
/// and the CUDA and libcu++ include folders NVRTC uses (tests/test_emulated_kernels.py).
///
/// What it checks: the kernel's indexing, its shared-memory layout, its barriers' placement (a missing barrier
/// can still pass: threads run concurrently but not in lock step) and its arithmetic, in the same fp32
/// operations as on the GPU. What it cannot: timing, memory-model effects and anything the GPU's hardware does
/// differently (its fast-math intrinsics are exact here).
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>
#include <vector_types.h>

#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <type_traits>
#include <utility>
#include <thread>
#include <vector>

#define __CUDACC__ 1
#define CUJIT_HOST_EMULATION 1
// The device code takes its sm_80 paths (redux.sync) unless a program asks for the older ones.
#ifndef CUJIT_EMULATE_PRE_SM80
#define CUJIT_EMULATE_REDUX 1
#endif
// A __shared__ array declared in a device function is one per block: static here, since blocks run one at a time.
#undef __shared__
#define __shared__ static
#ifndef __launch_bounds__
#define __launch_bounds__(...)
#endif

inline thread_local uint3 threadIdx;
inline thread_local uint3 blockIdx;
inline dim3 blockDim;
inline dim3 gridDim;
/// The block's barrier for __syncthreads; a thread that leaves the kernel drops out of it (as an exited thread no
/// longer holds back a barrier on the GPU).
inline thread_local std::barrier<>* emu_block_barrier = nullptr;
/// This thread's warp: its barrier and the 32 slots its lanes exchange values through.
struct EmuWarp {
  std::barrier<> bar{32};
  uint64_t slot[32];
};
inline thread_local EmuWarp* emu_warp = nullptr;

inline unsigned emu_lane() { return (threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z)) % 32; }

/// Every lane of the warp publishes `v`, then reads the value of lane `source(lane)`.
template <typename T, typename Source>
T emu_exchange(T v, Source source) {
  static_assert(sizeof(T) <= 8, "emulated shuffles carry up to 8 bytes");
  const unsigned lane = emu_lane();
  uint64_t bits = 0;
  std::memcpy(&bits, &v, sizeof(T));
  emu_warp->slot[lane] = bits;
  emu_warp->bar.arrive_and_wait();
  T out;
  std::memcpy(&out, &emu_warp->slot[source(lane)], sizeof(T));
  emu_warp->bar.arrive_and_wait();
  return out;
}

template <typename T>
T __shfl_xor_sync(unsigned, T v, int lane_mask, int width = 32) {
  return emu_exchange(v, [&](unsigned lane) {
    const unsigned src = lane ^ static_cast<unsigned>(lane_mask);
    return src / width == lane / width ? src : lane;
  });
}

template <typename T>
T __shfl_up_sync(unsigned, T v, unsigned delta, int width = 32) {
  return emu_exchange(v, [&](unsigned lane) {
    return lane % width >= delta ? lane - delta : lane;
  });
}

template <typename T>
T __shfl_down_sync(unsigned, T v, unsigned delta, int width = 32) {
  return emu_exchange(v, [&](unsigned lane) {
    const unsigned src = lane + delta;
    return src / width == lane / width ? src : lane;
  });
}
/// redux.sync: every lane publishes `v`, then reduces the values of the lanes in its mask (sm_80 and later).
template <typename Op>
unsigned emu_reduce(unsigned mask, unsigned v, Op op) {
  const unsigned lane = emu_lane();
  if (!(mask >> lane & 1u)) {
    std::fprintf(stderr, "redux.sync: lane %u is not in its own mask %08x\n", lane, mask);
    std::abort();
  }
  emu_warp->slot[lane] = v;
  emu_warp->bar.arrive_and_wait();
  unsigned out = v;
  for (unsigned other = 0; other < 32; ++other) {
    if (mask >> other & 1u) out = op(out, static_cast<unsigned>(emu_warp->slot[other]));
  }
  emu_warp->bar.arrive_and_wait();
  return out;
}
inline unsigned __reduce_max_sync(unsigned mask, unsigned v) {
  return emu_reduce(mask, v, [](unsigned a, unsigned b) { return a > b ? a : b; });
}
inline unsigned __reduce_min_sync(unsigned mask, unsigned v) {
  return emu_reduce(mask, v, [](unsigned a, unsigned b) { return a < b ? a : b; });
}
inline void __syncthreads() { emu_block_barrier->arrive_and_wait(); }
[[noreturn]] inline void __trap() { std::fprintf(stderr, "trap\n"); std::abort(); }
inline float __fmaf_rn(float a, float b, float c) { return std::fmaf(a, b, c); }
inline uint32_t __funnelshift_r(uint32_t lo, uint32_t hi, uint32_t shift) {
  return static_cast<uint32_t>(((static_cast<uint64_t>(hi) << 32) | lo) >> (shift & 31));
}
inline uint32_t __float_as_uint(float x) { uint32_t u; std::memcpy(&u, &x, 4); return u; }
inline float __int_as_float(int32_t u) { float x; std::memcpy(&x, &u, 4); return x; }
inline float __uint_as_float(uint32_t u) { float x; std::memcpy(&x, &u, 4); return x; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline float __frcp_rn(float a) { return 1.0f / a; }
// The fast-math intrinsics, exact here (the GPU's are approximations within a few ulp).
inline float __fdividef(float a, float b) { return a / b; }
inline float __expf(float a) { return std::exp(a); }
inline float rsqrtf(float a) { return 1.0f / std::sqrt(a); }
inline uint32_t __umulhi(uint32_t a, uint32_t b) { return static_cast<uint32_t>((static_cast<uint64_t>(a) * b) >> 32); }
inline void __syncwarp(unsigned = 0xffffffffu) { emu_warp->bar.arrive_and_wait(); }
inline float __fadd_rn(float a, float b) { return a + b; }
// Cache-hinted loads and stores: plain accesses here.
template <typename T>
T __ldg(const T* p) { return *p; }
template <typename T>
T __ldcs(const T* p) { return *p; }
template <typename T>
T __ldcg(const T* p) { return *p; }
template <typename T>
T __ldlu(const T* p) { return *p; }
template <typename T>
void __stcs(T* p, T v) { *p = v; }
template <typename T>
void __stcg(T* p, T v) { *p = v; }
inline uint32_t min(uint32_t a, uint32_t b) { return a < b ? a : b; }
inline uint32_t max(uint32_t a, uint32_t b) { return a > b ? a : b; }

/// The dynamic shared memory of the block running (blocks run one at a time): 64 KB.
alignas(16) inline unsigned char emu_dynamic_shared[64 * 1024];
namespace cujit {
template <typename T>
T* dynamic_shared() { return reinterpret_cast<T*>(emu_dynamic_shared); }
}  // namespace cujit

/// Run `kernel()` over grid x block. One std::thread per thread of a block, made once per launch; they take the
/// blocks one after another, each block with fresh barriers, and meet at the end of each block.
inline void emu_launch(dim3 grid, dim3 block, const std::function<void()>& kernel) {
  gridDim = grid;
  blockDim = block;
  const unsigned threads = block.x * block.y * block.z;
  const unsigned blocks = grid.x * grid.y * grid.z;
  const unsigned warps = (threads + 31) / 32;
  std::vector<std::unique_ptr<std::barrier<>>> syncs;
  std::vector<std::unique_ptr<EmuWarp[]>> warp_sets;
  for (unsigned b = 0; b < blocks; ++b) {
    syncs.push_back(std::make_unique<std::barrier<>>(threads));
    warp_sets.push_back(std::make_unique<EmuWarp[]>(warps));
  }
  std::barrier<> done(threads);
  std::vector<std::thread> pool;
  pool.reserve(threads);
  for (unsigned t = 0; t < threads; ++t) {
    pool.emplace_back([&, t] {
      threadIdx = uint3{t % block.x, (t / block.x) % block.y, t / (block.x * block.y)};
      for (unsigned b = 0; b < blocks; ++b) {
        blockIdx = uint3{b % grid.x, (b / grid.x) % grid.y, b / (grid.x * grid.y)};
        emu_block_barrier = syncs[b].get();
        emu_warp = &warp_sets[b][t / 32];
        kernel();
        syncs[b]->arrive_and_drop();
        emu_warp->bar.arrive_and_drop();
        done.arrive_and_wait();
      }
    });
  }
  for (auto& th : pool) th.join();
}

/// Call kernel `k` with the arguments that `params` points to, one per parameter (cuLaunchKernel's layout).
template <typename... Args, size_t... I>
void emu_call_with(void (*k)(Args...), void** params, std::index_sequence<I...>) {
  k(*static_cast<std::remove_cv_t<std::remove_reference_t<Args>>*>(params[I])...);
}
template <typename... Args>
void emu_call(void (*k)(Args...), void** params) {
  emu_call_with(k, params, std::index_sequence_for<Args...>{});
}
