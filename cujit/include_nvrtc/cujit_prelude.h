// cujit_prelude.h: read by NVRTC before every cujit module (--pre-include).
//
// nvcc includes cuda_runtime.h, and through it the host C library, into every translation unit, so kernel code
// written for nvcc uses some names without including anything: the fixed-width integers, the glibc type names
// ushort, uint and ulong, and the POSIX math constants (M_PI, M_SQRT1_2, ...). NVRTC has none of them; this
// prelude declares them, and nothing else (no macro that libcu++ also defines). It costs well under a
// millisecond.
#ifndef CUJIT_NVRTC_PRELUDE_H_
#define CUJIT_NVRTC_PRELUDE_H_

#include <cujit_nvrtc/int_types.h>
#include <cujit_nvrtc/math_constants.h>

typedef unsigned short ushort;
typedef unsigned int uint;
typedef unsigned long ulong;

#endif  // CUJIT_NVRTC_PRELUDE_H_
