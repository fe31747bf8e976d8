"""Synthetic sweep runs for the advisor and calibration tests: points drawn from a known time model.

Only for tests (written under tmp_path): traces/ holds real GPU measurements only.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from gpuprof.advisor.work import attention_work, linear_work
from gpuprof.models import get_model
from gpuprof.records import Run, add_work, new_point

GPU = "NVIDIA H100 80GB HBM3"
PEAKS = {"copy_gbps": 3000.0, "read_gbps": 3100.0, "fp16_tflops": 700.0, "bf16_tflops": 700.0, "fp32_tflops": 50.0,
         "source": "synthetic test ceilings"}
# The truth the fit should find: (GB/s, TFLOP/s, overhead µs) per kernel.
ATTENTION_TRUTH = (2800.0, None, 6.0)  # decode attention never reaches its compute roof
LINEAR_TRUTH = (3000.0, 600.0, 4.0)
BATCHES = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


def true_us(work, truth) -> float:
    gbps, tflops, overhead = truth
    compute = work.flops / (tflops * 1e6) if tflops else 0.0
    return overhead + max(work.bytes / (gbps * 1e3), compute)


def manifest(gpu: str | None = GPU) -> dict:
    return {"gpu": {"name": gpu, "sm_count": 132, "memory_bytes": 80 << 30, "l2_bytes": 50 << 20, "driver": "test",
                    "cuda": "test"} if gpu else None,
            "versions": {}, "git_commit": "abc1234", "command": "gpuprof sweep --model llama-2-7b",
            "started_at": "2025-01-01T00:00:00+00:00", "peaks": PEAKS, "grid": {}}


def _point(kernel, impl, dtype, work, time_us, **shape):
    p = new_point(kernel=kernel, impl=impl, model="llama-2-7b", dtype=dtype, status="ok", time_us=time_us,
                  bytes=work.bytes, flops=work.flops, **shape)
    return add_work(p, PEAKS)


def attention_points(dtype="bf16", noise=0.02, seed=0, models=("llama-2-7b", "llama-3-8b")):
    rng = np.random.default_rng(seed)
    points = []
    for name in models:
        m = get_model(name)
        for batch in BATCHES:
            for ctx in (512, 2048):
                shape = dict(batch=batch, ctx=ctx, hq=m.heads, hkv=m.kv_heads, head_dim=m.head_dim, page_size=16)
                work = attention_work(batch, ctx, m.heads, m.kv_heads, m.head_dim, 2)
                t = true_us(work, ATTENTION_TRUTH) * float(np.exp(rng.normal(0, noise)))
                points.append(_point("attention", "triton", dtype, work, t, **shape))
                points.append(_point("attention", "torch-sdpa-math", dtype, work, 3 * t, **shape))
    # Points that did not run are kept in a run and must be ignored by the fit.
    points.append(new_point(kernel="attention", impl="cuda", dtype=dtype, status="oom", batch=4096, ctx=2048, hq=32,
                            hkv=32, head_dim=128, page_size=16, error="the inputs need 80 GiB."))
    return points


def linear_points(dtype="bf16", noise=0.02, seed=1):
    rng = np.random.default_rng(seed)
    points = []
    for lin in get_model("llama-2-7b").linears():
        for batch in BATCHES:
            work = linear_work(batch, lin.n, lin.k, 2)
            t = true_us(work, LINEAR_TRUTH) * float(np.exp(rng.normal(0, noise)))
            shape = dict(batch=batch, m=batch, n=lin.n, k=lin.k, layer=lin.name, count=lin.count)
            points.append(_point("linear", "cublas", dtype, work, t, **shape))
            points.append(_point("linear", "cuda", dtype, work, t * (1.05 if batch > 8 else 1.5), **shape))
    points.append(new_point(kernel="linear", impl="triton", dtype=dtype, status="unsupported", batch=512, m=512,
                            n=4096, k=4096, error="triton supports m up to 256."))
    return points


def make_run(path: Path, points: list[dict] | None = None, gpu: str | None = GPU) -> Path:
    run = Run.create(path, manifest(gpu))
    for p in attention_points() + linear_points() if points is None else points:
        run.append(p)
    return path
