// <stdio.h> for NVRTC: the same as <cstdio>. See README.md in this folder.
#include <cstdio>
