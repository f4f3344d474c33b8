/// @file cujit/check.cuh
/// @brief A device-side check: print where and why, then trap so that the host sees a launch failure.
#ifndef CUJIT_CHECK_CUH_
#define CUJIT_CHECK_CUH_

#include <cujit/base.cuh>

#if defined(__CUDACC_RTC__)
// NVRTC declares no printf; the device runtime provides it.
extern "C" __device__ int printf(const char*, ...);
#else
#include <cstdio>
#endif

/// Stop the kernel when `cond` is false. The host's next synchronisation (cujit.device_check()) raises.
#define CUJIT_DEVICE_CHECK(cond, msg)                                                                     \
  do {                                                                                                    \
    if (!(cond)) {                                                                                        \
      printf("cujit device check failed: %s (%s) at %s:%d, block %d thread %d\n", #cond, msg, __FILE__, \
             __LINE__, static_cast<int>(blockIdx.x), static_cast<int>(threadIdx.x));                      \
      __trap();                                                                                           \
    }                                                                                                     \
  } while (0)

#endif  // CUJIT_CHECK_CUH_
