"""Read a sweep run and show the memory gap: a roofline, utilization and decode-step plots, and a findings table.

Everything here reads files, never the GPU, so a report is made on any machine from a committed run. For each
(model, dtype, kernel, layer, ctx, batch) the report uses the fastest implementation that finished ok ("best"),
and says so; per-implementation numbers are in the tables.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from gpuprof.errors import GpuprofError
from gpuprof.records import Run

SWEPT_KERNELS = ("attention", "linear")
PLATEAU_GROWTH = 0.05  # throughput "plateaus" once it grows by less than 5% per doubling of the batch
LARGE_BATCH = 256

# What the memory-gap paper reports for large-batch decode attention, and what the report checks the run against.
EXPECT_ATTENTION_DRAM_PCT = 85.0
EXPECT_ATTENTION_COMPUTE_PCT = 30.0
EXPECT_ATTENTION_INTENSITY_SPREAD = 0.10

# Utilization columns, most direct first: a hardware counter of the kernel itself, then NVML over the timed
# window, then the figure derived from the minimum bytes/FLOPs and the measured ceilings.
DRAM_SOURCES = (
    ("ncu_dram__throughput_avg_pct_of_peak_sustained_elapsed", "DRAM throughput, % of peak (Nsight Compute)"),
    ("nvml_dram_util_pct", "DRAM bandwidth utilization, % (NVML GPM)"),
    ("pct_copy_bw", "achieved GB/s, % of measured copy bandwidth"),
)
COMPUTE_SOURCES = (
    ("ncu_sm__throughput_avg_pct_of_peak_sustained_elapsed", "SM throughput, % of peak (Nsight Compute)"),
    ("nvml_tensor_util_pct", "tensor-core utilization, % (NVML GPM)"),
    ("pct_peak_flops", "achieved TFLOP/s, % of the dtype's matmul peak"),
)

COMPONENT_ORDER = ("attention", "qkv", "o", "gate_up", "up", "down", "lm_head")
MARKERS = {"attention": "o", "qkv": "s", "o": "^", "gate_up": "D", "up": "D", "down": "v", "lm_head": "*"}
COLORS = {"attention": "tab:red", "qkv": "tab:blue", "o": "tab:cyan", "gate_up": "tab:green", "up": "tab:green",
          "down": "tab:olive", "lm_head": "tab:purple"}


# ---------------------------------------------------------------------------------------------------------------
# Reading and reducing the run


@dataclass
class RunData:
    path: Path
    manifest: dict
    points: list[dict]  # every attention/linear point, any status

    @property
    def peaks(self) -> dict:
        peaks = self.manifest.get("peaks")
        return peaks if isinstance(peaks, dict) else {}

    def ok(self) -> list[dict]:
        return [p for p in self.points if p.get("status") == "ok" and p.get("time_us")]


def load_run(path: Path) -> RunData:
    """The run's manifest and sweep points; one sentence for a directory that is not a run or holds nothing."""
    run = Run.open(Path(path))
    points = [p for p in run.points() if p.get("kernel") in SWEPT_KERNELS]
    if not points:
        raise GpuprofError(f"{path} holds no attention or linear points; make some with `gpuprof sweep` "
                           "(or finish an interrupted one with `gpuprof sweep --resume`).")
    data = RunData(Path(path), run.manifest(), points)
    if not data.ok():
        counts = ", ".join(f"{n} {s}" for s, n in Counter(p.get("status") for p in points).items())
        raise GpuprofError(f"none of the {len(points)} points in {path} finished ok ({counts}); "
                           "there is nothing to plot.")
    return data


def component(p: Mapping) -> str:
    """'attention', or the linear layer's name."""
    return "attention" if p["kernel"] == "attention" else str(p.get("layer"))


def series_key(p: Mapping) -> tuple:
    """One line of a plot: (model, dtype, component, ctx); linear layers do not depend on ctx."""
    return (p.get("model"), p.get("dtype"), component(p), p.get("ctx") if p["kernel"] == "attention" else None)


def best_series(points: Sequence[Mapping]) -> dict[tuple, list[dict]]:
    """Per series, the fastest ok point at each batch, sorted by batch."""
    best: dict[tuple, dict[int, dict]] = defaultdict(dict)
    for p in points:
        if p.get("status") != "ok" or not p.get("time_us"):
            continue
        at = best[series_key(p)]
        if p["batch"] not in at or p["time_us"] < at[p["batch"]]["time_us"]:
            at[p["batch"]] = dict(p)
    ordered = sorted(best, key=_series_order)
    return {k: [best[k][b] for b in sorted(best[k])] for k in ordered}


def _series_order(key: tuple) -> tuple:
    model, dtype, comp, ctx = key
    rank = COMPONENT_ORDER.index(comp) if comp in COMPONENT_ORDER else len(COMPONENT_ORDER)
    return (str(model), str(dtype), rank, comp, ctx or 0)


def ridge_point(peaks: Mapping, dtype: str) -> float | None:
    """FLOP per byte at which the memory roof meets the compute roof: peak TFLOP/s over copy GB/s."""
    flops, gbps = _ceiling(peaks, f"{dtype}_tflops"), _ceiling(peaks, "copy_gbps")
    return flops * 1e3 / gbps if flops and gbps else None


def _ceiling(peaks: Mapping, key: str) -> float | None:
    """A ceiling from the manifest; anything but a positive finite number (a foreign or damaged file) is missing."""
    value = peaks.get(key)
    return float(value) if _is_number(value) and math.isfinite(value) and value > 0 else None


def _is_number(value) -> bool:
    """A JSON number (bool is an int to Python, not a number here)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def ridge_crossing(points: Sequence[Mapping], ridge: float | None) -> int | None:
    """The first batch whose arithmetic intensity reaches the ridge point; None if none does."""
    if ridge is None:
        return None
    return next((p["batch"] for p in points if (p.get("intensity") or 0) >= ridge), None)


def growth_per_doubling(b0: int, v0: float, b1: int, v1: float) -> float:
    """Relative growth of a value from batch b0 to b1, expressed per doubling of the batch."""
    return (v1 / v0) ** (1.0 / math.log2(b1 / b0)) - 1.0


def plateau_batch(batches: Sequence[int], values: Sequence[float], growth: float = PLATEAU_GROWTH) -> int | None:
    """The batch after which `values` grow by less than `growth` per doubling all the way to the largest batch.

    None when they still grow faster at the last step (no plateau within the measured batches).
    """
    steps = [growth_per_doubling(b0, v0, b1, v1)
             for b0, v0, b1, v1 in zip(batches, values, batches[1:], values[1:])]
    for i in range(len(steps)):
        if all(s < growth for s in steps[i:]):
            return batches[i]
    return None


def throughput(p: Mapping) -> float:
    """Sequences served per second by one call of the kernel (one token each)."""
    return p["batch"] / (p["time_us"] * 1e-6)


def pick_source(points: Sequence[Mapping], sources: Sequence[tuple[str, str]]) -> tuple[str, str] | None:
    """The most direct utilization column that any of the points carries."""
    return next(((col, label) for col, label in sources if any(p.get(col) is not None for p in points)), None)


# ---------------------------------------------------------------------------------------------------------------
# The decode step, composed from the measured kernels


@dataclass
class Step:
    model: str
    dtype: str
    ctx: int
    batch: int
    attention_us: float  # attention time of the whole step (all layers)
    linear_us: float  # every linear layer of the step, lm_head included
    attention_impl: str

    @property
    def step_ms(self) -> float:
        return (self.attention_us + self.linear_us) / 1e3

    @property
    def tokens_per_s(self) -> float:
        return self.batch / (self.step_ms * 1e-3)

    @property
    def attention_pct(self) -> float:
        return 100.0 * self.attention_us / (self.attention_us + self.linear_us)


def compose_steps(data: RunData, series: Mapping[tuple, list[dict]]) -> list[Step]:
    """Decode steps: layers x attention + every linear layer x its count, best ok implementation of each.

    A batch is composed only where attention and every linear layer the sweep planned for the model finished ok.
    """
    layers: dict[tuple, set[str]] = defaultdict(set)  # (model, dtype) -> linear layers the sweep planned
    for p in data.points:
        if p["kernel"] == "linear":
            layers[(p.get("model"), p.get("dtype"))].add(str(p.get("layer")))
    at = {key: {p["batch"]: p for p in pts} for key, pts in series.items()}
    steps = []
    for (model, dtype, comp, ctx), att_points in series.items():
        if comp != "attention":
            continue
        for att in att_points:
            b = att["batch"]
            linears = [at.get((model, dtype, layer, None), {}).get(b) for layer in layers[(model, dtype)]]
            if not layers[(model, dtype)] or any(lin is None for lin in linears):
                continue
            linear_us = sum(lin["time_us"] * (lin.get("count") or 1) for lin in linears)
            steps.append(Step(model, dtype, ctx, b, att["time_us"] * (att.get("count") or 1), linear_us, att["impl"]))
    return steps


# ---------------------------------------------------------------------------------------------------------------
# Plots


def _figure(rows: int, cols: int, width: float = 6.4, height: float = 4.4):
    from matplotlib.figure import Figure  # no pyplot: no global state, no display needed (Agg canvas)

    fig = Figure(figsize=(width * cols, height * rows), dpi=110, layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False)
    return fig, axes


def _batch_axis(ax, batches: Sequence[int]) -> None:
    ax.set_xscale("log", base=2)
    ax.set_xticks(list(batches))
    ax.set_xticklabels([str(b) for b in batches])
    ax.minorticks_off()
    ax.set_xlabel("batch size (sequences)")
    ax.grid(True, which="major", alpha=0.3)


def _models(series: Mapping[tuple, list]) -> list[tuple[str, str]]:
    return list(dict.fromkeys((m, d) for m, d, _, _ in series))


def _label(comp: str, ctx: int | None, many_ctx: bool) -> str:
    if comp == "attention":
        return f"attention (ctx {ctx})" if many_ctx else "attention"
    return f"linear {comp}"


def plot_roofline(data: RunData, series: Mapping[tuple, list[dict]], path: Path) -> None:
    """Log-log roofline per model: measured ceilings and every kernel at every batch (colour: batch)."""
    from matplotlib.colors import LogNorm
    from matplotlib.lines import Line2D

    models = _models(series)
    fig, axes = _figure(1, len(models), width=6.8, height=5.2)
    all_points = [p for pts in series.values() for p in pts]
    batches = sorted({p["batch"] for p in all_points})
    norm = LogNorm(vmin=min(batches), vmax=max(batches) if max(batches) > min(batches) else min(batches) * 2)
    intensities = [p["intensity"] for p in all_points if p.get("intensity")] or [1.0]
    peaks = data.peaks
    scatter = None
    for ax, (model, dtype) in zip(axes[0], models):
        ridge = ridge_point(peaks, dtype)
        lo = min(intensities) / 2
        hi = max(max(intensities) * 2, (ridge or 0) * 4)
        if ridge:
            _draw_roof(ax, peaks, dtype, ridge, lo, hi)
        for (m, d, comp, _ctx), pts in series.items():
            if (m, d) != (model, dtype):
                continue
            pts = [p for p in pts if p.get("intensity") and p.get("tflops")]
            scatter = ax.scatter([p["intensity"] for p in pts], [p["tflops"] for p in pts],
                                 c=[p["batch"] for p in pts], cmap="viridis", norm=norm,
                                 marker=MARKERS.get(comp, "x"), s=46, edgecolors="black", linewidths=0.4, zorder=3)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlim(lo, hi)
        ax.set_xlabel("arithmetic intensity (FLOP/byte)")
        ax.set_ylabel("throughput (TFLOP/s)")
        ax.set_title(f"{model}, {dtype}")
        ax.grid(True, which="major", alpha=0.3)
        comps = list(dict.fromkeys(c for m, d, c, _ in series if (m, d) == (model, dtype)))
        handles = [Line2D([], [], marker=MARKERS.get(c, "x"), linestyle="", color="grey", markeredgecolor="black",
                          label=_label(c, None, False)) for c in comps]
        roofs = [line for line in ax.get_lines() if not line.get_label().startswith("_")]
        ax.legend(handles=handles + roofs, fontsize=8, loc="upper left")
    if scatter is not None:
        bar = fig.colorbar(scatter, ax=list(axes[0]), shrink=0.9)
        bar.set_label("batch size")
        bar.set_ticks(batches)
        bar.set_ticklabels([str(b) for b in batches])
        bar.ax.minorticks_off()
    fig.suptitle(f"Roofline, {_gpu_name(data)}: fastest ok implementation per point; ceilings: {_peaks_source(data)}")
    fig.savefig(path)


def _draw_roof(ax, peaks: Mapping, dtype: str, ridge: float, lo: float, hi: float) -> None:
    gbps, tflops = peaks["copy_gbps"], peaks[f"{dtype}_tflops"]
    ax.plot([lo, ridge], [gbps * lo / 1e3, tflops], color="black", linewidth=1.5,
            label=f"memory roof: copy {gbps:,.0f} GB/s")
    ax.plot([ridge, hi], [tflops, tflops], color="black", linestyle="--", linewidth=1.5,
            label=f"{dtype} matmul roof: {tflops:,.0f} TFLOP/s")
    ax.axvline(ridge, color="grey", linestyle=":", linewidth=1)
    ax.text(ridge * 1.08, 0.03, f"ridge point\n{ridge:,.0f} FLOP/B", transform=ax.get_xaxis_transform(),
            fontsize=8, color="dimgrey")


def plot_utilization(data: RunData, series: Mapping[tuple, list[dict]], path: Path) -> dict[str, str | None]:
    """Per model: DRAM throughput % and compute % against batch, one line per kernel. Returns the sources used."""
    models = _models(series)
    fig, axes = _figure(len(models), 2)
    all_points = [p for pts in series.values() for p in pts]
    dram, compute = pick_source(all_points, DRAM_SOURCES), pick_source(all_points, COMPUTE_SOURCES)
    batches = sorted({p["batch"] for p in all_points})
    many_ctx = len({k[3] for k in series if k[2] == "attention"}) > 1
    for row, (model, dtype) in zip(axes, models):
        for ax, source, what in zip(row, (dram, compute), ("memory", "compute")):
            _batch_axis(ax, batches)
            ax.set_title(f"{model}, {dtype}: {what}")
            if source is None:
                ax.text(0.5, 0.5, "no ceilings or counters in this run", ha="center", transform=ax.transAxes)
                continue
            col, label = source
            top = 100.0
            for (m, d, comp, ctx), pts in series.items():
                pts = [p for p in pts if p.get(col) is not None]
                if (m, d) != (model, dtype) or not pts:
                    continue
                values = [p[col] for p in pts]
                top = max(top, *values)
                ax.plot([p["batch"] for p in pts], values, marker=MARKERS.get(comp, "x"), color=COLORS.get(comp),
                        label=_label(comp, ctx, many_ctx))
            ax.axhline(100, color="grey", linewidth=0.8, linestyle=":")
            ax.set_ylim(0, top * 1.05)
            ax.set_ylabel(label)
            ax.legend(fontsize=8)
    fig.suptitle(f"Utilization against batch size, {_gpu_name(data)} (fastest ok implementation per point)")
    fig.savefig(path)
    return {"dram": dram[1] if dram else None, "compute": compute[1] if compute else None}


def plot_decode_step(data: RunData, steps: Sequence[Step], path: Path) -> None:
    """Per model: step time (total and attention's part) and token throughput against batch, plateau marked."""
    from matplotlib.ticker import FuncFormatter

    models = list(dict.fromkeys((s.model, s.dtype) for s in steps))
    fig, axes = _figure(len(models), 2)
    batches = sorted({s.batch for s in steps})
    for row, (model, dtype) in zip(axes, models):
        time_ax, tput_ax = row
        for ctx in sorted({s.ctx for s in steps if (s.model, s.dtype) == (model, dtype)}):
            mine = sorted((s for s in steps if (s.model, s.dtype, s.ctx) == (model, dtype, ctx)), key=lambda s: s.batch)
            xs = [s.batch for s in mine]
            line = time_ax.plot(xs, [s.step_ms for s in mine], marker="o", label=f"step, ctx {ctx}")[0]
            time_ax.plot(xs, [s.attention_us / 1e3 for s in mine], linestyle="--", color=line.get_color(),
                         label=f"attention part, ctx {ctx}")
            time_ax.plot(xs, [s.linear_us / 1e3 for s in mine], linestyle=":", color=line.get_color(),
                         label=f"linear part, ctx {ctx}")
            tokens = [s.tokens_per_s for s in mine]
            tput_ax.plot(xs, tokens, marker="o", color=line.get_color(), label=f"ctx {ctx}")
            plateau = plateau_batch(xs, tokens)
            if plateau is not None:
                tput_ax.axvline(plateau, color=line.get_color(), linestyle=":", linewidth=1)
                tput_ax.annotate(f"< {PLATEAU_GROWTH:.0%} per doubling\nafter batch {plateau}",
                                 (plateau, tokens[xs.index(plateau)]), textcoords="offset points", xytext=(5, -30),
                                 fontsize=8, color=line.get_color())
        for ax in row:
            _batch_axis(ax, batches)
            ax.legend(fontsize=8)
        time_ax.set_yscale("log")  # the step spans milliseconds to hundreds of them
        time_ax.set_title(f"{model}, {dtype}: decode-step time")
        time_ax.set_ylabel("decode-step time (ms)")
        tput_ax.set_ylim(bottom=0)  # linear, so the plateau reads as flat
        tput_ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))
        tput_ax.set_title(f"{model}, {dtype}: token throughput")
        tput_ax.set_ylabel("token throughput (tokens/s)")
    fig.suptitle(f"Decode step composed from measured kernels, not an end-to-end decode ({_gpu_name(data)})")
    fig.savefig(path)


def _gpu_name(data: RunData) -> str:
    return (data.manifest.get("gpu") or {}).get("name") or "no GPU (CPU run)"


def _peaks_source(data: RunData) -> str:
    source = data.peaks.get("source")
    return f"{source}" if source else "absent"


# ---------------------------------------------------------------------------------------------------------------
# The markdown summary


def _table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(" --- " for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _num(value: float | None, digits: int = 3) -> str:
    if not _is_number(value):
        return "-"  # missing, or not a number in a foreign file
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.{digits}g}"


def findings(data: RunData, series: Mapping[tuple, list[dict]], steps: Sequence[Step]) -> list[list[str]]:
    """Per kernel: intensity range, the batch that crosses the ridge point, the batch after which it plateaus."""
    rows = []
    for (model, dtype, comp, ctx), pts in series.items():
        batches = [p["batch"] for p in pts]
        ridge = ridge_point(data.peaks, dtype)
        crossing = ridge_crossing(pts, ridge)
        plateau = plateau_batch(batches, [throughput(p) for p in pts])
        rows.append([
            model, dtype, _label(comp, ctx, True),
            f"{_num(pts[0].get('intensity'), 4)} → {_num(pts[-1].get('intensity'), 4)}",
            "no ceilings" if ridge is None else (str(crossing) if crossing else f"never (up to {batches[-1]})"),
            str(plateau) if plateau is not None else f"still growing at {batches[-1]}",
        ])
    for (model, dtype, ctx), mine in _steps_by_run(steps).items():
        plateau = plateau_batch([s.batch for s in mine], [s.tokens_per_s for s in mine])
        rows.append([model, dtype, f"decode step, ctx {ctx} (composed)", "-", "-",
                     str(plateau) if plateau is not None else f"still growing at {mine[-1].batch}"])
    return rows


def _steps_by_run(steps: Sequence[Step]) -> dict[tuple, list[Step]]:
    out: dict[tuple, list[Step]] = defaultdict(list)
    for s in sorted(steps, key=lambda s: (s.model, s.dtype, s.ctx, s.batch)):
        out[(s.model, s.dtype, s.ctx)].append(s)
    return out


def evidence(data: RunData, series: Mapping[tuple, list[dict]]) -> list[list[str]]:
    """The memory-gap claims, checked on this run: attention saturates DRAM, idles compute, keeps its intensity
    flat across batches, while the linear layers' intensity grows with the batch."""
    all_points = [p for pts in series.values() for p in pts]
    dram, compute = pick_source(all_points, DRAM_SOURCES), pick_source(all_points, COMPUTE_SOURCES)
    rows = []
    for (model, dtype, comp, ctx), pts in series.items():
        if comp == "attention":
            rows += _attention_evidence(model, dtype, ctx, pts, dram, compute)
    linear = [(k, pts) for k, pts in series.items() if k[2] != "attention" and len(pts) > 1]
    for (model, dtype, comp, _), pts in linear:
        lo, hi = pts[0], pts[-1]
        grows = all((b.get("intensity") or 0) > (a.get("intensity") or 0) for a, b in zip(pts, pts[1:]))
        rows.append([model, dtype, f"linear {comp}: intensity, batch {lo['batch']} → {hi['batch']} (FLOP/B)",
                     f"{_num(lo.get('intensity'))} → {_num(hi.get('intensity'))}", "grows with the batch",
                     "yes" if grows else "no"])
    return rows


def _attention_evidence(model, dtype, ctx, pts, dram, compute) -> list[list[str]]:
    rows = []
    large = [p for p in pts if p["batch"] >= LARGE_BATCH]
    where = f"attention ctx {ctx}, batch ≥ {LARGE_BATCH}"
    for source, reduce, word, expect, ok in (
        (dram, min, "lowest", f"≥ {EXPECT_ATTENTION_DRAM_PCT:.0f}%", lambda v: v >= EXPECT_ATTENTION_DRAM_PCT),
        (compute, max, "highest", f"≤ {EXPECT_ATTENTION_COMPUTE_PCT:.0f}%",
         lambda v: v <= EXPECT_ATTENTION_COMPUTE_PCT),
    ):
        values = [p[source[0]] for p in large if source and p.get(source[0]) is not None]
        if not values:
            rows.append([model, dtype, f"{where}: {source[1] if source else 'utilization'}",
                         f"not measured (no batch ≥ {LARGE_BATCH} with this column)", expect, "-"])
            continue
        v = reduce(values)
        rows.append([model, dtype, f"{where}: {word} {source[1]}", f"{v:.1f}%", expect, "yes" if ok(v) else "no"])
    intensities = [p["intensity"] for p in pts if p.get("intensity")]
    if len(intensities) > 1:
        spread = max(intensities) / min(intensities) - 1
        batches = f"{pts[0]['batch']}–{pts[-1]['batch']}"
        rows.append([model, dtype, f"attention ctx {ctx}: intensity across batches {batches}",
                     f"{_num(min(intensities), 4)} to {_num(max(intensities), 4)} FLOP/B ({spread:.1%} apart)",
                     f"flat within {EXPECT_ATTENTION_INTENSITY_SPREAD:.0%}",
                     "yes" if spread <= EXPECT_ATTENTION_INTENSITY_SPREAD else "no"])
    return rows


def attention_impl_tables(data: RunData) -> list[tuple[str, str]]:
    """Per (model, dtype, ctx): every attention implementation's time and % of copy bandwidth at each batch."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for p in data.points:
        if p["kernel"] == "attention":
            groups[(p.get("model"), p.get("dtype"), p.get("ctx"))].append(p)
    tables = []
    for (model, dtype, ctx), pts in groups.items():
        impls = list(dict.fromkeys(p["impl"] for p in pts))
        cells = {(p["batch"], p["impl"]): _cell(p) for p in pts}
        batches = sorted({p["batch"] for p in pts})
        rows = [[b] + [cells.get((b, i), "-") for i in impls] for b in batches]
        tables.append((f"{model}, {dtype}, ctx {ctx}: one attention call, µs (% of copy bandwidth)",
                       _table(["batch"] + impls, rows)))
    return tables


def linear_impl_tables(data: RunData) -> list[tuple[str, str]]:
    """Per (model, dtype): every linear layer of a decode step (count x time, summed) per implementation."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for p in data.points:
        if p["kernel"] == "linear":
            groups[(p.get("model"), p.get("dtype"))].append(p)
    tables = []
    for (model, dtype), pts in groups.items():
        impls = list(dict.fromkeys(p["impl"] for p in pts))
        layers = {str(p.get("layer")) for p in pts}
        batches = sorted({p["batch"] for p in pts})
        rows = []
        for b in batches:
            row: list[object] = [b]
            for impl in impls:
                mine = [p for p in pts if p["batch"] == b and p["impl"] == impl]
                ok = [p for p in mine if p.get("status") == "ok" and p.get("time_us")]
                if {str(p.get("layer")) for p in ok} == layers:
                    row.append(f"{sum(p['time_us'] * (p.get('count') or 1) for p in ok) / 1e3:.3g}")
                else:
                    row.append(", ".join(sorted({p["status"] for p in mine if p.get("status") != "ok"})) or "-")
            rows.append(row)
        tables.append((f"{model}, {dtype}: all linear layers of one decode step, ms", _table(["batch"] + impls, rows)))
    return tables


def _cell(p: Mapping) -> str:
    if p.get("status") != "ok":
        return str(p.get("status"))
    pct = p.get("pct_copy_bw")
    return f"{_num(p['time_us'])}" + (f" ({pct:.0f}%)" if pct is not None else "")


def problems(data: RunData, limit: int = 15) -> list[list[object]]:
    """Points that did not finish ok, grouped by what went wrong."""
    counts = Counter((p.get("status"), p["kernel"], p.get("impl"), p.get("error")) for p in data.points
                     if p.get("status") != "ok")
    return [[n, s, k, i, e] for (s, k, i, e), n in counts.most_common(limit)]


def _memory(nbytes) -> str:
    """The GPU's memory for the header; 'unknown' where a foreign manifest lacks it or holds no number."""
    if not _is_number(nbytes):
        return "memory unknown"
    return f"{nbytes / 2**30:.0f} GiB"


def _header(data: RunData) -> list[str]:
    m = data.manifest
    gpu, versions, peaks = m.get("gpu") or {}, m.get("versions") or {}, data.peaks
    gpu = gpu if isinstance(gpu, dict) else {}
    sessions = m.get("sessions") or []
    took = sum(s.get("elapsed_s") or 0 for s in sessions)
    statuses = Counter(p.get("status") for p in data.points)
    lines = [
        f"# Sweep report: {data.path.name}",
        "",
        f"- GPU: {_gpu_name(data)}" + (f", {gpu.get('sm_count')} SMs, {_memory(gpu.get('memory_bytes'))}, "
                                         f"driver {gpu.get('driver')}, CUDA {gpu.get('cuda')}" if gpu else ""),
        "- software: " + ", ".join(f"{k} {v}" for k, v in versions.items() if v),
        f"- git commit: {m.get('git_commit')}; started {m.get('started_at')}",
        f"- command: `{m.get('command')}`",
        f"- sweep time: {took / 60:.1f} min over {len(sessions)} session(s)" if sessions
        else "- sweep time: not recorded",
        "- points: " + ", ".join(f"{n} {s}" for s, n in statuses.most_common()),
    ]
    if peaks:
        lines.append(f"- ceilings ({peaks.get('source')}): copy {_num(peaks.get('copy_gbps'))} GB/s, "
                     + ", ".join(f"{d} {_num(peaks.get(f'{d}_tflops'))} TFLOP/s" for d in ("bf16", "fp16", "fp32")))
    else:
        lines.append("- ceilings: none in the manifest (a CPU run): no % of peak and no ridge point")
    return lines


@dataclass
class Report:
    markdown: Path
    images: list[Path]


def make_report(run_path: Path, out: Path | None = None) -> Report:
    """Write report.md and the PNG plots of a sweep run into `out` (default RUN/report/)."""
    data = load_run(run_path)
    out = Path(out) if out else Path(run_path) / "report"
    out.mkdir(parents=True, exist_ok=True)
    series = best_series(data.points)
    steps = compose_steps(data, series)
    images = [out / "roofline.png", out / "utilization.png"]
    plot_roofline(data, series, images[0])
    sources = plot_utilization(data, series, images[1])
    if steps:
        images.append(out / "decode_step.png")
        plot_decode_step(data, steps, images[-1])
    text = _markdown(data, series, steps, sources, [i.name for i in images])
    (out / "report.md").write_text(text)
    return Report(out / "report.md", images)


def _markdown(data, series, steps, sources, image_names) -> str:
    parts = _header(data)
    parts += ["", "Each kernel at each batch uses its fastest implementation that passed the correctness check; "
              "the implementation tables below show all of them.", "",
              "## Memory-gap evidence", "",
              _table(["model", "dtype", "what", "measured", "expected", "holds"], evidence(data, series)), "",
              f"Utilization columns: DRAM: {sources['dram']}; compute: {sources['compute']}.", "",
              "## Findings", "",
              f"Ridge crossing: the first batch whose arithmetic intensity reaches the ridge point (peak TFLOP/s over "
              f"copy bandwidth). Plateau: the batch after which throughput (sequences per second through the kernel, "
              f"or tokens per second of the step) grows by less than {PLATEAU_GROWTH:.0%} per doubling of the batch.",
              "", _table(["model", "dtype", "kernel", "intensity, smallest → largest batch (FLOP/B)",
                          "crosses the ridge at batch", "throughput plateaus after batch"],
                         findings(data, series, steps)), ""]
    parts += ["## Plots", ""] + [f"![{name}]({name})" for name in image_names] + [""]
    parts += ["## Decode step (composed from measured kernels, not an end-to-end decode)", "",
              "layers × (attention + every linear layer) + lm_head, fastest ok implementation of each; no norms, "
              "activations, sampling or launch gaps.", ""]
    if steps:
        parts.append(_table(["model", "dtype", "ctx", "batch", "step (ms)", "tokens/s", "attention share",
                             "attention impl"],
                            [[s.model, s.dtype, s.ctx, s.batch, f"{s.step_ms:.3g}", f"{s.tokens_per_s:,.0f}",
                              f"{s.attention_pct:.0f}%", s.attention_impl] for s in sorted(
                                 steps, key=lambda s: (s.model, s.dtype, s.ctx, s.batch))]))
    else:
        parts.append("No batch has every kernel of a step finished ok, so no step is composed.")
    parts += ["", "## Implementations", ""]
    for title, table in attention_impl_tables(data) + linear_impl_tables(data):
        parts += [f"### {title}", "", table, ""]
    bad = problems(data)
    if bad:
        parts += ["## Points that did not finish ok", "",
                  _table(["points", "status", "kernel", "impl", "why"], bad), ""]
    return "\n".join(parts)
