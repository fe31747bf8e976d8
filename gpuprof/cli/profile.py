"""`gpuprof profile -- COMMAND`: a gpuprof benchmark (or any program) under Nsight Compute, measured launches only."""

from __future__ import annotations

from pathlib import Path

import click

from gpuprof import nvtx
from gpuprof import profile as profile_lib
from gpuprof.cli.output import console, print_json, print_table
from gpuprof.counters import ncu
from gpuprof.device import git_commit, info, require_gpu, software_versions
from gpuprof.records import SHAPE_KEYS


def display_rows(rows: list[dict], metrics: list[ncu.Metric]) -> tuple[list[dict], list[str]]:
    """Rows with short metric titles in printable units (time in us, bytes in MB), and those titles."""
    shown = []
    for row in rows:
        values = {m.label: row.get(ncu.column_name(m.name)) for m in metrics}
        scaled = {m.label: None if values[m.label] is None else values[m.label] * m.scale for m in metrics}
        shown.append({**row, **scaled, "dram_GB/s": row.get("ncu_dram_gbps")})
    return shown, [m.label for m in metrics] + ["dram_GB/s"]


@click.command("profile", context_settings={"allow_interspersed_args": False})
@click.option("--set", "sets", default="speed-of-light", show_default=True,
              help="Metric sets, comma-separated: speed-of-light (sol), memory, compute, stalls, or all.")
@click.option("--metrics", "extra", default="", help="More ncu metrics by name, comma-separated.")
@click.option("--calls", default=profile_lib.DEFAULT_CALLS, show_default=True, type=click.IntRange(1, 100),
              help="Untimed calls profiled per benchmark point (ncu replays each one many times).")
@click.option("--nvtx-include", default=nvtx.MEASURE_FILTER, show_default=True,
              help="ncu's NVTX filter; 'none' profiles every kernel (bound it with --launch-count).")
@click.option("--launch-count", type=click.IntRange(1), help="Profile at most this many kernels.")
@click.option("--out", type=click.Path(path_type=Path), help="Run directory [traces/<gpu-slug>/profile-<UTC time>].")
@click.option("--json", "as_json", is_flag=True, help="Print the points (or kernels) as JSON.")
@click.argument("argv", nargs=-1, required=True, type=click.UNPROCESSED, metavar="COMMAND...")
def command(sets, extra, calls, nvtx_include, launch_count, out, as_json, argv) -> None:
    """Run COMMAND (after --) under Nsight Compute and show per-kernel counters for its measured launches.

    For a gpuprof benchmark (gpuprof profile -- gpuprof bench attention --batch 256 ...), each point is checked
    and warmed up as usual, then makes --calls untimed calls inside its NVTX range `measure`: only those are
    profiled, and the counters join to the points. Never take times from a profiled run.
    """
    require_gpu("gpuprof profile")
    ncu_path = ncu.find_ncu()
    gpu = info()
    request = profile_lib.Request(
        command=list(argv),
        out=out or profile_lib.default_out(gpu.name),
        sets=ncu.metric_sets(sets),
        extra_metrics=[m.strip() for m in extra.split(",") if m.strip()],
        calls=calls,
        nvtx_include=None if nvtx_include.lower() == "none" else nvtx_include,
        launch_count=launch_count,
    )
    result = profile_lib.run(request, ncu_path=ncu_path, compute_capability=float(gpu.compute_capability),
                             gpu=gpu.manifest(), versions=software_versions(), git_commit=git_commit())
    rows = result.points or result.kernels
    if as_json:
        print_json(rows)
        return
    shown, labels = display_rows(rows, result.metrics)
    if result.points:
        columns = ["kernel", "impl", "dtype", *SHAPE_KEYS, "status", "ncu_launches", *labels]
        title = f"ncu, {len(result.kernels)} measured launches of {len(result.points)} points"
    else:
        columns = ["kernel_name", "nvtx_range", *labels]
        title = f"ncu, {len(result.kernels)} kernels"
    print_table(shown, columns, title=title)
    console.print(f"report and rows: {result.out} (open {result.report.name} in Nsight Compute)", style="dim")
