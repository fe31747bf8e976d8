"""The gated MLP's middle, act(gate) * up, in one launch (torch takes five: two casts, the activation, the
product, the cast back). Computed in float32, stored in the input's dtype.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

ACTIVATIONS = ("silu", "gelu", "relu")
_BLOCK = 1024


@triton.jit
def _gated_activation_kernel(gate_up_ptr, out_ptr, inner, stride_in, stride_out, ACT: tl.constexpr,
                             BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < inner
    gate = tl.load(gate_up_ptr + row * stride_in + cols, mask=mask, other=0.0).to(tl.float32)
    up = tl.load(gate_up_ptr + row * stride_in + inner + cols, mask=mask, other=0.0).to(tl.float32)
    if ACT == "silu":
        gate = gate / (1.0 + tl.exp(-gate))
    elif ACT == "gelu":  # the exact (erf) form, as torch's F.gelu
        gate = 0.5 * gate * (1.0 + tl.erf(gate * 0.7071067811865476))
    else:
        gate = tl.maximum(gate, 0.0)
    tl.store(out_ptr + row * stride_out + cols, (gate * up).to(out_ptr.dtype.element_ty), mask=mask)


def gated_activation(gate_up: torch.Tensor, act: str, out: torch.Tensor | None = None) -> torch.Tensor:
    """act(gate) * up for gate_up [B, 2 inner] (gate columns first, then up); returns [B, inner]."""
    assert act in ACTIVATIONS, f"gated_activation: act must be one of {ACTIVATIONS}"
    batch, width = gate_up.shape
    assert width % 2 == 0 and gate_up.stride(1) == 1, "gated_activation: gate_up must be [B, 2 inner], rows contiguous"
    inner = width // 2
    if out is None:
        out = torch.empty(batch, inner, dtype=gate_up.dtype, device=gate_up.device)
    assert out.shape == (batch, inner) and out.stride(1) == 1
    _gated_activation_kernel[(batch, triton.cdiv(inner, _BLOCK))](
        gate_up, out, inner, gate_up.stride(0), out.stride(0), ACT=act, BLOCK=_BLOCK, num_warps=4
    )
    return out


def gated_activation_reference(gate_up: torch.Tensor, act: str) -> torch.Tensor:
    gate, up = gate_up.double().chunk(2, dim=-1)
    fn = {"silu": torch.nn.functional.silu, "gelu": torch.nn.functional.gelu, "relu": torch.relu}[act]
    return fn(gate) * up
