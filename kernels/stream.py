"""A read-only streaming kernel: the DRAM read ceiling, with no write traffic to share the bus."""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _read_sum_kernel(x_ptr, partial_ptr, n, BLOCK: tl.constexpr, TILES_PER_PROGRAM: tl.constexpr):
    # Each program reads TILES_PER_PROGRAM consecutive tiles, so many independent loads are in flight per SM.
    pid = tl.program_id(0).to(tl.int64)
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    for t in tl.static_range(TILES_PER_PROGRAM):
        offs = (pid * TILES_PER_PROGRAM + t) * BLOCK + tl.arange(0, BLOCK)
        acc += tl.load(x_ptr + offs, mask=offs < n, other=0.0, eviction_policy="evict_first").to(tl.float32)
    tl.store(partial_ptr + pid, tl.sum(acc, axis=0))


_BLOCK = 4096
_TILES = 4


def read_sum_partials(x: torch.Tensor) -> torch.Tensor:
    """The buffer of per-program partial sums that `read_sum` fills."""
    programs = triton.cdiv(x.numel(), _BLOCK * _TILES)
    return torch.empty(programs, dtype=torch.float32, device=x.device)


def read_sum(x: torch.Tensor, partials: torch.Tensor) -> torch.Tensor:
    """Sum of x in float32 partials (one per program); reads every byte of x exactly once."""
    assert x.is_contiguous() and partials.numel() == triton.cdiv(x.numel(), _BLOCK * _TILES)
    _read_sum_kernel[(partials.numel(),)](x, partials, x.numel(), BLOCK=_BLOCK, TILES_PER_PROGRAM=_TILES, num_warps=8)
    return partials
