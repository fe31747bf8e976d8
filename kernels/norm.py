"""Residual add fused with the next norm (RMSNorm or LayerNorm): one launch where torch takes about eight.

A decode step's norms see [B, hidden] rows, a few kilobytes each: their time is launch and latency, not bytes, so
what matters is the number of kernels. `add_norm` adds the sublayer's output into the residual stream in place
(rounded to the stream's dtype, as an unfused `x + delta` would be), then normalises the updated row in float32.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

MAX_HIDDEN = 65536  # one row per program, held in registers


@triton.jit
def _add_norm_kernel(
    x_ptr, delta_ptr, weight_ptr, bias_ptr, out_ptr,
    hidden, eps, stride_x, stride_delta, stride_out,
    HAS_DELTA: tl.constexpr, LAYER_NORM: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mask = cols < hidden
    x = tl.load(x_ptr + row * stride_x + cols, mask=mask, other=0.0)
    if HAS_DELTA:
        x = (x.to(tl.float32) + tl.load(delta_ptr + row * stride_delta + cols, mask=mask, other=0.0).to(tl.float32))
        x = x.to(x_ptr.dtype.element_ty)
        tl.store(x_ptr + row * stride_x + cols, x, mask=mask)
    x = x.to(tl.float32)
    weight = tl.load(weight_ptr + cols, mask=mask, other=0.0)
    if LAYER_NORM:
        mean = tl.sum(x, axis=0) / hidden
        centred = tl.where(mask, x - mean, 0.0)
        y = centred * tl.rsqrt(tl.sum(centred * centred, axis=0) / hidden + eps) * weight
        y += tl.load(bias_ptr + cols, mask=mask, other=0.0)
    else:
        y = x * tl.rsqrt(tl.sum(x * x, axis=0) / hidden + eps) * weight
    tl.store(out_ptr + row * stride_out + cols, y.to(out_ptr.dtype.element_ty), mask=mask)


def add_norm(
    x: torch.Tensor,
    delta: torch.Tensor | None,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    eps: float,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """x += delta (in place, when given); returns norm(x) in x's dtype: LayerNorm with a bias, else RMSNorm.

    x, delta, out: [B, hidden] with contiguous rows; weight, bias: float32 [hidden].
    """
    batch, hidden = x.shape
    assert hidden <= MAX_HIDDEN and x.stride(1) == 1, "add_norm: rows must be contiguous and at most 65536 wide"
    assert weight.shape == (hidden,) and (bias is None or bias.shape == (hidden,)), "add_norm: weight is [hidden]"
    if delta is not None:
        assert delta.shape == x.shape and delta.stride(1) == 1, "add_norm: delta must be like x"
    if out is None:
        out = torch.empty_like(x)
    block = triton.next_power_of_2(hidden)
    _add_norm_kernel[(batch,)](
        x, delta if delta is not None else x, weight, bias if bias is not None else weight, out,
        hidden, eps, x.stride(0), delta.stride(0) if delta is not None else 0, out.stride(0),
        HAS_DELTA=delta is not None, LAYER_NORM=bias is not None, BLOCK=block, num_warps=min(16, max(1, block // 512)),
    )  # fmt: skip
    return out


def add_norm_reference(
    x: torch.Tensor, delta: torch.Tensor | None, weight: torch.Tensor, bias: torch.Tensor | None, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(updated residual in x's dtype, float64 norm of it): what add_norm writes, in plain torch."""
    if delta is not None:
        x = (x.double() + delta.double()).to(x.dtype)
    xd = x.double()
    if bias is not None:
        centred = xd - xd.mean(dim=-1, keepdim=True)
        y = centred * torch.rsqrt(centred.pow(2).mean(dim=-1, keepdim=True) + eps) * weight.double() + bias.double()
    else:
        y = xd * torch.rsqrt(xd.pow(2).mean(dim=-1, keepdim=True) + eps) * weight.double()
    return x, y
