// Self-checks of the warp-level building blocks of the decode kernels, one warp each: they pin down the
// tensor-core fragment layouts everything else relies on, on the GPU and in the CPU emulator alike. When a
// kernel test fails on new hardware or a new compiler, these say whether the layouts or the kernel are at fault.
#include "common.cuh"

namespace gpuprof {

// d[16][8] = rows[16][32] * cols[8][32]^T through mma_rows_dot_32 (all row-major).
template <typename T>
__global__ void rows_dot_check_kernel(const T* __restrict__ rows, const T* __restrict__ cols, float* __restrict__ d) {
  const int lane = threadIdx.x % kWarpSize;
  const int group = lane >> 2;
  const int quad = lane & 3;
  const uint4 lo = load_cached(rows + group * 32 + 8 * quad);
  const uint4 hi = load_cached(rows + (group + 8) * 32 + 8 * quad);
  const uint4 col = load_cached(cols + group * 32 + 8 * quad);
  float acc[4] = {0.f, 0.f, 0.f, 0.f};
  mma_rows_dot_32<T>(acc, lo, hi, col);
#pragma unroll
  for (int i = 0; i < 4; ++i) d[(group + 8 * (i >> 1)) * 8 + 2 * quad + (i & 1)] = acc[i];
}

// out = in^T for an 8x8 matrix of 16-bit values (row-major, so 32-bit word `lane` holds row lane / 4, columns
// 2(lane % 4) and 2(lane % 4) + 1) through transpose_8x8.
__global__ void transpose_check_kernel(const unsigned* __restrict__ in, unsigned* __restrict__ out) {
  const int lane = threadIdx.x % kWarpSize;
  out[lane] = transpose_8x8(in[lane]);
}

}  // namespace gpuprof
