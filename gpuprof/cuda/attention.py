"""Launcher of the CUDA decode attention (csrc/decode_attention.cu): one query token per sequence.

Plans the launch (query-head tiles, split-KV from the SM count), checks what the kernel assumes, launches the
attention kernel and, with several splits, the log-sum-exp merge kernel. Input validation for users lives in
`gpuprof.ops.attention`; the checks here guard the kernel's own assumptions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from gpuprof.cuda import runtime
from gpuprof.cuda.instances import CPP_TYPES, HEAD_DIMS, attention_kernel, merge_kernel
from gpuprof.errors import Unsupported

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


def _check(q, k_cache, v_cache, seq_lens, block_table, out) -> None:
    assert q.dim() == 3 and q.is_contiguous(), "decode_attention: q must be a contiguous [B, Hq, D] tensor"
    assert k_cache.shape == v_cache.shape and k_cache.stride() == v_cache.stride(), "k_cache and v_cache differ"
    assert k_cache.dim() == 4 and k_cache.stride(-1) == 1, "decode_attention: cache rows must be contiguous"
    assert k_cache.dtype == q.dtype == v_cache.dtype, "decode_attention: q and the caches must share a dtype"
    assert k_cache.device == v_cache.device == seq_lens.device == q.device, "decode_attention: devices differ"
    assert seq_lens.dtype == torch.int32 and seq_lens.is_contiguous(), "decode_attention: seq_lens must be int32"
    if block_table is not None:
        assert block_table.dtype == torch.int32 and block_table.is_contiguous(), "block_table must be int32"
        assert block_table.device == q.device, "decode_attention: block_table is on another device"
    if out is not None:
        assert out.shape == q.shape and out.dtype == q.dtype and out.is_contiguous(), "out must be like q"
        assert out.device == q.device, "decode_attention: out is on another device"
    if q.dtype not in CPP_TYPES:
        raise Unsupported(f"the CUDA decode attention supports float16 and bfloat16, not {q.dtype}.")
    if q.shape[-1] not in HEAD_DIMS:
        raise Unsupported(f"the CUDA decode attention supports head_dim 64, 128 and 256, not {q.shape[-1]}.")
    tensors = [q, k_cache, v_cache] + ([out] if out is not None else [])
    if any(t.data_ptr() % 16 for t in tensors) or any(s % 8 for s in k_cache.stride()[:-1]):
        raise Unsupported("the CUDA decode attention needs q, out and every cache row aligned to 16 bytes.")


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
    """
    _check(q, k_cache, v_cache, seq_lens, block_table, out)
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
    if out is None:
        out = torch.empty_like(q)
    split_out = split_lse = None
    if p.num_splits > 1:
        split_out = torch.empty(batch, q_heads, p.num_splits, head_dim, dtype=torch.float32, device=q.device)
        split_lse = torch.empty(batch, q_heads, p.num_splits, dtype=torch.float32, device=q.device)
    scale_log2 = (scale if scale is not None else head_dim**-0.5) * math.log2(math.e)
    r = runtime
    args = (
        r.ptr(q), r.ptr(k_cache), r.ptr(v_cache), r.ptr(seq_lens), r.ptr(block_table), r.ptr(out),
        r.ptr(split_out), r.ptr(split_lse), r.i32(q_heads), r.i32(group_size), r.i32(p.head_tiles),
        r.i64(stride_block), r.i64(stride_token), r.i64(stride_head), r.i32(page_size), r.i32(max_pages),
        r.i32(p.num_splits), r.f32(scale_log2),
    )  # fmt: skip
    kernel = attention_kernel(q.dtype, head_dim, paged)
    r.launch(q.device, SOURCE, kernel, grid, (THREADS, 1, 1), args)
    if p.num_splits > 1:
        rows = batch * q_heads
        rows_per_block = THREADS // (head_dim // 4)
        merge_args = (r.ptr(split_out), r.ptr(split_lse), r.ptr(out), r.i32(rows), r.i32(p.num_splits))
        grid = (math.ceil(rows / rows_per_block), 1, 1)
        r.launch(q.device, SOURCE, merge_kernel(q.dtype, head_dim), grid, (THREADS, 1, 1), merge_args)
    return out
