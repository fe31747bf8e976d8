"""Decode attention (one query token per sequence) over a paged or contiguous KV cache, split-KV.

Two kernels, as in flash-decoding:

1. `_attend_split_kernel`: one program per (sequence, KV head, group tile, split). It loads the query rows of
   every query head that shares the KV head (the GQA group), then streams its slice of the sequence's K and V once,
   with an online softmax in base 2. With one split it writes the output directly; with several it writes its
   normalised partial output and log-sum-exp in float32.
2. `_merge_splits_kernel`: one program per (sequence, query head); weighs the partial outputs by their
   log-sum-exp and writes the output.

The launcher takes already validated tensors and a launch configuration; `gpuprof.ops.attention` validates,
plans the split count and picks the configuration.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from gpuprof.kernels.common import dot_acc, interpreting

# A program holds at most this many query heads of one group: beyond it (MQA with many heads) the group is tiled,
# and the tiles of one KV head run side by side so their repeated K/V reads come from L2.
MAX_GROUP_TILE = 64
# tl.dot needs at least 16 rows; smaller groups are padded with masked rows (their compute is free: decode is
# bound by memory, not by the tensor cores).
MIN_DOT_ROWS = 16


@dataclass(frozen=True)
class AttentionConfig:
    """How a call is cut up and launched."""

    num_splits: int  # chunks each sequence is cut into (split-KV); 1 writes the output directly
    block_n: int  # KV tokens per loop iteration
    num_warps: int = 4
    num_stages: int = 3


def padded_head_dim(head_dim: int) -> int:
    """The head_dim the tiles hold: a power of two, at least tl.dot's 16."""
    return max(MIN_DOT_ROWS, triton.next_power_of_2(head_dim))


def group_tile(group: int) -> int:
    """Query-head rows one program holds: 1 for MHA (no tensor cores), else the group padded for tl.dot."""
    if group == 1:
        return 1
    return max(MIN_DOT_ROWS, triton.next_power_of_2(min(group, MAX_GROUP_TILE)))


@triton.jit
def _attend_split_kernel(
    q_ptr, k_ptr, v_ptr, seq_lens_ptr, block_table_ptr, out_ptr, part_out_ptr, part_lse_ptr,
    scale_log2,  # softmax scale times log2(e): the softmax is computed with exp2
    num_q_heads, num_splits,
    stride_q_b, stride_q_h,
    stride_k_0, stride_k_1, stride_k_h,  # paged: (page, slot in page, head); contiguous: (sequence, token, head)
    stride_v_0, stride_v_1, stride_v_h,
    stride_table_b,
    stride_o_b, stride_o_h,
    GROUP: tl.constexpr, BLOCK_G: tl.constexpr, GROUP_TILES: tl.constexpr, HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, PAGE_SIZE: tl.constexpr, WRITE_PARTIAL: tl.constexpr, FP32_OPERANDS: tl.constexpr,
):
    seq = tl.program_id(0).to(tl.int64)
    kv_head = tl.program_id(1) // GROUP_TILES
    tile = tl.program_id(1) % GROUP_TILES
    split = tl.program_id(2)

    # Each sequence is cut into num_splits chunks of whole blocks; trailing chunks of a short sequence are empty.
    seq_len = tl.load(seq_lens_ptr + seq)
    chunk = tl.cdiv(tl.cdiv(seq_len, num_splits), BLOCK_N) * BLOCK_N
    start = split * chunk
    end = tl.minimum(start + chunk, seq_len)

    g = tile * BLOCK_G + tl.arange(0, BLOCK_G)
    g_mask = g < GROUP
    heads = kv_head * GROUP + g
    d = tl.arange(0, BLOCK_D)  # head_dim padded to a power of two; the padding is masked off
    d_mask = d < HEAD_DIM
    q = tl.load(q_ptr + seq * stride_q_b + heads[:, None] * stride_q_h + d[None, :],
                mask=g_mask[:, None] & d_mask[None, :], other=0.0)
    if BLOCK_G == 1:
        q = q.to(tl.float32)

    m_i = tl.full([BLOCK_G], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_G], dtype=tl.float32)
    acc = tl.zeros([BLOCK_G, BLOCK_D], dtype=tl.float32)
    k_head = k_ptr + kv_head * stride_k_h
    v_head = v_ptr + kv_head * stride_v_h
    for block_start in range(start, end, BLOCK_N):
        t = block_start + tl.arange(0, BLOCK_N)
        t_mask = t < end
        if PAGE_SIZE > 0:
            page = tl.load(block_table_ptr + seq * stride_table_b + t // PAGE_SIZE, mask=t_mask, other=0).to(tl.int64)
            slot = t % PAGE_SIZE
            k_rows = page * stride_k_0 + slot * stride_k_1
            v_rows = page * stride_v_0 + slot * stride_v_1
        else:
            k_rows = seq * stride_k_0 + t.to(tl.int64) * stride_k_1
            v_rows = seq * stride_v_0 + t.to(tl.int64) * stride_v_1
        kv_mask = t_mask[:, None] & d_mask[None, :]
        k = tl.load(k_head + k_rows[:, None] + d[None, :], mask=kv_mask, other=0.0)
        if BLOCK_G == 1:  # MHA: a broadcast multiply-sum; a padded tl.dot would waste 15 of 16 rows of registers
            s = tl.sum(q[:, None, :] * k.to(tl.float32)[None, :, :], axis=2)
        else:
            s = dot_acc(q, tl.trans(k), tl.zeros([BLOCK_G, BLOCK_N], dtype=tl.float32), FP32_OPERANDS)
        s = tl.where(t_mask[None, :], s * scale_log2, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, axis=1)
        v = tl.load(v_head + v_rows[:, None] + d[None, :], mask=kv_mask, other=0.0)
        acc = acc * alpha[:, None]
        if BLOCK_G == 1:
            acc += tl.sum(p[:, :, None] * v.to(tl.float32)[None, :, :], axis=1)
        else:
            acc = dot_acc(p.to(v.dtype), v, acc, FP32_OPERANDS)
        m_i = m_new

    # An empty split (l_i == 0) leaves zeros and a log-sum-exp of -inf, which the merge weighs by zero.
    has_any = l_i > 0
    o = acc / tl.where(has_any, l_i, 1.0)[:, None]
    if WRITE_PARTIAL:
        row = (seq * num_q_heads + heads) * num_splits + split
        tl.store(part_out_ptr + row[:, None] * HEAD_DIM + d[None, :], o, mask=g_mask[:, None] & d_mask[None, :])
        lse = tl.where(has_any, m_i + tl.log2(tl.where(has_any, l_i, 1.0)), float("-inf"))
        tl.store(part_lse_ptr + row, lse, mask=g_mask)
    else:
        o_ptrs = out_ptr + seq * stride_o_b + heads[:, None] * stride_o_h + d[None, :]
        tl.store(o_ptrs, o.to(out_ptr.dtype.element_ty), mask=g_mask[:, None] & d_mask[None, :])


@triton.jit
def _merge_splits_kernel(
    part_out_ptr, part_lse_ptr, out_ptr, num_q_heads, num_splits, stride_o_b, stride_o_h,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_S: tl.constexpr,
):
    seq = tl.program_id(0).to(tl.int64)
    head = tl.program_id(1)
    row0 = (seq * num_q_heads + head) * num_splits
    s_offs = tl.arange(0, BLOCK_S)
    d = tl.arange(0, BLOCK_D)
    d_mask = d < HEAD_DIM

    # The first split of a sequence is never empty, so the maximum is finite.
    lse_max = tl.max(tl.load(part_lse_ptr + row0 + s_offs, mask=s_offs < num_splits, other=float("-inf")), axis=0)
    for s0 in range(BLOCK_S, num_splits, BLOCK_S):
        lse = tl.load(part_lse_ptr + row0 + s0 + s_offs, mask=s0 + s_offs < num_splits, other=float("-inf"))
        lse_max = tl.maximum(lse_max, tl.max(lse, axis=0))

    acc = tl.zeros([BLOCK_D], dtype=tl.float32)
    weight_sum = tl.zeros([BLOCK_S], dtype=tl.float32)
    for s0 in range(0, num_splits, BLOCK_S):
        s_mask = s0 + s_offs < num_splits
        lse = tl.load(part_lse_ptr + row0 + s0 + s_offs, mask=s_mask, other=float("-inf"))
        weight = tl.exp2(lse - lse_max)
        part = tl.load(part_out_ptr + (row0 + s0 + s_offs)[:, None] * HEAD_DIM + d[None, :],
                       mask=s_mask[:, None] & d_mask[None, :], other=0.0)
        acc += tl.sum(weight[:, None] * part, axis=0)
        weight_sum += weight
    o = acc / tl.sum(weight_sum, axis=0)
    tl.store(out_ptr + seq * stride_o_b + head * stride_o_h + d, o.to(out_ptr.dtype.element_ty), mask=d_mask)


def decode_attention_fwd(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    seq_lens: torch.Tensor,
    block_table: torch.Tensor | None,
    out: torch.Tensor,
    scale: float,
    config: AttentionConfig,
) -> torch.Tensor:
    """Launch decode attention on validated inputs; writes and returns `out` [B, Hq, D].

    Paged (block_table given): k_cache/v_cache [num_pages, page_size, Hkv, D]. Contiguous: [B, Hkv, L, D].
    Every tensor's last dimension must be contiguous.
    """
    batch, num_q_heads, head_dim = q.shape
    if block_table is not None:
        page_size, num_kv_heads = k_cache.shape[1], k_cache.shape[2]
        k_strides = (k_cache.stride(0), k_cache.stride(1), k_cache.stride(2))
        v_strides = (v_cache.stride(0), v_cache.stride(1), v_cache.stride(2))
        table, stride_table = block_table, block_table.stride(0)
    else:
        page_size, num_kv_heads = 0, k_cache.shape[1]
        k_strides = (k_cache.stride(0), k_cache.stride(2), k_cache.stride(1))
        v_strides = (v_cache.stride(0), v_cache.stride(2), v_cache.stride(1))
        table, stride_table = seq_lens, 0  # never read: a placeholder pointer
    group = num_q_heads // num_kv_heads
    block_g = group_tile(group)
    group_tiles = triton.cdiv(group, block_g)
    num_splits = config.num_splits
    partial = num_splits > 1
    if partial:
        part_out = torch.empty((batch, num_q_heads, num_splits, head_dim), dtype=torch.float32, device=q.device)
        part_lse = torch.empty((batch, num_q_heads, num_splits), dtype=torch.float32, device=q.device)
    else:
        part_out = part_lse = out  # never written: placeholder pointers
    grid = (batch, num_kv_heads * group_tiles, num_splits)
    _attend_split_kernel[grid](
        q, k_cache, v_cache, seq_lens, table, out, part_out, part_lse,
        scale * math.log2(math.e), num_q_heads, num_splits,
        q.stride(0), q.stride(1), *k_strides, *v_strides, stride_table, out.stride(0), out.stride(1),
        GROUP=group, BLOCK_G=block_g, GROUP_TILES=group_tiles, HEAD_DIM=head_dim, BLOCK_D=padded_head_dim(head_dim), BLOCK_N=config.block_n,
        PAGE_SIZE=page_size, WRITE_PARTIAL=partial, FP32_OPERANDS=interpreting(),
        num_warps=config.num_warps, num_stages=config.num_stages,
    )
    if partial:
        block_s = min(triton.next_power_of_2(num_splits), 32)
        _merge_splits_kernel[(batch, num_q_heads)](
            part_out, part_lse, out, num_q_heads, num_splits, out.stride(0), out.stride(1),
            HEAD_DIM=head_dim, BLOCK_D=padded_head_dim(head_dim), BLOCK_S=block_s,
            num_warps=4 if head_dim <= 128 else 8,
        )
    return out
