"""`gpuprof calibrate RUN`: fit per-kernel time models from a sweep run, for `gpuprof advise --model`."""

from __future__ import annotations

from pathlib import Path

import click

from gpuprof.calibrate import calibrate
from gpuprof.cli.output import console, print_json, print_table


@click.command("calibrate")
@click.argument("run", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path),
              help="Also write the calibration here [traces/<gpu-slug>/calibration.json].")
@click.option("--dtype", help="The dtype to fit, where the run holds several.")
@click.option("--step-overhead-us", type=float, default=0.0, show_default=True,
              help="Fixed cost per decode step in µs, measured elsewhere (end-to-end decode).")
@click.option("--json", "as_json", is_flag=True, help="Print the calibration as JSON.")
def command(run: Path, out: Path | None, dtype: str | None, step_overhead_us: float, as_json: bool) -> None:
    """Fit overhead + max(bytes / GB/s, FLOPs / TFLOP/s) per kernel (attention, linear) to RUN's fastest points."""
    calibration, written = calibrate(run, out, dtype, step_overhead_us)
    if as_json:
        print_json(calibration)
        return
    rows = [{"kernel": name, "impl": fit["impl"], "gbps": fit["gbps"], "tflops": fit["tflops"],
             "overhead_us": fit["overhead_us"], "points": fit["details"]["points"],
             "median_rel_err": fit["details"]["median_rel_err"], "max_rel_err": fit["details"]["max_rel_err"]}
            for name, fit in calibration["kernels"].items()]
    gpu = calibration["provenance"]["gpu"]
    print_table(rows, list(rows[0]), title=f"calibration of {run} ({gpu}, {calibration['dtype']})")
    for name, fit in calibration["kernels"].items():
        for rate in ("gbps_source", "tflops_source"):
            if fit["details"][rate] != "fitted":
                console.print(f"{name} {rate.split('_')[0]}: {fit['details'][rate]}", style="dim")
    console.print("written to " + " and ".join(map(str, written)))
