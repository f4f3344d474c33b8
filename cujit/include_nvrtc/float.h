// <float.h> for NVRTC: the same as <cfloat>. See README.md in this folder.
#include <cfloat>
