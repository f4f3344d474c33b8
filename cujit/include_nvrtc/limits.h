// <limits.h> for NVRTC: the same as <climits>. See README.md in this folder.
#include <climits>
