// <cublasLt.h> for NVRTC: host-only, declares nothing on purpose. See README.md in this folder.
//
// cuBLAS is a host library (its device API went away in CUDA 10). Its headers declare host functions, which NVRTC
// rejects, and even with -default-device the ones in NVIDIA's wheels do not compile under NVRTC (they need FILE and
// the library types of their own release). Kernel headers include it for their host code; this header lets such an
// include stay as it is. Host code that calls cuBLAS belongs behind #ifndef __CUDACC_RTC__; from Python, reach
// cuBLAS through torch or CuPy.
