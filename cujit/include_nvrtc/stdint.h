// <stdint.h> for NVRTC: the same as <cstdint>. See README.md in this folder.
#include <cstdint>
