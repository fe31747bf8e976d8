"""The memory-gap experiment: decode attention and a model's linear layers, measured across batch sizes.

A sweep is a grid of declared axes, as in nvbench: models x dtypes x batch sizes x context lengths x kernels x
implementations. `plan` expands the grid into points; `run_sweep` sends each through
`gpuprof.bench.measure_point` (checked against a reference, then timed) and appends its record to the run's
points.jsonl as soon as it is finished, so an interrupted sweep keeps every finished point and a resumed one
measures only the rest.

Record conventions (shared with report and calibrate):
- kernel "attention": one decode-attention call of one layer; `count` = layers (calls per decode step).
- kernel "linear": one weight matrix at batch B, measured through the "gemv" op (m = B); `layer` names the matrix
  and `count` says how many times a decode step applies it (layers, or 1 for lm_head).
"""

from __future__ import annotations

import math

import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from gpuprof import harness
from gpuprof.bench import Collector, measure_point
from gpuprof.device import GPUInfo
from gpuprof.errors import GpuprofError
from gpuprof.models import ModelShape, get_model
from gpuprof.ops import get_op
from gpuprof.records import TRACES, Run, add_work, new_manifest, new_point, new_run_dir, write_json

DEFAULT_MODELS = ("llama-2-7b", "opt-1.3b")
DEFAULT_BATCHES = tuple(2**i for i in range(10))  # 1, 2, 4, ..., 512
DEFAULT_CTXS = (2048,)
DEFAULT_DTYPES = ("bf16",)
DEFAULT_PAGE_SIZE = 16
# Seconds of timed repetitions per point: at most 100 s over the default grid's 400 points, which leaves most of
# the 5-minute target for warm-up, drawing inputs and correctness checks.
DEFAULT_MAX_TIME_S = 0.25

# The record's kernel name -> the registered op that measures it.
OP_OF_KERNEL = {"attention": "attention", "linear": "gemv"}
SDPA_PREFIX = "torch-sdpa"  # torch's SDPA reads a contiguous cache, recorded as page_size 0

# The fields that identify a point: a resumed sweep skips planned points whose key is already recorded.
KEY_FIELDS = ("model", "dtype", "kernel", "layer", "impl", "batch", "ctx", "page_size", "m", "n", "k")


@dataclass(frozen=True)
class Grid:
    """What a sweep measures: every combination of these axes (linear layers do not vary with ctx)."""

    models: tuple[ModelShape, ...]
    impls: Mapping[str, tuple[str, ...]]  # record kernel -> implementations, in the op's order
    batches: tuple[int, ...] = DEFAULT_BATCHES
    ctxs: tuple[int, ...] = DEFAULT_CTXS
    dtypes: tuple[str, ...] = DEFAULT_DTYPES
    page_size: int = DEFAULT_PAGE_SIZE
    max_time_s: float = DEFAULT_MAX_TIME_S

    @property
    def kernels(self) -> tuple[str, ...]:
        return tuple(self.impls)

    def to_manifest(self) -> dict:
        """The manifest's `grid`: enough to plan the same points again, even if a config.json has moved."""
        return {
            "models": {m.name: m.to_dict() for m in self.models},
            "kernels": list(self.kernels),
            "impls": {k: list(v) for k, v in self.impls.items()},
            "batches": list(self.batches),
            "ctxs": list(self.ctxs),
            "dtypes": list(self.dtypes),
            "page_size": self.page_size,
            "max_time_s": self.max_time_s,
        }

    @classmethod
    def from_manifest(cls, grid: Mapping) -> Grid:
        try:
            return cls(
                models=tuple(ModelShape(**shape) for shape in grid["models"].values()),
                impls={k: tuple(v) for k, v in grid["impls"].items()},
                batches=tuple(grid["batches"]),
                ctxs=tuple(grid["ctxs"]),
                dtypes=tuple(grid["dtypes"]),
                page_size=int(grid["page_size"]),
                max_time_s=float(grid["max_time_s"]),
            )
        except (KeyError, TypeError, AttributeError) as e:
            raise GpuprofError(f"the run's manifest holds no sweep grid that gpuprof can read ({e!r} is missing).")


def make_grid(
    models: Sequence[str] = DEFAULT_MODELS,
    kernels: Sequence[str] = tuple(OP_OF_KERNEL),
    impls: Sequence[str] | None = None,
    batches: Sequence[int] = DEFAULT_BATCHES,
    ctxs: Sequence[int] = DEFAULT_CTXS,
    dtypes: Sequence[str] = DEFAULT_DTYPES,
    page_size: int = DEFAULT_PAGE_SIZE,
    max_time_s: float = DEFAULT_MAX_TIME_S,
) -> Grid:
    """Check what the user asked for and build the grid; every mistake is one sentence."""
    unknown = [k for k in kernels if k not in OP_OF_KERNEL]
    if unknown or not kernels:
        raise GpuprofError(f"unknown kernel {', '.join(unknown) or '(none)'}; the sweep's kernels are "
                           f"{', '.join(OP_OF_KERNEL)}.")
    bad_dtypes = [d for d in dtypes if d not in ("fp16", "bf16")]
    if bad_dtypes or not dtypes:
        raise GpuprofError(f"the sweep measures fp16 or bf16, not {', '.join(bad_dtypes) or '(none)'}.")
    if page_size < 0:
        raise GpuprofError(f"--page-size takes 0 (contiguous cache) or a positive size, not {page_size}.")
    for name, values in (("batch", batches), ("ctx", ctxs)):
        if not values or min(values) <= 0:
            raise GpuprofError(f"--{name} takes positive whole numbers, not {list(values)}.")
    if not (math.isfinite(max_time_s) and max_time_s > 0):  # nan passes `<= 0`
        raise GpuprofError(f"--max-time takes a positive number of seconds, not {max_time_s}.")
    return Grid(
        models=tuple(_unique([get_model(m) for m in models])),
        impls=resolve_impls(kernels, impls),
        batches=tuple(sorted(set(batches))),
        ctxs=tuple(sorted(set(ctxs))),
        dtypes=tuple(dict.fromkeys(dtypes)),
        page_size=page_size,
        max_time_s=max_time_s,
    )


def resolve_impls(kernels: Sequence[str], wanted: Sequence[str] | None) -> dict[str, tuple[str, ...]]:
    """Per kernel, the op's implementations that were asked for (all of them when `wanted` is None)."""
    ops = {k: get_op(OP_OF_KERNEL[k]) for k in kernels}
    if wanted is None:
        return {k: tuple(op.impls) for k, op in ops.items()}
    known = {i for op in ops.values() for i in op.impls}
    unknown = [i for i in wanted if i not in known]
    if unknown:
        raise GpuprofError(f"no swept kernel has an implementation {', '.join(unknown)}; "
                           f"valid: {', '.join(sorted(known))}.")
    chosen = {k: tuple(i for i in op.impls if i in wanted) for k, op in ops.items()}
    for k, impls in chosen.items():
        if not impls:
            raise GpuprofError(f"--impl names no implementation of {k} (it has {', '.join(ops[k].impls)}); "
                               f"add one or leave {k} out of --kernel.")
    return chosen


def _unique(models: list[ModelShape]) -> list[ModelShape]:
    seen: dict[str, ModelShape] = {}
    for m in models:
        seen.setdefault(m.name, m)
    return list(seen.values())


@dataclass(frozen=True)
class PlannedPoint:
    """One point of the grid, before it is measured."""

    kernel: str  # the record's kernel: "attention" or "linear"
    impl: str
    model: str
    dtype: str
    shape: dict = field(hash=False)  # the op's shape keys
    extra: dict = field(hash=False)  # record fields beyond the op's shape: batch, layer, count, op

    @property
    def op(self) -> str:
        return OP_OF_KERNEL[self.kernel]

    @property
    def batch(self) -> int:
        return self.fields()["batch"]

    def fields(self) -> dict:
        return {"kernel": self.kernel, "impl": self.impl, "model": self.model, "dtype": self.dtype,
                **self.shape, **self.extra}

    def key(self) -> tuple:
        f = self.fields()
        return tuple(f.get(k) for k in KEY_FIELDS)

    def family(self) -> tuple:
        """The key without the batch: larger batches of one family need more memory than smaller ones."""
        f = self.fields()
        return tuple(f.get(k) for k in KEY_FIELDS if k not in ("batch", "m"))

    def label(self) -> str:
        f = self.fields()
        what = f"attention L={f['ctx']}" if self.kernel == "attention" else f['layer']
        return f"{self.model} {what} {self.impl} B={f['batch']}"


def plan(grid: Grid) -> list[PlannedPoint]:
    """Every point of the grid, smallest batches first: an interrupted sweep has covered every model and kernel."""
    points = []
    for batch in grid.batches:
        for model in grid.models:
            for dtype in grid.dtypes:
                if "linear" in grid.impls:
                    points += _linear_points(model, dtype, batch, grid.impls["linear"])
                if "attention" in grid.impls:
                    for ctx in grid.ctxs:
                        points += _attention_points(model, dtype, batch, ctx, grid.page_size, grid.impls["attention"])
    return points


def _linear_points(model: ModelShape, dtype: str, batch: int, impls: Sequence[str]) -> list[PlannedPoint]:
    return [
        PlannedPoint("linear", impl, model.name, dtype, {"m": batch, "n": lin.n, "k": lin.k},
                     {"batch": batch, "layer": lin.name, "count": lin.count, "op": "gemv"})
        for lin in model.linears()
        for impl in impls
    ]


def _attention_points(model: ModelShape, dtype: str, batch: int, ctx: int, page_size: int,
                      impls: Sequence[str]) -> list[PlannedPoint]:
    points = []
    for impl in impls:
        shape = {"batch": batch, "ctx": ctx, "hq": model.heads, "hkv": model.kv_heads, "head_dim": model.head_dim,
                 "page_size": 0 if impl.startswith(SDPA_PREFIX) else page_size}
        points.append(PlannedPoint("attention", impl, model.name, dtype, shape,
                                   {"count": model.layers, "op": "attention"}))
    return points


@dataclass
class Measurer:
    """How every point of one sweep is measured: the device, the ceilings and the timing budget."""

    device: str = "cuda"
    peaks: Mapping | None = None
    options: harness.TimingOptions = harness.TimingOptions(max_time_s=DEFAULT_MAX_TIME_S)
    l2_bytes: int = 0
    collectors: Sequence[Collector] = ()

    def __call__(self, p: PlannedPoint) -> dict:
        op = get_op(p.op)
        try:
            shape = op.shape(**p.shape)
        except GpuprofError as e:  # a model shape the op rejects (e.g. an odd head_dim)
            return not_measured(p, "unsupported", str(e))
        try:
            record = measure_point(op, p.impl, shape, p.dtype, device=self.device, peaks=self.peaks,
                                   options=self.options, model=p.model, l2_bytes=self.l2_bytes,
                                   collectors=self.collectors, extra=p.extra)
        except Exception as e:  # one point failing in an unforeseen way must not end a sweep of hundreds
            first_line = str(e).strip().splitlines()[0] if str(e).strip() else "no message"
            return not_measured(p, "error", f"{type(e).__name__}: {first_line}")
        record["kernel"] = p.kernel  # "linear" is measured by the "gemv" op
        return record


def not_measured(p: PlannedPoint, status: str, error: str) -> dict:
    """The record of a point that was not run, with its exact work counts where the op can give them."""
    point = new_point(**p.fields(), status=status, error=error)
    try:
        work = get_op(p.op).work(p.shape, p.dtype)
    except (GpuprofError, KeyError, ValueError):
        return point
    point.update(bytes=work.bytes, flops=work.flops)
    return add_work(point, None)


@dataclass
class Outcome:
    """What one call of `run_sweep` did."""

    statuses: Counter = field(default_factory=Counter)
    already_done: int = 0
    elapsed_s: float = 0.0

    @property
    def measured(self) -> int:
        return sum(self.statuses.values())


def run_sweep(
    points: Sequence[PlannedPoint],
    run: Run,
    measure: Callable[[PlannedPoint], dict],
    on_point: Callable[[PlannedPoint, dict | None], None] = lambda p, record: None,
    outcome: Outcome | None = None,
) -> Outcome:
    """Measure every planned point not yet in `run`, appending each record the moment it is finished.

    Once a point runs out of memory, the larger batches of the same family are recorded as out of memory without
    allocating again (allocation failures of tens of GiB are slow). `on_point(p, record)` is called after each
    point (record None for a point recorded before a resume). KeyboardInterrupt propagates; what was appended
    stays, and `outcome`, when given, holds what was done until then.
    """
    outcome = outcome if outcome is not None else Outcome()
    start = time.perf_counter()
    run.repair()
    recorded = run.points()
    done = {tuple(r.get(k) for k in KEY_FIELDS) for r in recorded}
    oom_from = _oom_batches(recorded)
    try:
        for p in points:
            if p.key() in done:
                outcome.already_done += 1
                on_point(p, None)
                continue
            first_oom = oom_from.get(p.family())
            if first_oom is not None and p.batch > first_oom:
                record = not_measured(p, "oom", f"not attempted: batch {first_oom} of the same shape already ran "
                                                "out of device memory.")
            else:
                record = measure(p)
            run.append(record)
            done.add(p.key())
            outcome.statuses[record["status"]] += 1
            if record["status"] == "oom":
                oom_from[p.family()] = min(p.batch, oom_from.get(p.family(), p.batch))
            on_point(p, record)
    finally:
        outcome.elapsed_s = time.perf_counter() - start
    return outcome


def _oom_batches(records: Sequence[Mapping]) -> dict[tuple, int]:
    """Per family, the smallest batch recorded as out of memory (so a resumed sweep keeps skipping above it)."""
    out: dict[tuple, int] = {}
    for r in records:
        if r.get("status") == "oom" and r.get("batch") is not None:
            fam = tuple(r.get(k) for k in KEY_FIELDS if k not in ("batch", "m"))
            out[fam] = min(r["batch"], out.get(fam, r["batch"]))
    return out


def largest_input_bytes(points: Sequence[PlannedPoint]) -> dict[str, int]:
    """Per model, the device memory of the largest input set the grid allocates (for a dry run)."""
    out: dict[str, int] = {}
    for p in points:
        try:
            nbytes = get_op(p.op).input_bytes(p.shape, p.dtype)
        except (GpuprofError, KeyError, ValueError, NotImplementedError):
            continue
        out[p.model] = max(out.get(p.model, 0), nbytes)
    return out


def progress_weight(p: PlannedPoint) -> float:
    """A point's share of a sweep's duration, for the ETA: a fixed part (warm-up, check, timing budget) plus a
    part growing with the inputs drawn and checked (1 per GiB). A relative weight, not a prediction."""
    try:
        return 1.0 + get_op(p.op).input_bytes(p.shape, p.dtype) / 2**30
    except (GpuprofError, KeyError, ValueError, NotImplementedError):
        return 1.0


def grid_summary(points: Sequence[PlannedPoint]) -> dict[tuple[str, str], int]:
    """Point counts per (model, kernel)."""
    return dict(Counter((p.model, p.kernel) for p in points))


COUNTER_NAMES = ("nvml", "ncu")


def make_counter_collectors(names: Sequence[str]) -> list[Collector]:
    """The collectors of `--counters`, from gpuprof.counters (imported only when asked for)."""
    unknown = [n for n in names if n not in COUNTER_NAMES]
    if unknown:
        raise GpuprofError(f"unknown counters {', '.join(unknown)}; valid: {', '.join(COUNTER_NAMES)}.")
    if not names:
        return []
    try:
        from gpuprof.counters import make_collectors
    except ImportError:
        raise GpuprofError("hardware counters are not available in this build of gpuprof (no gpuprof.counters); "
                           "run the sweep without --counters.")
    return list(make_collectors(list(names)))


def default_run_path(gpu_name: str, root: Path = TRACES) -> Path:
    """traces/<gpu-slug>/sweep-<UTC time>."""
    return new_run_dir(gpu_name, "sweep", root)


def new_run(path: Path, grid: Grid, *, gpu: GPUInfo | None, peaks: Mapping | None, device: str,
            counters: Sequence[str], command: str) -> Run:
    """Create the run directory with its manifest (grid, versions, peaks used) before the first point."""
    manifest = new_manifest(gpu, peaks, {**grid.to_manifest(), "device": device, "counters": list(counters)}, command)
    return Run.create(path, {**manifest, "sessions": []},
                      if_exists=f"finish it with `gpuprof sweep --resume {path}`, or choose another --out")


def note_session(run: Run, outcome: Outcome, started_at: str, interrupted: bool) -> None:
    """Add this invocation (its duration, what it measured, whether it was cut short) to the manifest."""
    manifest = run.manifest()
    manifest.setdefault("sessions", []).append({
        "started_at": started_at,
        "elapsed_s": round(outcome.elapsed_s, 1),
        "measured": outcome.measured,
        "statuses": dict(outcome.statuses),
        "already_done": outcome.already_done,
        "interrupted": interrupted,
    })
    write_json(run.manifest_path, manifest)
