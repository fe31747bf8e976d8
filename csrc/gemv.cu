// Skinny GEMM for decode-time linear layers: y[M, N] = x[M, K] @ w[N, K]^T (+ bias[N]), M = 1..256, split-K.
//
// Grid (m_blocks, num_splits, ceil(N / 64)); 4 warps per block, each warp owning 16 rows of w (64 per block)
// and 8 * M_TILES rows of x, over the block's K range. Products run on tensor cores with both operands taken
// straight from 16-byte global loads (mma_rows_dot_32): w streams through once without touching L1, x is read
// through L1 since every warp of the block reads the same rows.
//
// With several splits, each block writes fp32 partial sums; the last block to finish an output tile (an atomic
// counter per tile) adds the splits in a fixed order, adds the bias and writes y, then resets its counter for
// the next launch. One launch per call, and the same result on every run.
#include "common.cuh"

namespace gpuprof {

constexpr int kGemvWarps = 4;
constexpr int kGemvThreads = kGemvWarps * kWarpSize;
constexpr int kGemvRowsPerWarp = 16;  // rows of w per warp: the 16-row side of the mma
constexpr int kGemvRowsPerBlock = kGemvWarps * kGemvRowsPerWarp;

// A minimum of 1 block per SM in the launch bounds makes ptxas issue all loads of a step before the first mma
// (by default it interleaves them with the mma to save registers, leaving only ~4 loads in flight per warp).
template <typename T, int M_TILES>
__global__ void __launch_bounds__(kGemvThreads, 1)
    gemv_kernel(const T* __restrict__ x,       // [M, K]
                const T* __restrict__ w,       // [N, K]
                const T* __restrict__ bias,    // [N] or null
                T* __restrict__ y,             // [M, N]
                float* __restrict__ partial,   // [num_splits, M, N] when num_splits > 1
                int* __restrict__ tile_counters,  // [ceil(N / 64) * m_blocks], zero between launches
                int M, int N, int K, int k_per_split, int num_splits) {
  // 32-column chunks loaded per step: 4 keeps 8 loads of w in flight per lane; wide x tiles need the registers.
  constexpr int kUnroll = M_TILES <= 2 ? 4 : 2;
  constexpr int kBlockM = 8 * M_TILES;

  const int m_block = blockIdx.x;
  const int split = blockIdx.y;
  const int n_block = blockIdx.z;
  const int warp = threadIdx.x / kWarpSize;
  const int lane = threadIdx.x % kWarpSize;
  const int group = lane >> 2;  // fragment row: w rows n0 + group and n0 + group + 8, x row m0 + 8mt + group
  const int quad = lane & 3;    // columns 8quad .. 8quad+7 of every 32-column chunk

  const int n0 = n_block * kGemvRowsPerBlock + warp * kGemvRowsPerWarp;
  const int m0 = m_block * kBlockM;
  const int k_begin = split * k_per_split;
  const int k_end = min(K, k_begin + k_per_split);

  // Rows past N or M are clamped to the last row (their results are never stored), so loads never need a
  // predicate; columns past the split's end are clamped into the row and their w values zeroed.
  const T* w_lo = w + (long long)min(n0 + group, N - 1) * K;
  const T* w_hi = w + (long long)min(n0 + group + 8, N - 1) * K;
  const T* x_rows[M_TILES];
#pragma unroll
  for (int mt = 0; mt < M_TILES; ++mt) x_rows[mt] = x + (long long)min(m0 + 8 * mt + group, M - 1) * K;

  // acc[mt][i]: y[m0 + 8mt + 2quad + (i & 1)][n0 + group + 8 (i >> 1)]
  float acc[M_TILES][4];
#pragma unroll
  for (int mt = 0; mt < M_TILES; ++mt)
#pragma unroll
    for (int i = 0; i < 4; ++i) acc[mt][i] = 0.f;

  for (int k0 = k_begin; k0 < k_end; k0 += 32 * kUnroll) {
    uint4 w_lo_v[kUnroll], w_hi_v[kUnroll], x_v[kUnroll][M_TILES];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int k = k0 + 32 * u + 8 * quad;  // this lane's 8 columns (K % 8 == 0: all in or all out)
      const int k_load = min(k, K - 8);
      w_lo_v[u] = load_stream(w_lo + k_load);
      w_hi_v[u] = load_stream(w_hi + k_load);
#pragma unroll
      for (int mt = 0; mt < M_TILES; ++mt) x_v[u][mt] = load_cached(x_rows[mt] + k_load);
      if (k >= k_end) w_lo_v[u] = w_hi_v[u] = zero_uint4();
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u)
#pragma unroll
      for (int mt = 0; mt < M_TILES; ++mt) mma_rows_dot_32<T>(acc[mt], w_lo_v[u], w_hi_v[u], x_v[u][mt]);
  }

#pragma unroll
  for (int mt = 0; mt < M_TILES; ++mt)
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int m = m0 + 8 * mt + 2 * quad + (i & 1);
      const int n = n0 + group + 8 * (i >> 1);
      if (m >= M || n >= N) continue;
      if (num_splits == 1) {
        const float b = bias != nullptr ? Elem<T>::to_float(bias[n]) : 0.f;
        y[(long long)m * N + n] = Elem<T>::from_float(acc[mt][i] + b);
      } else {
        partial[((long long)split * M + m) * N + n] = acc[mt][i];
      }
    }
  if (num_splits == 1) return;

  // Publish the partial sums before counting this split in (the threadFenceReduction pattern).
  __threadfence();
  __syncthreads();
  __shared__ int s_is_last;
  const int tile = n_block * gridDim.x + m_block;
  if (threadIdx.x == 0) s_is_last = atomicAdd(&tile_counters[tile], 1) == num_splits - 1;
  __syncthreads();
  if (!s_is_last) return;
  __threadfence();

  for (int idx = threadIdx.x; idx < kBlockM * kGemvRowsPerBlock; idx += kGemvThreads) {
    const int m = m0 + idx / kGemvRowsPerBlock;
    const int n = n_block * kGemvRowsPerBlock + idx % kGemvRowsPerBlock;
    if (m >= M || n >= N) continue;
    float sum = bias != nullptr ? Elem<T>::to_float(bias[n]) : 0.f;
    for (int s = 0; s < num_splits; ++s) sum += load_from_l2(partial + ((long long)s * M + m) * N + n);
    y[(long long)m * N + n] = Elem<T>::from_float(sum);
  }
  if (threadIdx.x == 0) tile_counters[tile] = 0;
}

}  // namespace gpuprof
