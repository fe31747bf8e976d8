"""`gpuprof advise`: batch size, KV memory, replicas and vLLM settings, from a measured table or a model."""

from __future__ import annotations

import math
from pathlib import Path

import click

from gpuprof.advisor import calibration as calibration_lib
from gpuprof.advisor import workload as workload_lib
from gpuprof.advisor.criteria import RULES, Criteria
from gpuprof.advisor.memory import DEFAULT_FRACTION, GiB
from gpuprof.advisor.plan import VLLM_DTYPES, Deployment, Gpu, Serving, advise_model, advise_profile
from gpuprof.advisor.profile import read_profile
from gpuprof.advisor.render import render
from gpuprof.cli.bench import int_list
from gpuprof.cli.output import print_json
from gpuprof.device import datasheet_for, info
from gpuprof.errors import GpuprofError
from gpuprof.models import get_model

DEFAULT_GPU = "NVIDIA H100 80GB HBM3"


def finite(ctx: click.Context, param: click.Parameter, value: float | None) -> float | None:
    """click callback: nan and inf parse as floats but are no quantity; refuse them in one sentence."""
    if value is not None and not math.isfinite(value):
        raise GpuprofError(f"--{param.name.replace('_', '-')} takes a finite number, not {value}.")
    return value


def resolve_gpu(name: str | None, memory_gb: float | None) -> Gpu:
    """The GPU to plan for: --gpu, else the visible one, else an H100; its memory from the most direct source."""
    visible = info() if name is None else None
    name = name or (visible.name if visible else DEFAULT_GPU)
    if memory_gb is not None:
        if memory_gb <= 0:
            raise GpuprofError(f"--gpu-memory-gb must be positive, not {memory_gb:g}.")
        return Gpu(name, int(memory_gb * GiB), "--gpu-memory-gb")
    if visible is not None:
        return Gpu(name, visible.memory_bytes, "this GPU, as CUDA reports it")
    sheet = datasheet_for(name)
    if sheet is None or not sheet.memory_bytes:
        raise GpuprofError(f"gpuprof has no datasheet memory size for {name!r}; give it with --gpu-memory-gb.")
    # vLLM's --gpu-memory-utilization is a share of the total CUDA reports, which is less than the marketed size.
    return Gpu(name, *sheet.planning_memory())


@click.command("advise")
@click.option("--profile", "profile_path", type=click.Path(path_type=Path),
              help="Measured serving runs (CSV, JSON or JSONL): a batch-size and a throughput column at least.")
@click.option("--model", "model_name", help="Preset name or Hugging Face config.json: predict, and plan memory.")
@click.option("--calibration", "calibration_path", type=click.Path(path_type=Path),
              help="calibration.json from `gpuprof calibrate` [traces/<gpu-slug>/calibration.json, else datasheet].")
@click.option("--gpu", "gpu_name", help=f"GPU to plan for [the visible one, else {DEFAULT_GPU!r}].")
@click.option("--gpu-memory-gb", type=float, callback=finite,
              help="GPU memory in GiB [this GPU's, else the datasheet's].")
@click.option("--dtype", type=click.Choice(sorted(VLLM_DTYPES)), default="bf16", show_default=True)
@click.option("--prompt", help="Prompt tokens: a count (512) or uniform:LO:HI [512].")
@click.option("--output", help="Output tokens: a count (256) or uniform:LO:HI [256].")
@click.option("--lengths", type=click.Path(path_type=Path), help="CSV of requests (prompt, output columns).")
@click.option("--batches", help="Model mode: batch sizes to predict [powers of 2 up to what fits].")
@click.option("--epsilon", type=float, callback=finite, default=0.2, show_default=True,
              help="Least throughput gain g(B) kept.")
@click.option("--latency-factor", type=float, callback=finite, default=5.0, show_default=True,
              help="ITL bound as a multiple of the ITL at the batch nearest 32.")
@click.option("--max-itl-ms", type=float, callback=finite,
              help="An absolute ITL bound in ms (replaces --latency-factor).")
@click.option("--plateau-within", type=float, callback=finite, default=0.1, show_default=True,
              help="Plateau rule: smallest batch within this fraction of the best throughput.")
@click.option("--rule", type=click.Choice(RULES), default="gain", show_default=True,
              help="Which rule's batch to plan on.")
@click.option("--memory-fraction", type=float, callback=finite, default=DEFAULT_FRACTION, show_default=True,
              help="Fraction of GPU memory all replicas together may use.")
@click.option("--workspace-gb", type=float, callback=finite, default=2.0, show_default=True,
              help="Assumed activations/CUDA-graph/context memory per replica, GiB.")
@click.option("--step-overhead-us", type=float, callback=finite,
              help="Fixed cost per decode step, µs [the calibration's, 0 if none].")
@click.option("--batch-column", help="Profile column holding the batch size.")
@click.option("--throughput-column", help="Profile column holding the throughput (tokens/s).")
@click.option("--itl-column", help="Profile column holding the mean inter-token latency (ms).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of tables.")
def command(profile_path, model_name, calibration_path, gpu_name, gpu_memory_gb, dtype, prompt, output, lengths,
            batches, epsilon, latency_factor, max_itl_ms, plateau_within, rule, memory_fraction, workspace_gb,
            step_overhead_us, batch_column, throughput_column, itl_column, as_json) -> None:
    """Choose the batch size (the paper's gain rule and the plateau rule), then plan KV memory, replicas and vLLM.

    From measured serving runs (--profile) or from a model predicted with a calibration (--model), or both.
    """
    if profile_path is None and model_name is None:
        raise click.UsageError("give --profile FILE (measured serving runs), --model NAME (predict), or both.")
    if lengths is not None and (prompt or output):
        raise click.UsageError("give either --lengths FILE or --prompt/--output, not both.")
    criteria = Criteria(epsilon, latency_factor, max_itl_ms, plateau_within)
    deployment = Deployment(dtype, memory_fraction, int(workspace_gb * GiB), rule)
    serving = None
    if model_name is not None:
        model = get_model(model_name)
        gpu = resolve_gpu(gpu_name, gpu_memory_gb)
        calibration = calibration_lib.resolve(gpu.name, dtype, calibration_path)
        if step_overhead_us is not None:
            calibration = calibration_lib.with_step_overhead(calibration, step_overhead_us)
        load = workload_lib.from_csv(lengths) if lengths else workload_lib.from_specs(prompt, output)
        serving = Serving(model, calibration, gpu, load)
    if profile_path is not None:
        table = read_profile(profile_path, batch_column, throughput_column, itl_column)
        report = advise_profile(table, criteria, deployment, serving)
    else:
        report = advise_model(serving, criteria, deployment, int_list(batches, "batches"))
    if as_json:
        print_json(report)
    else:
        render(report)
