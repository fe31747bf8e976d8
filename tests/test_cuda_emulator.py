"""The CPU emulator itself (csrc/cpu_emulator.cuh): warp shuffles, block barriers, and divergence reported
instead of hanging. The kernels' own tests (test_cuda_kernels.py) rest on it when no GPU is present."""

from __future__ import annotations

import subprocess

import pytest

from gpuprof.cuda import emulator, source
from gpuprof.cuda.runtime import cuda_include_dir

PROGRAM = r"""
#define GPUPROF_CPU_EMULATOR 1
#include "common.cuh"
#include <cstdio>

__global__ void shuffle_then_sync(float* out) {
  float v = gpuprof::warp_xor(float(threadIdx.x), 1);
  __shared__ float block_sum[1];
  if (threadIdx.x == 0) block_sum[0] = 1000.f * blockIdx.x;
  __syncthreads();
  out[blockIdx.x * blockDim.x + threadIdx.x] = v + block_sum[0];
}

__global__ void diverged_shuffle(float* out) {
  float v = threadIdx.x;
  if (threadIdx.x % 32 < 16) v = gpuprof::warp_xor(v, 1);
  out[threadIdx.x] = v;
}

int main() {
  float out[128];
  const std::string ok = gpuprof_emu::run_grid([&] { shuffle_then_sync(out); }, dim3(2, 1, 1), dim3(64, 1, 1));
  std::printf("ok=[%s]\n", ok.c_str());
  for (int i = 0; i < 128; ++i) std::printf("%g\n", out[i]);
  const std::string bad = gpuprof_emu::run_grid([&] { diverged_shuffle(out); }, dim3(1, 1, 1), dim3(64, 1, 1));
  std::printf("bad=[%s]\n", bad.c_str());
}
"""


@pytest.fixture(scope="module")
def program_output(tmp_path_factory) -> list[str]:
    reason = emulator.unavailable_reason()
    if reason:
        pytest.skip(reason)
    folder = tmp_path_factory.mktemp("emulator")
    (folder / "check.cpp").write_text(PROGRAM)
    command = [emulator.compiler(), "-std=c++17", "-O1", "-w", f"-I{source.CSRC_DIR}", f"-I{cuda_include_dir()}"]
    subprocess.run(command + [str(folder / "check.cpp"), "-o", str(folder / "check")], check=True)
    return subprocess.run([str(folder / "check")], capture_output=True, text=True, check=True).stdout.splitlines()


def test_shuffles_exchange_between_lanes_and_barriers_share_memory(program_output):
    assert program_output[0] == "ok=[]"
    values = [float(v) for v in program_output[1:129]]
    expected = [(i ^ 1) % 64 + 1000.0 * (i // 64) for i in range(128)]
    assert values == expected


def test_a_shuffle_reached_by_half_a_warp_is_an_error_not_a_hang(program_output):
    last = program_output[129]
    assert last.startswith("bad=[") and "a warp operation was reached by only some lanes" in last
