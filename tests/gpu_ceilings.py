"""What the GPU performance tests compare against, measured in the test session itself (not read from files)."""

from __future__ import annotations

import functools

from gpuprof.bench import measure_point
from gpuprof.harness import TimingOptions
from gpuprof.ops import get_op

QUICK = TimingOptions(max_time_s=1.0)


def timed(kernel: str, impl: str, shape: dict, dtype: str = "bf16") -> dict:
    """A checked and timed record of one point, L2 cold as in `gpuprof bench` (status ok, or why not)."""
    import torch

    l2 = getattr(torch.cuda.get_device_properties(0), "L2_cache_size", 0)
    return measure_point(get_op(kernel), impl, shape, dtype, options=QUICK, l2_bytes=l2)


@functools.cache
def copy_gbps() -> float:
    """Device-to-device copy bandwidth (read + write counted) over 1 GiB, as `gpuprof peaks` measures it."""
    point = timed("copy", "torch", {"n": 2**29})
    assert point["status"] == "ok", point["error"]
    return point["gbps"]
