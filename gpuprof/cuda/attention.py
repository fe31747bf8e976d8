"""Launcher of the CUDA decode attention (csrc/decode_attention.cu): one query token per sequence.

Plans the launch (query-head tiles, split-KV from the SM count), checks the inputs (the public checks of
`gpuprof.ops.attention`, then the kernel's own limits), launches the attention kernel and, with several splits,
the log-sum-exp merge kernel.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from gpuprof.cuda import runtime
from gpuprof.cuda.instances import HEAD_DIMS, attention_kernel, merge_kernel
from gpuprof.errors import Unsupported
from gpuprof.ops.attention import check_attention_inputs

SOURCE = "decode_attention.cu"
THREADS = 128
HEADS_PER_BLOCK = 8  # query heads of one KV group per block; larger groups take several blocks
TILE_TOKENS = 16
MIN_TOKENS_PER_SPLIT = 256
MAX_SPLITS = 256
_GRID_LIMIT = 65535


@dataclass(frozen=True)
class AttentionPlan:
    head_tiles: int  # blocks per KV head (query heads / 8, rounded up)
    num_splits: int

    def grid(self, batch: int, kv_heads: int) -> tuple[int, int, int]:
        return (self.num_splits, kv_heads * self.head_tiles, batch)


def plan(batch: int, kv_heads: int, group_size: int, capacity: int, sm_count: int, num_splits: int | None = None):
    """Blocks for one call: split the KV sequence to get about four blocks per SM (a rough guess of how many
    fit), keeping at least 256 tokens per split, judged on the cache capacity since the lengths stay on the GPU.
    Untuned: nobody has measured the best split count yet."""
    head_tiles = math.ceil(group_size / HEADS_PER_BLOCK)
    if num_splits is None:
        blocks = batch * kv_heads * head_tiles
        num_splits = min(round(4 * sm_count / blocks), capacity // MIN_TOKENS_PER_SPLIT, MAX_SPLITS)
    return AttentionPlan(head_tiles, max(1, num_splits))


def _check(q, k_cache, v_cache, seq_lens, block_table, out, scale, num_splits) -> None:
    """The public checks (shapes, dtypes, devices, last dimensions contiguous, out apart from the inputs), then
    what this kernel cannot do. q, the table and out may have any other strides: the launcher packs them."""
    check_attention_inputs(q, k_cache, v_cache, seq_lens, block_table, out, scale=scale, num_splits=num_splits,
                           check_values=False)
    if q.shape[-1] not in HEAD_DIMS:
        raise Unsupported(f"the CUDA decode attention supports head_dim 64, 128 and 256, not {q.shape[-1]}.")
    # One set of strides addresses both caches; copying either to match would move the whole cache.
    if k_cache.stride() != v_cache.stride():
        raise Unsupported(f"the CUDA decode attention needs k_cache and v_cache laid out alike; their strides are "
                          f"{k_cache.stride()} and {v_cache.stride()}.")
    if any(t.data_ptr() % 16 for t in (k_cache, v_cache)) or any(s % 8 for s in k_cache.stride()[:-1]):
        raise Unsupported("the CUDA decode attention needs every cache row aligned to 16 bytes.")


def decode_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    seq_lens: torch.Tensor,
    block_table: torch.Tensor | None,
    *,
    scale: float | None = None,
    num_splits: int | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """softmax(q k^T * scale) v for one query token per sequence; returns [B, Hq, D] in q's dtype.

    q [B, Hq, D]; paged caches [num_pages, page_size, Hkv, D] with block_table [B, max_pages] (int32), or
    contiguous caches [B, Hkv, L, D] with block_table None; seq_lens [B] (int32, 1..capacity). fp32
    accumulation; query head h reads KV head h // (Hq / Hkv). `num_splits` forces the split-KV count.
    A strided q or block table is packed first, and a strided `out` is filled through a packed temporary.
    """
    _check(q, k_cache, v_cache, seq_lens, block_table, out, scale, num_splits)
    q, seq_lens = runtime.packed(q), seq_lens.contiguous()
    block_table = block_table.contiguous() if block_table is not None else None
    batch, q_heads, head_dim = q.shape
    paged = block_table is not None
    if paged:
        _, page_size, kv_heads, _ = k_cache.shape
        stride_block, stride_token, stride_head = k_cache.stride()[:3]
        max_pages = block_table.shape[1]
        capacity = max_pages * page_size
    else:
        _, kv_heads, capacity, _ = k_cache.shape
        stride_block, stride_head, stride_token = k_cache.stride()[:3]
        page_size = max_pages = 0
    group_size = q_heads // kv_heads
    p = plan(batch, kv_heads, group_size, capacity, runtime.sm_count(q.device), num_splits)
    grid = p.grid(batch, kv_heads)
    if grid[1] > _GRID_LIMIT or grid[2] > _GRID_LIMIT:
        raise Unsupported(f"the CUDA decode attention grid cannot cover batch {batch} with {q_heads} query heads.")
    result = runtime.packed_output(out, q.shape, q)
    split_out = split_lse = None
    if p.num_splits > 1:
        split_out = torch.empty(batch, q_heads, p.num_splits, head_dim, dtype=torch.float32, device=q.device)
        split_lse = torch.empty(batch, q_heads, p.num_splits, dtype=torch.float32, device=q.device)
    scale_log2 = (float(scale) if scale is not None else head_dim**-0.5) * math.log2(math.e)
    r = runtime
    args = (
        r.ptr(q), r.ptr(k_cache), r.ptr(v_cache), r.ptr(seq_lens), r.ptr(block_table), r.ptr(result),
        r.ptr(split_out), r.ptr(split_lse), r.i32(q_heads), r.i32(group_size), r.i32(p.head_tiles),
        r.i64(stride_block), r.i64(stride_token), r.i64(stride_head), r.i32(page_size), r.i32(max_pages),
        r.i32(p.num_splits), r.f32(scale_log2),
    )  # fmt: skip
    kernel = attention_kernel(q.dtype, head_dim, paged)
    r.launch(q.device, SOURCE, kernel, grid, (THREADS, 1, 1), args)
    if p.num_splits > 1:
        rows = batch * q_heads
        rows_per_block = THREADS // (head_dim // 4)
        merge_args = (r.ptr(split_out), r.ptr(split_lse), r.ptr(result), r.i32(rows), r.i32(p.num_splits))
        grid = (math.ceil(rows / rows_per_block), 1, 1)
        r.launch(q.device, SOURCE, merge_kernel(q.dtype, head_dim), grid, (THREADS, 1, 1), merge_args)
    return runtime.deliver(out, result)
