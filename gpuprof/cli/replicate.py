"""`gpuprof replicate`: R replica processes of a decode loop, with and without MPS, against one at R x B."""

from __future__ import annotations

from pathlib import Path

import click

from gpuprof import peaks as peaks_lib
from gpuprof.cli.bench import int_list, positive_seconds
from gpuprof.cli.decode import linear_list, open_run, show
from gpuprof.cli.output import console
from gpuprof.decode import check_context
from gpuprof.decode_bench import make_collectors
from gpuprof.device import require_gpu, use_triton_interpreter
from gpuprof.errors import GpuprofError
from gpuprof.models import get_model
from gpuprof.ops.base import DTYPES
from gpuprof.replicate import MODES, ReplicaSpec, probe_gpu, replicate

COLUMNS = ("mode", "replicas", "batch", "total_batch", "status", "tokens_per_s", "vs_single", "step_ms",
           "memory_gib", "device_used_gib", "joules_per_token", "error")


@click.command("replicate")
@click.option("--model", "model_name", required=True, help="A preset (e.g. opt-1.3b) or a Hugging Face config.json.")
@click.option("--replicas", "replica_counts", default="1,2,4", show_default=True,
              help="Numbers of replica processes, comma-separated.")
@click.option("--batch", required=True, type=click.IntRange(min=1), help="Sequences each replica decodes.")
@click.option("--ctx", default=1024, show_default=True, type=click.IntRange(min=1), help="Tokens per sequence.")
@click.option("--mps", "mps", type=click.Choice(["both", "on", "off"]), default="both", show_default=True,
              help="Run the replicas under an MPS daemon of gpuprof's own, without, or both.")
@click.option("--no-baseline", is_flag=True, help="Skip the single process at R x B.")
@click.option("--duration", default=5.0, show_default=True, help="Seconds every replica decodes, together.")
@click.option("--dtype", type=click.Choice(sorted(DTYPES)), default="bf16", show_default=True)
@click.option("--impl", type=click.Choice(["gpuprof", "torch"]), default="gpuprof", show_default=True)
@click.option("--attention-impl", default="triton", show_default=True)
@click.option("--linear", "linear_impls", default="triton,cublas", show_default=True)
@click.option("--page-size", default=16, show_default=True, type=click.IntRange(min=1))
@click.option("--counters", help="Counter collectors, comma-separated; nvml gives energy per token.")
@click.option("--ready-timeout", default=900.0, show_default=True, help="Seconds a replica may take to get ready.")
@click.option("--out", type=click.Path(path_type=Path), help="Write a run directory (manifest + points.jsonl).")
@click.option("--csv", "csv_path", type=click.Path(path_type=Path), help="Also write the points as CSV.")
@click.option("--device", type=click.Choice(["cuda", "cpu"]), default="cuda", show_default=True,
              help="cpu: a check of the process handling (no MPS); its times are not GPU times.")
@click.option("--json", "as_json", is_flag=True, help="Print the points as JSON.")
def command(model_name, replica_counts, batch, ctx, mps, no_baseline, duration, dtype, impl, attention_impl,
            linear_impls, page_size, counters, ready_timeout, out, csv_path, device, as_json) -> None:
    """Decode with R replicas of MODEL at once (each its own process): aggregate tokens/s, latency, memory, energy."""
    if device == "cuda":
        require_gpu("gpuprof replicate")
    else:
        use_triton_interpreter()
    shape = get_model(model_name)  # a clear error now, not in every replica
    check_context(shape, ctx)  # else every replica starts, fails the same way, and the run looks done
    counts = int_list(replica_counts, "replicas")
    positive_seconds(duration, "--duration")
    positive_seconds(ready_timeout, "--ready-timeout")
    modes = {"both": MODES, "on": ("mps",), "off": ("no-mps",)}[mps]
    if device == "cpu" and "mps" in modes:
        raise GpuprofError("MPS shares a GPU; with --device cpu use --mps off.")
    spec = ReplicaSpec(model=model_name, batch=batch, ctx=ctx, dtype=dtype, impl=impl, attention_impl=attention_impl,
                       linear_impls=tuple(linear_list(linear_impls)), page_size=page_size, duration_s=duration,
                       device=device)
    collectors = make_collectors(counters)
    gpu = probe_gpu() if device == "cuda" else None
    peaks = peaks_lib.load(gpu.name) if gpu else None
    grid = {"model": shape.to_dict(), "replicas": counts, "batch": batch, "ctx": ctx, "modes": list(modes),
            "baseline": not no_baseline, "duration_s": duration, "dtype": dtype, "impl": impl,
            "attention_impl": attention_impl, "linear_impls": linear_impls, "page_size": page_size,
            "counters": counters, "device": device}
    run = open_run(out, False, grid, gpu, peaks) if out else None

    def on_point(point: dict) -> None:
        if run:
            run.append(point)
        if not as_json:
            console.print(f"{point['mode']}, {point['replicas']} x {point['batch']}: {point['status']}", style="dim")

    points = replicate(spec, counts, modes=modes, baseline=not no_baseline, collectors=collectors,
                       ready_timeout_s=ready_timeout, on_point=on_point)
    show(points, COLUMNS, f"replicas of {shape.name}, ctx {ctx}, {dtype}, {impl}", gpu, run, csv_path, as_json)
    if not any(p["status"] == "ok" for p in points):  # nothing measured: scripts must not take it for success
        raise GpuprofError(f"every run failed; the first with: {points[0]['error']}")
