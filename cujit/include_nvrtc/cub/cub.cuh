// <cub/cub.cuh> for NVRTC: an error that says what to include instead. See README.md in this folder.
//
// cub.cuh includes CUB's device-wide algorithms (cub::DeviceReduce, cub::DeviceScan, ...). Those are host
// functions that launch kernels, which NVRTC cannot compile ("host functions are not allowed in JIT mode").
// Inside a kernel, use the block- and warp-level collectives; include the header of each one you use.
#error "cujit: <cub/cub.cuh> pulls in CUB's device-wide algorithms, which are host code that NVRTC cannot compile. Include the block- or warp-level headers you use instead, e.g. <cub/block/block_reduce.cuh>, <cub/block/block_scan.cuh>, <cub/block/block_load.cuh>, <cub/block/block_store.cuh>, <cub/block/block_radix_sort.cuh>, <cub/warp/warp_reduce.cuh>, <cub/warp/warp_scan.cuh>."
