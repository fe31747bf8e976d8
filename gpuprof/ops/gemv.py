"""GEMV / skinny GEMM, the weight products of a decode step: y[M, N] = x[M, K] @ W[N, K]^T (+ bias[N]), M small.

The public launcher (validation shared by every implementation, then dispatch: `impl="triton"` here,
`impl="cuda"` in `gpuprof.cuda.gemv`), the split-K plan and the tuned configurations per (M bucket, N, K), the
float32/float64 reference, the exact work of a call, and the `gemv` Op that `gpuprof bench` times against cuBLAS
(`F.linear`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

import torch
import triton

from gpuprof.errors import GpuprofError, Unsupported
from gpuprof.ops.backends import cuda_module, unavailable
from gpuprof.ops.base import Launch, Op, Work, dtype_bytes, torch_dtype
from gpuprof.ops.checks import (HALF_DTYPES, describe, require_half, require_last_dim_contiguous,
                                require_no_overlap, require_same_device, require_same_dtype, require_tensors)
from gpuprof.ops.tuning import choose, sm_count

IMPLS = ("triton", "cuda")
MAX_M = 256

# Split-K plan: aim for this many programs per SM (small GEMV programs; several resident per SM keep enough
# loads in flight) ...
PROGRAMS_PER_SM = 4
# ... without cutting K into pieces shorter than this.
MIN_SPLIT_K = 1024
MAX_SPLIT_K = 16


def check_gemv_inputs(
    x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None = None, out: torch.Tensor | None = None
) -> tuple[int, int, int]:
    """Validate a gemv call and return (M, N, K); raise GpuprofError with one sentence naming the first problem."""
    require_tensors([("x", x), ("w", w)])
    require_tensors([(n, t) for n, t in (("bias", bias), ("out", out)) if t is not None])
    if x.dim() != 2 or min(x.shape) < 1:
        raise GpuprofError(f"x must have shape [M, K] with M and K at least 1; it has shape {tuple(x.shape)}.")
    m, k = x.shape
    if w.dim() != 2 or w.shape[1] != k or w.shape[0] < 1:
        raise GpuprofError(f"w must have shape [N, K] with K = {k} (x's); it has shape {tuple(w.shape)}.")
    n = w.shape[0]
    require_half("x", x)
    require_same_device("x", x, [("w", w), ("bias", bias), ("out", out)])
    require_same_dtype("x", x, [("w", w), ("bias", bias), ("out", out)])
    if bias is not None and tuple(bias.shape) != (n,):
        raise GpuprofError(f"bias must have shape ({n},) (w's N); it is {describe(bias)}.")
    if out is not None and tuple(out.shape) != (m, n):
        raise GpuprofError(f"out must have shape ({m}, {n}); it is {describe(out)}.")
    require_last_dim_contiguous([("x", x), ("w", w), ("bias", bias), ("out", out)])
    require_no_overlap(out, [("x", x), ("w", w), ("bias", bias)])
    return m, n, k


def m_bucket(m: int) -> int:
    """Rows of x grouped for tuning: 1 (the register path), then powers of two from 16 (tl.dot's minimum)."""
    return 1 if m == 1 else max(16, triton.next_power_of_2(m))


def plan_split_k(tiles: int, k: int, sm_count: int) -> int:
    """K splits: 1 when the output tiles alone give PROGRAMS_PER_SM programs per SM, else enough splits to get
    there, each at least MIN_SPLIT_K long."""
    target = PROGRAMS_PER_SM * sm_count
    if tiles >= target:
        return 1
    return max(1, min(triton.cdiv(target, tiles), k // MIN_SPLIT_K, MAX_SPLIT_K))


# Tile shapes per M bucket, (block_m, block_n, block_k), the planned default first. M == 1 streams W through
# registers (block_n rows x block_k, 4K-8K elements per iteration); larger M uses tl.dot tiles.
_TILES = {
    1: [(1, 8, 512), (1, 4, 1024), (1, 16, 256), (1, 16, 512), (1, 8, 1024)],
    16: [(16, 32, 256), (16, 16, 512), (16, 64, 128), (16, 32, 128), (16, 16, 256)],
    32: [(32, 32, 256), (32, 64, 128), (32, 32, 128), (32, 16, 256)],
    64: [(64, 64, 128), (64, 32, 128), (64, 64, 64), (64, 128, 64)],
    128: [(64, 64, 128), (128, 64, 64), (64, 128, 64), (64, 64, 64)],
    256: [(64, 64, 128), (128, 64, 64), (64, 128, 64), (128, 128, 64)],
}


def gemv_candidates(m: int, n: int, k: int, sms: int) -> list:
    """Configurations to try for this shape, the planned default first."""
    from gpuprof.kernels.gemv import GemvConfig

    configs = []
    for i, (block_m, block_n, block_k) in enumerate(_TILES[m_bucket(m)]):
        split = plan_split_k(triton.cdiv(m, block_m) * triton.cdiv(n, block_n), k, sms)
        warps = 8 if block_m * block_n >= 64 * 128 else 4
        base = GemvConfig(block_m, block_n, block_k, split_k=split, num_warps=warps, num_stages=3)
        configs += [base] + [replace(base, split_k=s) for s in (1, min(2 * split, MAX_SPLIT_K))]
        if i == 0:  # launch parameters, tried on the default tile only
            configs += [replace(base, num_stages=4 if block_m > 1 else 1), replace(base, num_warps={4: 8, 8: 4}[warps])]
    return list(dict.fromkeys(configs))


def gemv(
    x: torch.Tensor,
    w: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    impl: str = "triton",
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """y[M, N] = x[M, K] @ w[N, K]^T (+ bias[N]), fp16/bf16 with float32 accumulation, into `out` when given.

    impl "cublas" is torch's F.linear (any M). For "triton" and "cuda", M runs from 1 to 256; a larger M is a
    GEMM (Unsupported). Last dimensions must be contiguous.
    """
    m, n, k = check_gemv_inputs(x, w, bias, out)
    if impl == "cublas":
        y = torch.nn.functional.linear(x, w, bias)
        return y if out is None else out.copy_(y)
    if impl not in IMPLS:
        raise GpuprofError(f"gemv has no implementation {impl!r}; valid: {', '.join(IMPLS + ('cublas',))}.")
    if m > MAX_M:
        raise Unsupported(f"gemv/{impl} takes M from 1 to {MAX_M}, not {m}; a larger M is a GEMM (use F.linear).")
    if impl == "cuda":
        return cuda_module("gemv").gemv(x, w, bias, out=out)
    from gpuprof.kernels.gemv import gemv_fwd

    out = torch.empty((m, n), dtype=x.dtype, device=x.device) if out is None else out
    key = f"gemv|{str(x.dtype).removeprefix('torch.')}|m{m_bucket(m)}|n{n}|k{k}|bias{int(bias is not None)}"
    config = choose(key, gemv_candidates(m, n, k, sm_count(x.device)),
                    lambda c: gemv_fwd(x, w, bias, out, c), x.device)
    return gemv_fwd(x, w, bias, out, config)


def gemv_reference(
    x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None = None, *, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """x @ w^T (+ bias) computed in `dtype` (float32 by default)."""
    y = x.to(dtype) @ w.to(dtype).T
    return y + bias.to(dtype) if bias is not None else y


def gemv_work(m: int, n: int, k: int, dtype_bytes: int, bias: bool = False) -> Work:
    """The minimum a call must move and compute.

    Bytes: x (M*K), W (N*K) and the bias (N) read once, y (M*N) written once; split-K partials and any re-read of
    W by several M blocks are the implementation's overhead, not counted. FLOPs: 2*M*N*K multiply-adds, plus M*N
    additions of the bias.
    """
    elements = m * k + n * k + m * n + (n if bias else 0)
    return Work(bytes=elements * dtype_bytes, flops=2 * m * n * k + (m * n if bias else 0))


class Gemv(Op):
    """y = x @ W^T at one (M, N, K), no bias; cublas is torch's F.linear."""

    kernel = "gemv"
    impls = IMPLS + ("cublas",)
    shape_keys = ("m", "n", "k")
    defaults = {"m": 1, "n": 4096, "k": 4096}

    def shape(self, **given: int) -> dict[str, int]:
        s = {key: int(given.get(key, self.defaults[key])) for key in self.shape_keys}
        small = [key for key in self.shape_keys if s[key] < 1]
        if small:
            raise GpuprofError(f"gemv's {small[0]} must be at least 1.")
        return s

    def work(self, shape: Mapping[str, int], dtype: str) -> Work:
        return gemv_work(shape["m"], shape["n"], shape["k"], dtype_bytes(dtype))

    def input_bytes(self, shape: Mapping[str, int], dtype: str) -> int:
        return self.work(shape, dtype).bytes

    def make_inputs(self, shape, dtype, device, generator) -> dict:
        t = torch_dtype(dtype)
        gen = generator  # a generator of `device` (bench.measure_point makes one there)
        m, n, k = shape["m"], shape["n"], shape["k"]
        return {"x": torch.randn((m, k), dtype=t, device=device, generator=gen),
                "w": torch.randn((n, k), dtype=t, device=device, generator=gen),
                "out": torch.empty((m, n), dtype=t, device=device)}

    def available(self, impl: str, device: str) -> str | None:
        return unavailable("gemv", impl, device)

    def launch(self, impl: str, inputs: dict) -> Launch:
        x, w, out = inputs["x"], inputs["w"], inputs["out"]
        if impl == "cublas":
            return Launch(run=lambda: torch.nn.functional.linear(x, w))
        if impl not in IMPLS:
            raise Unsupported(f"gemv has no implementation {impl!r}; it has {', '.join(self.impls)}.")
        if x.dtype not in HALF_DTYPES:
            raise Unsupported(f"gemv/{impl} takes float16 and bfloat16, not {x.dtype}.")
        if x.shape[0] > MAX_M:
            raise Unsupported(f"gemv/{impl} takes M from 1 to {MAX_M}, not {x.shape[0]}.")
        return Launch(run=lambda: gemv(x, w, impl=impl, out=out), out=out)

    def reference(self, inputs: dict) -> torch.Tensor:
        return gemv_reference(inputs["x"], inputs["w"], dtype=torch.float64)
