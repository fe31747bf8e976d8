"""Launcher of the CUDA skinny GEMM (csrc/gemv.cu): y[M, N] = x[M, K] @ w[N, K]^T (+ bias[N]).

Plans the launch (rows of x per block, split-K from the SM count), checks the inputs (the public checks of
`gpuprof.ops.gemv`, then the kernel's own limits), launches.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import torch

from gpuprof.cuda import runtime
from gpuprof.cuda.instances import GEMV_M_TILES, gemv_kernel
from gpuprof.errors import Unsupported
from gpuprof.kernels.common import arrival_counters
from gpuprof.ops.gemv import check_gemv_inputs

SOURCE = "gemv.cu"
THREADS = 128
ROWS_PER_BLOCK = 64  # rows of w per block: 4 warps x 16
K_STEP = 128  # columns of K a warp loads per step at most (4 chunks of 32): split boundaries align to it
MIN_K_PER_SPLIT = 256
MAX_SPLITS = 32
_GRID_LIMIT = 65535


@dataclass(frozen=True)
class GemvPlan:
    m_tiles: int  # 8-row tiles of x per block
    m_blocks: int
    n_blocks: int
    num_splits: int
    k_per_split: int

    @property
    def grid(self) -> tuple[int, int, int]:
        return (self.m_blocks, self.num_splits, self.n_blocks)


def plan(m: int, n: int, k: int, sm_count: int, num_splits: int | None = None) -> GemvPlan:
    """Block shape and split-K for one call: about four blocks per SM, at least 256 columns of K per split."""
    m_tiles = next((t for t in GEMV_M_TILES if 8 * t >= m), GEMV_M_TILES[-1])
    m_blocks = math.ceil(m / (8 * m_tiles))
    n_blocks = math.ceil(n / ROWS_PER_BLOCK)
    if num_splits is None:
        blocks = m_blocks * n_blocks
        num_splits = min(math.ceil(4 * sm_count / blocks), k // MIN_K_PER_SPLIT, MAX_SPLITS)
    num_splits = max(1, num_splits)
    k_per_split = math.ceil(math.ceil(k / num_splits) / K_STEP) * K_STEP
    return GemvPlan(m_tiles, m_blocks, n_blocks, math.ceil(k / k_per_split), k_per_split)


def _check(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None, out: torch.Tensor | None) -> None:
    """The public checks (shapes, dtypes, devices, last dimensions contiguous, out apart from the inputs), then
    what this kernel cannot do."""
    check_gemv_inputs(x, w, bias, out)
    if x.shape[1] % 8 != 0:
        raise Unsupported(f"the CUDA gemv needs K a multiple of 8, not {x.shape[1]}.")


def gemv(
    x: torch.Tensor,
    w: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    out: torch.Tensor | None = None,
    num_splits: int | None = None,
) -> torch.Tensor:
    """y = x @ w^T (+ bias) with fp32 accumulation; x [M, K], w [N, K], fp16 or bf16; returns y [M, N].

    The kernel takes packed rows only: a strided x is packed first and a strided `out` filled through a packed
    temporary. A strided or misaligned w is copied too, on every call and with a warning (the kernel has no row
    stride for w, and w can be large): pass a contiguous w to keep that copy out of timed work.
    """
    _check(x, w, bias, out)
    if not runtime.is_packed(w):
        warnings.warn("gemv/cuda copies w on every call because its rows are not packed and 16-byte aligned "
                      "(the kernel takes no row stride for w); pass w.contiguous() once instead.", stacklevel=2)
    x, w, bias = runtime.packed(x), runtime.packed(w), bias.contiguous() if bias is not None else None
    m, k = x.shape
    n = w.shape[0]
    p = plan(m, n, k, runtime.sm_count(x.device), num_splits)
    if p.n_blocks > _GRID_LIMIT or p.m_blocks > _GRID_LIMIT:
        raise Unsupported(f"the CUDA gemv grid cannot cover M={m}, N={n}.")
    result = runtime.packed_output(out, (m, n), x)
    partial = counters = None
    if p.num_splits > 1:
        partial = torch.empty(p.num_splits, m, n, dtype=torch.float32, device=x.device)
        counters = arrival_counters(x.device, p.n_blocks * p.m_blocks)
    args = (
        runtime.ptr(x), runtime.ptr(w), runtime.ptr(bias), runtime.ptr(result), runtime.ptr(partial),
        runtime.ptr(counters), runtime.i32(m), runtime.i32(n), runtime.i32(k), runtime.i32(p.k_per_split),
        runtime.i32(p.num_splits),
    )  # fmt: skip
    runtime.launch(x.device, SOURCE, gemv_kernel(x.dtype, p.m_tiles), p.grid, (THREADS, 1, 1), args)
    return runtime.deliver(out, result)
