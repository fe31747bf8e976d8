"""`gpuprof decode`: whole decode steps of a model built from gpuprof's kernels, per batch size."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import click

from gpuprof import peaks as peaks_lib
from gpuprof.cli.bench import check_outputs, int_list, name_list, positive_seconds
from gpuprof.cli.output import console, print_json, print_table
from gpuprof.decode import build_decoder, make_backend
from gpuprof.decode_bench import STEP_TIMING, DecodeSettings, make_collectors, run_decode
from gpuprof.device import info, require_gpu, use_triton_interpreter
from gpuprof.errors import GpuprofError
from gpuprof.models import get_model
from gpuprof.ops.base import DTYPES
from gpuprof.records import Run, new_manifest, write_csv

COLUMNS = ("batch", "status", "tokens_per_s", "step_ms", "time_us_iqr", "loop_tokens_per_s", "memory_gib",
           "joules_per_token", "gbps", "pct_copy_bw", "linear_qkv", "linear_down", "linear_lm_head", "error")


def open_run(out: Path, resume: bool, grid: dict, gpu, peaks) -> Run:
    """A new run directory with its manifest, or (with resume) the existing one, its last cut line dropped."""
    if resume and (out / "points.jsonl").exists():
        run = Run.open(out)
        old = run.manifest().get("grid") or {}
        differ = [k for k in grid if k != "batches" and k in old and old[k] != grid[k]]
        if differ:
            raise GpuprofError(f"{out} holds a run with another {differ[0]} ({old[differ[0]]!r}); "
                               "resume with the same settings or choose another --out.")
        run.repair()
        return run
    return Run.create(out, new_manifest(gpu, peaks, grid), if_exists="pass --resume to finish it, or choose another --out")


def linear_list(text: str) -> list[str]:
    impls = name_list(text)
    unknown = [i for i in impls if i not in ("triton", "cuda", "cublas")]
    if not impls or unknown:
        raise GpuprofError(f"--linear takes triton, cuda and cublas separated by commas, not {text!r}.")
    return impls


@click.command("decode")
@click.option("--model", "model_name", required=True, help="A preset (e.g. llama-2-7b) or a Hugging Face config.json.")
@click.option("--batch", "batches", default="1,8,16,32,64,128,256,512", show_default=True,
              help="Batch sizes, comma-separated.")
@click.option("--ctx", default=1024, show_default=True, type=click.IntRange(min=1),
              help="Tokens per sequence at the timed step, the new one included.")
@click.option("--steps", default=32, show_default=True, type=click.IntRange(min=0),
              help="Greedy tokens decoded after timing (a real loop; the cache has room for them).")
@click.option("--dtype", type=click.Choice(sorted(DTYPES)), default="bf16", show_default=True)
@click.option("--impl", type=click.Choice(["gpuprof", "torch"]), default="gpuprof", show_default=True,
              help="gpuprof: our attention and GEMV kernels; torch: F.linear and a plain paged attention.")
@click.option("--attention-impl", default="triton", show_default=True, help="decode_attention's impl (gpuprof).")
@click.option("--linear", "linear_impls", default="triton,cublas", show_default=True,
              help="Candidates per weight shape; the fastest, measured at each batch size, is used (gpuprof).")
@click.option("--page-size", default=16, show_default=True, type=click.IntRange(min=1), help="KV-cache page, tokens.")
@click.option("--counters", help="Counter collectors, comma-separated; nvml gives energy per token.")
@click.option("--out", type=click.Path(path_type=Path), help="Write a run directory (manifest + points.jsonl).")
@click.option("--resume", is_flag=True, help="With --out: skip batch sizes already recorded there.")
@click.option("--csv", "csv_path", type=click.Path(path_type=Path), help="Also write the points as CSV.")
@click.option("--max-time", default=2.0, show_default=True, help="Seconds of timed steps per batch size, at most.")
@click.option("--device", type=click.Choice(["cuda", "cpu"]), default="cuda", show_default=True,
              help="cpu: the loop run eagerly as a check (not GPU times; Triton kernels through its interpreter).")
@click.option("--no-graph", is_flag=True, help="Run steps eagerly instead of replaying a CUDA graph.")
@click.option("--seed", default=0, show_default=True, help="Seed of the random weights and inputs.")
@click.option("--json", "as_json", is_flag=True, help="Print the points as JSON.")
def command(model_name, batches, ctx, steps, dtype, impl, attention_impl, linear_impls, page_size, counters, out,
            resume, csv_path, max_time, device, no_graph, seed, as_json) -> None:
    """Decode with MODEL (random weights) at each batch size: tokens/s, step latency, memory, energy per token."""
    if device == "cuda":
        require_gpu("gpuprof decode")
    else:
        use_triton_interpreter()
    shape = get_model(model_name)
    batch_list = int_list(batches, "batch")
    positive_seconds(max_time, "--max-time")
    check_outputs(out, csv_path)
    backend = make_backend(impl, attention_impl, linear_list(linear_impls))
    collectors = make_collectors(counters)
    settings = DecodeSettings(ctx=ctx, steps=steps, page_size=page_size, seed=seed,
                              use_graph=False if no_graph else None, timing=replace(STEP_TIMING, max_time_s=max_time))
    gpu = info() if device == "cuda" else None
    peaks = peaks_lib.load(gpu.name) if gpu else None
    grid = {"model": shape.to_dict(), "batches": batch_list, "ctx": ctx, "steps": steps, "dtype": dtype, "impl": impl,
            "attention_impl": attention_impl, "linear_impls": linear_impls, "page_size": page_size,
            "counters": counters, "device": device, "graph": not no_graph and device == "cuda", "seed": seed}
    run = open_run(out, resume, grid, gpu, peaks) if out else None
    skip = {p["batch"] for p in run.points()} if run and resume else set()
    if not as_json:
        console.print(f"building {shape.name} with random {dtype} weights on {device} ...", style="dim")
    decoder = build_decoder(shape, dtype, device, backend, seed)

    def on_point(point: dict) -> None:
        if run:
            run.append(point)
        if not as_json:
            console.print(f"batch {point['batch']}: {point['status']}", style="dim")

    points = run_decode(decoder, batch_list, settings, collectors=collectors, peaks=peaks, on_point=on_point,
                        skip=skip)
    show(points, COLUMNS, f"decode {shape.name}, ctx {ctx}, {dtype}, {impl}", gpu, run, csv_path, as_json)


def show(points: list[dict], columns, title: str, gpu, run: Run | None, csv_path: Path | None, as_json: bool) -> None:
    """The points as CSV (if asked), then as JSON or as a table; memory columns in GiB for people."""
    if csv_path:
        write_csv(points, csv_path)
    if as_json:
        print_json(points)
        return
    where = gpu.name if gpu else "the CPU (a check; times are not GPU times)"
    gib = {f"{k[:-6]}_gib": k for k in ("memory_bytes", "device_used_bytes")}
    rows = [{**p, **{g: p[k] / 2**30 if p.get(k) else None for g, k in gib.items()}} for p in points]
    print_table(rows, columns, title=f"{title}, on {where}")
    if run:
        console.print(f"written to {run.path}")

