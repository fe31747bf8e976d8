// Decode attention: one new query token per sequence against its KV cache (paged or contiguous), split-KV.
//
// Grid (num_splits, num_kv_heads * head_tiles, batch); 4 warps per block. A block owns one KV head, up to 8 of
// the query heads that share it (GQA: the KV bytes are read once for all of them), and one split of the
// sequence. Its warps take 16-token tiles in turn and keep their own online-softmax state; the block merges its
// four warps at the end, and `merge_attention_splits_kernel` merges the splits.
//
// Both products run on tensor cores, with every operand coming straight from 16-byte global loads:
//   S^T = K Q^T   (16 tokens x 8 heads): K rows are the A operand, Q rows the B operand (mma_rows_dot_32).
//   O^T += V^T P^T (head_dim x 8 heads): V rows are transposed in registers (movmatrix) into the A operand;
//                                       P^T comes from the S^T accumulator by one more transpose.
// Nothing is staged in shared memory, so each warp streams K and V with several 16-byte loads in flight and
// no block-wide barrier inside the main loop. Scores are kept in log2 units (scale * log2(e) folded in).
#include "common.cuh"

namespace gpuprof {

constexpr int kAttnWarps = 4;
constexpr int kAttnThreads = kAttnWarps * kWarpSize;
constexpr int kTileTokens = 16;    // tokens per warp step: the 16-row side of the mma
constexpr int kHeadsPerBlock = 8;  // query heads per block: the 8-column side of the mma

// Loads this lane's 16 bytes of chunk c (columns 32c + 8quad ..) of the two token rows it owns in a tile.
template <typename T, int CHUNKS>
__device__ __forceinline__ void load_token_rows(uint4 (&lo)[CHUNKS], uint4 (&hi)[CHUNKS], const T* cache,
                                                long long offset_lo, long long offset_hi) {
#pragma unroll
  for (int c = 0; c < CHUNKS; ++c) {
    lo[c] = load_stream(cache + offset_lo + 32 * c);
    hi[c] = load_stream(cache + offset_hi + 32 * c);
  }
}

// Stores N floats as N values of T (N even), two per 32-bit store.
template <typename T, int N>
__device__ __forceinline__ void store_converted(T* dst, const float (&v)[N]) {
  unsigned* dst32 = reinterpret_cast<unsigned*>(dst);
#pragma unroll
  for (int j = 0; j < N / 2; ++j) dst32[j] = Elem<T>::pack(v[2 * j], v[2 * j + 1]);
}

// The launch bounds' minimum of blocks per SM is what makes ptxas issue a tile's loads together: left to its
// default it sinks loads next to their first use to save registers, leaving few in flight. 1 block per SM up
// to head_dim 128 (~126 registers, still 4 blocks per SM); none (0) at 256, where the default already issues
// ~20 of a tile's loads together in 168 registers (3 blocks per SM; a hint would cost one).
template <typename T, int HEAD_DIM, bool PAGED>
__global__ void __launch_bounds__(kAttnThreads, HEAD_DIM <= 128 ? 1 : 0)
    decode_attention_kernel(const T* __restrict__ q,              // [batch, num_q_heads, HEAD_DIM]
                            const T* __restrict__ k_cache,        // rows of HEAD_DIM, addressed by the strides
                            const T* __restrict__ v_cache,        // same layout as k_cache
                            const int* __restrict__ seq_lens,     // [batch]
                            const int* __restrict__ block_table,  // [batch, max_pages] when PAGED
                            T* __restrict__ out,                  // [batch, num_q_heads, HEAD_DIM], one split
                            float* __restrict__ split_out,        // [batch, num_q_heads, num_splits, HEAD_DIM]
                            float* __restrict__ split_lse,        // [batch, num_q_heads, num_splits], log2 units
                            int num_q_heads, int group_size, int head_tiles,
                            long long stride_block,  // elements between pages (PAGED) or sequences
                            long long stride_token, long long stride_head, int page_size, int max_pages,
                            int num_splits, float scale_log2) {
  constexpr int kChunks = HEAD_DIM / 32;
  // Up to head_dim 128 the registers hold a tile's K and V loads at once, so V flies while S is computed.
  constexpr bool kLoadVEarly = HEAD_DIM <= 128;

  const int split = blockIdx.x;
  const int kv_head = blockIdx.y / head_tiles;
  const int head_tile = blockIdx.y % head_tiles;
  const int batch = blockIdx.z;
  const int warp = threadIdx.x / kWarpSize;
  const int lane = threadIdx.x % kWarpSize;
  const int group = lane >> 2;  // fragment row: token group (and group + 8) of a tile, query head `group`
  const int quad = lane & 3;    // fragment column pair: query heads 2quad and 2quad + 1

  const int seq_len = seq_lens[batch];
  const int split_tokens = ceil_div(ceil_div(seq_len, num_splits), kTileTokens) * kTileTokens;
  const int begin = split * split_tokens;
  const int end = min(seq_len, begin + split_tokens);

  const int first_head = kv_head * group_size + head_tile * kHeadsPerBlock;
  const int heads = min(kHeadsPerBlock, group_size - head_tile * kHeadsPerBlock);

  // Q^T as the B operand: query head `group`, columns 32c + 8quad .. +7 of every chunk c. Padding heads of a
  // short group repeat the first head; their results are never stored.
  uint4 q_frag[kChunks];
  {
    const int q_head = first_head + (group < heads ? group : 0);
    const T* q_row = q + ((long long)batch * num_q_heads + q_head) * HEAD_DIM + 8 * quad;
#pragma unroll
    for (int c = 0; c < kChunks; ++c) q_frag[c] = load_cached(q_row + 32 * c);
  }

  const int* pages = PAGED ? block_table + (long long)batch * max_pages : nullptr;
  auto row_offset = [&](int token) -> long long {
    long long block = batch;
    int slot = token;
    if constexpr (PAGED) {
      const int page_index = token / page_size;
      block = __ldg(pages + page_index);
      slot = token - page_index * page_size;
    }
    return block * stride_block + slot * stride_token + kv_head * stride_head + 8 * quad;
  };

  float m_run[2] = {neg_inf(), neg_inf()};  // running max score of heads 2quad, 2quad+1 in this warp
  float l_run[2] = {0.f, 0.f};              // this lane's part of their softmax denominators
  // O^T accumulators, chunk c, half h: rows = 16 head-dim positions (see the epilogue), cols = 8 query heads.
  float o_acc[kChunks][2][4];
#pragma unroll
  for (int c = 0; c < kChunks; ++c)
#pragma unroll
    for (int h = 0; h < 2; ++h)
#pragma unroll
      for (int i = 0; i < 4; ++i) o_acc[c][h][i] = 0.f;

  for (int t0 = begin + warp * kTileTokens; t0 < end; t0 += kAttnWarps * kTileTokens) {
    // Rows past the split's end re-read token t0 (always valid): their scores are masked to -inf below, so their
    // probabilities are exactly 0 and their (finite) V rows add nothing.
    const bool ok_lo = t0 + group < end;
    const bool ok_hi = t0 + group + 8 < end;
    const long long offset_lo = row_offset(ok_lo ? t0 + group : t0);
    const long long offset_hi = row_offset(ok_hi ? t0 + group + 8 : t0);

    uint4 k_lo[kChunks], k_hi[kChunks], v_lo[kChunks], v_hi[kChunks];
    load_token_rows<T, kChunks>(k_lo, k_hi, k_cache, offset_lo, offset_hi);
    if constexpr (kLoadVEarly) load_token_rows<T, kChunks>(v_lo, v_hi, v_cache, offset_lo, offset_hi);

    // s[0]: (token t0+group, head 2quad), s[1]: (t0+group, 2quad+1), s[2], s[3]: the same for token t0+group+8.
    float s[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
    for (int c = 0; c < kChunks; ++c) mma_rows_dot_32<T>(s, k_lo[c], k_hi[c], q_frag[c]);
    if constexpr (!kLoadVEarly) load_token_rows<T, kChunks>(v_lo, v_hi, v_cache, offset_lo, offset_hi);

    s[0] = ok_lo ? s[0] * scale_log2 : neg_inf();
    s[1] = ok_lo ? s[1] * scale_log2 : neg_inf();
    s[2] = ok_hi ? s[2] * scale_log2 : neg_inf();
    s[3] = ok_hi ? s[3] * scale_log2 : neg_inf();

    // Online softmax over the tile's 16 tokens: a head's scores sit in the 8 lanes that share its quad.
    float alpha[2];
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      float tile_max = fmaxf(s[i], s[i + 2]);
#pragma unroll
      for (int mask = 4; mask < kWarpSize; mask <<= 1) tile_max = fmaxf(tile_max, warp_xor(tile_max, mask));
      const float m_new = fmaxf(m_run[i], tile_max);  // finite: token t0 is always valid
      alpha[i] = exp2f(m_run[i] - m_new);
      m_run[i] = m_new;
    }
    float p[4];
#pragma unroll
    for (int i = 0; i < 4; ++i) p[i] = exp2f(s[i] - m_run[i & 1]);
    l_run[0] = l_run[0] * alpha[0] + p[0] + p[2];
    l_run[1] = l_run[1] * alpha[1] + p[1] + p[3];
#pragma unroll
    for (int c = 0; c < kChunks; ++c)
#pragma unroll
      for (int h = 0; h < 2; ++h)
#pragma unroll
        for (int i = 0; i < 4; ++i) o_acc[c][h][i] *= alpha[i & 1];

    // P^T as the B operand: the S^T accumulator layout, transposed per 8x8 block.
    const unsigned p_lo = transpose_8x8(Elem<T>::pack(p[0], p[1]));  // tokens t0 .. t0+7
    const unsigned p_hi = transpose_8x8(Elem<T>::pack(p[2], p[3]));  // tokens t0+8 .. t0+15
    // V^T as the A operand: register r of a lane's 16-byte V load, transposed, gives 8 head-dim rows by
    // 8 tokens; registers 2h and 2h+1 make rows 0-7 and 8-15 of half h.
#pragma unroll
    for (int c = 0; c < kChunks; ++c)
#pragma unroll
      for (int h = 0; h < 2; ++h)
        mma_16x8x16<T>(o_acc[c][h], transpose_8x8(uint4_at(v_lo[c], 2 * h)),
                       transpose_8x8(uint4_at(v_lo[c], 2 * h + 1)), transpose_8x8(uint4_at(v_hi[c], 2 * h)),
                       transpose_8x8(uint4_at(v_hi[c], 2 * h + 1)), p_lo, p_hi);
  }

  // The full denominators of this warp: add the lanes that share a quad.
#pragma unroll
  for (int i = 0; i < 2; ++i)
#pragma unroll
    for (int mask = 4; mask < kWarpSize; mask <<= 1) l_run[i] += warp_xor(l_run[i], mask);

  __shared__ float s_max[kAttnWarps][kHeadsPerBlock];
  __shared__ float s_sum[kAttnWarps][kHeadsPerBlock];
  __shared__ float s_out[kAttnWarps][kHeadsPerBlock][HEAD_DIM];
  if (group == 0) {
    s_max[warp][2 * quad] = m_run[0];
    s_max[warp][2 * quad + 1] = m_run[1];
    s_sum[warp][2 * quad] = l_run[0];
    s_sum[warp][2 * quad + 1] = l_run[1];
  }
  // Accumulator (c, h) element i: head 2quad + (i & 1); head-dim position from V register 2h + (i >> 1),
  // transposed row `group`: the lane that loaded it had quad = group / 2 and took element pair group % 2.
#pragma unroll
  for (int c = 0; c < kChunks; ++c)
#pragma unroll
    for (int h = 0; h < 2; ++h)
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const int d = 32 * c + 8 * (group >> 1) + 2 * (2 * h + (i >> 1)) + (group & 1);
        s_out[warp][2 * quad + (i & 1)][d] = o_acc[c][h][i];
      }
  __syncthreads();

  // Merge the four warps: 16 threads per query head, each owning HEAD_DIM / 16 consecutive outputs.
  constexpr int kThreadsPerHead = kAttnThreads / kHeadsPerBlock;
  constexpr int kPerThread = HEAD_DIM / kThreadsPerHead;
  const int head = threadIdx.x / kThreadsPerHead;
  const int d0 = (threadIdx.x % kThreadsPerHead) * kPerThread;
  float m_all = neg_inf();
#pragma unroll
  for (int w = 0; w < kAttnWarps; ++w) m_all = fmaxf(m_all, s_max[w][head]);
  float weight[kAttnWarps];
  float denom = 0.f;
#pragma unroll
  for (int w = 0; w < kAttnWarps; ++w) {
    weight[w] = s_max[w][head] == neg_inf() ? 0.f : exp2f(s_max[w][head] - m_all);  // a warp with no tile
    denom += weight[w] * s_sum[w][head];
  }
  const float inv_denom = denom > 0.f ? 1.f / denom : 0.f;  // zero only for an empty split
  float acc[kPerThread];
#pragma unroll
  for (int j = 0; j < kPerThread; ++j) {
    acc[j] = 0.f;
#pragma unroll
    for (int w = 0; w < kAttnWarps; ++w) acc[j] += weight[w] * s_out[w][head][d0 + j];
    acc[j] *= inv_denom;
  }
  if (head >= heads) return;
  const long long row = (long long)batch * num_q_heads + first_head + head;
  if (num_splits == 1) {
    store_converted<T, kPerThread>(out + row * HEAD_DIM + d0, acc);
    return;
  }
  float* dst = split_out + (row * num_splits + split) * HEAD_DIM + d0;
#pragma unroll
  for (int j = 0; j < kPerThread; j += 4)
    *reinterpret_cast<float4*>(dst + j) = make_float4(acc[j], acc[j + 1], acc[j + 2], acc[j + 3]);
  if (d0 == 0) split_lse[row * num_splits + split] = denom > 0.f ? m_all + log2f(denom) : neg_inf();
}

// out[row] = sum over splits of split_out weighted by exp2(lse - max lse), normalised; row = batch * heads.
template <typename T, int HEAD_DIM>
__global__ void __launch_bounds__(128)
    merge_attention_splits_kernel(const float* __restrict__ split_out, const float* __restrict__ split_lse,
                                  T* __restrict__ out, int rows, int num_splits) {
  constexpr int kThreadsPerRow = HEAD_DIM / 4;  // four outputs per thread: one 16-byte load per split
  constexpr int kRowsPerBlock = 128 / kThreadsPerRow;
  const int row = blockIdx.x * kRowsPerBlock + threadIdx.x / kThreadsPerRow;
  if (row >= rows) return;
  const int d0 = (threadIdx.x % kThreadsPerRow) * 4;
  const float* lse = split_lse + (long long)row * num_splits;
  float m = neg_inf();
  for (int s = 0; s < num_splits; ++s) m = fmaxf(m, lse[s]);
  float acc[4] = {0.f, 0.f, 0.f, 0.f};
  float denom = 0.f;
  for (int s = 0; s < num_splits; ++s) {
    if (lse[s] == neg_inf()) continue;  // an empty split (sequence shorter than the split's start)
    const float w = exp2f(lse[s] - m);
    const float4 v = *reinterpret_cast<const float4*>(split_out + ((long long)row * num_splits + s) * HEAD_DIM + d0);
    acc[0] += w * v.x;
    acc[1] += w * v.y;
    acc[2] += w * v.z;
    acc[3] += w * v.w;
    denom += w;
  }
  const float inv = denom > 0.f ? 1.f / denom : 0.f;
#pragma unroll
  for (int j = 0; j < 4; ++j) acc[j] *= inv;
  store_converted<T, 4>(out + (long long)row * HEAD_DIM + d0, acc);
}

}  // namespace gpuprof
