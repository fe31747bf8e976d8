"""From the QKV projection to attention's inputs in one launch: rotary embedding of q and k, k and v into the cache.

Unfused, this is some twenty small torch kernels per layer (float casts, the two rotations, a concatenation, index
math for the page slots, two scatters, a copy of q): at decode batch sizes each costs a launch and microseconds of
latency, while the bytes are a few kilobytes. One program per (sequence, head) reads that head's row of the QKV
output once. Rotation pairs are (i, i + head_dim / 2), the convention of Llama in Hugging Face.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _rotary_cache_kernel(
    qkv_ptr, inv_freq_ptr, positions_ptr, pages_ptr, slots_ptr, q_out_ptr, k_cache_ptr, v_cache_ptr,
    stride_qkv, stride_page, stride_slot, stride_head,
    HEADS: tl.constexpr, KV_HEADS: tl.constexpr, HEAD_DIM: tl.constexpr,
    ROTARY: tl.constexpr, HALF_BLOCK: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    seq = tl.program_id(0).to(tl.int64)
    head = tl.program_id(1)  # 0 .. HEADS-1: q heads; then KV_HEADS k heads (each also moves its v head)
    row = qkv_ptr + seq * stride_qkv
    if head < HEADS:
        src = row + head * HEAD_DIM
        dst = q_out_ptr + (seq * HEADS + head) * HEAD_DIM
    else:
        kv = head - HEADS
        src = row + (HEADS + kv) * HEAD_DIM
        slot = tl.load(pages_ptr + seq).to(tl.int64) * stride_page + tl.load(slots_ptr + seq).to(tl.int64) * stride_slot
        dst = k_cache_ptr + slot + kv * stride_head
        # v is not rotated: copy it into the same slot of the v cache.
        cols = tl.arange(0, BLOCK)
        v = tl.load(row + (HEADS + KV_HEADS + kv) * HEAD_DIM + cols, mask=cols < HEAD_DIM)
        tl.store(v_cache_ptr + slot + kv * stride_head + cols, v, mask=cols < HEAD_DIM)
    if ROTARY:
        half = tl.arange(0, HALF_BLOCK)
        mask = half < HEAD_DIM // 2
        x1 = tl.load(src + half, mask=mask, other=0.0).to(tl.float32)
        x2 = tl.load(src + HEAD_DIM // 2 + half, mask=mask, other=0.0).to(tl.float32)
        angle = tl.load(positions_ptr + seq).to(tl.float32) * tl.load(inv_freq_ptr + half, mask=mask, other=0.0)
        cos, sin = tl.cos(angle), tl.sin(angle)
        tl.store(dst + half, (x1 * cos - x2 * sin).to(q_out_ptr.dtype.element_ty), mask=mask)
        tl.store(dst + HEAD_DIM // 2 + half, (x2 * cos + x1 * sin).to(q_out_ptr.dtype.element_ty), mask=mask)
    else:
        cols = tl.arange(0, BLOCK)
        tl.store(dst + cols, tl.load(src + cols, mask=cols < HEAD_DIM), mask=cols < HEAD_DIM)


def rotary_cache_write(
    qkv: torch.Tensor,
    heads: int,
    kv_heads: int,
    inv_freq: torch.Tensor | None,
    positions: torch.Tensor,
    pages: torch.Tensor,
    slots: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    q_out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Returns q [B, heads, head_dim] (rotated); writes k (rotated) and v at (pages[b], slots[b]) of the caches.

    qkv [B, (heads + 2 kv_heads) head_dim] with contiguous rows: q heads, then k heads, then v heads. inv_freq:
    float32 [head_dim / 2], the rotation frequencies, or None for no rotary embedding. positions, pages, slots [B]
    (integers). Caches [num_pages, page_size, kv_heads, head_dim] with contiguous rows.
    """
    batch = qkv.shape[0]
    head_dim = k_cache.shape[-1]
    assert qkv.shape[1] == (heads + 2 * kv_heads) * head_dim and qkv.stride(1) == 1, "rotary: qkv is [B, (H+2Hkv)D]"
    assert k_cache.shape == v_cache.shape and k_cache.stride() == v_cache.stride() and k_cache.stride(-1) == 1
    assert k_cache.shape[2] == kv_heads and positions.shape == pages.shape == slots.shape == (batch,)
    if inv_freq is not None:
        assert head_dim % 2 == 0 and inv_freq.shape == (head_dim // 2,) and inv_freq.dtype == torch.float32
    if q_out is None:
        q_out = torch.empty(batch, heads, head_dim, dtype=qkv.dtype, device=qkv.device)
    assert q_out.shape == (batch, heads, head_dim) and q_out.is_contiguous()
    _rotary_cache_kernel[(batch, heads + kv_heads)](
        qkv, inv_freq if inv_freq is not None else qkv, positions, pages, slots, q_out, k_cache, v_cache,
        qkv.stride(0), k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        HEADS=heads, KV_HEADS=kv_heads, HEAD_DIM=head_dim, ROTARY=inv_freq is not None,
        HALF_BLOCK=triton.next_power_of_2(max(1, head_dim // 2)), BLOCK=triton.next_power_of_2(head_dim), num_warps=1,
    )  # fmt: skip
    return q_out


def rotary_reference(x: torch.Tensor, inv_freq: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """x [B, heads, head_dim] rotated by positions [B], in float64."""
    angle = positions.double()[:, None, None] * inv_freq.double()
    x1, x2 = x.double().chunk(2, dim=-1)
    return torch.cat((x1 * angle.cos() - x2 * angle.sin(), x2 * angle.cos() + x1 * angle.sin()), dim=-1)
