"""Decode attention: one new query token per sequence against its KV cache, paged or contiguous.

This module is the public face of the operation: input validation shared by every implementation, the split-KV
plan, dispatch (`impl="triton"` here, `impl="cuda"` in `gpuprof.cuda.attention`), the float32/float64 reference,
the exact work of a call, and the `attention` Op that `gpuprof bench` and `gpuprof sweep` time against the torch
SDPA backends.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass, replace

import torch
import triton

from gpuprof.errors import GpuprofError, Unsupported
from gpuprof.ops.backends import cuda_module, unavailable
from gpuprof.ops.base import Launch, Op, Work, dtype_bytes, torch_dtype
from gpuprof.ops.checks import (HALF_DTYPES, describe, require_half, require_last_dim_contiguous,
                                require_no_overlap, require_same_device, require_same_dtype, require_tensors)
from gpuprof.ops.tuning import choose, sm_count

IMPLS = ("triton", "cuda")
MAX_TRITON_HEAD_DIM = 256

# Split-KV plan: aim for this many programs per SM (two resident per SM hide each other's memory latency) ...
PROGRAMS_PER_SM = 2
# ... but give each split at least this many tokens, so its fixed cost (query load, partial write) stays small.
MIN_SPLIT_TOKENS = 128
MAX_SPLITS = 256


@dataclass(frozen=True)
class AttentionShape:
    """What check_attention_inputs learned about a call."""

    batch: int
    q_heads: int
    kv_heads: int
    head_dim: int
    page_size: int  # 0: contiguous cache
    capacity: int  # most tokens a sequence can hold: max_pages * page_size, or the contiguous cache's length
    num_pages: int  # pages in the paged cache (0 for the contiguous layout)

    @property
    def group(self) -> int:
        return self.q_heads // self.kv_heads

    @property
    def paged(self) -> bool:
        return self.page_size > 0


def check_attention_inputs(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    seq_lens: torch.Tensor,
    block_table: torch.Tensor | None = None,
    out: torch.Tensor | None = None,
    *,
    scale: float | None = None,
    num_splits: int | None = None,
    check_values: bool = True,
) -> AttentionShape:
    """Validate a decode-attention call; raise GpuprofError with one sentence naming the first problem.

    Shapes, dtypes, devices and strides are checked on every call. With `check_values`, seq_lens and the block
    table pages in use are read back to the host and checked to lie within the cache (a device synchronisation:
    pass False in timed loops; it is skipped by itself while a CUDA graph is being captured).
    """
    require_tensors([("q", q), ("k_cache", k_cache), ("v_cache", v_cache), ("seq_lens", seq_lens)])
    require_tensors([(n, t) for n, t in (("block_table", block_table), ("out", out)) if t is not None])
    if q.dim() != 3 or min(q.shape) < 1:
        raise GpuprofError(f"q must have shape [batch, q_heads, head_dim] with every size at least 1; "
                           f"it has shape {tuple(q.shape)}.")
    require_half("q", q)
    batch, q_heads, head_dim = q.shape
    require_same_device("q", q, [("k_cache", k_cache), ("v_cache", v_cache), ("seq_lens", seq_lens),
                                 ("block_table", block_table), ("out", out)])
    require_same_dtype("q", q, [("k_cache", k_cache), ("v_cache", v_cache)])

    if k_cache.dim() != 4 or min(k_cache.shape) < 1:
        layout = "[num_pages, page_size, kv_heads, head_dim]" if block_table is not None else \
            "[batch, kv_heads, max_len, head_dim]"
        raise GpuprofError(f"{'with' if block_table is not None else 'without'} a block_table, k_cache must have "
                           f"shape {layout}; it has {tuple(k_cache.shape)}.")
    if block_table is not None:
        num_pages, page_size, kv_heads, cache_dim = k_cache.shape
    else:
        cache_batch, kv_heads, max_len, cache_dim = k_cache.shape
        if cache_batch != batch:
            raise GpuprofError(f"k_cache holds {cache_batch} sequences but q has {batch}.")
    if v_cache.shape != k_cache.shape:
        raise GpuprofError(f"v_cache must have k_cache's shape {tuple(k_cache.shape)}; it has {tuple(v_cache.shape)}.")
    if cache_dim != head_dim:
        raise GpuprofError(f"the cache's head_dim {cache_dim} differs from q's {head_dim}.")
    if q_heads % kv_heads:
        raise GpuprofError(f"q's {q_heads} heads are not a multiple of the cache's {kv_heads} KV heads.")
    if seq_lens.dtype != torch.int32 or tuple(seq_lens.shape) != (batch,):
        raise GpuprofError(f"seq_lens must be torch.int32 of shape ({batch},); it is {describe(seq_lens)}.")
    if block_table is not None:
        if block_table.dtype != torch.int32 or block_table.dim() != 2 or block_table.shape[0] != batch \
                or block_table.shape[1] < 1:
            raise GpuprofError(f"block_table must be torch.int32 of shape ({batch}, max_pages); "
                               f"it is {describe(block_table)}.")
        capacity = block_table.shape[1] * page_size
    else:
        num_pages, page_size, capacity = 0, 0, max_len
    if out is not None and (out.shape != q.shape or out.dtype != q.dtype):
        raise GpuprofError(f"out must be {q.dtype} of q's shape {tuple(q.shape)}; it is {describe(out)}.")
    require_last_dim_contiguous([("q", q), ("k_cache", k_cache), ("v_cache", v_cache), ("out", out),
                                 ("seq_lens", seq_lens), ("block_table", block_table)])
    require_no_overlap(out, [("q", q), ("k_cache", k_cache), ("v_cache", v_cache), ("seq_lens", seq_lens),
                             ("block_table", block_table)])
    if scale is not None and not math.isfinite(_real_or_nan(scale)):
        raise GpuprofError(f"scale must be a finite real number, not {scale!r}.")
    # bool is an int subclass: num_splits=True would otherwise pass as 1.
    if num_splits is not None and (isinstance(num_splits, bool) or not isinstance(num_splits, int)
                                   or not 1 <= num_splits <= MAX_SPLITS):
        raise GpuprofError(f"num_splits must be a whole number from 1 to {MAX_SPLITS}, not {num_splits!r}.")

    shape = AttentionShape(batch, q_heads, kv_heads, head_dim, page_size, capacity, num_pages)
    if check_values and not (q.is_cuda and torch.cuda.is_current_stream_capturing()):
        _check_values(shape, seq_lens, block_table)
    return shape


def _real_or_nan(value: object) -> float:
    """`value` as a float when it is a real number (Python, numpy, or a 0-d real tensor), else NaN."""
    if isinstance(value, torch.Tensor):
        real = value.dim() == 0 and not value.is_complex() and value.dtype != torch.bool
    else:
        real = isinstance(value, numbers.Real) and not isinstance(value, bool)
    return float(value) if real else math.nan


def _check_values(shape: AttentionShape, seq_lens: torch.Tensor, block_table: torch.Tensor | None) -> None:
    lens = seq_lens.cpu()
    bad = ((lens < 1) | (lens > shape.capacity)).nonzero()
    if len(bad):
        i = int(bad[0])
        raise GpuprofError(f"seq_lens must lie between 1 and the cache capacity {shape.capacity}; "
                           f"sequence {i} has {int(lens[i])}.")
    if block_table is None:
        return
    table = block_table.cpu()
    pages_used = (lens + shape.page_size - 1) // shape.page_size
    in_use = torch.arange(table.shape[1])[None, :] < pages_used[:, None]
    bad = (in_use & ((table < 0) | (table >= shape.num_pages))).nonzero()
    if len(bad):
        i, j = (int(v) for v in bad[0])
        raise GpuprofError(f"block_table must hold page numbers from 0 to {shape.num_pages - 1} for the pages in use; "
                           f"sequence {i} has {int(table[i, j])} at position {j}.")


def plan_splits(batch: int, hkv: int, max_len: int, sm_count: int) -> int:
    """How many chunks to cut each sequence into (split-KV), from the work's parallelism and the GPU's size.

    One program per (sequence, KV head) when those already give PROGRAMS_PER_SM programs per SM; otherwise
    enough splits to get there, but no split shorter than MIN_SPLIT_TOKENS tokens.
    """
    programs = batch * hkv
    target = PROGRAMS_PER_SM * sm_count
    if programs >= target:
        return 1
    return max(1, min(triton.cdiv(target, programs), max_len // MIN_SPLIT_TOKENS, MAX_SPLITS))


def _candidates(shape: AttentionShape, num_splits: int | None, sms: int) -> list:
    """Launch configurations to try, the planned default first."""
    from gpuprof.kernels.decode_attention import AttentionConfig, group_tile, padded_head_dim

    splits = num_splits or plan_splits(shape.batch, shape.kv_heads, shape.capacity, sms)
    rows, dim = group_tile(shape.group), padded_head_dim(shape.head_dim)
    if rows == 1:  # the MHA path multiplies a [block_n, head_dim] tile in registers: at most 8K elements
        block_ns = [bn for bn in (64, 128, 32, 16) if bn * dim <= 8192][:3]
    else:
        block_ns = [32, 64, 16] if dim == 256 else [64, 32, 128]
    warps = 8 if rows * dim > 4096 else 4  # the [rows, head_dim] float32 accumulator spread thinner
    default = AttentionConfig(num_splits=splits, block_n=block_ns[0], num_warps=warps, num_stages=3)
    configs = [default]
    if num_splits is None:  # the plan is a heuristic: also try half and twice as many splits
        configs += [replace(default, num_splits=s) for s in (max(1, splits // 2), min(2 * splits, MAX_SPLITS))]
    configs += [replace(default, block_n=bn, num_warps=w, num_stages=st)
                for bn in block_ns for w in (4, 8) for st in (2, 3, 4)]
    return list(dict.fromkeys(configs))


def _tuning_key(shape: AttentionShape, dtype: torch.dtype, num_splits: int | None) -> str:
    return (f"attention|{str(dtype).removeprefix('torch.')}|d{shape.head_dim}|g{shape.group}|p{shape.page_size}"
            f"|bh{triton.next_power_of_2(shape.batch * shape.kv_heads)}|l{triton.next_power_of_2(shape.capacity)}"
            f"|s{num_splits or 'auto'}")


def decode_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    seq_lens: torch.Tensor,
    block_table: torch.Tensor | None = None,
    *,
    scale: float | None = None,
    num_splits: int | None = None,
    impl: str = "triton",
    out: torch.Tensor | None = None,
    check_values: bool = True,
) -> torch.Tensor:
    """Attention of one new query token per sequence over its cached keys and values.

    q [B, Hq, D]; paged: k_cache/v_cache [num_pages, page_size, Hkv, D] with block_table [B, max_pages] int32;
    contiguous (block_table None): k_cache/v_cache [B, Hkv, L, D]. seq_lens [B] int32 (each 1..capacity).
    scale defaults to 1/sqrt(D). Output [B, Hq, D] in q's dtype (into `out` when given). Hq % Hkv == 0.
    fp16/bf16 inputs, float32 accumulation. num_splits overrides the split-KV plan. check_values: see
    check_attention_inputs.
    """
    shape = check_attention_inputs(q, k_cache, v_cache, seq_lens, block_table, out, scale=scale,
                                   num_splits=num_splits, check_values=check_values)
    scale = 1.0 / math.sqrt(shape.head_dim) if scale is None else float(scale)
    if impl == "cuda":
        return cuda_module("attention").decode_attention(q, k_cache, v_cache, seq_lens, block_table, scale=scale,
                                                         num_splits=num_splits, out=out)
    if impl != "triton":
        raise GpuprofError(f"decode_attention has no implementation {impl!r}; valid: {', '.join(IMPLS)}.")
    if shape.head_dim > MAX_TRITON_HEAD_DIM:
        raise Unsupported(f"the Triton decode attention takes head_dim up to {MAX_TRITON_HEAD_DIM}, "
                          f"not {shape.head_dim}.")
    from gpuprof.kernels.decode_attention import decode_attention_fwd

    out = torch.empty(q.shape, dtype=q.dtype, device=q.device) if out is None else out
    candidates = _candidates(shape, num_splits, sm_count(q.device))

    def launch(config):
        return decode_attention_fwd(q, k_cache, v_cache, seq_lens, block_table, out, scale, config)

    config = choose(_tuning_key(shape, q.dtype, num_splits), candidates, launch, q.device)
    return launch(config)


def attention_reference(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    seq_lens: torch.Tensor,
    block_table: torch.Tensor | None = None,
    scale: float | None = None,
    *,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Plain-torch decode attention computed in `dtype` (float32 by default), one sequence at a time."""
    batch, q_heads, head_dim = q.shape
    kv_heads = k_cache.shape[2] if block_table is not None else k_cache.shape[1]
    group = q_heads // kv_heads
    scale = 1.0 / math.sqrt(head_dim) if scale is None else scale
    out = torch.empty((batch, q_heads, head_dim), dtype=dtype, device=q.device)
    for b, n in enumerate(seq_lens.tolist()):
        if block_table is not None:
            pages = block_table[b, : triton.cdiv(n, k_cache.shape[1])].long()
            k = k_cache[pages].reshape(-1, kv_heads, head_dim)[:n]
            v = v_cache[pages].reshape(-1, kv_heads, head_dim)[:n]
        else:
            k, v = k_cache[b, :, :n].transpose(0, 1), v_cache[b, :, :n].transpose(0, 1)
        k = k.to(dtype).repeat_interleave(group, dim=1)  # [n, Hq, D]
        v = v.to(dtype).repeat_interleave(group, dim=1)
        scores = torch.einsum("hd,nhd->hn", q[b].to(dtype), k) * scale
        out[b] = torch.einsum("hn,nhd->hd", torch.softmax(scores, dim=-1), v)
    return out


def attention_work(batch: int, ctx: int, hq: int, hkv: int, head_dim: int, dtype_bytes: int) -> Work:
    """The minimum a call must move and compute, every sequence holding `ctx` tokens.

    Bytes: q and the output once each (batch*hq*head_dim elements apiece), and every cached K and V element once
    (batch*ctx*hkv*head_dim apiece): each KV byte read once however many query heads share it. The block table
    and seq_lens (4 bytes per page and per sequence, under 0.1% of the KV bytes) are left out.
    FLOPs: the two matrix products, q.K^T and p.V, 2*head_dim each per (query head, token); the softmax's
    exponentials and the normalisation are not counted.
    """
    elements = 2 * batch * hq * head_dim + 2 * batch * ctx * hkv * head_dim
    return Work(bytes=elements * dtype_bytes, flops=4 * batch * hq * ctx * head_dim)


SDPA_BACKENDS = {
    "torch-sdpa-flash": "FLASH_ATTENTION",
    "torch-sdpa-efficient": "EFFICIENT_ATTENTION",
    "torch-sdpa-math": "MATH",
}


class Attention(Op):
    """Decode attention at one benchmark point: `batch` sequences of `ctx` tokens each.

    page_size 0 benchmarks the contiguous cache [B, Hkv, ctx, D]; otherwise the paged cache, with the pages
    of all sequences shuffled (a random block table). Our kernels run on the layout asked for. The SDPA baselines
    always run on the contiguous layout (gathered from the pages once, outside the timed calls): a query
    [B, Hq, 1, D] with `enable_gqa=True` where the backend takes it, else with K/V heads repeated Hq/Hkv times
    before the call, so that backend reads Hq/Hkv times the bytes. Either way the recorded bytes are the minimum
    of `attention_work`, so GB/s is the effective bandwidth of the same work.
    """

    kernel = "attention"
    impls = IMPLS + tuple(SDPA_BACKENDS)
    error_per_row = True  # the worst sequence of the batch
    shape_keys = ("batch", "ctx", "hq", "hkv", "head_dim", "page_size")
    defaults = {"batch": 1, "ctx": 4096, "hq": 32, "hkv": 8, "head_dim": 128, "page_size": 16}

    def shape(self, **given: int) -> dict[str, int]:
        s = {k: int(given.get(k, self.defaults[k])) for k in self.shape_keys}
        small = [k for k in self.shape_keys if s[k] < (0 if k == "page_size" else 1)]
        if small:
            raise GpuprofError(f"attention's {small[0]} must be at least {0 if small[0] == 'page_size' else 1}.")
        if s["hq"] % s["hkv"]:
            raise GpuprofError(f"attention's hq {s['hq']} is not a multiple of hkv {s['hkv']}.")
        return s

    def work(self, shape: Mapping[str, int], dtype: str) -> Work:
        return attention_work(shape["batch"], shape["ctx"], shape["hq"], shape["hkv"], shape["head_dim"],
                              dtype_bytes(dtype))

    def _pages_per_seq(self, shape: Mapping[str, int]) -> int:
        return triton.cdiv(shape["ctx"], shape["page_size"])

    def input_bytes(self, shape: Mapping[str, int], dtype: str) -> int:
        b, p = shape["batch"], shape["page_size"]
        tokens = b * self._pages_per_seq(shape) * p if p else b * shape["ctx"]
        kv = 2 * tokens * shape["hkv"] * shape["head_dim"]
        index_bytes = 4 * b * (1 + (self._pages_per_seq(shape) if p else 0))
        return (kv + 2 * b * shape["hq"] * shape["head_dim"]) * dtype_bytes(dtype) + index_bytes

    def make_inputs(self, shape, dtype, device, generator) -> dict:
        t = torch_dtype(dtype)
        b, hq, hkv, d, p = (shape[k] for k in ("batch", "hq", "hkv", "head_dim", "page_size"))
        gen = generator  # a generator of `device` (bench.measure_point makes one there)
        inputs = {"q": torch.randn((b, hq, d), dtype=t, device=device, generator=gen),
                  "seq_lens": torch.full((b,), shape["ctx"], dtype=torch.int32, device=device),
                  "out": torch.empty((b, hq, d), dtype=t, device=device), "block_table": None}
        if p:
            pages = self._pages_per_seq(shape)
            kv_shape = (b * pages, p, hkv, d)
            order = torch.randperm(b * pages, generator=gen, device=device)
            inputs["block_table"] = order.to(torch.int32).reshape(b, pages)
        else:
            kv_shape = (b, hkv, shape["ctx"], d)
        inputs["k_cache"] = torch.randn(kv_shape, dtype=t, device=device, generator=gen)
        inputs["v_cache"] = torch.randn(kv_shape, dtype=t, device=device, generator=gen)
        return inputs

    def available(self, impl: str, device: str) -> str | None:
        return unavailable("attention", impl, device)

    def launch(self, impl: str, inputs: dict) -> Launch:
        if impl in SDPA_BACKENDS:
            return self._launch_sdpa(impl, inputs)
        if impl not in IMPLS:
            raise Unsupported(f"attention has no implementation {impl!r}; it has {', '.join(self.impls)}.")
        q, out = inputs["q"], inputs["out"]
        if q.dtype not in HALF_DTYPES:
            raise Unsupported(f"attention/{impl} takes float16 and bfloat16, not {q.dtype}.")
        args = (q, inputs["k_cache"], inputs["v_cache"], inputs["seq_lens"], inputs["block_table"])
        check_attention_inputs(*args, out)  # once, with the values: the timed calls skip that synchronisation
        return Launch(run=lambda: decode_attention(*args, impl=impl, out=out, check_values=False), out=out)

    def _launch_sdpa(self, impl: str, inputs: dict) -> Launch:
        from torch.nn.attention import SDPBackend, sdpa_kernel

        backend = getattr(SDPBackend, SDPA_BACKENDS[impl])
        q = inputs["q"].unsqueeze(2)  # [B, Hq, 1, D]
        k, v = contiguous_cache(inputs)
        group = q.shape[1] // k.shape[1]

        def call(k, v, gqa):
            with sdpa_kernel(backend):
                return torch.nn.functional.scaled_dot_product_attention(q, k, v, enable_gqa=gqa).squeeze(2)

        try:
            call(k, v, True)
            return Launch(run=lambda: call(k, v, True))
        except RuntimeError:
            pass
        if group > 1:
            k_rep, v_rep = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
            try:
                call(k_rep, v_rep, False)
                return Launch(run=lambda: call(k_rep, v_rep, False))
            except RuntimeError:
                pass
        raise Unsupported(f"torch SDPA's {SDPA_BACKENDS[impl].lower()} backend refuses this shape and dtype "
                          f"on {q.device.type}.")

    def reference(self, inputs: dict) -> torch.Tensor:
        return attention_reference(inputs["q"], inputs["k_cache"], inputs["v_cache"], inputs["seq_lens"],
                                   inputs["block_table"], dtype=torch.float64)


def contiguous_cache(inputs: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """K and V as [B, Hkv, L, D]: the inputs' own when contiguous, else gathered from the pages once and kept."""
    if inputs["block_table"] is None:
        return inputs["k_cache"], inputs["v_cache"]
    if "contiguous" not in inputs:
        table, ctx = inputs["block_table"].long(), int(inputs["seq_lens"].max())

        def gather(cache):
            b, (_, _, hkv, d) = table.shape[0], cache.shape
            return cache[table].reshape(b, -1, hkv, d)[:, :ctx].transpose(1, 2).contiguous()

        inputs["contiguous"] = (gather(inputs["k_cache"]), gather(inputs["v_cache"]))
    return inputs["contiguous"]
