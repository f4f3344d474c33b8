// <cuda_device_runtime_api.h> for NVRTC: the CUDA header itself, without the warning it gives when it comes first.
//
// Under nvcc, cuda_runtime.h is always included first and marks the compiler's internal headers as included
// through it; the CUDA header then includes crt/host_defines.h quietly. A kernel file that includes this header
// before <cuda_runtime.h> makes NVRTC warn that host_defines.h "must not be used directly": this wrapper sets
// the mark around the include, as cuda_runtime.h does, and takes it back afterwards.
#ifndef CUJIT_NVRTC_CUDA_DEVICE_RUNTIME_API_H_
#define CUJIT_NVRTC_CUDA_DEVICE_RUNTIME_API_H_

#if !defined(__CUDA_INCLUDE_COMPILER_INTERNAL_HEADERS__)
#define __CUDA_INCLUDE_COMPILER_INTERNAL_HEADERS__
#define CUJIT_NVRTC_UNDEF_INTERNAL_HEADERS_
#endif

#include_next <cuda_device_runtime_api.h>

#ifdef CUJIT_NVRTC_UNDEF_INTERNAL_HEADERS_
#undef __CUDA_INCLUDE_COMPILER_INTERNAL_HEADERS__
#undef CUJIT_NVRTC_UNDEF_INTERNAL_HEADERS_
#endif

#endif  // CUJIT_NVRTC_CUDA_DEVICE_RUNTIME_API_H_
