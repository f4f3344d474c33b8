// A tensor-core matrix product with WMMA (16x16x16 fp16 tiles, fp32 accumulation), as CUDA's samples write it.
// <mma.h> needs the CUDA compiler's crt/ headers, which cujit finds in the nvcc wheel (CUDA 12) or next to the
// CUDA headers (CUDA 13).
#pragma once

#include <cstdint>

#include <cuda_fp16.h>
#include <mma.h>

namespace ported {

constexpr int kTile = 16;

// c[m, n] = sum_k a[m, k] * b[k, n], a row-major [M, K], b column-major [K, N], c row-major [M, N], all dimensions
// multiples of 16. One warp per 16x16 tile of c: blockIdx.x walks the columns of tiles, blockIdx.y the rows.
__global__ void wmma_gemm(float* __restrict__ c, const __half* __restrict__ a, const __half* __restrict__ b, int m,
                          int n, int k) {
  using namespace nvcuda;
  const int tile_row = blockIdx.y * kTile;
  const int tile_col = blockIdx.x * kTile;
  if (tile_row >= m || tile_col >= n) return;
  wmma::fragment<wmma::matrix_a, kTile, kTile, kTile, __half, wmma::row_major> fa;
  wmma::fragment<wmma::matrix_b, kTile, kTile, kTile, __half, wmma::col_major> fb;
  wmma::fragment<wmma::accumulator, kTile, kTile, kTile, float> acc;
  wmma::fill_fragment(acc, 0.0f);
  for (int step = 0; step < k; step += kTile) {
    wmma::load_matrix_sync(fa, a + static_cast<int64_t>(tile_row) * k + step, k);
    wmma::load_matrix_sync(fb, b + static_cast<int64_t>(tile_col) * k + step, k);
    wmma::mma_sync(acc, fa, fb, acc);
  }
  wmma::store_matrix_sync(c + static_cast<int64_t>(tile_row) * n + tile_col, acc, n, wmma::mem_row_major);
}

}  // namespace ported
