"""`gpuprof bench KERNEL`: check and time every implementation of one kernel over a grid of shapes."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import click

from gpuprof import peaks as peaks_lib
from gpuprof import nvtx
from gpuprof import profile as profile_lib
from gpuprof.bench import measure_point
from gpuprof.cli.output import console, print_json, print_table
from gpuprof.counters import COUNTERS, make_collectors, ncu
from gpuprof.device import git_commit, info, require_gpu, software_versions, use_triton_interpreter
from gpuprof.errors import GpuprofError
from gpuprof.harness import TimingOptions
from gpuprof.ops import OPS, get_op
from gpuprof.ops.base import DTYPES
from gpuprof.records import SHAPE_KEYS, Run, check_writable, new_manifest, write_csv, write_json

COLUMNS = (
    ("kernel", "impl", "dtype") + SHAPE_KEYS
    + ("status", "time_us", "time_us_iqr", "gbps", "pct_copy_bw", "tflops", "intensity", "max_rel_err")
    + ("nvml_dram_util_pct", "nvml_sm_util_pct", "nvml_tensor_util_pct", "nvml_power_w", "nvml_energy_j")
    + (ncu.column_name("dram__throughput.avg.pct_of_peak_sustained_elapsed"),
       ncu.column_name("sm__throughput.avg.pct_of_peak_sustained_elapsed"), "error")
)


def name_list(text: str) -> list[str]:
    """'a, b,,c' -> ['a', 'b', 'c']: the comma-separated lists every command takes."""
    return [w.strip() for w in text.split(",") if w.strip()]


def int_list(text: str | None, name: str, minimum: int = 1) -> list[int] | None:
    """'1,2,4' -> [1, 2, 4]; a clear error for anything else."""
    if text is None:
        return None
    flag = "--" + name.replace("_", "-")
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise GpuprofError(f"{flag} takes whole numbers separated by commas (e.g. 1,8,64), not {text!r}.")
    if not values or min(values) < minimum:
        what = "positive whole numbers" if minimum == 1 else f"whole numbers of at least {minimum}"
        raise GpuprofError(f"{flag} takes {what} separated by commas, not {text!r}.")
    return values


def positive_seconds(value: float, flag: str) -> float:
    """A time limit the user gave; nan and inf would pass a plain `> 0` check and then break the loops they bound."""
    if not math.isfinite(value) or value <= 0:
        raise GpuprofError(f"{flag} must be positive and finite (seconds), not {value}.")
    return value


# page_size 0 selects the contiguous cache layout.
_MINIMUM = {"page_size": 0}


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
@click.option("--csv", "csv_path", type=click.Path(path_type=Path),
              help="Also write the points as CSV, and the run's manifest beside it as <csv>.manifest.json.")
@click.option("--max-time", default=2.0, show_default=True, help="Seconds of timed repetitions per point, at most.")
@click.option("--device", type=click.Choice(["cuda", "cpu"]), default="cuda", show_default=True,
              help="cpu checks correctness only (Triton through TRITON_INTERPRET=1); its times are not GPU times.")
@click.option("--counters", "counters_text", default="",
              help="Hardware counters to add to the rows, comma-separated: nvml (device sampling over a window of "
                   "back-to-back calls after timing), ncu (a second, untimed run under Nsight Compute).")
@click.option("--ncu-set", default="speed-of-light", show_default=True, help="With --counters ncu: metric sets.")
@click.option("--json", "as_json", is_flag=True, help='Print {"manifest": ..., "points": [...]} as JSON.')
def command(kernel, impls, dtypes, out, csv_path, max_time, device, counters_text, ncu_set, as_json,
            **shape_lists) -> None:
    """Check every implementation of KERNEL against its reference, then time it, on each shape of the grid."""
    op = get_op(kernel)
    positive_seconds(max_time, "--max-time")
    counters = counter_names(counters_text, device)
    if device == "cuda":
        require_gpu("gpuprof bench")
    chosen = impl_list(op, impls)
    if device == "cpu" and "triton" in chosen:
        use_triton_interpreter()
    ncu_path = ncu.find_ncu() if "ncu" in counters else None
    ncu_sets = ncu.metric_sets(ncu_set) if ncu_path else None
    dts = dtype_list(dtypes)
    check_outputs(out, csv_path)
    if csv_path:
        check_writable(csv_manifest_path(csv_path), "--csv")
    grid = shape_grid(kernel, {k: int_list(v, k, _MINIMUM.get(k, 1)) for k, v in shape_lists.items()})
    profiled_command = bench_command(kernel, chosen, dts, shape_lists, max_time)
    if ncu_path:  # what would stop the profiled run, said before minutes of timing rather than after
        profile_lib.check_nvtx(profiled_command, nvtx.MEASURE_FILTER)
    gpu = info() if device == "cuda" else None
    peaks = peaks_lib.load(gpu.name) if gpu else None
    # One manifest for the run directory, the CSV's sidecar and the JSON: rows are useless without their GPU,
    # versions and ceilings.
    manifest = new_manifest(gpu, peaks, {"kernel": kernel, "impls": chosen, "dtypes": dts, "shapes": grid,
                                         "counters": counters})
    run = Run.create(out, manifest) if out else None
    options = TimingOptions(max_time_s=max_time)
    collectors = make_collectors([n for n in counters if n != "ncu"], notify=lambda m: click.echo(m, err=True))
    points = []
    for shape, dtype, impl in itertools.product(grid, dts, chosen):
        p = measure_point(op, impl, shape, dtype, device=device, peaks=peaks, options=options,
                          l2_bytes=gpu.l2_bytes if gpu else 0, collectors=collectors,
                          extra={"device": device})
        points.append(p)
        if run and not ncu_path:
            run.append(p)
    for c in collectors:
        c.close()
    profiling_failed = False
    if ncu_path:
        try:
            profiled = profile_lib.run(
                profile_lib.Request(command=profiled_command,
                                    out=(out / "ncu") if out else profile_lib.default_out(gpu.name), sets=ncu_sets),
                ncu_path=ncu_path, compute_capability=float(gpu.compute_capability), gpu=gpu.manifest(),
                versions=software_versions(), git_commit=git_commit())
            profile_lib.merge(points, profiled.points)
            click.echo(f"ncu counters from an untimed run under Nsight Compute: {profiled.out}", err=True)
        except GpuprofError as e:  # the timed points are still worth their CSV, JSON and table
            profiling_failed = True
            click.echo(f"warning: the rows have no ncu columns: {e}", err=True)
        finally:  # the timed points are kept even when profiling fails
            for p in points if run else []:
                run.append(p)
    show_points(points, manifest, csv_path, as_json)
    if profiling_failed:
        raise click.exceptions.Exit(1)


def csv_manifest_path(csv_path: Path) -> Path:
    """Where the manifest of a --csv file goes: beside it, `<csv>.manifest.json`."""
    return csv_path.with_name(csv_path.name + ".manifest.json")


def show_points(points: list[dict], manifest: dict, csv_path: Path | None, as_json: bool) -> None:
    """The points as CSV with its manifest beside it (if asked), then as JSON {manifest, points} or as a table."""
    if csv_path:
        write_csv(points, csv_path)
        write_json(csv_manifest_path(csv_path), manifest)
    if as_json:
        print_json({"manifest": manifest, "points": points})
        return
    kernel, gpu, peaks = manifest["grid"]["kernel"], manifest["gpu"], manifest["peaks"]
    where = gpu["name"] if gpu else "the CPU (correctness only; times are not GPU times)"
    print_table(points, COLUMNS, title=f"{kernel} on {where}")
    if peaks:
        console.print(f"ceilings: copy {peaks['copy_gbps']:.0f} GB/s, source {peaks['source']}", style="dim")


def impl_list(op, text: str) -> list[str]:
    """--impl: 'all' or a comma list of the op's implementations; at least one."""
    chosen = list(op.impls) if text.strip() == "all" else name_list(text)
    if not chosen:
        raise GpuprofError(f"--impl needs at least one implementation of {op.kernel}: {', '.join(op.impls)}, or all.")
    unknown = [i for i in chosen if i not in op.impls]
    if unknown:
        raise GpuprofError(f"{op.kernel} has no implementation {', '.join(unknown)}; valid: {', '.join(op.impls)}, all.")
    return chosen


def dtype_list(text: str) -> list[str]:
    """--dtype: a comma list of known dtypes, checked before any point runs (not when the first bad one does)."""
    names = name_list(text)
    if not names:
        raise GpuprofError(f"--dtype needs at least one dtype: {', '.join(DTYPES)}.")
    unknown = [n for n in names if n not in DTYPES]
    if unknown:
        raise GpuprofError(f"unknown dtype {unknown[0]!r}; valid dtypes are {', '.join(DTYPES)}.")
    return names


def check_outputs(out: Path | None, csv_path: Path | None) -> None:
    """Refuse unwritable --out / --csv before measuring, not after minutes of it."""
    if out:
        check_writable(out, "--out", directory=True)
    if csv_path:
        check_writable(csv_path, "--csv")


def counter_names(text: str, device: str) -> list[str]:
    """'nvml,ncu' -> ['nvml', 'ncu']; a clear error for unknown names or counters on the CPU."""
    names = name_list(text)
    unknown = [n for n in names if n not in COUNTERS]
    if unknown:
        raise GpuprofError(f"unknown counters {', '.join(unknown)}; valid: {', '.join(COUNTERS)}.")
    if names and device == "cpu":
        raise GpuprofError("--counters reads GPU hardware counters; it needs --device cuda.")
    return names


def bench_command(kernel: str, impls: list[str], dtypes: list[str], shape_lists: dict, max_time: float) -> list[str]:
    """The `gpuprof bench` command line of the same grid, without counters or outputs (what ncu runs)."""
    argv = ["gpuprof", "bench", kernel, "--impl", ",".join(impls), "--dtype", ",".join(dtypes),
            "--device", "cuda", "--max-time", str(max_time)]
    for key, values in shape_lists.items():
        if values is not None:
            argv += [f"--{key.replace('_', '-')}", values]
    return argv

