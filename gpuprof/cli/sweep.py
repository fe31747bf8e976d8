"""`gpuprof sweep`: decode attention and a model's linear layers across batch sizes, written point by point."""

from __future__ import annotations

from pathlib import Path

import click
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from gpuprof import peaks as peaks_lib
from gpuprof import sweep
from gpuprof.cli.bench import int_list, name_list
from gpuprof.cli.output import console, print_table
from gpuprof.device import gpu_slug, info, require_gpu, use_triton_interpreter
from gpuprof.errors import GpuprofError
from gpuprof.harness import TimingOptions
from gpuprof.records import Run, command_line, utc_now

# Options that define the grid; a resumed sweep takes its grid from the run's manifest instead.
GRID_OPTIONS = ("models", "batches", "ctxs", "dtypes", "kernels", "impls", "page_size", "max_time", "counters",
                "device")


@click.command("sweep")
@click.option("--model", "models", default=",".join(sweep.DEFAULT_MODELS), show_default=True,
              help="Model presets or paths to a Hugging Face config.json, comma-separated.")
@click.option("--batch", "batches", help="Batch sizes, comma-separated [1,2,4,...,512].")
@click.option("--ctx", "ctxs", help="Context lengths (every sequence's length), comma-separated [2048].")
@click.option("--dtype", "dtypes", default="bf16", show_default=True, help="fp16 or bf16, comma-separated.")
@click.option("--kernel", "kernels", default="attention,linear", show_default=True, help="attention, linear.")
@click.option("--impl", "impls", default="all", show_default=True,
              help="Implementations, comma-separated (triton, cuda, torch-sdpa-*, cublas), or all.")
@click.option("--page-size", default=sweep.DEFAULT_PAGE_SIZE, show_default=True,
              help="KV-cache page size of the triton/cuda attention (0: contiguous); SDPA reads a contiguous cache.")
@click.option("--max-time", default=sweep.DEFAULT_MAX_TIME_S, show_default=True,
              help="Seconds of timed repetitions per point, at most.")
@click.option("--counters", default="", help="nvml and/or ncu, comma-separated: add hardware-counter columns.")
@click.option("--out", type=click.Path(path_type=Path), help="Run directory [traces/<gpu>/sweep-<UTC time>].")
@click.option("--resume", type=click.Path(path_type=Path), help="Finish an interrupted run (its grid is kept).")
@click.option("--dry-run", is_flag=True, help="Only list the grid's points and the largest input; needs no GPU.")
@click.option("--device", type=click.Choice(["cuda", "cpu"]), default="cuda", show_default=True,
              help="cpu checks correctness only (Triton interpreter); its times are not GPU times.")
@click.pass_context
def command(ctx: click.Context, models, batches, ctxs, dtypes, kernels, impls, page_size, max_time, counters, out,
            resume, dry_run, device) -> None:
    """Measure decode attention and the linear layers of MODELs across batch sizes: the memory-gap experiment.

    Every point is checked against a reference, then timed, and appended to points.jsonl as soon as it is done;
    Ctrl-C keeps every finished point and --resume measures the rest. Read the result with `gpuprof report RUN`.
    """
    if resume:
        given = [n for n in GRID_OPTIONS if ctx.get_parameter_source(n) != click.core.ParameterSource.DEFAULT]
        if given or out:
            raise GpuprofError("--resume takes the grid and the directory from the run itself; drop "
                               f"{', '.join('--' + n.replace('_', '-') for n in given + (['out'] if out else []))}.")
        run = Run.open(resume)
        manifest = run.manifest()
        if not isinstance(manifest.get("grid"), dict):
            raise GpuprofError(f"{resume} was not made by `gpuprof sweep` (its manifest has no sweep grid), so "
                               "--resume cannot tell which points are left.")
        grid = sweep.Grid.from_manifest(manifest["grid"])
        device, counter_names = manifest["grid"].get("device", "cuda"), manifest["grid"].get("counters", [])
    else:
        grid = sweep.make_grid(
            models=name_list(models), kernels=name_list(kernels), impls=None if impls == "all" else name_list(impls),
            batches=int_list(batches, "batch") or sweep.DEFAULT_BATCHES,
            ctxs=int_list(ctxs, "ctx") or sweep.DEFAULT_CTXS,
            dtypes=name_list(dtypes), page_size=page_size, max_time_s=max_time,
        )
        counter_names = name_list(counters)
    points = sweep.plan(grid)
    if dry_run:
        _print_dry_run(grid, points)
        return
    collectors = sweep.make_counter_collectors(counter_names)
    if device == "cuda":
        require_gpu("gpuprof sweep")
    elif any("triton" in impls for impls in grid.impls.values()):
        use_triton_interpreter()
    gpu = info() if device == "cuda" else None
    if resume:
        require_same_gpu(manifest, gpu, resume)
        peaks = manifest.get("peaks")  # the ceilings the run started with, so every point is on the same scale
    else:
        if gpu is None and out is None:
            raise GpuprofError("--device cpu needs --out: traces/ holds measurements taken on a GPU only.")
        peaks = peaks_lib.load(gpu.name) if gpu else None
        run = sweep.new_run(out or sweep.default_run_path(gpu.name), grid, gpu=gpu, peaks=peaks, device=device,
                            counters=counter_names, command=command_line())
    measurer = sweep.Measurer(device=device, peaks=peaks, options=TimingOptions(max_time_s=grid.max_time_s),
                              l2_bytes=gpu.l2_bytes if gpu else 0, collectors=collectors)
    _run_with_progress(run, points, measurer)


def require_same_gpu(manifest: dict, gpu, run_path: Path) -> None:
    """Refuse to add points measured on another GPU (or on the CPU) to a run: they would not be comparable."""
    started = (manifest.get("gpu") or {}).get("name") if isinstance(manifest.get("gpu"), dict) else None
    here = gpu.name if gpu else None
    if gpu_slug(started or "cpu") != gpu_slug(here or "cpu"):
        raise GpuprofError(f"{run_path} was measured on {started or 'the CPU'} and this machine runs it on "
                           f"{here or 'the CPU'}; resume it where it started (one run holds one GPU's times).")


def _run_with_progress(run: Run, points: list[sweep.PlannedPoint], measurer: sweep.Measurer) -> None:
    started_at = utc_now()
    console.print(f"sweeping {len(points)} points into {run.path}", soft_wrap=True)
    # Progress advances by each point's weight (larger inputs take longer), so the ETA does not trust the
    # small first batches; the count of points is shown beside it.
    columns = (TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[done]}/{task.fields[n]} points"),
               TextColumn("elapsed"), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn())
    outcome, interrupted = sweep.Outcome(), False
    weights = [sweep.progress_weight(p) for p in points]
    with Progress(*columns, console=console) as progress:
        task = progress.add_task("starting", total=sum(weights), done=0, n=len(points))
        count = iter(range(1, len(points) + 1))
        weight_of = dict(zip((p.key() for p in points), weights))

        def on_point(p: sweep.PlannedPoint, record: dict | None) -> None:
            progress.update(task, advance=weight_of[p.key()], description=p.label()[:44], done=next(count))

        try:
            sweep.run_sweep(points, run, measurer, on_point, outcome)
        except KeyboardInterrupt:
            interrupted = True
    if interrupted:
        kept = len(run.points())
        sweep.note_session(run, outcome, started_at, interrupted=True)
        console.print(f"interrupted: {kept} finished points kept in {run.path}; finish with "
                      f"`gpuprof sweep --resume {run.path}`.", soft_wrap=True)
        raise SystemExit(130)
    sweep.note_session(run, outcome, started_at, interrupted=False)
    counts = ", ".join(f"{n} {s}" for s, n in sorted(outcome.statuses.items())) or "nothing new"
    console.print(f"measured {outcome.measured} points ({counts}) in {_duration(outcome.elapsed_s)}"
                  + (f"; {outcome.already_done} were already done" if outcome.already_done else ""), soft_wrap=True)
    console.print(f"results: {run.path}; next: gpuprof report {run.path}", soft_wrap=True)


def _duration(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes} min {secs} s" if minutes else f"{seconds:.1f} s"


def _print_dry_run(grid: sweep.Grid, points: list[sweep.PlannedPoint]) -> None:
    largest = sweep.largest_input_bytes(points)
    rows = [{"model": m, "kernel": k, "points": n} for (m, k), n in sweep.grid_summary(points).items()]
    print_table(rows, ["model", "kernel", "points"], title="sweep grid (dry run: nothing measured)")
    console.print(f"{len(points)} points; implementations: "
                  + "; ".join(f"{k}: {', '.join(v)}" for k, v in grid.impls.items()), soft_wrap=True)
    for model, nbytes in largest.items():
        console.print(f"{model}: largest input set {nbytes / 2**30:.2f} GiB", soft_wrap=True)
    console.print(f"timed repetitions take at most {grid.max_time_s:g} s per point "
                  f"({len(points) * grid.max_time_s / 60:.1f} min in all), plus input creation and correctness checks",
                  soft_wrap=True)
