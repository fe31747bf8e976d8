"""Hardware counters gathered alongside the timing: NVML device sampling (`nvml`) and Nsight Compute (`ncu`).

`nvml` watches the whole device while a point's calls run back to back (GPM utilisations, power, clocks,
energy); `ncu` reads per-kernel counters from a separate, untimed run under Nsight Compute (gpuprof.profile
drives it). Both end as columns of the point records: `nvml_*` and `ncu_<metric with dots as underscores>`.
"""

COUNTERS = ("nvml", "ncu")
