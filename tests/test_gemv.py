"""GEMV / skinny GEMM: the Triton kernel against a float32 reference (every candidate configuration, split-K
forced), the validation sentences, the plan, the work counts, the Op; on a GPU, real shapes and the targets.

Tolerances, relative error ||out - ref|| / ||ref|| against the float32 reference: bf16 1e-2, fp16 5e-3.
On the CPU the kernel runs through Triton's interpreter at small shapes (conftest sets TRITON_INTERPRET=1), and
impl "cuda" through the g++ emulator.
"""

from __future__ import annotations

import importlib.util
import math

import pytest
import torch

from gpuprof.bench import measure_point, relative_error
from gpuprof.errors import GpuprofError, Unsupported
from gpuprof.harness import TimingOptions
from gpuprof.kernels.gemv import GemvConfig, gemv_fwd, split_k_plan
from gpuprof.ops import get_op
from gpuprof.ops.backends import unavailable
from gpuprof.ops.base import Work
from gpuprof.ops.gemv import MAX_SPLIT_K, gemv, gemv_candidates, gemv_reference, gemv_work, m_bucket, plan_split_k

TOLERANCE = {torch.bfloat16: 1e-2, torch.float16: 5e-3}
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def make_case(m, n, k, dtype, *, bias=False, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(m, k, generator=g).to(dtype).to(device)
    w = torch.randn(n, k, generator=g).to(dtype).to(device)
    b = torch.randn(n, generator=g).to(dtype).to(device) if bias else None
    return x, w, b


def assert_close(out, x, w, b):
    err = relative_error(out, gemv_reference(x, w, b))
    assert err <= TOLERANCE[x.dtype], f"relative error {err:.3g}"


# N and K are no multiples of any block size.
@pytest.mark.parametrize("m", [1, 3, 16, 33])
@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
@pytest.mark.parametrize("bias", [False, True])
def test_matches_reference(device, m, dtype, bias):
    x, w, b = make_case(m, 75, 1100, DTYPES[dtype], bias=bias, device=device, seed=m)
    out = torch.full((m, 75), math.nan, dtype=x.dtype, device=device)
    assert gemv(x, w, b, out=out) is out
    assert_close(out, x, w, b)


@pytest.mark.parametrize("m, bias", [(1, True), (5, False), (40, True)])
def test_every_candidate_config_matches_reference(device, m, bias):
    """What tuning may pick on a GPU is checked here: every candidate, split-K ones included."""
    x, w, b = make_case(m, 70, 2600, torch.bfloat16, bias=bias, device=device, seed=7)
    candidates = gemv_candidates(m, 70, 2600, sms=4)
    assert any(c.split_k > 1 for c in candidates)
    for config in candidates:
        out = torch.full((m, 70), math.nan, dtype=x.dtype, device=device)
        gemv_fwd(x, w, b, out, config)
        assert relative_error(out, gemv_reference(x, w, b)) <= 1e-2, config


@pytest.mark.parametrize("config, m, k", [(GemvConfig(1, 8, 64, split_k=5), 1, 600),
                                         (GemvConfig(16, 16, 64, split_k=3), 2, 333),
                                         (GemvConfig(32, 32, 32, split_k=7), 45, 440)])
def test_forced_split_k_sums_every_split_and_resets_its_counters(device, config, m, k):
    from gpuprof.kernels.common import _arrivals

    x, w, b = make_case(m, 40, k, torch.float16, bias=True, device=device, seed=config.split_k)
    assert split_k_plan(k, config.block_k, config.split_k)[1] == config.split_k  # no split left empty
    for _ in range(2):  # the second call finds the counters back at zero
        out = torch.full((m, 40), math.nan, dtype=x.dtype, device=device)
        gemv_fwd(x, w, b, out, config)
        assert_close(out, x, w, b)
    assert all(int(c.count_nonzero()) == 0 for c in _arrivals.values())


def skip_unless_runs(impl, device):
    reason = unavailable("gemv", impl, device)
    if reason:
        pytest.skip(reason)


@pytest.mark.parametrize("impl", ["triton", "cuda"])
def test_strided_rows(device, impl):
    """x as a slice of a wider activation buffer, out as a slice of a wider output: rows need not be packed.
    (K = 304: a multiple of 8, as the CUDA kernel needs, and of no Triton block size.)"""
    skip_unless_runs(impl, device)
    x_wide, w, _ = make_case(4, 50, 304, torch.bfloat16, device=device)
    x = torch.cat([x_wide, x_wide], dim=1)[:, :304]
    out = torch.full((4, 80), math.nan, dtype=torch.bfloat16, device=device)[:, :50]
    assert gemv(x, w, out=out, impl=impl) is out
    assert_close(out, x, w, None)


@pytest.mark.parametrize("impl", ["triton", "cuda"])
def test_strided_weight_rows(device, impl):
    """w as a column slice of a wider matrix. The CUDA kernel takes no row stride for w: it copies w, and warns."""
    skip_unless_runs(impl, device)
    x, w_wide, b = make_case(3, 40, 320, torch.float16, bias=True, device=device)
    w = w_wide[:, :304]
    x = x[:, :304].contiguous()
    out = torch.full((3, 40), math.nan, dtype=torch.float16, device=device)
    if impl == "cuda":
        with pytest.warns(UserWarning, match="copies w on every call"):
            gemv(x, w, b, out=out, impl=impl)
    else:
        gemv(x, w, b, out=out, impl=impl)
    assert_close(out, x, w, b)


def test_allocates_output_when_none_given(device):
    x, w, b = make_case(2, 30, 100, torch.bfloat16, bias=True, device=device)
    out = gemv(x, w, b)
    assert out.shape == (2, 30) and out.dtype == torch.bfloat16
    assert_close(out, x, w, b)


# ---- validation ----

def _valid():
    x, w, b = make_case(2, 30, 100, torch.bfloat16, bias=True)
    return {"x": x, "w": w, "bias": b}


BAD_INPUTS = [
    ("x as a list", lambda c: c.update(x=[1.0]), "x must be a torch.Tensor, not list."),
    ("x 1-D", lambda c: c.update(x=c["x"][0]), "x must have shape [M, K] with M and K at least 1"),
    ("x empty", lambda c: c.update(x=c["x"][:0]), "x must have shape [M, K] with M and K at least 1"),
    ("w K", lambda c: c.update(w=c["w"][:, :99]), "w must have shape [N, K] with K = 100 (x's)"),
    ("x fp32", lambda c: c.update(x=c["x"].float()), "x must be torch.float16 or torch.bfloat16, not torch.float32."),
    ("w fp16", lambda c: c.update(w=c["w"].half()), "w must have x's dtype torch.bfloat16, not torch.float16."),
    ("w on meta", lambda c: c.update(w=c["w"].to("meta")), "w is on meta but x is on cpu"),
    ("bias shape", lambda c: c.update(bias=c["bias"][:29]), "bias must have shape (30,) (w's N)"),
    ("bias dtype", lambda c: c.update(bias=c["bias"].float()), "bias must have x's dtype torch.bfloat16"),
    ("out shape", lambda c: c.update(out=torch.empty(2, 31, dtype=torch.bfloat16)), "out must have shape (2, 30)"),
    ("w columns", lambda c: c.update(w=c["w"].T.contiguous().T),
     "w's last dimension must be contiguous (stride 1, not 30); pass w.contiguous()."),
    ("impl", lambda c: c.update(impl="cutlass"), "gemv has no implementation 'cutlass'; valid: triton, cuda, cublas."),
]


@pytest.mark.parametrize("what, mutate, message", BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_bad_input_is_named(what, mutate, message):
    case = _valid()
    mutate(case)
    with pytest.raises(GpuprofError) as e:
        gemv(**case)
    assert message in str(e.value)


@pytest.mark.parametrize("impl", ["triton", "cuda", "cublas"])
@pytest.mark.parametrize("aliased", ["x", "w", "bias"])
def test_out_overlapping_an_input_is_rejected(impl, aliased):
    """gemv(x, w, out=x) once gave a relative error of 0.70 without a word: the kernels read x while writing out."""
    x, w, b = make_case(1, 64, 64, torch.bfloat16, bias=True)
    out = {"x": x, "w": w[:1], "bias": b.view(1, 64)}[aliased]
    with pytest.raises(GpuprofError, match=f"out must not overlap {aliased} in memory"):
        gemv(x, w, b, out=out, impl=impl)


def test_out_beside_an_input_in_one_buffer_is_accepted():
    """x and out as the two halves of one buffer: no byte in common, so no overlap."""
    x_wide, w, _ = make_case(1, 64, 128, torch.bfloat16)
    buffer = torch.empty(192, dtype=torch.bfloat16)
    buffer[:128] = x_wide[0]
    x, out = buffer[:128].view(1, 128), buffer[128:].view(1, 64)
    assert gemv(x, w, out=out) is out
    assert_close(out, x, w, None)


def test_more_than_256_rows_is_unsupported():
    x, w, _ = make_case(257, 8, 16, torch.bfloat16)
    with pytest.raises(Unsupported, match="takes M from 1 to 256, not 257"):
        gemv(x, w)


@pytest.mark.skipif(importlib.util.find_spec("gpuprof.cuda") is not None, reason="gpuprof.cuda is installed here")
def test_cuda_impl_without_its_module_says_so():
    with pytest.raises(GpuprofError, match="impl 'cuda' needs gpuprof.cuda.gemv"):
        gemv(**_valid(), impl="cuda")


# ---- plan and work ----

@pytest.mark.parametrize("m, bucket", [(1, 1), (2, 16), (16, 16), (17, 32), (33, 64), (100, 128), (256, 256)])
def test_m_buckets(m, bucket):
    assert m_bucket(m) == bucket


@pytest.mark.parametrize("tiles, k, sms, split", [
    (1792, 4096, 132, 1),  # 14336 rows in blocks of 8: enough programs
    (128, 4096, 132, 4),  # limited by K: 4 pieces of 1024
    (128, 14336, 132, 5),  # 4 x 132 programs wanted
    (1, 10**6, 132, MAX_SPLIT_K),
    (10, 500, 132, 1),  # K too short to split
])
def test_plan_split_k(tiles, k, sms, split):
    assert plan_split_k(tiles, k, sms) == split


def test_split_k_plan_leaves_no_split_empty():
    assert split_k_plan(4096, 256, 5) == (1024, 4)  # five splits of whole blocks would leave the last empty
    assert split_k_plan(1000, 256, 1) == (1024, 1)


def test_gemv_work_counts():
    assert gemv_work(4, 100, 300, 2) == Work(bytes=2 * (4 * 300 + 100 * 300 + 4 * 100), flops=2 * 4 * 100 * 300)
    with_bias = gemv_work(4, 100, 300, 2, bias=True)
    assert with_bias.bytes == 2 * (4 * 300 + 100 * 300 + 4 * 100 + 100) and with_bias.flops == 2 * 4 * 100 * 300 + 400


# ---- the Op ----

QUICK = TimingOptions(warmup_ms=0, max_time_s=0.01, min_reps=2)


def test_op_shape_defaults_and_errors():
    op = get_op("gemv")
    assert op.shape() == {"m": 1, "n": 4096, "k": 4096}
    with pytest.raises(GpuprofError, match="gemv's k must be at least 1"):
        op.shape(k=0)


@pytest.mark.interpreter
@pytest.mark.parametrize("impl, dtype, status", [("triton", "bf16", "ok"), ("cublas", "bf16", "ok"),
                                                 ("cublas", "fp32", "ok"), ("triton", "fp32", "unsupported")])
def test_op_points_on_the_cpu(impl, dtype, status):
    shape = get_op("gemv").shape(m=3, n=40, k=200)
    point = measure_point(get_op("gemv"), impl, shape, dtype, device="cpu", options=QUICK)
    assert point["status"] == status, point["error"]
    assert point["bytes"] == gemv_work(3, 40, 200, 4 if dtype == "fp32" else 2).bytes


@pytest.mark.interpreter
def test_op_reports_large_m_as_unsupported():
    shape = get_op("gemv").shape(m=300, n=16, k=16)
    point = measure_point(get_op("gemv"), "triton", shape, "bf16", device="cpu", options=QUICK)
    assert point["status"] == "unsupported" and "M from 1 to 256" in point["error"]


# ---- on a GPU ----

# Weight shapes of real models, (N, K): Llama-3-8B q/o-proj, up/gate-proj, down-proj; a 2B model; Phi-2's MLP.
MODEL_WEIGHTS = [(4096, 4096), (14336, 4096), (4096, 14336), (8192, 2048), (2560, 10240)]


@pytest.mark.gpu
@pytest.mark.parametrize("m", [1, 4, 16, 64, 256])
def test_gpu_every_candidate_config_matches_reference(m):
    x, w, b = make_case(m, 4096, 4096, torch.bfloat16, bias=True, device="cuda")
    ref = gemv_reference(x, w, b)
    for config in gemv_candidates(m, 4096, 4096, torch.cuda.get_device_properties(0).multi_processor_count):
        out = torch.full((m, 4096), math.nan, dtype=x.dtype, device="cuda")
        gemv_fwd(x, w, b, out, config)
        assert relative_error(out, ref) <= 1e-2, config


def test_arrival_counters_outgrown_set_stays_allocated():
    """A larger set replaces a smaller one, but the old one is kept: a captured CUDA graph may point at it."""
    from gpuprof.kernels import common

    small = common.arrival_counters(torch.device("cpu"), 8)
    assert common.arrival_counters(torch.device("cpu"), 8) is small
    large = common.arrival_counters(torch.device("cpu"), small.numel() + 1)
    assert large.numel() > small.numel() and int(large.count_nonzero()) == 0
    assert any(t is small for t in common._outgrown)


@pytest.mark.gpu
def test_gpu_split_k_in_a_cuda_graph_needs_a_call_on_the_capture_stream_first():
    """A counter set made under capture would hold garbage until that graph first replays: refused, clearly."""
    x, w, b = make_case(4, 2560, 10240, torch.bfloat16, bias=True, device="cuda")
    config = GemvConfig(16, 32, 256, split_k=8)
    out = torch.empty(4, 2560, dtype=x.dtype, device="cuda")
    ref = gemv_fwd(x, w, b, torch.empty_like(out), config).clone()
    stream = torch.cuda.Stream()
    with pytest.raises(RuntimeError, match="before any call on the capture stream"):
        with torch.cuda.graph(torch.cuda.CUDAGraph(), stream=stream):
            gemv_fwd(x, w, b, out, config)
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        gemv_fwd(x, w, b, out, config)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, stream=stream):
        gemv_fwd(x, w, b, out, config)
    for _ in range(3):
        out.zero_()
        graph.replay()
        torch.cuda.synchronize()
        assert torch.equal(out, ref)


@pytest.mark.gpu
def test_gpu_concurrent_streams_use_their_own_counters():
    """Split-K launches on two streams at once must not share arrival counters (a shared set would mix tiles)."""
    x, w, b = make_case(4, 2560, 10240, torch.bfloat16, bias=True, device="cuda")
    config = GemvConfig(16, 32, 256, split_k=8)
    ref = gemv_fwd(x, w, b, torch.empty(4, 2560, dtype=x.dtype, device="cuda"), config).clone()
    streams = [torch.cuda.Stream(), torch.cuda.Stream()]
    outs = {s: [] for s in streams}
    torch.cuda.synchronize()
    for _ in range(50):
        for s in streams:
            with torch.cuda.stream(s):
                outs[s].append(gemv_fwd(x, w, b, torch.empty_like(ref), config))
    torch.cuda.synchronize()
    from gpuprof.kernels.common import arrival_counters

    sets = {arrival_counters(x.device, 1).data_ptr()}
    for s in streams:
        with torch.cuda.stream(s):
            sets.add(arrival_counters(x.device, 1).data_ptr())
    assert len(sets) == 3
    assert all(torch.equal(o, ref) for s in streams for o in outs[s])


@pytest.mark.gpu
def test_gpu_split_k_is_deterministic_under_repetition():
    """Many back-to-back split-K launches: a missed arrival or a stale partial would change some output."""
    x, w, b = make_case(8, 2560, 10240, torch.bfloat16, bias=True, device="cuda")
    config = GemvConfig(16, 32, 256, split_k=8)
    first = gemv_fwd(x, w, b, torch.empty(8, 2560, dtype=x.dtype, device="cuda"), config).clone()
    assert relative_error(first, gemv_reference(x, w, b)) <= 1e-2
    outs = [gemv_fwd(x, w, b, torch.empty_like(first), config) for _ in range(200)]
    assert all(torch.equal(o, first) for o in outs)


@pytest.mark.gpu
@pytest.mark.parametrize("n, k", MODEL_WEIGHTS)
@pytest.mark.parametrize("m", [1, 4, 16])
def test_gpu_meets_the_targets(m, n, k):
    """>= 85% of the copy bandwidth and >= 1.15x cuBLAS (F.linear) for M up to 16 on real weight shapes."""
    from gpu_ceilings import copy_gbps, timed

    shape = {"m": m, "n": n, "k": k}
    ours, cublas = timed("gemv", "triton", shape), timed("gemv", "cublas", shape)
    assert ours["status"] == "ok" and cublas["status"] == "ok", (ours["error"], cublas["error"])
    assert ours["gbps"] >= 0.85 * copy_gbps(), f"{ours['gbps']:.0f} GB/s vs copy {copy_gbps():.0f} GB/s"
    assert ours["time_us"] * 1.15 <= cublas["time_us"], f"{ours['time_us']:.1f} us vs cuBLAS {cublas['time_us']:.1f}"


@pytest.mark.parametrize("with_out", [False, True])
@pytest.mark.parametrize("bias", [False, True])
def test_cublas_impl_is_f_linear(device, with_out, bias):
    g = torch.Generator(device=device).manual_seed(3)
    x = torch.randn(5, 24, generator=g, device=device, dtype=torch.float16)
    w = torch.randn(7, 24, generator=g, device=device, dtype=torch.float16)
    b = torch.randn(7, generator=g, device=device, dtype=torch.float16) if bias else None
    out = torch.full((5, 7), float("nan"), device=device, dtype=torch.float16) if with_out else None
    y = gemv(x, w, b, impl="cublas", out=out)
    assert y.dtype == torch.float16 and (out is None or y is out)
    ref = gemv_reference(x, w, b, dtype=torch.float64)
    assert ((y.double() - ref).norm() / ref.norm()).item() <= 5e-3
