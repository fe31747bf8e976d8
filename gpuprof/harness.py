"""The timing core every benchmark uses.

Timing is CUDA events around each repetition (or around a CUDA-graph replay of many launches, for kernels of a
few microseconds), after warm-up, with L2 made cold between repetitions by a flush or by rotating input sets.
Repetitions continue until the median is known to a target relative precision or a time budget is spent, as
nvbench does; the statistics are plain functions so they can be checked without a GPU.

Warm-up and timed launches sit in the NVTX ranges `warmup` and `measure` (gpuprof.nvtx), so a profiler can keep
the measured launches alone.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from gpuprof import nvtx

# Width factor of the median's confidence interval (McGill, Tukey & Larsen, 1978: median +- 1.57 IQR / sqrt(n),
# about 95% for two medians to differ). Used as the convergence criterion of the adaptive loop.
_MEDIAN_CI = 1.57


@dataclass(frozen=True)
class Stats:
    median: float
    min: float
    max: float
    q1: float
    q3: float
    n: int

    @property
    def iqr(self) -> float:
        return self.q3 - self.q1

    @property
    def rel_precision(self) -> float:
        """Half-width of the median's ~95% confidence interval over the median (inf for fewer than 2 samples)."""
        if self.n < 2 or self.median <= 0:
            return math.inf
        return _MEDIAN_CI * self.iqr / math.sqrt(self.n) / self.median


def quantile(sorted_values: Sequence[float], q: float) -> float:
    """Linear-interpolation quantile (numpy's default method) of already sorted values."""
    if not sorted_values:
        raise ValueError("quantile of no values")
    pos = q * (len(sorted_values) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def summarize(samples: Sequence[float]) -> Stats:
    s = sorted(samples)
    return Stats(
        median=statistics.median(s), min=s[0], max=s[-1], q1=quantile(s, 0.25), q3=quantile(s, 0.75), n=len(s)
    )


@dataclass(frozen=True)
class TimingOptions:
    """How long and how precisely to time one point."""

    warmup_ms: float = 25.0  # at least this long, and at least 3 calls, before timing
    min_reps: int = 10
    max_reps: int = 2000
    target_precision: float = 0.005  # stop once the median is known to +-0.5%
    max_time_s: float = 2.0  # ... or once this much time went into timed repetitions
    cold_l2: bool = True  # flush L2 between repetitions (unless inputs rotate through more than 2x L2)
    graph: bool | None = None  # capture launches in a CUDA graph; None: when one call is shorter than graph_below_us
    graph_below_us: float = 20.0
    batch: int = 10  # repetitions between synchronisations


@dataclass
class Timing:
    """Per-call times of one point, in microseconds."""

    samples_us: list[float]
    converged: bool
    method: str  # "events", "events+flush", "graph", "cpu"
    calls_per_sample: int = 1
    stats: Stats = field(init=False)

    def __post_init__(self) -> None:
        self.stats = summarize(self.samples_us)

    def record(self) -> dict:
        """The contract's timing fields, plus how the time was taken."""
        s = self.stats
        return {
            "time_us": s.median,
            "time_us_min": s.min,
            "time_us_max": s.max,
            "time_us_iqr": s.iqr,
            "reps": s.n,
            "timing_method": self.method,
            "timing_converged": self.converged,
            "timing_rel_precision": s.rel_precision,
        }


def adaptive(sample_batch: Callable[[int], list[float]], options: TimingOptions) -> tuple[list[float], bool]:
    """Collect samples in batches until the median's relative precision reaches the target or the budget is spent.

    `sample_batch(n)` returns n per-call times. Returns the samples and whether the target was reached.
    """
    samples: list[float] = []
    start = time.perf_counter()
    while True:
        want = max(options.batch, options.min_reps - len(samples))
        want = min(want, options.max_reps - len(samples))
        samples.extend(sample_batch(want))
        if len(samples) >= options.min_reps and summarize(samples).rel_precision <= options.target_precision:
            return samples, True
        if len(samples) >= options.max_reps or time.perf_counter() - start >= options.max_time_s:
            return samples, False


def time_cpu(fns: Sequence[Callable[[], object]], options: TimingOptions = TimingOptions()) -> Timing:
    """Time host functions with the wall clock (for tests and CPU baselines; never for GPU work)."""
    calls = _cycle(fns)

    def run(n: int) -> list[float]:
        out = []
        for _ in range(n):
            fn = next(calls)
            t0 = time.perf_counter()
            fn()
            out.append((time.perf_counter() - t0) * 1e6)
        return out

    with nvtx.phase("warmup"):
        _warm_up(fns, options, lambda: None)
    with nvtx.phase("measure"):
        samples, converged = adaptive(run, options)
    return Timing(samples, converged, "cpu")


class L2Flusher:
    """Writes a buffer of twice the L2 size, so the next kernel finds none of its inputs in L2."""

    def __init__(self, l2_bytes: int, device: object = None) -> None:
        import torch

        self.buffer = torch.empty(max(2 * l2_bytes, 1 << 20) // 4, dtype=torch.int32, device=device or "cuda")

    def __call__(self) -> None:
        self.buffer.zero_()


def time_cuda(
    fns: Sequence[Callable[[], object]],
    options: TimingOptions = TimingOptions(),
    l2_bytes: int | None = None,
    rotating: bool = False,
) -> Timing:
    """Time GPU work with CUDA events.

    `fns` are calls of the same operation on different input sets; they are used in turn. With `rotating=True`
    their inputs together exceed twice the L2, so no flush is needed; otherwise, with `options.cold_l2`, L2 is
    flushed before each timed call (outside the timed interval).
    """
    import torch

    from gpuprof.device import info

    if l2_bytes is None:
        gpu = info()
        l2_bytes = gpu.l2_bytes if gpu else 0
    flush = L2Flusher(l2_bytes) if options.cold_l2 and not rotating and l2_bytes else None
    with nvtx.phase("warmup"):
        _warm_up(fns, options, torch.cuda.synchronize)
        probe_us = _probe_us(fns[0])
    use_graph = options.graph if options.graph is not None else probe_us < options.graph_below_us
    if use_graph:
        return _time_graph(fns, options, flush is not None, l2_bytes)
    calls = _cycle(fns)

    def run(n: int) -> list[float]:
        events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(n)]
        for start, end in events:
            fn = next(calls)
            if flush:
                flush()
            start.record()
            fn()
            end.record()
        torch.cuda.synchronize()
        return [start.elapsed_time(end) * 1e3 for start, end in events]

    with nvtx.phase("measure"):
        samples, converged = adaptive(run, options)
    return Timing(samples, converged, "events+flush" if flush else "events")


def _time_graph(fns: Sequence[Callable[[], object]], options: TimingOptions, flush: bool, l2_bytes: int) -> Timing:
    """Replay a CUDA graph of many launches and divide: removes launch gaps from microsecond kernels.

    Each replay calls every input set several times over; when the sets do not rotate through more than 2x L2,
    the graph contains an L2 flush between calls, and the flush is timed alone in a second graph and subtracted.
    """
    import torch

    per_replay = max(len(fns), 20)
    flusher = L2Flusher(l2_bytes) if flush else None

    def capture(body: Callable[[], None]) -> torch.cuda.CUDAGraph:
        # On the warm-up stream: state a kernel keeps per stream (split-K counters) was made there, outside capture.
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, stream=stream):
            body()
        return graph

    def work() -> None:
        for i in range(per_replay):
            if flusher:
                flusher()
            fns[i % len(fns)]()

    def replay_us(g: torch.cuda.CUDAGraph, n: int) -> list[float]:
        events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(n)]
        for start, end in events:
            start.record()
            g.replay()
            end.record()
        torch.cuda.synchronize()
        return [start.elapsed_time(end) * 1e3 for start, end in events]

    with nvtx.phase("warmup"):
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for fn in fns:  # allocations made by the first calls must happen outside capture
                fn()
        torch.cuda.current_stream().wait_stream(stream)
        torch.cuda.synchronize()
        graph = capture(work)
        flush_graph = capture(lambda: [flusher() for _ in range(per_replay)]) if flusher else None
        for g in filter(None, (graph, flush_graph)):
            replay_us(g, 3)
        flush_us = statistics.median(replay_us(flush_graph, 11)) if flush_graph else 0.0
    with nvtx.phase("measure"):
        samples, converged = adaptive(lambda n: [(t - flush_us) / per_replay for t in replay_us(graph, n)], options)
    return Timing(samples, converged, "graph+flush" if flusher else "graph", calls_per_sample=per_replay)


def run_for_profiler(
    fns: Sequence[Callable[[], object]], calls: int, options: TimingOptions, sync: Callable[[], None]
) -> None:
    """Warm up, then make `calls` calls inside the `measure` range, untimed: the launches a profiler records.

    Nsight Compute replays each launch many times and flushes the caches before each pass itself, so these calls
    run without an L2 flush, and nothing here is timed: a profiled run's times would measure the profiler.
    """
    with nvtx.phase("warmup"):
        _warm_up(fns, options, sync)
    launches = _cycle(fns)
    with nvtx.phase("measure"):
        for _ in range(calls):
            next(launches)()
        sync()


def sustain(
    fns: Sequence[Callable[[], object]], seconds: float, sync: Callable[[], None], call_s: float
) -> tuple[int, float]:
    """Make calls back to back, input sets in turn and no L2 flush, for at least `seconds`; (calls, seconds).

    This is the window device counters (NVML) average over: a flush between calls would add its own DRAM
    traffic to theirs. `call_s`, the time of one call, sets how many calls go between synchronisations (~20 ms).
    """
    per_sync = int(min(max(0.02 / max(call_s, 1e-9), 1), 10_000))
    launches = _cycle(fns)
    calls = 0
    with nvtx.phase("counters"):
        sync()
        t0 = time.perf_counter()
        while True:
            for _ in range(per_sync):
                next(launches)()
            calls += per_sync
            sync()
            elapsed = time.perf_counter() - t0
            if elapsed >= seconds:
                return calls, elapsed


def _probe_us(fn: Callable[[], object]) -> float:
    import torch

    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(5):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) * 1e3 / 5


def _warm_up(fns: Sequence[Callable[[], object]], options: TimingOptions, sync: Callable[[], None]) -> None:
    calls = _cycle(fns)
    t0 = time.perf_counter()
    n = 0
    # whole rounds over the input sets, so timing starts again at the first set
    while n < max(3, len(fns)) or n % len(fns) or (time.perf_counter() - t0) * 1e3 < options.warmup_ms:
        next(calls)()
        n += 1
        if n % 8 == 0:
            sync()
    sync()


def _cycle(fns: Sequence[Callable[[], object]]):
    if not fns:
        raise ValueError("nothing to time")
    i = 0
    while True:
        yield fns[i % len(fns)]
        i += 1
