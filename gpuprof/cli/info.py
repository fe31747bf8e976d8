"""`gpuprof info`: the GPU and the software that drives it."""

from __future__ import annotations

import click

from gpuprof.cli.output import console, print_json
from gpuprof.device import info, software_versions


@click.command("info")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of text.")
def command(as_json: bool) -> None:
    """Show the GPU (name, SMs, memory, L2, clocks, driver, CUDA) and the versions of gpuprof's dependencies."""
    gpu = info()
    versions = software_versions()
    if as_json:
        print_json({"gpu": gpu.manifest() if gpu else None, "versions": versions})
        return
    if gpu is None:
        console.print("GPU: none visible (torch.cuda.is_available() is False); GPU commands will say so and stop.")
    else:
        console.print(f"GPU: {gpu.name} (compute capability {gpu.compute_capability})")
        console.print(f"  SMs: {gpu.sm_count}   memory: {gpu.memory_bytes / 2**30:.1f} GiB   L2: {gpu.l2_bytes / 2**20:.0f} MiB")
        clocks = f"SM {gpu.sm_clock_mhz} MHz (max {gpu.max_sm_clock_mhz}), memory {gpu.mem_clock_mhz} MHz (max {gpu.max_mem_clock_mhz})"
        console.print(f"  clocks now: {clocks}")
        console.print(f"  driver: {gpu.driver or 'unknown (NVML unavailable)'}   CUDA (torch build): {gpu.cuda}")
    console.print("Software: " + ", ".join(f"{k} {v or 'not installed'}" for k, v in versions.items()))
