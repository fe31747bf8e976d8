"""Measure whole decode steps per batch size: tokens/s, step latency, memory, energy per token, as records.

Each batch size gets its own paged cache and CUDA graph; the step is timed by gpuprof.harness on graph replays
(L2 stays warm between steps, as it does between the steps of a real decode loop). Then, with counters, a fixed
window of replays is measured for energy, and a short greedy loop decodes real tokens (argmax fed back, lengths
advancing) to show that the step is a working decoder, not only a timed kernel sequence.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch

from gpuprof import harness
from gpuprof.bench import MEASUREMENT_FAILURES, CheckFailed, Collector, failure
from gpuprof.decode import DecodeBatch, Decoder, PagedKVCache, check_context, prepare_batch
from gpuprof.errors import GpuprofError
from gpuprof.models import ModelShape
from gpuprof.ops.base import Work, dtype_bytes
from gpuprof.records import add_work, new_point

# Headroom beyond weights, cache and activations: cuBLAS workspaces, graph pools, allocator slack.
_SLACK_BYTES = 512 << 20
# Steps are timed back to back with L2 warm, as in a decode loop (weights exceed L2 anyway), and each timed call
# is already a graph replay, so the harness must not capture it again.
STEP_TIMING = harness.TimingOptions(cold_l2=False, graph=False, max_time_s=2.0)


@dataclass(frozen=True)
class DecodeSettings:
    ctx: int = 1024  # tokens in each sequence at the timed step, the new one included
    steps: int = 32  # greedy tokens decoded after timing; the cache has room for them
    page_size: int = 16
    seed: int = 0
    use_graph: bool | None = None  # None: on a GPU
    timing: harness.TimingOptions = STEP_TIMING
    energy_window_s: float = 2.0  # NVML's energy counter needs a window much longer than its ~100 ms updates


def make_collectors(names: str | None) -> list[Collector]:
    """Counter collectors by name ("nvml", ...), from gpuprof.counters, imported only when asked for."""
    if not names:
        return []
    try:
        from gpuprof.counters import make_collectors as make
    except ImportError:
        raise GpuprofError("--counters needs gpuprof.counters, which this install lacks; leave --counters out.") \
            from None
    return list(make([n.strip() for n in names.split(",") if n.strip()]))


def step_work(shape: ModelShape, batch: int, ctx: int, dtype: str) -> Work:
    """The least a step must do: read every linear weight once and every cached K/V of the batch once."""
    e = dtype_bytes(dtype)
    weights = sum(l.n * l.k * l.count for l in shape.linears())
    kv = batch * ctx * shape.kv_bytes_per_token(e)
    attention_flops = 4 * shape.layers * batch * shape.heads * shape.head_dim * ctx  # q.k and p.v
    return Work(bytes=weights * e + kv, flops=2 * batch * weights + attention_flops)


def activation_bytes(shape: ModelShape, batch: int, max_len: int, dtype: str, impl: str) -> int:
    """A generous bound on what one step allocates beyond weights and cache."""
    e = dtype_bytes(dtype)
    widest = max(shape.vocab, 2 * shape.intermediate, (shape.heads + 2 * shape.kv_heads) * shape.head_dim)
    need = 6 * batch * widest * 4  # a few float32 temporaries of the widest activation
    if impl == "torch":  # gathers the whole K and V of a layer, in the dtype and in float32, and float32 scores
        need += 2 * batch * max_len * shape.kv_heads * shape.head_dim * (e + 4) + 2 * batch * shape.heads * max_len * 4
    return need + _SLACK_BYTES


def _free_bytes(device: torch.device) -> int | None:
    if device.type != "cuda":
        return None
    free, _ = torch.cuda.mem_get_info(device)
    return free


def measure_batch(
    decoder: Decoder,
    batch: int,
    settings: DecodeSettings,
    collectors: Sequence[Collector] = (),
    peaks: Mapping | None = None,
) -> dict:
    """One record of kernel `decode_step` for one batch size; oom, unsupported and failures are recorded, not raised."""
    s, dtype = decoder.shape, decoder.dtype_name
    point = new_point(
        kernel="decode_step", impl=decoder.backend.name, model=s.name, dtype=dtype, batch=batch, ctx=settings.ctx,
        hq=s.heads, hkv=s.kv_heads, head_dim=s.head_dim, page_size=settings.page_size,
        tokens_per_s=None, step_ms=None, memory_bytes=None, joules_per_token=None,
    )
    work = step_work(s, batch, settings.ctx, dtype)
    max_len = settings.ctx + settings.steps
    kv = PagedKVCache.bytes_needed(s, batch, max_len, settings.page_size, dtype_bytes(dtype))
    point.update(bytes=work.bytes, flops=work.flops, weight_bytes=decoder.weights.nbytes(), kv_bytes=kv,
                 attention_impl=decoder.backend.attention_impl, device=decoder.device.type)
    need = kv + activation_bytes(s, batch, max_len, dtype, decoder.backend.name)
    free = _free_bytes(decoder.device)
    if free is not None and need > 0.9 * free:
        point.update(status="oom", error=f"needs {need / 2**30:.1f} GiB for KV cache and activations; "
                                         f"{free / 2**30:.1f} GiB are free after the weights.")
        return point
    prepared: DecodeBatch | None = None
    try:
        if decoder.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(decoder.device)
        prepared = prepare_batch(decoder, batch, settings.ctx, settings.steps, settings.page_size, settings.seed,
                                 settings.use_graph)
        point.update(_choice_fields(prepared), graph=prepared.graph is not None)
        if not torch.isfinite(prepared.step().float()).all():
            raise CheckFailed("the decode step produced NaN or inf logits.")
        timing = _time_step(prepared, settings.timing)
        point.update(timing.record(), status="ok")
        step_s = timing.stats.median * 1e-6
        point.update(step_ms=step_s * 1e3, tokens_per_s=batch / step_s)
        if collectors:
            point.update(_energy(prepared, step_s, collectors, point, settings.energy_window_s))
        point.update(_greedy_loop(prepared, settings.steps))
        if decoder.device.type == "cuda":
            point["memory_bytes"] = torch.cuda.max_memory_allocated(decoder.device)
        add_work(point, peaks)
    except MEASUREMENT_FAILURES as e:
        point.update(failure(e, oom=f"out of device memory for a batch of {batch} at context {settings.ctx}."))
    finally:
        del prepared
        if decoder.device.type == "cuda":
            torch.cuda.empty_cache()
    return point


def _choice_fields(prepared: DecodeBatch) -> dict:
    """Flat record fields: linear_<name> = the chosen impl, linear_<name>_<impl>_us = each candidate's time."""
    fields: dict = {}
    for name, c in prepared.linear_choices.items():
        fields[f"linear_{name}"] = c.impl
        fields.update({f"linear_{name}_{impl}_us": t for impl, t in c.times_us.items()})
    return fields


def _time_step(prepared: DecodeBatch, options: harness.TimingOptions) -> harness.Timing:
    if prepared.decoder.device.type == "cuda":
        return harness.time_cuda([prepared.step], options, l2_bytes=0)
    return harness.time_cpu([prepared.step], options)


def _sync(prepared: DecodeBatch) -> None:
    if prepared.decoder.device.type == "cuda":
        torch.cuda.synchronize(prepared.decoder.device)


def _energy(prepared: DecodeBatch, step_s: float, collectors: Sequence[Collector], point: Mapping,
            window_s: float) -> dict:
    """Counters over a fixed number of back-to-back steps; joules per token from the energy (or mean power)."""
    n = max(10, math.ceil(window_s / step_s))
    _sync(prepared)
    for c in collectors:
        c.start(point)
    t0 = time.perf_counter()
    for _ in range(n):
        prepared.step()
    _sync(prepared)
    elapsed = time.perf_counter() - t0
    counters: dict = {}
    for c in collectors:
        counters.update(c.stop(point))
    joules = counters.get("nvml_energy_j")
    if joules is None and counters.get("nvml_power_w") is not None:
        joules = counters["nvml_power_w"] * elapsed
    tokens = n * prepared.tokens.shape[0]
    return {**counters, "energy_steps": n, "energy_window_s": elapsed,
            "joules_per_token": joules / tokens if joules is not None else None}


def _greedy_loop(prepared: DecodeBatch, steps: int) -> dict:
    """Decode `steps` real tokens (argmax fed back, lengths advancing) and time the whole loop."""
    if steps <= 0:
        return {}
    _sync(prepared)
    t0 = time.perf_counter()
    for _ in range(steps):
        prepared.advance(prepared.step())
    _sync(prepared)
    elapsed = time.perf_counter() - t0
    finite = bool(torch.isfinite(prepared.step().float()).all())
    prepared.rewind()
    if not finite:
        raise CheckFailed(f"the greedy loop produced NaN or inf logits after {steps} steps.")
    return {"loop_steps": steps, "loop_tokens_per_s": steps * prepared.tokens.shape[0] / elapsed}


def run_decode(
    decoder: Decoder,
    batches: Sequence[int],
    settings: DecodeSettings,
    *,
    collectors: Sequence[Collector] = (),
    peaks: Mapping | None = None,
    on_point: Callable[[dict], None] | None = None,
    skip: set[int] = frozenset(),
) -> list[dict]:
    """One record per batch size, in order; `on_point` gets each as soon as it is measured (to append to a run)."""
    check_context(decoder.shape, settings.ctx, settings.steps)
    if settings.page_size < 1:
        raise GpuprofError(f"the page size must be at least 1 token, not {settings.page_size}.")
    points = []
    for batch in batches:
        if batch in skip:
            continue
        point = measure_batch(decoder, batch, settings, collectors, peaks)
        points.append(point)
        if on_point:
            on_point(point)
    return points

