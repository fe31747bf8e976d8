"""The template instantiations of the CUDA kernels: the one list NVRTC, nvcc (CI) and the CPU emulator compile.

A kernel is named by a C++ name expression such as `gpuprof::gemv_kernel<__half, 2>`. The launchers ask for
names through the functions below, and `INSTANCES` enumerates every name those functions can return, so a
combination the launchers use can never be missing from what CI compiles.
"""

from __future__ import annotations

import torch

CPP_TYPES: dict[torch.dtype, str] = {torch.float16: "__half", torch.bfloat16: "__nv_bfloat16"}
HEAD_DIMS = (64, 128, 256)
GEMV_M_TILES = (1, 2, 4, 8)  # 8-row tiles of x per block


def _cpp_bool(value: bool) -> str:
    return "true" if value else "false"


def attention_kernel(dtype: torch.dtype, head_dim: int, paged: bool) -> str:
    return f"gpuprof::decode_attention_kernel<{CPP_TYPES[dtype]}, {head_dim}, {_cpp_bool(paged)}>"


def merge_kernel(dtype: torch.dtype, head_dim: int) -> str:
    return f"gpuprof::merge_attention_splits_kernel<{CPP_TYPES[dtype]}, {head_dim}>"


def gemv_kernel(dtype: torch.dtype, m_tiles: int) -> str:
    return f"gpuprof::gemv_kernel<{CPP_TYPES[dtype]}, {m_tiles}>"


def rows_dot_check_kernel(dtype: torch.dtype) -> str:
    return f"gpuprof::rows_dot_check_kernel<{CPP_TYPES[dtype]}>"


TRANSPOSE_CHECK_KERNEL = "gpuprof::transpose_check_kernel"


def _all_instances() -> dict[str, list[str]]:
    attention = [attention_kernel(t, d, p) for t in CPP_TYPES for d in HEAD_DIMS for p in (False, True)]
    attention += [merge_kernel(t, d) for t in CPP_TYPES for d in HEAD_DIMS]
    gemv = [gemv_kernel(t, m) for t in CPP_TYPES for m in GEMV_M_TILES]
    checks = [rows_dot_check_kernel(t) for t in CPP_TYPES] + [TRANSPOSE_CHECK_KERNEL]
    return {"decode_attention.cu": attention, "gemv.cu": gemv, "fragment_check.cu": checks}


# source file in csrc/ -> name expressions compiled from it
INSTANCES: dict[str, list[str]] = _all_instances()
