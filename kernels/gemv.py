"""GEMV / skinny GEMM: y[M, N] = x[M, K] @ W[N, K]^T (+ bias[N]) for small M, streaming W once.

One program per (M block, N block, K split); the M block index varies fastest, so the programs that share a tile
of W run side by side and all but the first find it in L2. M == 1 multiplies in registers and reduces once at
the end; larger M uses tl.dot with M padded to 16 rows.

Split-K without a second kernel: each split writes its float32 partial tile, then counts itself in on a
per-tile arrival counter; the last split to arrive adds the partials in split order (so the result does not
depend on timing), adds the bias, writes the output and sets the counter back to zero for the next call.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from gpuprof.kernels.common import arrival_counters, dot_acc, interpreting


@dataclass(frozen=True)
class GemvConfig:
    block_m: int  # 1: the register path (M == 1); else 16 or more, tl.dot
    block_n: int
    block_k: int
    split_k: int = 1
    num_warps: int = 4
    num_stages: int = 3


@triton.jit
def _gemv_kernel(
    x_ptr, w_ptr, bias_ptr, out_ptr, partial_ptr, arrivals_ptr,
    M, N, K, stride_xm, stride_wn, stride_om, k_per_split, split_stride,
    HAS_BIAS: tl.constexpr, SPLIT_K: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, FP32_OPERANDS: tl.constexpr,
):
    pid = tl.program_id(0)
    m_blocks = tl.cdiv(M, BLOCK_M)
    n_blocks = tl.cdiv(N, BLOCK_N)
    pid_m = pid % m_blocks
    pid_n = (pid // m_blocks) % n_blocks
    pid_k = pid // (m_blocks * n_blocks)

    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    m_mask = rm < M
    n_mask = rn < N
    k_start = pid_k * k_per_split
    k_end = tl.minimum(k_start + k_per_split, K)
    x_rows = x_ptr + rm.to(tl.int64)[:, None] * stride_xm
    w_rows = w_ptr + rn.to(tl.int64)[:, None] * stride_wn

    if BLOCK_M == 1:
        # Accumulate elementwise and reduce over K once, after the loop.
        acc_nk = tl.zeros([BLOCK_N, BLOCK_K], dtype=tl.float32)
        for k0 in range(k_start, k_end, BLOCK_K):
            rk = k0 + tl.arange(0, BLOCK_K)
            k_mask = rk < k_end
            w = tl.load(w_rows + rk[None, :], mask=n_mask[:, None] & k_mask[None, :], other=0.0)
            x = tl.load(x_rows + rk[None, :], mask=m_mask[:, None] & k_mask[None, :], other=0.0)
            acc_nk += w.to(tl.float32) * x.to(tl.float32)
        acc = tl.sum(acc_nk, axis=1)[None, :]
    else:
        acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
        for k0 in range(k_start, k_end, BLOCK_K):
            rk = k0 + tl.arange(0, BLOCK_K)
            k_mask = rk < k_end
            x = tl.load(x_rows + rk[None, :], mask=m_mask[:, None] & k_mask[None, :], other=0.0)
            w = tl.load(w_rows + rk[None, :], mask=n_mask[:, None] & k_mask[None, :], other=0.0)
            acc = dot_acc(x, tl.trans(w), acc, FP32_OPERANDS)

    mn_mask = m_mask[:, None] & n_mask[None, :]
    out_ptrs = out_ptr + rm.to(tl.int64)[:, None] * stride_om + rn[None, :]
    if SPLIT_K == 1:
        if HAS_BIAS:
            acc += tl.load(bias_ptr + rn, mask=n_mask, other=0.0).to(tl.float32)[None, :]
        tl.store(out_ptrs, acc.to(out_ptr.dtype.element_ty), mask=mn_mask)
    else:
        tile_offs = rm.to(tl.int64)[:, None] * N + rn[None, :]
        tl.store(partial_ptr + pid_k.to(tl.int64) * split_stride + tile_offs, acc, mask=mn_mask)
        # Every thread's partial must be visible GPU-wide before the arrival is counted (release), and the last
        # arrival must see all of them (acquire).
        tl.debug_barrier()
        arrived = tl.atomic_add(arrivals_ptr + pid_n * m_blocks + pid_m, 1, sem="acq_rel", scope="gpu")
        if arrived == SPLIT_K - 1:
            total = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
            for s in tl.static_range(SPLIT_K):
                # .cg reads from L2: another SM wrote these, and this SM's L1 is not kept coherent with it.
                total += tl.load(partial_ptr + s * split_stride + tile_offs, mask=mn_mask, other=0.0, cache_modifier=".cg")
            if HAS_BIAS:
                total += tl.load(bias_ptr + rn, mask=n_mask, other=0.0).to(tl.float32)[None, :]
            tl.store(out_ptrs, total.to(out_ptr.dtype.element_ty), mask=mn_mask)
            tl.atomic_xchg(arrivals_ptr + pid_n * m_blocks + pid_m, 0)


def split_k_plan(k: int, block_k: int, split_k: int) -> tuple[int, int]:
    """(K elements per split, rounded up to whole blocks; splits actually needed, none of them empty)."""
    per_split = triton.cdiv(triton.cdiv(k, split_k), block_k) * block_k
    return per_split, triton.cdiv(k, per_split)


def gemv_fwd(
    x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None, out: torch.Tensor, config: GemvConfig
) -> torch.Tensor:
    """Launch on validated inputs (fp16/bf16, last dimensions contiguous); writes and returns out [M, N]."""
    m, k = x.shape
    n = w.shape[0]
    per_split, split_k = split_k_plan(k, config.block_k, config.split_k)
    m_blocks, n_blocks = triton.cdiv(m, config.block_m), triton.cdiv(n, config.block_n)
    if split_k > 1:
        partial = torch.empty((split_k, m, n), dtype=torch.float32, device=x.device)
        arrivals = arrival_counters(x.device, m_blocks * n_blocks)
    else:
        partial = arrivals = out  # never touched: placeholder pointers
    _gemv_kernel[(m_blocks * n_blocks * split_k,)](
        x, w, bias if bias is not None else out, out, partial, arrivals,
        m, n, k, x.stride(0), w.stride(0), out.stride(0), per_split, m * n,
        HAS_BIAS=bias is not None, SPLIT_K=split_k,
        BLOCK_M=config.block_m, BLOCK_N=config.block_n, BLOCK_K=config.block_k, FP32_OPERANDS=interpreting(),
        num_warps=config.num_warps, num_stages=config.num_stages,
    )
    return out
