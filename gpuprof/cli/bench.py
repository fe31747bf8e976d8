"""`gpuprof bench KERNEL`: check and time every implementation of one kernel over a grid of shapes."""

from __future__ import annotations

import itertools
from pathlib import Path

import click

from gpuprof import peaks as peaks_lib
from gpuprof.bench import measure_point
from gpuprof.cli.output import console, print_json, print_table
from gpuprof.device import git_commit, info, require_gpu, software_versions
from gpuprof.errors import GpuprofError
from gpuprof.harness import TimingOptions
from gpuprof.ops import OPS, get_op
from gpuprof.records import SHAPE_KEYS, Run, command_line, utc_now, write_csv

COLUMNS = (
    ("kernel", "impl", "dtype") + SHAPE_KEYS
    + ("status", "time_us", "time_us_iqr", "gbps", "pct_copy_bw", "tflops", "intensity", "max_rel_err", "error")
)


def int_list(text: str | None, name: str) -> list[int] | None:
    """'1,2,4' -> [1, 2, 4]; a clear error for anything else."""
    if text is None:
        return None
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise GpuprofError(f"--{name} takes whole numbers separated by commas (e.g. 1,8,64), not {text!r}.")
    if not values or min(values) <= 0:
        raise GpuprofError(f"--{name} takes positive whole numbers separated by commas, not {text!r}.")
    return values


def shape_grid(kernel: str, given: dict[str, list[int] | None]) -> list[dict[str, int]]:
    """The cartesian product of the given shape lists, each completed and checked by the op."""
    op = get_op(kernel)
    extra = sorted(k for k, v in given.items() if v is not None and k not in op.shape_keys)
    if extra:
        names = ", ".join("--" + k.replace("_", "-") for k in extra)
        valid = ", ".join("--" + k.replace("_", "-") for k in op.shape_keys)
        raise GpuprofError(f"{kernel} takes no {names}; its shape options are {valid}.")
    keys = [k for k in op.shape_keys if given.get(k) is not None]
    return [op.shape(**dict(zip(keys, combo))) for combo in itertools.product(*(given[k] for k in keys))]


def _shape_options(f):
    for key in reversed(SHAPE_KEYS):
        f = click.option(f"--{key.replace('_', '-')}", key, help=f"{key}: comma-separated list.")(f)
    return f


@click.command("bench")
@click.argument("kernel", type=click.Choice(sorted(OPS)), metavar="KERNEL")
@_shape_options
@click.option("--impl", "impls", default="all", show_default=True, help="Implementations, comma-separated, or all.")
@click.option("--dtype", "dtypes", default="bf16", show_default=True, help="fp16, bf16 or fp32, comma-separated.")
@click.option("--out", type=click.Path(path_type=Path), help="Also write a run directory (manifest + points.jsonl).")
@click.option("--csv", "csv_path", type=click.Path(path_type=Path), help="Also write the points as CSV.")
@click.option("--max-time", default=2.0, show_default=True, help="Seconds of timed repetitions per point, at most.")
@click.option("--device", type=click.Choice(["cuda", "cpu"]), default="cuda", show_default=True,
              help="cpu checks correctness only (Triton through TRITON_INTERPRET=1); its times are not GPU times.")
@click.option("--json", "as_json", is_flag=True, help="Print the points as JSON.")
def command(kernel, impls, dtypes, out, csv_path, max_time, device, as_json, **shape_lists) -> None:
    """Check every implementation of KERNEL against its reference, then time it, on each shape of the grid."""
    op = get_op(kernel)
    if device == "cuda":
        require_gpu("gpuprof bench")
    chosen = list(op.impls) if impls == "all" else [i.strip() for i in impls.split(",")]
    unknown = [i for i in chosen if i not in op.impls]
    if unknown:
        raise GpuprofError(f"{kernel} has no implementation {', '.join(unknown)}; valid: {', '.join(op.impls)}, all.")
    dts = [d.strip() for d in dtypes.split(",")]
    grid = shape_grid(kernel, {k: int_list(v, k) for k, v in shape_lists.items()})
    gpu = info() if device == "cuda" else None
    peaks = peaks_lib.load(gpu.name) if gpu else None
    run = _open_run(out, kernel, chosen, dts, grid, gpu, peaks) if out else None
    options = TimingOptions(max_time_s=max_time)
    points = []
    for shape, dtype, impl in itertools.product(grid, dts, chosen):
        p = measure_point(op, impl, shape, dtype, device=device, peaks=peaks, options=options,
                          l2_bytes=gpu.l2_bytes if gpu else 0, extra={"device": device})
        points.append(p)
        if run:
            run.append(p)
    if csv_path:
        write_csv(points, csv_path)
    if as_json:
        print_json(points)
        return
    title = f"{kernel} on {gpu.name}" if gpu else f"{kernel} on the CPU (correctness only; times are not GPU times)"
    print_table(points, COLUMNS, title=title)
    if peaks:
        console.print(f"ceilings: copy {peaks['copy_gbps']:.0f} GB/s, source {peaks['source']}", style="dim")


def _open_run(out: Path, kernel, impls, dtypes, grid, gpu, peaks) -> Run:
    manifest = {
        "gpu": gpu.manifest() if gpu else None,
        "versions": software_versions(),
        "git_commit": git_commit(),
        "command": command_line(),
        "started_at": utc_now(),
        "peaks": peaks,
        "grid": {"kernel": kernel, "impls": impls, "dtypes": dtypes, "shapes": grid},
    }
    return Run.create(out, manifest)
