// <cuda.h> for NVRTC: the version macros and the driver types that device code uses. See README.md.
//
// The real cuda.h is the driver API, host functions that NVRTC cannot compile. Device code includes it for two
// things, both here: CUDA_VERSION (cujit passes -DCUDA_VERSION=<NVRTC's version> to every compile, so version
// checks take the branch they take under nvcc), and the types CUdeviceptr and CUtensorMap (the TMA descriptor a
// kernel receives as a const __grid_constant__ parameter), laid out as in cuda.h. Driver calls (cuInit,
// cuTensorMapEncodeTiled, ...) belong in the host code; from Python, use cuda-python or CuPy's driver module.
#ifndef CUJIT_NVRTC_CUDA_H_
#define CUJIT_NVRTC_CUDA_H_

#ifndef CUDA_VERSION
#define CUDA_VERSION CUDART_VERSION
#endif

typedef unsigned int cuuint32_t;
typedef unsigned long long cuuint64_t;
typedef unsigned long long CUdeviceptr_v2;
typedef CUdeviceptr_v2 CUdeviceptr;

/// The 128-byte tensor map descriptor of the Tensor Memory Accelerator (sm_90+), opaque to device code.
typedef struct CUtensorMap_st {
  alignas(64) cuuint64_t opaque[16];
} CUtensorMap;

#endif  // CUJIT_NVRTC_CUDA_H_
