// <string.h> for NVRTC: the same as <cstring>. See README.md in this folder.
#include <cstring>
