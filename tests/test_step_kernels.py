"""The decode step's small fused kernels (add + norm, rotary + cache write, gated activation) against float64
references, outputs poisoned with NaN first. Sizes are no powers of two.

Tolerances, relative error ||out - ref|| / ||ref||: fp32 1e-5, fp16 2e-3, bf16 1e-2 (one rounding to the dtype);
moved values (v into the cache, unrotated q) must be bit-exact. On the CPU through Triton's interpreter.
"""

from __future__ import annotations

import math

import pytest
import torch

from gpuprof.bench import relative_error
from gpuprof.kernels.activation import ACTIVATIONS, gated_activation, gated_activation_reference
from gpuprof.kernels.norm import add_norm, add_norm_reference
from gpuprof.kernels.rotary import rotary_cache_write, rotary_reference

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
TOLERANCE = {"fp32": 1e-5, "fp16": 2e-3, "bf16": 1e-2}


def randn(*size, dtype, device, seed):
    return torch.randn(*size, generator=torch.Generator().manual_seed(seed)).to(device=device, dtype=dtype)


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("batch, hidden", [(1, 40), (3, 96), (5, 200)])
@pytest.mark.parametrize("layer_norm", [False, True])
@pytest.mark.parametrize("with_delta", [False, True])
def test_add_norm(device, dtype, batch, hidden, layer_norm, with_delta):
    dt = DTYPES[dtype]
    x = randn(batch, hidden, dtype=dt, device=device, seed=1)
    delta = randn(batch, hidden, dtype=dt, device=device, seed=2) if with_delta else None
    weight = randn(hidden, dtype=torch.float32, device=device, seed=3).mul_(0.1).add_(1.0)
    bias = randn(hidden, dtype=torch.float32, device=device, seed=4) if layer_norm else None
    x_ref, y_ref = add_norm_reference(x, delta, weight, bias, 1e-5)
    out = torch.full_like(x, math.nan)
    add_norm(x, delta, weight, bias, 1e-5, out=out)
    assert relative_error(x, x_ref) <= TOLERANCE[dtype], "the residual stream was not updated in place"
    assert relative_error(out, y_ref) <= TOLERANCE[dtype]


def test_add_norm_strided_rows(device):
    """Rows of a wider buffer: the row stride is honoured, the columns beyond are left alone."""
    wide = randn(4, 64, dtype=torch.float32, device=device, seed=5)
    x = wide[:, :48]
    delta = randn(4, 48, dtype=torch.float32, device=device, seed=6)
    weight = torch.ones(48, device=device)
    before = wide[:, 48:].clone()
    x_ref, y_ref = add_norm_reference(x.clone(), delta, weight, None, 1e-5)
    out = add_norm(x, delta, weight, None, 1e-5)
    assert relative_error(out, y_ref) <= 1e-5 and torch.equal(wide[:, 48:], before)


def _paged_cache(pages, page_size, kv_heads, head_dim, dtype, device):
    k = torch.full((pages, page_size, kv_heads, head_dim), math.nan, dtype=dtype, device=device)
    return k, k.clone()


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("heads, kv_heads, head_dim", [(4, 4, 16), (6, 2, 40), (8, 1, 64)])
@pytest.mark.parametrize("rotary", [True, False])
def test_rotary_cache_write(device, dtype, heads, kv_heads, head_dim, rotary):
    dt, batch, page_size = DTYPES[dtype], 3, 16
    qkv = randn(batch, (heads + 2 * kv_heads) * head_dim, dtype=dt, device=device, seed=7)
    inv_freq = (10000.0 ** -(torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)).to(device)
    positions = torch.tensor([0, 37, 1000], device=device)
    pages = torch.tensor([5, 0, 2], device=device, dtype=torch.int32)
    slots = positions % page_size
    k_cache, v_cache = _paged_cache(6, page_size, kv_heads, head_dim, dt, device)
    q = rotary_cache_write(qkv, heads, kv_heads, inv_freq if rotary else None, positions, pages, slots,
                           k_cache, v_cache)
    q_in, k_in, v_in = qkv.view(batch, heads + 2 * kv_heads, head_dim).split([heads, kv_heads, kv_heads], dim=1)
    k_out, v_out = k_cache[pages.long(), slots], v_cache[pages.long(), slots]
    assert torch.equal(v_out, v_in), "v must be copied as it is"
    if rotary:
        assert relative_error(q, rotary_reference(q_in, inv_freq, positions)) <= TOLERANCE[dtype]
        assert relative_error(k_out, rotary_reference(k_in, inv_freq, positions)) <= TOLERANCE[dtype]
    else:
        assert torch.equal(q, q_in) and torch.equal(k_out, k_in)
    written = torch.zeros(6, page_size, dtype=torch.bool)
    written[pages.long().cpu(), slots.cpu()] = True
    assert k_cache[~written.to(device)].isnan().all(), "a slot other than the given ones was written"


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("act", ACTIVATIONS)
@pytest.mark.parametrize("batch, inner", [(1, 72), (4, 1500)])
def test_gated_activation(device, dtype, act, batch, inner):
    gate_up = randn(batch, 2 * inner, dtype=DTYPES[dtype], device=device, seed=8)
    out = torch.full((batch, inner), math.nan, dtype=gate_up.dtype, device=device)
    gated_activation(gate_up, act, out=out)
    assert relative_error(out, gated_activation_reference(gate_up, act)) <= TOLERANCE[dtype]
