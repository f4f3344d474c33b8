// <inttypes.h> for NVRTC: the same as <cinttypes>. See README.md in this folder.
#include <cinttypes>
