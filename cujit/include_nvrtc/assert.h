// <assert.h> for NVRTC: the same as <cassert>. See README.md in this folder.
#include <cassert>
