"""The CUDA kernels (csrc/) against float64 references, on fresh random inputs with NaN-poisoned outputs.

Every case runs on the GPU (`gpu` marker: NVRTC through cupy, torch's stream) and a subset runs on the CPU
through the emulator (csrc/cpu_emulator.cuh), which checks the kernels' indexing and fragment bookkeeping on
machines without a GPU (where a GPU is visible, these cases ask for it with GPUPROF_CUDA_EMULATOR=1).
Tolerances: ||out - ref|| / ||ref|| <= 5e-3 for fp16, 1e-2 for bf16; for attention, of the worst sequence.
"""

from __future__ import annotations

import math

import pytest
import torch

from gpuprof.bench import relative_error
from gpuprof.cuda import attention as cuda_attention
from gpuprof.cuda import gemv as cuda_gemv
from gpuprof.cuda import runtime
from gpuprof.cuda.instances import TRANSPOSE_CHECK_KERNEL, rows_dot_check_kernel
from gpuprof.errors import GpuprofError, Unsupported
from gpuprof.kernels.common import arrival_counters

TOLERANCE = {torch.float16: 5e-3, torch.bfloat16: 1e-2}
DTYPES = [torch.float16, torch.bfloat16]


def on_devices(full: list, emulated: list) -> list:
    """`full` cases on the GPU, `emulated` (a small subset: the emulator runs a fiber per thread) on the CPU."""
    return [pytest.param("cuda", *c, marks=pytest.mark.gpu) for c in full] + [
        pytest.param("cpu", *c, id="emulator-" + "-".join(map(str, c))) for c in emulated
    ]


@pytest.fixture(autouse=True)
def _skip_unavailable(request, monkeypatch):
    device = request.node.callspec.params.get("device") if hasattr(request.node, "callspec") else None
    if device == "cpu":
        monkeypatch.setenv(runtime.EMULATOR_ENV, "1")  # these cases mean the emulator, GPU or not
    if device == "cpu" or (device == "cuda" and torch.cuda.is_available()):
        reason = runtime.unavailable_reason(device)
        if reason:
            pytest.skip(reason)


def sequence_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    """The relative error of the worst sequence: one norm over the batch lets the one-token sequence (a single V
    row, large) hide the others' errors."""
    return relative_error(out, ref, per_row=True)


# ---- decode attention ---------------------------------------------------------------------------------------


def attention_reference(q, k_cache, v_cache, seq_lens, block_table, scale) -> torch.Tensor:
    """Float64 softmax(q k^T * scale) v per sequence, gathering its pages; query head h reads KV head h // G."""
    batch, q_heads, head_dim = q.shape
    out = torch.empty(batch, q_heads, head_dim, dtype=torch.float64, device=q.device)
    for b in range(batch):
        length = int(seq_lens[b])
        if block_table is not None:
            page_size, kv_heads = k_cache.shape[1], k_cache.shape[2]
            pages = block_table[b, : math.ceil(length / page_size)].long()
            k = k_cache[pages].reshape(-1, kv_heads, head_dim)[:length]
            v = v_cache[pages].reshape(-1, kv_heads, head_dim)[:length]
        else:
            k = k_cache[b, :, :length].transpose(0, 1)
            v = v_cache[b, :, :length].transpose(0, 1)
        group = q_heads // k.shape[1]
        k = k.double().repeat_interleave(group, dim=1)
        v = v.double().repeat_interleave(group, dim=1)
        scores = torch.einsum("hd,lhd->hl", q[b].double(), k) * scale
        out[b] = torch.einsum("hl,lhd->hd", scores.softmax(dim=-1), v)
    return out


def attention_inputs(device, dtype, batch, q_heads, kv_heads, head_dim, page_size, capacity, paged, seed=0):
    """Random q and caches; random lengths in 1..capacity (first 1, last the capacity); shuffled page table."""
    g = torch.Generator().manual_seed(seed)
    seq_lens = torch.randint(1, capacity + 1, (batch,), generator=g, dtype=torch.int32)
    seq_lens[0] = 1
    seq_lens[-1] = capacity
    q = torch.randn(batch, q_heads, head_dim, generator=g).to(dtype)
    if paged:
        max_pages = math.ceil(capacity / page_size)
        num_pages = batch * max_pages + 5  # spare pages the table never names
        shape = (num_pages, page_size, kv_heads, head_dim)
        block_table = torch.randperm(num_pages, generator=g)[: batch * max_pages].reshape(batch, max_pages)
        block_table = block_table.to(torch.int32)
    else:
        shape = (batch, kv_heads, capacity, head_dim)
        block_table = None
    k = torch.randn(shape, generator=g).to(dtype)
    v = torch.randn(shape, generator=g).to(dtype)
    to = lambda t: None if t is None else t.to(device)  # noqa: E731
    return to(q), to(k), to(v), to(seq_lens), to(block_table)


# (q_heads, kv_heads): MHA, GQA 4, GQA 8, MQA, a group of 3, and a group of 12 (two head tiles, one padded)
HEAD_LAYOUTS = [(8, 8), (16, 4), (32, 4), (8, 1), (6, 2), (24, 2)]
ATTENTION_FULL = [
    (dtype, head_dim, heads, paged, splits)
    for dtype in DTYPES
    for head_dim in (64, 128, 256)
    for heads in HEAD_LAYOUTS
    for paged in (True, False)
    for splits in (None, 1, 3)
]
ATTENTION_EMULATED = [
    (torch.float16, 64, (8, 2), True, None),
    (torch.bfloat16, 128, (16, 4), False, 3),
    (torch.float16, 256, (6, 2), True, 1),
    (torch.bfloat16, 64, (8, 8), False, 2),
    (torch.bfloat16, 128, (24, 2), True, 2),
    (torch.float16, 128, (8, 1), True, 1),
]


@pytest.mark.parametrize("device,dtype,head_dim,heads,paged,splits", on_devices(ATTENTION_FULL, ATTENTION_EMULATED))
def test_decode_attention_matches_reference(device, dtype, head_dim, heads, paged, splits):
    q_heads, kv_heads = heads
    batch, page_size = 3, 16
    capacity = 1000 if device == "cuda" else 70  # the emulator is slow; 70 still crosses pages and tiles
    inputs = attention_inputs(device, dtype, batch, q_heads, kv_heads, head_dim, page_size, capacity, paged)
    out = torch.full((batch, q_heads, head_dim), math.nan, dtype=dtype, device=device)
    result = cuda_attention.decode_attention(*inputs, num_splits=splits, out=out)
    assert result is out
    err = sequence_error(out, attention_reference(*inputs, scale=head_dim**-0.5))
    assert err <= TOLERANCE[dtype], f"relative error {err:.3g}"


@pytest.mark.parametrize(
    "device,page_size,splits",
    on_devices([(16, 64), (24, 5), (32, 1000), (64, 2)], [(24, 5), (16, 9)]),
)
def test_decode_attention_page_sizes_and_empty_splits(device, page_size, splits):
    """Pages not a multiple of the 16-token tile, and more splits than a short sequence has tiles."""
    dtype = torch.bfloat16
    capacity = 300 if device == "cuda" else 60
    inputs = attention_inputs(device, dtype, 4, 8, 2, 128, page_size, capacity, paged=True, seed=1)
    out = torch.full((4, 8, 128), math.nan, dtype=dtype, device=device)
    cuda_attention.decode_attention(*inputs, num_splits=splits, out=out, scale=0.3)
    err = sequence_error(out, attention_reference(*inputs, scale=0.3))
    assert err <= TOLERANCE[dtype], f"relative error {err:.3g}"


@pytest.mark.parametrize("device", on_devices([()], [()]))
def test_decode_attention_allocates_output_and_splits_automatically(device):
    inputs = attention_inputs(device, torch.float16, 2, 8, 2, 64, 16, 200, paged=True, seed=2)
    out = cuda_attention.decode_attention(*inputs)
    assert out.shape == (2, 8, 64) and out.dtype == torch.float16
    assert sequence_error(out, attention_reference(*inputs, scale=64**-0.5)) <= TOLERANCE[torch.float16]


@pytest.mark.gpu
@pytest.mark.parametrize("batch,ctx", [(64, 4096), (4, 65536)])
def test_decode_attention_large_shapes(batch, ctx):
    """Sizes where the bandwidth targets are measured (256 MiB of KV and more)."""
    if runtime.unavailable_reason("cuda"):
        pytest.skip(runtime.unavailable_reason("cuda"))
    inputs = attention_inputs("cuda", torch.bfloat16, batch, 32, 8, 128, 16, ctx, paged=True, seed=3)
    out = cuda_attention.decode_attention(*inputs)
    assert sequence_error(out, attention_reference(*inputs, scale=128**-0.5)) <= TOLERANCE[torch.bfloat16]


def test_decode_attention_rejects_unsupported_combinations():
    q = torch.zeros(1, 4, 96, dtype=torch.float16)
    cache = torch.zeros(1, 4, 32, 96, dtype=torch.float16)
    lens = torch.ones(1, dtype=torch.int32)
    with pytest.raises(Unsupported, match="head_dim"):
        cuda_attention.decode_attention(q, cache, cache, lens, None)
    q32, cache32 = torch.zeros(1, 4, 64), torch.zeros(1, 4, 32, 64)
    with pytest.raises(GpuprofError, match="q must be torch.float16 or torch.bfloat16"):
        cuda_attention.decode_attention(q32, cache32, cache32, lens, None)


def _attention_args():
    q, k, v, lens, table = attention_inputs("cpu", torch.float16, 2, 8, 2, 64, 16, 40, paged=True)
    return {"q": q, "k_cache": k, "v_cache": v, "seq_lens": lens, "block_table": table}


# What the launcher once guarded with assert (gone under python -O, and with wrong sentences): now the public
# checks' sentences, raised.
BAD_ATTENTION_ARGS = [
    ("q 2-D", lambda a: a.update(q=a["q"][0]), "q must have shape [batch, q_heads, head_dim]"),
    ("caches differ", lambda a: a.update(v_cache=a["v_cache"][:-1]), "v_cache must have k_cache's shape"),
    ("cache dtype", lambda a: a.update(k_cache=a["k_cache"].bfloat16()), "k_cache must have q's dtype"),
    ("lens int64", lambda a: a.update(seq_lens=a["seq_lens"].long()), "seq_lens must be torch.int32"),
    ("table int64", lambda a: a.update(block_table=a["block_table"].long()), "block_table must be torch.int32"),
    ("out shape", lambda a: a.update(out=a["q"][:1].clone()), "out must be torch.float16 of q's shape"),
    ("out is q", lambda a: a.update(out=a["q"]), "out must not overlap q in memory"),
    ("splits bool", lambda a: a.update(num_splits=True), "num_splits must be a whole number"),
]


@pytest.mark.parametrize("what, mutate, message", BAD_ATTENTION_ARGS, ids=[b[0] for b in BAD_ATTENTION_ARGS])
def test_decode_attention_launcher_names_bad_inputs(what, mutate, message):
    args = _attention_args()
    mutate(args)
    with pytest.raises(GpuprofError) as e:
        cuda_attention.decode_attention(**args)
    assert message in str(e.value)


def test_attention_plan_splits_only_when_the_grid_is_small():
    assert cuda_attention.plan(64, 8, 4, 4096, sm_count=132).num_splits == 1  # 512 blocks: enough already
    assert cuda_attention.plan(8, 8, 4, 4096, sm_count=132).num_splits == 8
    assert cuda_attention.plan(1, 8, 4, 32768, sm_count=132).num_splits == 66
    assert cuda_attention.plan(1, 8, 4, 100, sm_count=132).num_splits == 1  # too short to split
    assert cuda_attention.plan(1, 1, 32, 4096, sm_count=132).head_tiles == 4
    assert cuda_attention.plan(1, 8, 4, 4096, sm_count=132, num_splits=5).num_splits == 5


# ---- gemv / skinny GEMM -------------------------------------------------------------------------------------


GEMV_FULL = [
    (dtype, m, n, k, bias, splits)
    for dtype in DTYPES
    for m in (1, 3, 16, 33, 256)
    for n, k in ((4096, 4096), (1000, 520), (72, 8))
    for bias in (False, True)
    for splits in (None, 1, 3)
]
GEMV_EMULATED = [
    (torch.float16, 1, 80, 72, True, None),
    (torch.bfloat16, 3, 64, 520, False, 3),
    (torch.float16, 16, 70, 256, True, 2),
    (torch.bfloat16, 33, 20, 64, True, 1),
    (torch.float16, 70, 16, 40, False, 1),
]


@pytest.mark.parametrize("device,dtype,m,n,k,bias,splits", on_devices(GEMV_FULL, GEMV_EMULATED))
def test_gemv_matches_reference(device, dtype, m, n, k, bias, splits):
    g = torch.Generator().manual_seed(m * 7919 + n)
    x = torch.randn(m, k, generator=g).to(device=device, dtype=dtype)
    w = (torch.randn(n, k, generator=g) / math.sqrt(k)).to(device=device, dtype=dtype)
    b = torch.randn(n, generator=g).to(device=device, dtype=dtype) if bias else None
    out = torch.full((m, n), math.nan, dtype=dtype, device=device)
    assert cuda_gemv.gemv(x, w, b, out=out, num_splits=splits) is out
    ref = x.double() @ w.double().T + (b.double() if bias else 0)
    err = relative_error(out, ref)
    assert err <= TOLERANCE[dtype], f"relative error {err:.3g}"


@pytest.mark.parametrize("device", on_devices([()], [()]))
def test_gemv_split_k_is_deterministic_and_resets_its_counters(device):
    """Split-K sums its partials in a fixed order, and the last block of each tile leaves its counter at 0."""
    x = torch.randn(5, 512).to(device=device, dtype=torch.bfloat16)
    w = torch.randn(192, 512).to(device=device, dtype=torch.bfloat16)
    first = cuda_gemv.gemv(x, w, num_splits=2)
    second = cuda_gemv.gemv(x, w, num_splits=2)
    assert torch.equal(first, second)
    assert int(arrival_counters(x.device, 1).count_nonzero()) == 0


def test_gemv_rejects_unsupported_combinations():
    with pytest.raises(Unsupported, match="multiple of 8"):
        cuda_gemv.gemv(torch.zeros(1, 12, dtype=torch.float16), torch.zeros(4, 12, dtype=torch.float16))
    with pytest.raises(GpuprofError, match="x must be torch.float16 or torch.bfloat16"):
        cuda_gemv.gemv(torch.zeros(1, 16), torch.zeros(4, 16))


BAD_GEMV_ARGS = [
    ("w K", lambda a: a.update(w=a["w"][:, :8]), "w must have shape [N, K] with K = 16"),
    ("w dtype", lambda a: a.update(w=a["w"].bfloat16()), "w must have x's dtype"),
    ("bias shape", lambda a: a.update(bias=a["bias"][:2]), "bias must have shape (4,)"),
    ("out shape", lambda a: a.update(out=torch.empty(2, 5, dtype=torch.float16)), "out must have shape (2, 4)"),
    ("out in w", lambda a: a.update(out=a["w"][:2, :4]), "out must not overlap w in memory"),
]


@pytest.mark.parametrize("what, mutate, message", BAD_GEMV_ARGS, ids=[b[0] for b in BAD_GEMV_ARGS])
def test_gemv_launcher_names_bad_inputs(what, mutate, message):
    args = {"x": torch.zeros(2, 16, dtype=torch.float16), "w": torch.zeros(4, 16, dtype=torch.float16),
            "bias": torch.zeros(4, dtype=torch.float16)}
    mutate(args)
    with pytest.raises(GpuprofError) as e:
        cuda_gemv.gemv(**args)
    assert message in str(e.value)


@pytest.mark.parametrize("asked", [False, True])
def test_cpu_tensors_run_the_emulator_on_a_gpu_machine_only_when_asked(monkeypatch, asked):
    """With a GPU visible, CPU tensors are most likely a mistake: refused unless GPUPROF_CUDA_EMULATOR=1."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    if asked:
        monkeypatch.setenv(runtime.EMULATOR_ENV, "1")
        if runtime.unavailable_reason("cpu"):
            pytest.skip(runtime.unavailable_reason("cpu"))
    else:
        monkeypatch.delenv(runtime.EMULATOR_ENV, raising=False)
        assert "move them to the GPU" in runtime.unavailable_reason("cpu")
    x, w = torch.randn(2, 64).half(), torch.randn(16, 64).half()
    if asked:
        out = cuda_gemv.gemv(x, w, num_splits=1)
        assert relative_error(out, x.double() @ w.double().T) <= TOLERANCE[torch.float16]
    else:
        with pytest.raises(Unsupported, match=f"set {runtime.EMULATOR_ENV}=1"):
            cuda_gemv.gemv(x, w, num_splits=1)


@pytest.mark.parametrize("m,n,k", [(1, 4096, 4096), (16, 4096, 4096), (256, 4096, 4096), (1, 128256, 4096), (3, 50, 8)])
def test_gemv_plan_covers_k_without_empty_splits(m, n, k):
    p = cuda_gemv.plan(m, n, k, sm_count=132)
    assert p.k_per_split % cuda_gemv.K_STEP == 0
    assert p.num_splits * p.k_per_split >= k > (p.num_splits - 1) * p.k_per_split
    assert p.m_blocks * 8 * p.m_tiles >= m and p.n_blocks * cuda_gemv.ROWS_PER_BLOCK >= n


# ---- the fragment layouts underneath both kernels -----------------------------------------------------------


@pytest.mark.parametrize("device,dtype", on_devices([(t,) for t in DTYPES], [(t,) for t in DTYPES]))
def test_tensor_core_row_dot_products(device, dtype):
    """mma_rows_dot_32: d[16][8] = rows[16][32] cols[8][32]^T, with the 16-byte-load relabelling of columns."""
    g = torch.Generator().manual_seed(5)
    rows = torch.randn(16, 32, generator=g).to(device=device, dtype=dtype)
    cols = torch.randn(8, 32, generator=g).to(device=device, dtype=dtype)
    d = torch.full((16, 8), math.nan, device=device)
    args = (runtime.ptr(rows), runtime.ptr(cols), runtime.ptr(d))
    runtime.launch(torch.device(device), "fragment_check.cu", rows_dot_check_kernel(dtype), (1, 1, 1), (32, 1, 1), args)
    torch.testing.assert_close(d, rows.float() @ cols.float().T, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("device", on_devices([()], [()]))
def test_register_transpose_of_8x8_blocks(device):
    """transpose_8x8 (movmatrix): the lane holding row r, columns 2c, 2c+1 receives the transpose's."""
    matrix = torch.arange(64, dtype=torch.int16).reshape(8, 8).to(device)
    out = torch.full((8, 8), -1, dtype=torch.int16, device=device)
    args = (runtime.ptr(matrix), runtime.ptr(out))
    runtime.launch(torch.device(device), "fragment_check.cu", TRANSPOSE_CHECK_KERNEL, (1, 1, 1), (32, 1, 1), args)
    assert torch.equal(out.cpu(), matrix.cpu().T)
