"""Hardware counters gathered alongside the timing: NVML device sampling (`nvml`) and Nsight Compute (`ncu`).

`nvml` watches the whole device while a point's calls run back to back (GPM utilisations, power, clocks,
energy); `ncu` reads per-kernel counters from a separate, untimed run under Nsight Compute (gpuprof.profile
drives it). Both end as columns of the point records: `nvml_*` and `ncu_<metric with dots as underscores>`.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence

from gpuprof.errors import GpuprofError

COUNTERS = ("nvml", "ncu")


def _stderr(message: str) -> None:
    print(message, file=sys.stderr)


def make_collectors(names: Sequence[str], notify: Callable[[str], None] = _stderr) -> list:
    """Collectors (gpuprof.bench.Collector) for counter names; NVML that cannot run is said once and left out.

    `ncu` is no collector: its counters come from a second, untimed run under Nsight Compute, which `gpuprof
    bench --counters ncu` makes itself and `gpuprof profile -- <any gpuprof command>` makes for anything else.
    """
    unknown = [n for n in names if n not in COUNTERS]
    if unknown:
        raise GpuprofError(f"unknown counters {', '.join(unknown)}; valid: {', '.join(COUNTERS)}.")
    if "ncu" in names:
        raise GpuprofError("ncu counters need a separate, untimed run under Nsight Compute: run this command as "
                           "`gpuprof profile -- gpuprof ...` (or `gpuprof bench --counters ncu`).")
    if "nvml" not in names:
        return []
    from gpuprof.counters.nvml import NvmlSampler
    from gpuprof.device import current_cuda_index

    # The device the benchmark runs on (torch's current one), not NVML's device 0.
    sampler = NvmlSampler.open(current_cuda_index(), notify=notify)
    return [sampler] if sampler else []
