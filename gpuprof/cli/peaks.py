"""`gpuprof peaks`: measure this GPU's ceilings (or show the ones a report would use)."""

from __future__ import annotations

from pathlib import Path

import click

from gpuprof import peaks as peaks_lib
from gpuprof.cli.output import console, print_json, print_table
from gpuprof.device import git_commit, info, require_gpu
from gpuprof.records import check_writable, command_line, write_json


@click.command("peaks")
@click.option("--out", type=click.Path(path_type=Path),
              help="Where to write peaks.json [traces/<gpu-slug>/peaks.json; peaks-quick.json with --quick].")
@click.option("--show", is_flag=True, help="Only show the ceilings reports would use (measured file, else datasheet).")
@click.option("--gpu", "gpu_name", help="With --show: the GPU name to look up, where this machine has none.")
@click.option("--quick", is_flag=True, help="Smaller copy (256 MiB) and matmul (4096^3): a rough check in seconds.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def command(out: Path | None, show: bool, gpu_name: str | None, quick: bool, as_json: bool) -> None:
    """Measure DRAM bandwidth (copy, read-only stream) and matmul TFLOP/s (fp16, bf16, fp32) on this GPU."""
    if show:
        gpu = info()
        name = gpu_name or (gpu.name if gpu else None)
        if name is None:
            raise click.UsageError("no GPU is visible here; name one with --gpu, e.g. --gpu 'NVIDIA H100 80GB HBM3'.")
        found = peaks_lib.load(name, path=out)
        if as_json:
            print_json(found)
        else:
            print_table([{"ceiling": k, "value": v} for k, v in found.items()], ["ceiling", "value"], title=name)
        return
    require_gpu("gpuprof peaks")
    gpu = info()
    # A rough --quick check must not replace the ceilings every report divides by.
    path = out or peaks_lib.default_path(gpu.name, quick=quick)
    check_writable(path, "--out")  # before the measuring, not after it
    size = {"copy_bytes": 1 << 28, "matmul": 4096} if quick else {}
    result = peaks_lib.measure(gpu, command_line(), git_commit(), quick=quick,
                               progress=lambda k: console.print(f"measuring {k} ...", style="dim"), **size)
    write_json(path, result)
    if as_json:
        print_json(result)
        return
    p, r = result["peaks"], result["repeatability"]
    print_table([p], list(peaks_lib.PEAK_KEYS), title=f"measured ceilings, {gpu.name}")
    console.print(f"harness repeatability: the copy timed twice differs by {r['diff_pct']:.2f}%")
    console.print(f"written to {path}")
