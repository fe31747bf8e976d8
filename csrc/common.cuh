// Device helpers shared by the decode kernels: 16-byte loads, tensor-core fragments, warp shuffles.
//
// The same text compiles three ways: NVRTC at run time (no host headers: only cuda_fp16.h and cuda_bf16.h),
// nvcc in CI (ptxas spill check), and g++ with GPUPROF_CPU_EMULATOR defined (the CPU emulator runs the kernels
// thread by thread so their logic is tested without a GPU). Inline PTX therefore lives only here, each piece
// with its emulated twin.
#pragma once

#ifdef GPUPROF_CPU_EMULATOR
#include "cpu_emulator.cuh"
#else
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#endif

namespace gpuprof {

constexpr int kWarpSize = 32;
constexpr unsigned kFullMask = 0xffffffffu;

__device__ __forceinline__ float neg_inf() { return __uint_as_float(0xff800000u); }

__device__ __forceinline__ uint4 zero_uint4() { return make_uint4(0u, 0u, 0u, 0u); }

// 16-byte loads. The kernels never predicate them: rows or columns past the end are clamped to valid addresses
// and their values masked afterwards, so every load issues unconditionally, back to back.
// load_stream: data read exactly once (KV cache, weights): the read-only path, no L1 allocation.
__device__ __forceinline__ uint4 load_stream(const void* ptr) {
#ifdef GPUPROF_CPU_EMULATOR
  return gpuprof_emu::load16(ptr);
#else
  uint4 v;
  asm("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
      : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
      : "l"(ptr));
  return v;
#endif
}

// load_cached: data several warps of a block read (the query, the activations): kept in L1.
__device__ __forceinline__ uint4 load_cached(const void* ptr) {
#ifdef GPUPROF_CPU_EMULATOR
  return gpuprof_emu::load16(ptr);
#else
  return __ldg(reinterpret_cast<const uint4*>(ptr));
#endif
}

// Load from L2, bypassing L1: for data another block wrote during this kernel.
__device__ __forceinline__ float load_from_l2(const float* ptr) {
#ifdef GPUPROF_CPU_EMULATOR
  return *ptr;
#else
  return __ldcg(ptr);
#endif
}

__device__ __forceinline__ float warp_xor(float v, int lane_mask) { return __shfl_xor_sync(kFullMask, v, lane_mask); }

// Element types: fp16 and bf16 pack two values into one 32-bit register, the operand format of mma.
template <typename T>
struct Elem;

template <>
struct Elem<__half> {
  static constexpr bool kIsBf16 = false;
  static __device__ __forceinline__ unsigned pack(float lo, float hi) {
    __half2 h = __floats2half2_rn(lo, hi);
    return *reinterpret_cast<unsigned*>(&h);
  }
  static __device__ __forceinline__ __half from_float(float v) { return __float2half_rn(v); }
  static __device__ __forceinline__ float to_float(__half v) { return __half2float(v); }
};

template <>
struct Elem<__nv_bfloat16> {
  static constexpr bool kIsBf16 = true;
  static __device__ __forceinline__ unsigned pack(float lo, float hi) {
    __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<unsigned*>(&h);
  }
  static __device__ __forceinline__ __nv_bfloat16 from_float(float v) { return __float2bfloat16_rn(v); }
  static __device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }
};

// d += a(16x16, row-major) * b(16x8, col-major) on tensor cores, fp32 accumulation (mma.sync m16n8k16).
// Fragment layout per lane (group = lane / 4, quad = lane % 4), two 16-bit values per register, low half first:
//   a0: row group,     cols 2quad..2quad+1      a1: row group + 8, same cols
//   a2: row group,     cols 2quad+8..2quad+9    a3: row group + 8, same cols
//   b0: rows 2quad..2quad+1, col group          b1: rows 2quad+8..2quad+9, col group
//   d0, d1: row group, cols 2quad, 2quad+1      d2, d3: row group + 8, same cols
template <typename T>
__device__ __forceinline__ void mma_16x8x16(float (&d)[4], unsigned a0, unsigned a1, unsigned a2, unsigned a3,
                                            unsigned b0, unsigned b1) {
#ifdef GPUPROF_CPU_EMULATOR
  gpuprof_emu::mma_16x8x16(Elem<T>::kIsBf16, d, a0, a1, a2, a3, b0, b1);
#else
#define GPUPROF_MMA_OPERANDS " {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};"
  if constexpr (Elem<T>::kIsBf16) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32" GPUPROF_MMA_OPERANDS
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
  } else {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32" GPUPROF_MMA_OPERANDS
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
  }
#undef GPUPROF_MMA_OPERANDS
#endif
}

// Transpose an 8x8 matrix of 16-bit values held one register per lane (lane holds row lane / 4, cols
// 2(lane % 4)..+1): afterwards the lane holds the same positions of the transposed matrix (movmatrix).
__device__ __forceinline__ unsigned transpose_8x8(unsigned v) {
#ifdef GPUPROF_CPU_EMULATOR
  return gpuprof_emu::transpose_8x8(v);
#else
  unsigned r;
  asm volatile("movmatrix.sync.aligned.m8n8.trans.b16 %0, %1;" : "=r"(r) : "r"(v));
  return r;
#endif
}

// Row dot products on tensor cores, for 32 consecutive columns: d(16x8) += rows(16x32) * cols(8x32)^T.
// Each lane loads 8 consecutive elements (16 bytes) of its rows (row group and row group + 8) and of its col
// (col group), at offset 8 * quad. The mma fragments want columns 2quad and 2quad+8 instead; both operands use
// the same relabelling of the 32 columns, so every dot product still sums over all 32 columns exactly once.
// That is what lets both operands come straight from 16-byte global loads, with no shared-memory staging.
template <typename T>
__device__ __forceinline__ void mma_rows_dot_32(float (&d)[4], const uint4& row_lo, const uint4& row_hi,
                                                const uint4& col) {
  mma_16x8x16<T>(d, row_lo.x, row_hi.x, row_lo.y, row_hi.y, col.x, col.y);
  mma_16x8x16<T>(d, row_lo.z, row_hi.z, row_lo.w, row_hi.w, col.z, col.w);
}

__device__ __forceinline__ unsigned uint4_at(const uint4& v, int i) {
  return i == 0 ? v.x : i == 1 ? v.y : i == 2 ? v.z : v.w;
}

__device__ __forceinline__ int ceil_div(int a, int b) { return (a + b - 1) / b; }

}  // namespace gpuprof
