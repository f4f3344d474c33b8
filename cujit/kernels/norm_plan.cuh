/// @file norm_plan.cuh
/// @brief The constants that the norm kernels (rms_norm.cuh, qk_norm.cuh) share with their host plan.
///
/// cujit/rms_norm.py reads this file (cujit/_kernel_constants.py): every `constexpr int kName = <integer>;`
/// below is also a Python value, so the two cannot disagree. Keep each such declaration on one line, its value an
/// integer literal (the reader refuses anything else).
#ifndef CUJIT_KERNELS_NORM_PLAN_CUH_
#define CUJIT_KERNELS_NORM_PLAN_CUH_

namespace rms_norm_detail {

// kPath, the template parameter that picks how a row is read (rms_norm.cuh describes each path).
constexpr int kPathVector = 0;
constexpr int kPathScalar = 1;
constexpr int kPathTiled = 2;
constexpr int kPathPhased = 3;
constexpr int kPathVectorLate = 4;
constexpr int kPathPhasedDirect = 5;

/// Resident threads per SM that the vector and phased paths ask the compiler for (__launch_bounds__), which caps
/// them at 65536 / kMinResidentThreads registers a thread.
constexpr int kMinResidentThreads = 1024;

/// The most bytes of static shared memory that the phased path's staged weight may take.
constexpr int kMaxStagedBytes = 40960;

}  // namespace rms_norm_detail

#endif  // CUJIT_KERNELS_NORM_PLAN_CUH_
