// <stdlib.h> for NVRTC: the same as <cstdlib>. See README.md in this folder.
#include <cstdlib>
