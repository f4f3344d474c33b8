// Makes libcu++'s names (cuda::std::...) visible as std::..., the way device code written for nvcc spells them.
//
// A using-directive rather than one using-declaration per name: it follows whatever the installed libcu++
// declares. Qualified lookup prefers names declared in std itself, so the functions that NVRTC builds in
// (std::move, std::forward, std::initializer_list) and the light headers' std::sqrt, std::int32_t, ... stay
// unambiguous. One limit: a specialization written as `namespace std { template <> struct numeric_limits<T> }`
// does not compile; specialize cuda::std::numeric_limits instead.
#ifndef CUJIT_NVRTC_STD_EXPORT_H_
#define CUJIT_NVRTC_STD_EXPORT_H_

namespace cuda {
namespace std {}
}  // namespace cuda

namespace std {
using namespace ::cuda::std;
}  // namespace std

#endif  // CUJIT_NVRTC_STD_EXPORT_H_
