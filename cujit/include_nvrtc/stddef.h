// <stddef.h> for NVRTC: the same as <cstddef>. See README.md in this folder.
#include <cstddef>
