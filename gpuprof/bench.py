"""Measure one point: check the implementation against its reference, then time it, then make its record.

`measure_point` is the one path from an op to a record; `gpuprof bench`, `gpuprof sweep` and `gpuprof peaks`
all go through it, so every record is checked, timed and counted the same way.

Each point runs inside its own NVTX range (gpuprof.nvtx), whose message the record keeps as `nvtx_range`. Under
`gpuprof profile` (gpuprof.profile.ChildSession) the timing loop gives way to a few untimed calls for Nsight
Compute; with collectors (the NVML sampler), the calls run back to back for the collectors' window after timing.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Protocol

import torch

from gpuprof import harness, nvtx
from gpuprof.errors import GpuprofError, Unsupported
from gpuprof.ops.base import Op
from gpuprof.profile import ChildSession
from gpuprof.records import add_work, new_point

# Input sets rotate (instead of flushing L2) while this many sets fit the rotation budget.
_MAX_SETS = 64


class Collector(Protocol):
    """Counters gathered over a point's counter window (NVML sampler, ...); adds its columns to the record.

    After timing, the point's calls run back to back, without L2 flushes, for at least the largest
    `min_window_s` of the collectors (one without it needs no particular length), between `start` and `stop`;
    the record holds the window's length and calls (`counters_window_s`, `counters_window_calls`) before `stop`.
    """

    min_window_s: float

    def start(self, point: Mapping) -> None: ...

    def stop(self, point: Mapping) -> dict: ...


class CheckFailed(GpuprofError):
    pass


def relative_error(out: torch.Tensor, ref: torch.Tensor, *, per_row: bool = False) -> float:
    """||out - ref|| / ||ref|| in float64; NaN or inf anywhere in `out` gives inf.

    With `per_row`, the largest such error over the leading dimension (the sequences of a batch): one norm over
    everything lets a row with a large norm hide the errors of the others.
    """
    out64, ref64 = out.detach().double().cpu(), ref.detach().double().cpu()
    if out64.shape != ref64.shape:
        raise CheckFailed(f"output shape {tuple(out64.shape)} differs from the reference's {tuple(ref64.shape)}.")
    if not torch.isfinite(out64).all():
        return math.inf
    rows = out64.shape[0] if per_row else 1
    diff = (out64 - ref64).reshape(rows, -1).norm(dim=1)
    denom = ref64.reshape(rows, -1).norm(dim=1)
    return torch.where(denom > 0, diff / denom, diff).max().item()


def check(op: Op, impl: str, inputs: dict, dtype: str) -> float:
    """Run once on poisoned output and compare with the reference; raise CheckFailed beyond tolerance."""
    launch = op.launch(impl, inputs)
    if launch.out is not None:
        launch.out.fill_(math.nan) if launch.out.is_floating_point() else launch.out.fill_(-1)
    out = launch.run()
    err = relative_error(out, op.reference(inputs), per_row=op.error_per_row)
    tol = op.tolerance(dtype)
    if not err <= tol:
        what = "left elements unwritten or produced NaN/inf" if math.isinf(err) else f"relative error {err:.3g}"
        raise CheckFailed(f"{op.kernel}/{impl} {what} against the reference (tolerance {tol:g}).")
    return err


def rotation_sets(input_bytes: int, l2_bytes: int) -> int:
    """How many input sets to rotate through so that consecutive calls miss L2; 1 means flush instead."""
    if l2_bytes <= 0 or input_bytes >= 2 * l2_bytes:
        return 1
    sets = math.ceil(3 * l2_bytes / max(input_bytes, 1))
    return sets if sets <= _MAX_SETS else 1


def measure_point(
    op: Op,
    impl: str,
    shape: Mapping[str, int],
    dtype: str,
    *,
    device: str = "cuda",
    peaks: Mapping | None = None,
    options: harness.TimingOptions = harness.TimingOptions(),
    model: str | None = None,
    seed: int = 0,
    l2_bytes: int = 0,
    collectors: Sequence[Collector] = (),
    extra: Mapping | None = None,
) -> dict:
    """A complete record for one (op, impl, shape, dtype): status `ok` with timing, or why not.

    Out-of-memory, unsupported and failing points are recorded with their status and one sentence, never raised,
    so a sweep carries on with the rest.
    """
    point = new_point(kernel=op.kernel, impl=impl, model=model, dtype=dtype, **dict(shape), **dict(extra or {}))
    params = {**dict(shape), "dtype": dtype, "model": model}
    point["nvtx_range"] = nvtx.point_message(op.kernel, impl, nvtx.next_point_id(), params)
    profiling = ChildSession.from_env()
    with nvtx.nvtx_range(point["nvtx_range"]):
        _measure(op, impl, shape, dtype, point, device=device, peaks=peaks, options=options, seed=seed,
                 l2_bytes=l2_bytes, collectors=collectors, profiling=profiling)
    if profiling:
        profiling.record(point)
    return point


def _measure(op: Op, impl: str, shape: Mapping[str, int], dtype: str, point: dict, *, device: str,
             peaks: Mapping | None, options: harness.TimingOptions, seed: int, l2_bytes: int,
             collectors: Sequence[Collector], profiling: ChildSession | None) -> None:
    """Fill `point`: check, then time (or make the calls a profiler records), then count."""
    work = op.work(shape, dtype)
    point.update(bytes=work.bytes, flops=work.flops)
    reason = op.available(impl, device)
    if reason:
        point.update(status="unsupported", error=reason)
        return
    inputs: list[dict] = []
    try:
        per_set = op.input_bytes(shape, dtype)
        sets = rotation_sets(per_set, l2_bytes) if device != "cpu" else 1
        if sets > 1 and not _fits(per_set * sets, device):
            sets = 1  # flush L2 between calls instead
        if not _fits(per_set, device):
            raise _NoRoom(f"needs {per_set / 2**30:.2f} GiB of inputs, more than the device has free.")
        # Drawn on the device: a 16 GiB KV cache drawn on the CPU and copied over would take minutes.
        generator = torch.Generator(device=device).manual_seed(seed)
        inputs = [op.make_inputs(shape, dtype, device, generator) for _ in range(sets)]
        with nvtx.phase("check"):
            point["max_rel_err"] = check(op, impl, inputs[0], dtype)
        fns = [op.launch(impl, x).run for x in inputs]
        sync = _sync(device)
        if profiling:
            harness.run_for_profiler(fns, profiling.calls, options, sync)
            point.update(status="ok", input_sets=sets, profile_calls=profiling.calls, timing_method="none (profiled)")
            return
        if device == "cpu":
            timing = harness.time_cpu(fns, options)
        else:
            timing = harness.time_cuda(fns, options, l2_bytes=l2_bytes, rotating=sets > 1)
        point.update(timing.record(), input_sets=sets, status="ok")
        add_work(point, peaks)
        if collectors:
            try:
                point.update(_count(collectors, fns, sync, point))
            except CounterFailed as e:  # the timing stands; only the counter columns are missing
                point["counters_error"] = str(e)
    except MEASUREMENT_FAILURES as e:
        point.update(failure(e, oom=f"out of device memory for {op.input_bytes(shape, dtype)} bytes of inputs."))
    finally:
        del inputs
        if device != "cpu" and torch.cuda.is_available():
            torch.cuda.empty_cache()


def _sync(device: str):
    return (lambda: None) if device == "cpu" else torch.cuda.synchronize


def _count(collectors: Sequence[Collector], fns, sync, point: dict) -> dict:
    """The collectors' columns over one window of back-to-back calls (see Collector)."""
    seconds = max(getattr(c, "min_window_s", 0.0) for c in collectors)  # 0: one batch of calls will do
    call_s = point["time_us"] * 1e-6
    started: list[Collector] = []
    calls, elapsed = 0, 0.0
    try:
        # Starting inside the try: when one collector fails to start, those already started (a sampling thread)
        # are still stopped, and the failure ends up in the point's record.
        for c in collectors:
            _collector_step(c, "start", point)
            started.append(c)
        calls, elapsed = harness.sustain(fns, seconds, sync, call_s)
    finally:
        window = {"counters_window_s": elapsed, "counters_window_calls": calls,
                  # the share of the window the kernel itself ran: below ~90%, launch gaps dilute the averages
                  "counters_busy_pct": 100.0 * calls * call_s / elapsed if elapsed > 0 else None}
        point.update(window)
        counters = {}
        for c in started:
            counters.update(_collector_step(c, "stop", point))
    return {**window, **counters}


class CounterFailed(GpuprofError):
    pass


def _collector_step(collector: Collector, step: str, point: dict):
    """collector.start or .stop; any failure as CounterFailed, which the point records instead of raising."""
    try:
        return getattr(collector, step)(point)
    except MEASUREMENT_FAILURES:
        raise
    except Exception as e:  # a collector's own error type (pynvml.NVMLError, ...): recorded, not raised
        raise CounterFailed(f"the {type(collector).__name__} counters failed to {step}: {e}") from e


class _NoRoom(GpuprofError):
    pass


# What a point records instead of raising: the sweep carries on past each of these.
MEASUREMENT_FAILURES = (Unsupported, _NoRoom, CheckFailed, CounterFailed, RuntimeError, ValueError)


def failure(e: BaseException, oom: str) -> dict:
    """The `status` and one-sentence `error` of a point that could not be measured (`oom`: what ran out)."""
    if isinstance(e, Unsupported):
        return {"status": "unsupported", "error": str(e)}
    if isinstance(e, torch.cuda.OutOfMemoryError):
        return {"status": "oom", "error": oom}
    if isinstance(e, _NoRoom):
        return {"status": "oom", "error": str(e)}
    if isinstance(e, GpuprofError):
        return {"status": "error", "error": str(e)}
    text = str(e).strip()
    return {"status": "error", "error": f"{type(e).__name__}: {text.splitlines()[0] if text else ''}".rstrip(": ")}


def _fits(nbytes: int, device: str) -> bool:
    """Whether inputs fit in free device memory, asked before allocating (a failed giant allocation is slow)."""
    if device == "cpu" or not torch.cuda.is_available():
        return True
    free, _ = torch.cuda.mem_get_info()
    return nbytes <= 0.9 * free
