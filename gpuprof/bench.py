"""Measure one point: check the implementation against its reference, then time it, then make its record.

`measure_point` is the one path from an op to a record; `gpuprof bench`, `gpuprof sweep` and `gpuprof peaks`
all go through it, so every record is checked, timed and counted the same way.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Protocol

import torch

from gpuprof import harness
from gpuprof.errors import GpuprofError, Unsupported
from gpuprof.ops.base import Op
from gpuprof.records import add_work, new_point

# Input sets rotate (instead of flushing L2) while this many sets fit the rotation budget.
_MAX_SETS = 64


class Collector(Protocol):
    """Counters gathered while a point is timed (NVML sampler, ...); adds its columns to the record."""

    def start(self, point: Mapping) -> None: ...

    def stop(self, point: Mapping) -> dict: ...


class CheckFailed(GpuprofError):
    pass


def relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    """||out - ref|| / ||ref|| in float64; NaN or inf anywhere in `out` gives inf."""
    out64, ref64 = out.detach().double().cpu(), ref.detach().double().cpu()
    if out64.shape != ref64.shape:
        raise CheckFailed(f"output shape {tuple(out64.shape)} differs from the reference's {tuple(ref64.shape)}.")
    if not torch.isfinite(out64).all():
        return math.inf
    denom = ref64.norm().item()
    diff = (out64 - ref64).norm().item()
    return diff / denom if denom > 0 else diff


def check(op: Op, impl: str, inputs: dict, dtype: str) -> float:
    """Run once on poisoned output and compare with the reference; raise CheckFailed beyond tolerance."""
    launch = op.launch(impl, inputs)
    if launch.out is not None:
        launch.out.fill_(math.nan) if launch.out.is_floating_point() else launch.out.fill_(-1)
    out = launch.run()
    err = relative_error(out, op.reference(inputs))
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
    work = op.work(shape, dtype)
    point.update(bytes=work.bytes, flops=work.flops)
    reason = op.available(impl, device)
    if reason:
        point.update(status="unsupported", error=reason)
        return point
    inputs: list[dict] = []
    try:
        per_set = op.input_bytes(shape, dtype)
        sets = rotation_sets(per_set, l2_bytes) if device != "cpu" else 1
        if sets > 1 and not _fits(per_set * sets, device):
            sets = 1  # flush L2 between calls instead
        if not _fits(per_set, device):
            raise _NoRoom(f"needs {per_set / 2**30:.2f} GiB of inputs, more than the device has free.")
        generator = torch.Generator().manual_seed(seed)
        inputs = [op.make_inputs(shape, dtype, device, generator) for _ in range(sets)]
        point["max_rel_err"] = check(op, impl, inputs[0], dtype)
        fns = [op.launch(impl, x).run for x in inputs]
        for c in collectors:
            c.start(point)
        try:
            if device == "cpu":
                timing = harness.time_cpu(fns, options)
            else:
                timing = harness.time_cuda(fns, options, l2_bytes=l2_bytes, rotating=sets > 1)
        finally:
            counters = {}
            for c in collectors:
                counters.update(c.stop(point))
        point.update(timing.record(), input_sets=sets, status="ok", **counters)
        add_work(point, peaks)
    except Unsupported as e:
        point.update(status="unsupported", error=str(e))
    except torch.cuda.OutOfMemoryError:
        point.update(status="oom", error=f"out of device memory for {op.input_bytes(shape, dtype)} bytes of inputs.")
    except _NoRoom as e:
        point.update(status="oom", error=str(e))
    except CheckFailed as e:
        point.update(status="error", error=str(e))
    except (RuntimeError, ValueError) as e:
        point.update(status="error", error=f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e) else ''}")
    finally:
        del inputs
        if device != "cpu" and torch.cuda.is_available():
            torch.cuda.empty_cache()
    return point


class _NoRoom(GpuprofError):
    pass


def _fits(nbytes: int, device: str) -> bool:
    """Whether inputs fit in free device memory, asked before allocating (a failed giant allocation is slow)."""
    if device == "cpu" or not torch.cuda.is_available():
        return True
    free, _ = torch.cuda.mem_get_info()
    return nbytes <= 0.9 * free
