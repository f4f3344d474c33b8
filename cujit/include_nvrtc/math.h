// <math.h> for NVRTC: the same as <cmath>. See README.md in this folder.
#include <cmath>
