"""Fit a calibration from a sweep run: per kernel, effective GB/s, TFLOP/s and a fixed cost per call.

The calibration models gpuprof's own decode step, so for each measured shape the fastest implementation that
passed its check *and that the decode step can run* is kept: paged attention in triton or cuda (the torch SDPA
points are baselines the step never uses, recorded with page_size 0), and for linear any implementation (the step
picks the faster of GEMV and cuBLAS per shape). Shapes are grouped without page_size, so each attention shape
gives one point. Its time is fitted to overhead_us + max(bytes / bandwidth, flops / compute), bytes and FLOPs
counted by `gpuprof.advisor.work` (the counts the advisor predicts with), by least squares on log time: every
point weighs by its relative error, so microsecond kernels count as much as millisecond ones. The three parameters are found
by a grid search refined around the best cell, which needs no starting guess and cannot diverge.

A rate the run cannot show (no point was compute-bound, as for decode attention) is taken from the run's
ceilings and marked so, and never set below what the points imply.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path

import numpy as np

from gpuprof.advisor.calibration import FORMAT, KERNELS, STEP_OVERHEAD_UNMEASURED, KernelFit, default_path
from gpuprof.advisor.work import Work, attention_work, linear_work
from gpuprof.device import git_commit
from gpuprof.errors import GpuprofError
from gpuprof.ops.base import dtype_bytes
from gpuprof.records import TRACES, Run, utc_now, write_json

MIN_POINTS = 3
# The implementations the decode step can run, per kernel (None: every one). Attention matches
# gpuprof.ops.attention.IMPLS, not imported here because calibrate must run without triton.
STEP_IMPLS: dict[str, tuple[str, ...] | None] = {"attention": ("triton", "cuda"), "linear": None}
# What makes two points the same work: the advisor's counting needs nothing else (page_size changes neither).
WORK_KEYS = {"attention": ("batch", "ctx", "hq", "hkv", "head_dim"), "linear": ("m", "n", "k")}
_GRID = 24  # cells per parameter and round
_ROUNDS = 5


def point_work(point: Mapping, size: int) -> Work | None:
    """Bytes and FLOPs of a recorded point by the advisor's counting; None where its shape is incomplete."""
    keys = WORK_KEYS["attention" if point["kernel"] == "attention" else "linear"]
    if any(not isinstance(point.get(k), (int, float)) or point[k] <= 0 for k in keys):
        return None
    if point["kernel"] == "attention":
        return attention_work(*(point[k] for k in keys), size)
    return linear_work(*(point[k] for k in keys), size)


def step_can_run(kernel: str, impl: str | None) -> bool:
    """Whether the decode step could run this implementation of `kernel`."""
    allowed = STEP_IMPLS.get(kernel)
    return allowed is None or impl in allowed


def fastest_points(points: list[dict], kernel: str) -> list[dict]:
    """One point per shape of the same work: the fastest ok implementation the decode step can use."""
    best: dict[tuple, dict] = {}
    for p in points:
        if p.get("kernel") != kernel or p.get("status") != "ok" or not (p.get("time_us") or 0) > 0:
            continue
        if not step_can_run(kernel, p.get("impl")):
            continue
        key = tuple(p.get(k) for k in WORK_KEYS[kernel])
        if key not in best or p["time_us"] < best[key]["time_us"]:
            best[key] = p
    return list(best.values())


def roofline_us(nbytes: np.ndarray, flops: np.ndarray, gbps, tflops, overhead_us) -> np.ndarray:
    return overhead_us + np.maximum(nbytes / (gbps * 1e3), flops / (tflops * 1e6))


def fit_roofline(nbytes: np.ndarray, flops: np.ndarray, time_us: np.ndarray) -> tuple[float, float, float]:
    """(GB/s, TFLOP/s, overhead_us) minimising the mean squared log error, by a refined grid search."""
    log_t = np.log(time_us)
    achieved_gbps, achieved_tflops = (nbytes / time_us / 1e3).max(), (flops / time_us / 1e6).max()
    # Rates at least half the best achieved (overheads only make them look lower); the compute range reaches far
    # above, so a kernel that never hits its compute roof fits as purely memory-bound.
    # Searched: log GB/s, log TFLOP/s, and the overhead itself, from 0 to just below the fastest time.
    lo = np.array([np.log(0.5 * achieved_gbps), np.log(0.5 * achieved_tflops), 0.0])
    hi = np.array([np.log(20 * achieved_gbps), np.log(1e4 * achieved_tflops), 0.98 * time_us.min()])
    best = None
    for _ in range(_ROUNDS):
        bw = np.exp(np.linspace(lo[0], hi[0], _GRID))[:, None, None]
        tf = np.exp(np.linspace(lo[1], hi[1], _GRID))[None, :, None]
        for c in np.linspace(lo[2], hi[2], _GRID):
            err = ((np.log(roofline_us(nbytes, flops, bw, tf, c)) - log_t) ** 2).mean(axis=2)
            i, j = np.unravel_index(err.argmin(), err.shape)
            if best is None or err[i, j] < best[0]:
                best = (err[i, j], np.log(bw[i, 0, 0]), np.log(tf[0, j, 0]), c)
        # Zoom in: the next grid spans two cells either side of the best one.
        step = (hi - lo) / (_GRID - 1)
        centre = np.array(best[1:])
        lo, hi = centre - 2 * step, centre + 2 * step
        lo[2], hi[2] = max(lo[2], 0.0), min(hi[2], 0.98 * time_us.min())
    _, log_bw, log_tf, overhead = best
    return float(np.exp(log_bw)), float(np.exp(log_tf)), float(overhead)


def fit_kernel(points: list[dict], size: int, ceilings: Mapping, dtype: str,
               eligible_impls: list[str] | None = None) -> KernelFit:
    """Fit one kernel's fastest points; rates the points cannot show come from the run's ceilings."""
    works = [(p, w) for p in points if (w := point_work(p, size)) is not None]
    nbytes = np.array([w.bytes for _, w in works])
    flops = np.array([w.flops for _, w in works])
    time_us = np.array([p["time_us"] for p, _ in works])
    gbps, tflops, overhead = fit_roofline(nbytes, flops, time_us)
    details = {"points": len(works), "gbps_source": "fitted", "tflops_source": "fitted"}

    def loss(g: float, t: float) -> float:
        return float(((np.log(roofline_us(nbytes, flops, g, t, overhead)) - np.log(time_us)) ** 2).mean())

    # A roof is kept only where the points need it: if removing it (rate = infinity) worsens the fit by less than
    # a quarter, the points cannot show that rate (a grid cell at the ridge fits the noise a hair better, no
    # more), so take the run's ceiling, raised where needed to keep every point on its side of the roof.
    fitted = loss(gbps, tflops) * 1.25 + 1e-6
    if loss(gbps, np.inf) <= fitted:
        tflops, details["tflops_source"] = _unseen_rate(
            "compute", ceilings, f"{dtype}_tflops", float((flops / nbytes).max() * gbps / 1e3))
    elif loss(np.inf, tflops) <= fitted:
        gbps, details["gbps_source"] = _unseen_rate(
            "memory", ceilings, "copy_gbps", float((nbytes / flops).max() * tflops * 1e3))
    memory_bound = nbytes / (gbps * 1e3) >= flops / (tflops * 1e6)
    details.update(memory_bound_points=int(memory_bound.sum()), compute_bound_points=int((~memory_bound).sum()))
    predicted = roofline_us(nbytes, flops, gbps, tflops, overhead)
    rel_err = np.abs(predicted - time_us) / time_us
    impls = [p.get("impl") for p, _ in works]
    counts = {i: impls.count(i) for i in sorted(set(impls), key=str)}
    recorded = [p["bytes"] / w.bytes for p, w in works if p.get("bytes")]
    details.update(median_rel_err=float(np.median(rel_err)), max_rel_err=float(rel_err.max()),
                   fastest_impls=counts, eligible_impls=eligible_impls,
                   recorded_bytes_ratio=float(np.median(recorded)) if recorded else None)
    return KernelFit(gbps, tflops, overhead, max(counts, key=counts.get), details)


def eligible_impls(points: list[dict], kernel: str) -> list[str]:
    """The run's ok implementations of `kernel` that the fit chose among (for the record in the fit details)."""
    found = {p.get("impl") for p in points if p.get("kernel") == kernel and p.get("status") == "ok"}
    return sorted((i for i in found if step_can_run(kernel, i)), key=str)


def _counted(kernel: str) -> str:
    """For the too-few-shapes error: which implementations were counted, where not all of them."""
    allowed = STEP_IMPLS.get(kernel)
    return f" (counting {', '.join(allowed)}: the implementations the decode step runs)" if allowed else ""


def _unseen_rate(bound: str, ceilings: Mapping, key: str, floor: float) -> tuple[float, str]:
    """The run's ceiling for a rate no point was limited by, never below the `floor` the points imply."""
    why = f"not identifiable (no {bound}-bound point): "
    ceiling = float(ceilings.get(key) or 0.0)
    if ceiling >= floor:
        return ceiling, why + f"the run's {key} ceiling"
    return floor, why + f"the least rate that keeps every point off the {bound} roof"


def _run_dtype(points: list[dict], dtype: str | None, run: Path) -> str:
    """The dtype to fit: the one asked for, else the run's only one."""
    found = sorted({p.get("dtype") for p in points if p.get("kernel") in KERNELS and p.get("status") == "ok"}, key=str)
    listed = ", ".join(map(str, found))
    if not found:
        raise GpuprofError(f"{run} holds no ok attention or linear points; "
                           "calibrate a `gpuprof sweep` run of both kernels.")
    if dtype is not None and dtype not in found:
        raise GpuprofError(f"{run} has no ok attention or linear points in {dtype} (it has {listed}).")
    if dtype is None and len(found) > 1:
        raise GpuprofError(f"{run} holds several dtypes ({listed}); choose one with --dtype.")
    return dtype or found[0]


def fit_run(path: Path, dtype: str | None = None, step_overhead_us: float = 0.0) -> dict:
    """The calibration of one sweep run, as calibration.json holds it."""
    run = Run.open(path)
    manifest = run.manifest()
    gpu = manifest.get("gpu") or {}
    if not gpu.get("name"):
        raise GpuprofError(f"{path} was not measured on a GPU (its manifest names none); calibrate a GPU sweep run.")
    if step_overhead_us < 0:
        raise GpuprofError("--step-overhead-us must not be negative.")
    points = run.points()
    dtype = _run_dtype(points, dtype, path)
    size = dtype_bytes(dtype)
    ceilings = manifest.get("peaks") or {}
    kernels = {}
    for kernel in KERNELS:
        in_dtype = [p for p in points if p.get("dtype") == dtype]
        chosen = [p for p in fastest_points(in_dtype, kernel) if point_work(p, size)]
        if len(chosen) < MIN_POINTS:
            raise GpuprofError(f"{path} has {len(chosen)} ok {kernel} shapes in {dtype}; a calibration needs at least "
                               f"{MIN_POINTS} of each kernel ({', '.join(KERNELS)}), from `gpuprof sweep`"
                               f"{_counted(kernel)}.")
        kernels[kernel] = asdict(fit_kernel(chosen, size, ceilings, dtype, eligible_impls(in_dtype, kernel)))
    return {
        "format": FORMAT,
        "dtype": dtype,
        "kernels": kernels,
        "step_overhead_us": step_overhead_us,
        "step_overhead_source": "--step-overhead-us" if step_overhead_us else STEP_OVERHEAD_UNMEASURED,
        "provenance": {
            "run": str(path),
            "gpu": gpu["name"],
            "git_commit": manifest.get("git_commit"),
            "run_started_at": manifest.get("started_at"),
            "run_command": manifest.get("command"),
            "ceilings_source": ceilings.get("source"),
            "created_at": utc_now(),
            "calibrated_with": git_commit(),
        },
    }


def calibrate(path: Path, out: Path | None = None, dtype: str | None = None, step_overhead_us: float = 0.0,
              root: Path = TRACES) -> tuple[dict, list[Path]]:
    """Fit a run and write RUN/calibration.json and `out` (default traces/<gpu-slug>/calibration.json)."""
    calibration = fit_run(Path(path), dtype, step_overhead_us)
    targets = [Path(path) / "calibration.json", out or default_path(calibration["provenance"]["gpu"], root)]
    for target in targets:
        write_json(target, calibration)
    return calibration, targets
