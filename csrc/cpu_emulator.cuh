// A CPU emulator for the kernels in this folder: built with g++ and GPUPROF_CPU_EMULATOR defined, each CUDA
// thread of a block runs as a fiber (ucontext), blocks run one after another, and the warp-synchronous
// operations the kernels use (shuffles, mma.sync m16n8k16, movmatrix) exchange registers through per-warp
// slots, following the fragment layouts of the PTX ISA. It exists so that the kernels' index arithmetic and
// fragment bookkeeping are tested on machines without a GPU; it says nothing about speed.
//
// Only what the kernels here use is provided. A warp operation reached by some lanes of a warp but not all, or
// a __syncthreads not reached by every live thread, is reported as an error instead of hanging.
#pragma once

#ifndef GPUPROF_CPU_EMULATOR
#error "cpu_emulator.cuh is only for host builds with GPUPROF_CPU_EMULATOR defined"
#endif

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <math.h>
#include <ucontext.h>
#include <vector_functions.h>
#include <vector_types.h>

#include <cstdint>
#include <cstring>
#include <functional>
#include <string>
#include <utility>
#include <vector>

// The CUDA headers give these qualifiers attribute meanings for host compilers; here they must be plain C++.
#undef __global__
#undef __device__
#undef __host__
#undef __forceinline__
#undef __launch_bounds__
#undef __shared__
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static  // blocks run one at a time, so one static array per kernel is the block's memory

namespace gpuprof_emu {

constexpr int kWarp = 32;
constexpr int kSlotWords = 8;

struct Fiber {
  ucontext_t context;
  std::vector<char> stack;
  uint3 thread_idx;
  int warp = 0;
  int lane = 0;
  unsigned collectives = 0;  // warp operations this thread has done: picks the exchange buffer
  bool done = false;
};

struct Warp {
  unsigned generation = 0;
  int arrived = 0;
  // Deposits of each lane, double-buffered: a lane can be at most one warp operation ahead of the slowest.
  uint32_t slots[2][kWarp][kSlotWords];
};

struct Engine {
  std::vector<Fiber> fibers;
  std::vector<Warp> warps;
  ucontext_t scheduler;
  Fiber* current = nullptr;
  uint3 block_idx;
  dim3 grid_dim, block_dim;
  unsigned block_generation = 0;
  int block_arrived = 0;
  int live = 0;
  bool progress = false;
  std::function<void()> body;
};

inline Engine g;

inline void yield() { swapcontext(&g.current->context, &g.scheduler); }

inline void block_barrier() {
  const unsigned generation = g.block_generation;
  g.progress = true;
  if (++g.block_arrived == g.live) {
    g.block_arrived = 0;
    ++g.block_generation;
    return;
  }
  while (g.block_generation == generation) yield();
}

inline void warp_barrier() {
  Warp& w = g.warps[g.current->warp];
  const unsigned generation = w.generation;
  g.progress = true;
  if (++w.arrived == kWarp) {
    w.arrived = 0;
    ++w.generation;
    return;
  }
  while (w.generation == generation) yield();
}

// Deposits this lane's words, waits for the whole warp, and returns the slots every lane filled.
inline const uint32_t (*exchange(const uint32_t* words, int count))[kSlotWords] {
  Fiber& f = *g.current;
  auto& slots = g.warps[f.warp].slots[f.collectives & 1];
  std::memcpy(slots[f.lane], words, sizeof(uint32_t) * count);
  ++f.collectives;
  warp_barrier();
  return slots;
}

inline uint32_t float_bits(float v) {
  uint32_t u;
  std::memcpy(&u, &v, 4);
  return u;
}

inline float bits_float(uint32_t u) {
  float v;
  std::memcpy(&v, &u, 4);
  return v;
}

inline uint16_t half_word(uint32_t reg, int index) { return uint16_t(reg >> (16 * index)); }

inline float word_to_float(bool bf16, uint16_t word) {
  if (bf16) return bits_float(uint32_t(word) << 16);
  __half_raw raw;
  raw.x = word;
  return __half2float(__half(raw));
}

inline float shfl_xor(float v, int lane_mask) {
  const uint32_t word = float_bits(v);
  const auto slots = exchange(&word, 1);
  return bits_float(slots[(g.current->lane ^ lane_mask) & (kWarp - 1)][0]);
}

// mma.sync.aligned.m16n8k16.row.col.f32.{f16,bf16}: lane registers laid out as in the PTX ISA
// ("Matrix Fragments for mma.m16n8k16 with floating point type"); see common.cuh.
inline void mma_16x8x16(bool bf16, float (&d)[4], unsigned a0, unsigned a1, unsigned a2, unsigned a3,
                        unsigned b0, unsigned b1) {
  const uint32_t words[6] = {a0, a1, a2, a3, b0, b1};
  const auto slots = exchange(words, 6);
  auto a_at = [&](int row, int col) {  // A[row][col], 16 x 16
    const int holder = (row % 8) * 4 + (col % 8) / 2;
    const int reg = (row >= 8 ? 1 : 0) + (col >= 8 ? 2 : 0);
    return word_to_float(bf16, half_word(slots[holder][reg], col & 1));
  };
  auto b_at = [&](int k, int n) {  // B[k][n], 16 x 8
    const int holder = n * 4 + (k % 8) / 2;
    const int reg = 4 + (k >= 8 ? 1 : 0);
    return word_to_float(bf16, half_word(slots[holder][reg], k & 1));
  };
  const int group = g.current->lane >> 2;
  const int quad = g.current->lane & 3;
  for (int i = 0; i < 4; ++i) {
    const int row = group + (i >= 2 ? 8 : 0);
    const int col = 2 * quad + (i & 1);
    float sum = d[i];
    for (int k = 0; k < 16; ++k) sum += a_at(row, k) * b_at(k, col);
    d[i] = sum;
  }
}

// movmatrix.sync.aligned.m8n8.trans.b16: the lane holding row r, cols 2c..2c+1 of the input receives
// row r, cols 2c..2c+1 of the transpose, i.e. input elements (2c, r) and (2c + 1, r).
inline unsigned transpose_8x8(unsigned v) {
  const uint32_t word = v;
  const auto slots = exchange(&word, 1);
  const int r = g.current->lane >> 2;
  const int c = g.current->lane & 3;
  auto input = [&](int row, int col) -> uint32_t { return half_word(slots[row * 4 + col / 2][0], col & 1); };
  return input(2 * c, r) | (input(2 * c + 1, r) << 16);
}

inline uint4 load16(const void* ptr) {
  uint4 v;
  std::memcpy(&v, ptr, 16);
  return v;
}

inline void trampoline() {
  g.body();
  g.current->done = true;
}

// Runs one block to completion; returns an empty string or what went wrong.
inline std::string run_block(size_t stack_bytes) {
  const int threads = int(g.fibers.size());
  for (int i = 0; i < threads; ++i) {
    Fiber& f = g.fibers[i];
    if (f.stack.size() != stack_bytes) f.stack.assign(stack_bytes, 0);
    getcontext(&f.context);
    f.context.uc_stack.ss_sp = f.stack.data();
    f.context.uc_stack.ss_size = f.stack.size();
    f.context.uc_link = &g.scheduler;
    makecontext(&f.context, trampoline, 0);
    f.done = false;
    f.collectives = 0;
  }
  for (Warp& w : g.warps) w.arrived = 0;
  g.block_arrived = 0;
  g.live = threads;
  while (g.live > 0) {
    g.progress = false;
    for (Fiber& f : g.fibers) {
      if (f.done) continue;
      g.current = &f;
      swapcontext(&g.scheduler, &f.context);
      if (f.done) {
        --g.live;
        g.progress = true;
        if (g.block_arrived > 0 && g.block_arrived == g.live) {  // the others wait at __syncthreads
          g.block_arrived = 0;
          ++g.block_generation;
        }
      }
    }
    if (!g.progress) {
      return "the threads of a block wait forever: a warp operation was reached by only some lanes of a warp, "
             "or __syncthreads by only some threads of the block";
    }
  }
  g.current = nullptr;
  return "";
}

// Runs `kernel_call` over the whole grid; returns an empty string or what went wrong.
inline std::string run_grid(const std::function<void()>& kernel_call, dim3 grid, dim3 block) {
  const int threads = int(block.x * block.y * block.z);
  if (threads % kWarp != 0) return "the emulator needs whole warps: block size must be a multiple of 32";
  g.fibers.resize(threads);
  g.warps.assign(threads / kWarp, Warp{});
  for (int i = 0; i < threads; ++i) {
    Fiber& f = g.fibers[i];
    f.thread_idx = make_uint3(i % block.x, (i / block.x) % block.y, i / (block.x * block.y));
    f.warp = i / kWarp;
    f.lane = i % kWarp;
  }
  g.grid_dim = grid;
  g.block_dim = block;
  g.body = kernel_call;
  for (unsigned z = 0; z < grid.z; ++z)
    for (unsigned y = 0; y < grid.y; ++y)
      for (unsigned x = 0; x < grid.x; ++x) {
        g.block_idx = make_uint3(x, y, z);
        const std::string error = run_block(size_t(256) << 10);
        if (!error.empty()) return error;
      }
  return "";
}

// Type-erased kernel entry: unpacks an array of argument pointers into the kernel's parameter types.
template <typename... Params, size_t... I>
void call_with(void (*kernel)(Params...), void** args, std::index_sequence<I...>) {
  kernel(*static_cast<Params*>(args[I])...);
}

template <typename... Params>
std::function<void(void**)> bind_kernel(void (*kernel)(Params...)) {
  return [kernel](void** args) { call_with(kernel, args, std::index_sequence_for<Params...>{}); };
}

}  // namespace gpuprof_emu

#define threadIdx (::gpuprof_emu::g.current->thread_idx)
#define blockIdx (::gpuprof_emu::g.block_idx)
#define blockDim (::gpuprof_emu::g.block_dim)
#define gridDim (::gpuprof_emu::g.grid_dim)

inline void __syncthreads() { gpuprof_emu::block_barrier(); }
inline void __threadfence() {}
inline float __shfl_xor_sync(unsigned, float v, int lane_mask) { return gpuprof_emu::shfl_xor(v, lane_mask); }
inline int atomicAdd(int* address, int value) {  // blocks run one at a time: a plain read-modify-write
  const int old = *address;
  *address = old + value;
  return old;
}
inline float __uint_as_float(unsigned bits) { return gpuprof_emu::bits_float(bits); }
template <typename T>
inline T __ldg(const T* address) {
  return *address;
}
inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }
