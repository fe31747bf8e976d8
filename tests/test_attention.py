"""Decode attention: the Triton kernels against a float32 reference, the validation sentences, the split plan,
the work counts, the Op; on a GPU, real shapes and the bandwidth targets.

Tolerances, relative error ||out_b - ref_b|| / ||ref_b|| of the worst sequence b against the float32 reference:
bf16 1e-2, fp16 5e-3 (one norm over the batch would let the one-token sequence, whose output is a single V row
with a large norm, hide errors elsewhere). On the CPU the kernels run through Triton's interpreter at tiny shapes
(conftest sets TRITON_INTERPRET=1), and impl "cuda" through the g++ emulator.
"""

from __future__ import annotations

import importlib.util
import math

import numpy as np

import pytest
import torch

from gpuprof.bench import measure_point, relative_error
from gpuprof.errors import GpuprofError, Unsupported
from gpuprof.harness import TimingOptions
from gpuprof.ops import get_op
from gpuprof.ops.backends import unavailable
from gpuprof.ops.attention import (MAX_SPLITS, attention_reference, attention_work, check_attention_inputs,
                                   contiguous_cache, decode_attention, plan_splits)

TOLERANCE = {torch.bfloat16: 1e-2, torch.float16: 5e-3}
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def make_case(batch, hq, hkv, head_dim, page_size, dtype, *, max_len=45, device="cpu", seed=0):
    """Random inputs with lengths from 1 to the capacity (both ends included) and, when paged, a shuffled block
    table over more pages than are in use. Capacity: max_len tokens contiguous, or whole pages holding max_len
    (the default, 45, is no multiple of any block size)."""
    g = torch.Generator().manual_seed(seed)
    pages_per_seq = -(-max_len // page_size) if page_size else 0
    capacity = pages_per_seq * page_size if page_size else max_len
    lens = torch.randint(1, capacity + 1, (batch,), generator=g, dtype=torch.int32)
    lens[0], lens[-1] = 1, capacity
    q = torch.randn(batch, hq, head_dim, generator=g).to(dtype)
    if page_size:
        num_pages = batch * pages_per_seq + 5
        k = torch.randn(num_pages, page_size, hkv, head_dim, generator=g).to(dtype)
        v = torch.randn(num_pages, page_size, hkv, head_dim, generator=g).to(dtype)
        table = torch.randperm(num_pages, generator=g)[: batch * pages_per_seq].reshape(batch, -1).to(torch.int32)
    else:
        k = torch.randn(batch, hkv, capacity, head_dim, generator=g).to(dtype)
        v = torch.randn(batch, hkv, capacity, head_dim, generator=g).to(dtype)
        table = None
    tensors = {"q": q, "k_cache": k, "v_cache": v, "seq_lens": lens, "block_table": table}
    return {name: t.to(device) if t is not None else None for name, t in tensors.items()}


def sequence_error(out, ref):
    """The relative error of the worst sequence."""
    return relative_error(out, ref, per_row=True)


def run_and_check(case, **kwargs):
    """Call decode_attention on a NaN-poisoned output and assert it matches the float32 reference."""
    out = torch.full_like(case["q"], math.nan)
    result = decode_attention(**case, out=out, **kwargs)
    assert result is out
    ref = attention_reference(**case, scale=kwargs.get("scale"))
    err = sequence_error(out, ref)
    assert err <= TOLERANCE[case["q"].dtype], f"relative error {err:.3g}"


def skip_unless_runs(impl, device):
    reason = unavailable("attention", impl, device)
    if reason:
        pytest.skip(reason)


# head_dim, hq, hkv, page_size (0: contiguous), dtype, num_splits: every head_dim, group 1 (MHA), 4, 8 and Hq
# (MQA), pages of 16 and 32, both dtypes, one and several splits (more splits than a short sequence has blocks).
CASES = [
    (64, 4, 4, 16, "bf16", 1),
    (64, 4, 4, 0, "fp16", 3),
    (64, 16, 2, 32, "bf16", 4),
    (64, 8, 1, 0, "fp16", 5),
    (128, 8, 2, 16, "bf16", 2),
    (128, 8, 2, 32, "fp16", 1),
    (128, 16, 2, 0, "bf16", 1),
    (128, 4, 4, 32, "bf16", 3),
    (128, 8, 1, 16, "fp16", 2),
    (64, 12, 2, 16, "fp16", 2),  # group 6: no power of two
    (256, 8, 1, 16, "bf16", 3),
    (256, 4, 4, 0, "fp16", 2),
    (256, 16, 2, 32, "fp16", 1),
]


@pytest.mark.parametrize("head_dim, hq, hkv, page_size, dtype, num_splits", CASES)
def test_matches_reference(device, head_dim, hq, hkv, page_size, dtype, num_splits):
    case = make_case(3, hq, hkv, head_dim, page_size, DTYPES[dtype], device=device, seed=head_dim + hq + page_size)
    run_and_check(case, num_splits=num_splits)


@pytest.mark.parametrize("page_size", [16, 0])
def test_planned_splits_and_custom_scale(device, page_size):
    case = make_case(2, 8, 2, 64, page_size, torch.bfloat16, max_len=300, device=device)
    run_and_check(case, scale=0.3)


def test_mqa_with_more_heads_than_one_program_holds(device):
    """128 query heads on one KV head: the group is tiled over two programs."""
    case = make_case(1, 128, 1, 64, 16, torch.bfloat16, max_len=20, device=device)
    run_and_check(case, num_splits=2)


@pytest.mark.parametrize("impl", ["triton", "cuda"])
def test_strided_query_table_and_output(device, impl):
    """q as a slice of a packed qkv tensor, the block table as a slice of a wider one, out as a slice of a wider
    buffer: only the last dim is contiguous, which every implementation accepts."""
    skip_unless_runs(impl, device)
    case = make_case(2, 8, 2, 64, 16, torch.float16, device=device)
    packed = torch.randn(2, 12, 64, device=device).to(torch.float16)
    packed[:, :8] = case["q"]
    case["q"] = packed[:, :8]
    table = torch.full((2, 5), -1, dtype=torch.int32, device=device)
    table[:, :3] = case["block_table"]
    case["block_table"] = table[:, :3]
    out = torch.full((2, 8, 2, 64), math.nan, dtype=torch.float16, device=device)[:, :, 0]
    assert decode_attention(**case, out=out, num_splits=2, impl=impl) is out
    assert sequence_error(out, attention_reference(**case)) <= 5e-3


@pytest.mark.parametrize("impl", ["triton", "cuda"])
def test_k_and_v_caches_with_different_strides(device, impl):
    """Triton takes each cache's own strides; the CUDA kernel has one set for both and says so."""
    skip_unless_runs(impl, device)
    case = make_case(2, 4, 2, 64, 0, torch.float16, device=device)
    wide = torch.zeros(2, 2, 60, 64, dtype=torch.float16, device=device)
    wide[:, :, :45] = case["v_cache"]
    case["v_cache"] = wide[:, :, :45]
    if impl == "cuda":
        with pytest.raises(Unsupported, match="k_cache and v_cache laid out alike"):
            decode_attention(**case, impl=impl)
    else:
        assert sequence_error(decode_attention(**case, impl=impl), attention_reference(**case)) <= 5e-3


def test_allocates_output_when_none_given(device):
    case = make_case(2, 4, 2, 64, 16, torch.bfloat16, device=device)
    out = decode_attention(**case)
    assert out.shape == case["q"].shape and out.dtype == torch.bfloat16
    assert sequence_error(out, attention_reference(**case)) <= 1e-2


def test_reference_agrees_with_torch_sdpa():
    """The reference itself, against torch's math SDPA in float32 on full-length contiguous sequences."""
    case = make_case(2, 8, 2, 64, 0, torch.float32, seed=3)
    case["seq_lens"][:] = case["k_cache"].shape[2]
    ours = attention_reference(**case)
    with torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.MATH):
        sdpa = torch.nn.functional.scaled_dot_product_attention(
            case["q"].unsqueeze(2), case["k_cache"], case["v_cache"], enable_gqa=True).squeeze(2)
    assert relative_error(ours, sdpa) <= 1e-5


def test_gathered_contiguous_cache_holds_the_same_tokens():
    case = make_case(3, 4, 2, 64, 16, torch.float32)
    case["seq_lens"][:] = 48
    k, v = contiguous_cache(dict(case))
    contiguous = dict(case, k_cache=k, v_cache=v, block_table=None)
    assert torch.equal(attention_reference(**case), attention_reference(**contiguous))


# ---- validation: each problem gets its own sentence ----

def _valid():
    return make_case(2, 8, 2, 64, 16, torch.bfloat16)


BAD_INPUTS = [
    ("q as a list", lambda c: c.update(q=[1.0]), "q must be a torch.Tensor, not list."),
    ("q 2-D", lambda c: c.update(q=c["q"][0]), "q must have shape [batch, q_heads, head_dim]"),
    ("q fp32", lambda c: c.update(q=c["q"].float()), "q must be torch.float16 or torch.bfloat16, not torch.float32."),
    ("k on meta", lambda c: c.update(k_cache=c["k_cache"].to("meta")), "k_cache is on meta but q is on cpu"),
    ("k fp16", lambda c: c.update(k_cache=c["k_cache"].half()), "k_cache must have q's dtype torch.bfloat16"),
    ("k 3-D", lambda c: c.update(k_cache=c["k_cache"][0]), "with a block_table, k_cache must have shape"),
    ("v shape", lambda c: c.update(v_cache=c["v_cache"][:-1]), "v_cache must have k_cache's shape"),
    ("head_dim", lambda c: c.update(q=c["q"][..., :32]), "the cache's head_dim 64 differs from q's 32."),
    ("heads", lambda c: c.update(q=c["q"][:, :7]), "q's 7 heads are not a multiple of the cache's 2 KV heads."),
    ("lens int64", lambda c: c.update(seq_lens=c["seq_lens"].long()), "seq_lens must be torch.int32 of shape (2,)"),
    ("lens shape", lambda c: c.update(seq_lens=c["seq_lens"][:1]), "seq_lens must be torch.int32 of shape (2,)"),
    ("table int64", lambda c: c.update(block_table=c["block_table"].long()), "block_table must be torch.int32"),
    ("table rows", lambda c: c.update(block_table=c["block_table"][:1]), "block_table must be torch.int32"),
    ("q strided", lambda c: c.update(q=c["q"].transpose(1, 2).contiguous().transpose(1, 2)),
     "q's last dimension must be contiguous (stride 1, not 8); pass q.contiguous()."),
    ("table strided", lambda c: c.update(block_table=c["block_table"].T.contiguous().T),
     "block_table's last dimension must be contiguous (stride 1, not 2)"),
    ("lens strided", lambda c: c.update(seq_lens=c["seq_lens"].repeat_interleave(2)[::2]),
     "seq_lens's last dimension must be contiguous (stride 1, not 2)"),
    ("length 0", lambda c: c["seq_lens"].__setitem__(1, 0),
     "seq_lens must lie between 1 and the cache capacity 48; sequence 1 has 0."),
    ("too long", lambda c: c["seq_lens"].__setitem__(0, 49),
     "seq_lens must lie between 1 and the cache capacity 48; sequence 0 has 49."),
    ("bad page", lambda c: c["block_table"].__setitem__((1, 0), 11),
     "block_table must hold page numbers from 0 to 10 for the pages in use; sequence 1 has 11 at position 0."),
]


@pytest.mark.parametrize("what, mutate, message", BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_bad_input_is_named(what, mutate, message):
    case = _valid()
    mutate(case)
    with pytest.raises(GpuprofError) as e:
        decode_attention(**case)
    assert message in str(e.value)


def test_contiguous_cache_must_match_batch():
    case = make_case(2, 8, 2, 64, 0, torch.bfloat16)
    case["q"] = case["q"][:1]
    case["seq_lens"] = case["seq_lens"][:1]
    with pytest.raises(GpuprofError, match="k_cache holds 2 sequences but q has 1."):
        decode_attention(**case)


@pytest.mark.parametrize("kwargs, message", [
    ({"scale": math.nan}, "scale must be a finite real number, not nan."),
    ({"scale": True}, "scale must be a finite real number, not True."),
    ({"scale": "0.1"}, "scale must be a finite real number, not '0.1'."),
    ({"scale": torch.tensor([0.1, 0.2])}, "scale must be a finite real number"),
    ({"num_splits": 0}, f"num_splits must be a whole number from 1 to {MAX_SPLITS}, not 0."),
    ({"num_splits": True}, f"num_splits must be a whole number from 1 to {MAX_SPLITS}, not True."),
    ({"out": torch.empty(2, 8, 32, dtype=torch.bfloat16)}, "out must be torch.bfloat16 of q's shape (2, 8, 64)"),
    ({"impl": "cutlass"}, "decode_attention has no implementation 'cutlass'; valid: triton, cuda."),
])
def test_bad_argument_is_named(kwargs, message):
    with pytest.raises(GpuprofError) as e:
        decode_attention(**_valid(), **kwargs)
    assert message in str(e.value)


@pytest.mark.parametrize("scale", [np.float64(0.125), np.float32(0.125), torch.tensor(0.125), 0.125])
def test_scale_takes_any_real_number(device, scale):
    case = make_case(2, 4, 2, 64, 16, torch.bfloat16, device=device)
    out = decode_attention(**case, scale=scale)
    assert sequence_error(out, attention_reference(**case, scale=0.125)) <= 1e-2


OVERLAPPING_OUTPUTS = [
    ("q", lambda c: c["q"]),
    ("k_cache", lambda c: c["k_cache"].view(-1)[: c["q"].numel()].view(c["q"].shape)),
    ("v_cache", lambda c: c["v_cache"].view(-1)[64:][: c["q"].numel()].view(c["q"].shape)),
]


@pytest.mark.parametrize("impl", ["triton", "cuda"])
@pytest.mark.parametrize("name, alias", OVERLAPPING_OUTPUTS, ids=[o[0] for o in OVERLAPPING_OUTPUTS])
def test_out_overlapping_an_input_is_rejected(name, alias, impl):
    case = _valid()
    with pytest.raises(GpuprofError, match=f"out must not overlap {name} in memory"):
        decode_attention(**case, out=alias(case), impl=impl)


def test_unused_pages_are_not_checked():
    case = _valid()
    case["seq_lens"][:] = 16  # one page in use per sequence
    case["block_table"][:, 1:] = -1
    check_attention_inputs(**case)


def test_value_checks_can_be_skipped():
    case = _valid()
    case["seq_lens"][0] = 0
    check_attention_inputs(**case, check_values=False)


@pytest.mark.parametrize("head_dim, hq, hkv, page_size", [(80, 8, 2, 16), (96, 4, 4, 0), (8, 8, 1, 16)])
def test_head_dims_that_are_no_power_of_two(device, head_dim, hq, hkv, page_size):
    """Phi-2's 80, 96, and a tiny 8: padded to a power of two inside the kernel, the padding masked off."""
    case = make_case(2, hq, hkv, head_dim, page_size, torch.bfloat16, device=device, seed=head_dim)
    run_and_check(case, num_splits=2)


def test_head_dim_beyond_256_is_unsupported_for_triton():
    case = make_case(1, 2, 2, 512, 16, torch.bfloat16)
    with pytest.raises(Unsupported, match="head_dim up to 256, not 512"):
        decode_attention(**case)


@pytest.mark.skipif(importlib.util.find_spec("gpuprof.cuda") is not None, reason="gpuprof.cuda is installed here")
def test_cuda_impl_without_its_module_says_so():
    with pytest.raises(GpuprofError, match="impl 'cuda' needs gpuprof.cuda.attention"):
        decode_attention(**_valid(), impl="cuda")


# ---- the split plan and the work counts ----

@pytest.mark.parametrize("batch, hkv, max_len, sms, splits", [
    (64, 8, 4096, 132, 1),  # 512 programs already fill 132 SMs twice
    (16, 8, 4096, 132, 3),  # 128 programs -> 3 splits -> 384
    (1, 8, 4096, 132, 32),  # limited by the 128-token minimum per split
    (1, 8, 32768, 132, 33),  # limited by the programs wanted: 2 x 132 / 8
    (1, 8, 100, 132, 1),  # too short to split
    (1, 1, 10**6, 10**4, MAX_SPLITS),
])
def test_plan_splits(batch, hkv, max_len, sms, splits):
    assert plan_splits(batch, hkv, max_len, sms) == splits


def test_attention_work_counts():
    w = attention_work(batch=2, ctx=100, hq=8, hkv=2, head_dim=64, dtype_bytes=2)
    assert w.bytes == 2 * (2 * 2 * 8 * 64 + 2 * 2 * 100 * 2 * 64)
    assert w.flops == 4 * 2 * 8 * 100 * 64


# ---- the Op that gpuprof bench uses ----

def test_op_shape_defaults_and_errors():
    op = get_op("attention")
    assert op.shape() == {"batch": 1, "ctx": 4096, "hq": 32, "hkv": 8, "head_dim": 128, "page_size": 16}
    assert op.shape(page_size=0)["page_size"] == 0
    with pytest.raises(GpuprofError, match="hq 30 is not a multiple of hkv 8"):
        op.shape(hq=30)
    with pytest.raises(GpuprofError, match="attention's ctx must be at least 1"):
        op.shape(ctx=0)


def test_op_input_bytes_count_the_whole_pages():
    op = get_op("attention")
    paged = op.shape(batch=2, ctx=20, hq=4, hkv=2, head_dim=8, page_size=16)
    assert op.input_bytes(paged, "bf16") == 2 * (2 * 2 * 32 * 2 * 8 + 2 * 2 * 4 * 8) + 4 * 2 * 3
    assert op.input_bytes(dict(paged, page_size=0), "bf16") == 2 * (2 * 2 * 20 * 2 * 8 + 2 * 2 * 4 * 8) + 4 * 2


QUICK = TimingOptions(warmup_ms=0, max_time_s=0.01, min_reps=2)
SMALL = {"batch": 2, "ctx": 40, "hq": 8, "hkv": 2, "head_dim": 64}


@pytest.mark.interpreter
@pytest.mark.parametrize("impl, page_size", [("triton", 16), ("triton", 0), ("torch-sdpa-math", 16)])
def test_op_points_are_checked_and_timed_on_the_cpu(impl, page_size):
    shape = get_op("attention").shape(**SMALL, page_size=page_size)
    point = measure_point(get_op("attention"), impl, shape, "bf16", device="cpu", options=QUICK)
    assert point["status"] == "ok", point["error"]
    assert point["max_rel_err"] <= 1e-2 and point["bytes"] == attention_work(2, 40, 8, 2, 64, 2).bytes


@pytest.mark.interpreter
def test_op_reports_fp32_as_unsupported_for_triton():
    shape = get_op("attention").shape(**SMALL)
    point = measure_point(get_op("attention"), "triton", shape, "fp32", device="cpu", options=QUICK)
    assert point["status"] == "unsupported" and "float16 and bfloat16" in point["error"]


# ---- on a GPU: real shapes, every configuration tuning may pick, and the performance targets ----

@pytest.mark.gpu
@pytest.mark.parametrize("batch, max_len, page_size", [(1, 32768, 16), (8, 4096, 16), (64, 1000, 32), (16, 3000, 0)])
def test_gpu_every_candidate_config_matches_reference(batch, max_len, page_size):
    from gpuprof.kernels.decode_attention import decode_attention_fwd
    from gpuprof.ops.attention import _candidates
    from gpuprof.ops.tuning import sm_count

    case = make_case(batch, 32, 8, 128, page_size, torch.bfloat16, max_len=max_len, device="cuda")
    shape = check_attention_inputs(**case)
    ref = attention_reference(**case)
    for config in _candidates(shape, None, sm_count("cuda")):
        out = torch.full_like(case["q"], math.nan)
        decode_attention_fwd(**case, out=out, scale=1 / math.sqrt(128), config=config)
        assert sequence_error(out, ref) <= 1e-2, config


@pytest.mark.gpu
@pytest.mark.parametrize("head_dim, hq, hkv", [(64, 32, 32), (80, 32, 32), (128, 32, 8), (128, 32, 4), (256, 16, 1)])
def test_gpu_real_shapes_match_reference(head_dim, hq, hkv):
    case = make_case(16, hq, hkv, head_dim, 16, torch.bfloat16, max_len=4000, device="cuda", seed=1)
    run_and_check(case)


# The standard set: Hq 32, Hkv 8, head_dim 128, bf16. (batch, ctx).
STANDARD = [(1, 4096), (1, 8192), (1, 16384), (1, 32768), (8, 4096), (8, 8192),
            (64, 2048), (64, 4096), (64, 8192), (256, 2048), (256, 4096), (256, 8192)]
SDPA = ("torch-sdpa-flash", "torch-sdpa-efficient", "torch-sdpa-math")


@pytest.mark.gpu
@pytest.mark.parametrize("batch, ctx", STANDARD)
@pytest.mark.parametrize("page_size", [16, 0])
def test_gpu_meets_the_targets(batch, ctx, page_size):
    """>= best SDPA backend everywhere, >= 2x at batch 1, >= 90% of the copy bandwidth from 256 MiB of KV up."""
    from gpu_ceilings import copy_gbps, timed

    shape = get_op("attention").shape(batch=batch, ctx=ctx, page_size=page_size)
    ours = timed("attention", "triton", shape)
    assert ours["status"] == "ok", ours["error"]
    sdpa = [p for p in (timed("attention", impl, shape) for impl in SDPA) if p["status"] == "ok"]
    assert sdpa, "no SDPA backend ran"
    best = min(p["time_us"] for p in sdpa)
    factor = 2.0 if batch == 1 else 1.0
    assert ours["time_us"] * factor <= best, f"triton {ours['time_us']:.1f} us vs best SDPA {best:.1f} us"
    kv_bytes = 2 * batch * ctx * 8 * 128 * 2
    if kv_bytes >= 256 * 2**20:
        assert ours["gbps"] >= 0.9 * copy_gbps(), f"{ours['gbps']:.0f} GB/s vs copy {copy_gbps():.0f} GB/s"
