/// @file cujit/pdl.cuh
/// @brief Programmatic dependent launch (Hopper and later): wait for the previous kernel, release the next one.
///
/// With programmatic dependent launch, a kernel may start while the kernel before it on the stream is still
/// running, so that its launch latency and prologue overlap the tail of its predecessor. Two calls make that safe:
///
/// - `cujit::pdl_wait()` blocks until every kernel this one depends on has finished and its writes are visible.
///   Call it before the first global memory read of anything a previous kernel may have written (the inputs).
/// - `cujit::pdl_launch_dependents()` tells the hardware that the kernel after this one may be scheduled. Call it
///   once this kernel no longer needs the SM resources for its own loads, e.g. after its last global read; the
///   dependent kernel still waits (in its own `pdl_wait()`) for this one to finish before it reads anything.
///
/// Both are single PTX instructions on sm_90 and later and compile to nothing on older GPUs. Without a
/// programmatic launch they are no-ops on every GPU, so a kernel may call them unconditionally.
#ifndef CUJIT_PDL_CUH_
#define CUJIT_PDL_CUH_

#include <cujit/base.cuh>

namespace cujit {

#if defined(__CUDACC__)
/// Wait until the grids this one depends on have completed and their memory operations are visible
/// (`cudaGridDependencySynchronize()`). A no-op below sm_90 and when the launch was not programmatic.
CUJIT_DEVICE void pdl_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

/// Allow the next grid on the stream to launch before this one ends (`cudaTriggerProgrammaticLaunchCompletion()`).
/// A no-op below sm_90 and when the next launch is not programmatic.
CUJIT_DEVICE void pdl_launch_dependents() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}
#endif

}  // namespace cujit

#endif  // CUJIT_PDL_CUH_
