"""Nsight Compute: named metric sets, the `ncu` command lines, its messages, and its raw CSV as tidy rows.

Profiling runs `ncu --clock-control none --nvtx --nvtx-include gpuprof@measure/ --metrics ... -o REPORT CMD`; the
report is then read back with `ncu --import REPORT --csv --page raw --print-units base`: a header row, a units
row, then one row per profiled kernel launch, one column per metric. `parse_raw_csv` turns that into one dict per
launch with values in base units (bytes, nanoseconds, percent) under `ncu_<metric with dots as underscores>`.
"""

from __future__ import annotations

import csv
import io
import os
import re
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from gpuprof.errors import GpuprofError


@dataclass(frozen=True)
class Metric:
    name: str  # ncu's metric name
    label: str  # short column title for printed tables
    scale: float = 1.0  # printed value = stored value * scale (stored values stay in base units)


_DURATION = Metric("gpu__time_duration.sum", "ncu_us", 1e-3)  # ncu's duration of a replayed launch
_STALL_REASONS = (
    "long_scoreboard", "short_scoreboard", "wait", "barrier", "mio_throttle", "lg_throttle", "math_pipe_throttle",
    "not_selected", "selected", "dispatch_stall", "no_instruction", "branch_resolving", "membar", "drain",
    "imc_miss", "sleeping", "tex_throttle", "misc",
)

# Every set carries the duration: it weights the averages when one call launches several kernels.
METRIC_SETS: dict[str, tuple[Metric, ...]] = {
    "speed-of-light": (
        _DURATION,
        Metric("dram__throughput.avg.pct_of_peak_sustained_elapsed", "dram_%"),
        Metric("sm__throughput.avg.pct_of_peak_sustained_elapsed", "sm_%"),
        Metric("gpu__compute_memory_throughput.avg.pct_of_peak_sustained_elapsed", "mem_%"),
    ),
    "memory": (
        _DURATION,
        Metric("dram__bytes_read.sum", "dram_read_MB", 1e-6),
        Metric("dram__bytes_write.sum", "dram_write_MB", 1e-6),
        Metric("lts__t_sector_hit_rate.pct", "l2_hit_%"),
    ),
    "compute": (
        _DURATION,
        Metric("sm__pipe_tensor_op_hmma_cycles_active.avg.pct_of_peak_sustained_active", "hmma_pipe_%"),
        Metric("sm__warps_active.avg.pct_of_peak_sustained_active", "occupancy_%"),
        Metric("smsp__issue_active.avg.pct_of_peak_sustained_active", "issue_%"),
    ),
    "stalls": (
        _DURATION,
        Metric("smsp__average_warp_latency_per_inst_issued.ratio", "cycles/issue"),
        *(Metric(f"smsp__average_warps_issue_stalled_{r}_per_issue_active.ratio", r) for r in _STALL_REASONS),
    ),
}
SET_ALIASES = {"sol": "speed-of-light", "all": ",".join(METRIC_SETS)}
# Hopper's warpgroup MMA (wgmma) runs on its own tensor pipe; the metric exists from compute capability 9.0.
_GMMA = Metric("sm__pipe_tensor_op_gmma_cycles_active.avg.pct_of_peak_sustained_active", "gmma_pipe_%")

_CUDA_DEFAULT = "/usr/local/cuda"
NVTX_COLUMN_HINTS = ("Push/Pop_Range", "NVTX")
_ID_COLUMNS = {"ID": "ncu_id", "Process ID": "pid", "Kernel Name": "kernel_name", "Block Size": "block",
               "Grid Size": "grid", "Device": "device", "CC": "cc", "Stream": "stream"}
_PREFIX = {"": 1.0, "k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12}
_SECONDS = {"nsecond": 1.0, "ns": 1.0, "usecond": 1e3, "us": 1e3, "msecond": 1e6, "ms": 1e6, "second": 1e9, "s": 1e9}
_NUMBER = re.compile(r"^[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?")


def column_name(metric: str) -> str:
    """The record column of an ncu metric: `ncu_` and the name with dots as underscores."""
    return "ncu_" + metric.replace(".", "_")


def metric_sets(text: str) -> list[str]:
    """'speed-of-light,memory' (or sol, all) -> set names; a clear error for unknown names."""
    names: list[str] = []
    for word in (w.strip() for w in text.split(",") if w.strip()):
        for name in SET_ALIASES.get(word, word).split(","):
            if name not in METRIC_SETS:
                valid = ", ".join([*METRIC_SETS, *SET_ALIASES])
                raise GpuprofError(f"unknown metric set {name!r}; valid sets are {valid}.")
            if name not in names:
                names.append(name)
    if not names:
        raise GpuprofError("--set needs at least one metric set, e.g. speed-of-light.")
    return names


def metrics_for(sets: Sequence[str], extra: Iterable[str] = (), compute_capability: float | None = None) -> list[Metric]:
    """The metrics of the named sets (duplicates once), the Hopper tensor pipe where it exists, then `extra`."""
    chosen: dict[str, Metric] = {}
    for name in sets:
        for m in METRIC_SETS[name]:
            chosen.setdefault(m.name, m)
        if name == "compute" and compute_capability is not None and compute_capability >= 9.0:
            chosen.setdefault(_GMMA.name, _GMMA)
    for name in extra:
        if not re.fullmatch(r"[\w.]+", name):
            raise GpuprofError(f"{name!r} is not an ncu metric name (letters, digits, '_' and '.').")
        chosen.setdefault(name, Metric(name, name))
    return list(chosen.values())


def find_ncu() -> str:
    """The path of `ncu`: on PATH, else under $CUDA_HOME/bin or /usr/local/cuda/bin."""
    found = shutil.which("ncu")
    if found:
        return found
    for root in (os.environ.get("CUDA_HOME"), _CUDA_DEFAULT):
        candidate = Path(root or "/nonexistent") / "bin" / "ncu"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    raise GpuprofError(
        "Nsight Compute's `ncu` was not found on PATH, in $CUDA_HOME/bin or in /usr/local/cuda/bin; install Nsight "
        "Compute (it ships with the CUDA toolkit) or add its folder to PATH."
    )


def profile_command(
    ncu: str,
    command: Sequence[str],
    metrics: Sequence[Metric],
    report: Path,
    log: Path,
    nvtx_include: str | None,
    launch_count: int | None = None,
) -> list[str]:
    """ncu's command line: clocks left alone, NVTX filter, the metrics, a report file, messages to a log file."""
    # Clocks as the GPU runs them (the timing runs at the same clocks); caches flushed before each replay pass.
    argv = [ncu, "--clock-control", "none", "--cache-control", "all", "--target-processes", "all",
            "--log-file", str(log)]
    if nvtx_include:
        argv += ["--nvtx", "--nvtx-include", nvtx_include]
    if launch_count:
        argv += ["--launch-count", str(launch_count)]
    argv += ["--metrics", ",".join(m.name for m in metrics), "--export", str(report), "--force-overwrite"]
    return argv + list(command)


def import_command(ncu: str, report: Path) -> list[str]:
    """ncu's command line that prints a report as raw CSV in base units."""
    return [ncu, "--import", str(report), "--csv", "--page", "raw", "--print-units", "base"]


def check_messages(text: str, nvtx_include: str | None, command_failure: str | None = None) -> None:
    """Raise the one-sentence error for what ncu's own messages (==ERROR== / ==WARNING== lines) report.

    `command_failure`, the sentence for a profiled command that failed, wins over ncu's generic errors.
    """
    if "ERR_NVGPUCTRPERM" in text:
        raise GpuprofError(
            "this user may not read the GPU's performance counters (ncu: ERR_NVGPUCTRPERM); run as root, or load "
            "the driver with NVreg_RestrictProfilingToAdminUsers=0 (https://developer.nvidia.com/ERR_NVGPUCTRPERM)."
        )
    unknown = [_metric_name(m) for m in re.findall(r"==ERROR==\s+Failed to find metrics?:?\s*(\S+)", text)]
    if unknown:
        raise GpuprofError(
            f"ncu does not know the metric {', '.join(unknown)} on this GPU or ncu version; `ncu --query-metrics` "
            "lists the ones it has."
        )
    if command_failure:
        raise GpuprofError(command_failure)
    errors = [line.split("==ERROR==", 1)[1].strip() for line in text.splitlines() if "==ERROR==" in line]
    if errors:
        raise GpuprofError(f"ncu failed: {errors[0]}")
    if re.search(r"==WARNING==\s+No kernels were profiled", text):
        raise no_kernel_matched(nvtx_include)


def _metric_name(token: str) -> str:
    """The metric a "Failed to find metric" message names: ncu may quote it, or show the regex it made of a base
    name, as in `regex:^flop_count_sp\\.(sum|min|max|avg)$` for flop_count_sp."""
    name = token.rstrip(".,").strip('"').removeprefix("regex:").removeprefix("^").removesuffix("$")
    name = re.sub(r"\\?\.\([^)]*\)$", "", name)  # the rollup group ncu appends to a base name
    return name.replace("\\", "")


def application_failed(text: str) -> bool:
    """Whether ncu reports the profiled application's non-zero exit code."""
    return "returned an error code" in text


def no_kernel_matched(nvtx_include: str | None) -> GpuprofError:
    if nvtx_include:
        return GpuprofError(
            f"no kernel matched the NVTX filter {nvtx_include!r}, so ncu profiled nothing; the command must launch "
            "its kernels inside that push/pop range (gpuprof benchmarks do, with the nvtx package installed)."
        )
    return GpuprofError("ncu profiled no kernel: the command launched none.")


def _unit_scale(unit: str) -> tuple[float, str]:
    """Factor to base units, and the base unit: Kbyte -> (1e3, byte), usecond -> (1e3, nsecond)."""
    u = unit.strip()
    low = u.lower()
    if low in _SECONDS:
        return _SECONDS[low], "nsecond"
    head, slash, tail = low.partition("/")
    if head.endswith("byte") and head[:-4] in _PREFIX:
        scale = _PREFIX[head[:-4]]
        if slash and tail in ("second", "s"):
            return scale, "byte/second"
        if not slash:
            return scale, "byte"
    return 1.0, u


def parse_value(text: str) -> float | None:
    """A metric cell: '1,234.5' -> 1234.5; '158 (0: 158)' -> 158; 'n/a' or '' -> None."""
    m = _NUMBER.match(text.strip().replace(",", ""))
    return float(m.group(0)) if m else None


def nvtx_ranges(cell: str) -> list[tuple[str, str]]:
    """(domain, range name) of each push/pop range in one cell of ncu's NVTX column, outermost first.

    A cell reads `<thread>  "<domain>:<range>:<PL_Type>:<PL_Value>:<CLR_Type>:<Color>:<Msg_Type>:<Msg>"  "..."`;
    the range name may itself hold ':', so it is what lies between the domain and the last six fields.
    """
    out = []
    for entry in re.findall(r'"([^"]*)"', cell):
        domain, _, rest = entry.partition(":")
        fields = rest.split(":")
        name = ":".join(fields[:-6]) if len(fields) > 6 else fields[0]
        out.append((domain, name))
    return out


@dataclass
class RawTable:
    """ncu's raw page: one dict per profiled launch, and the base unit of each metric column."""

    rows: list[dict]
    units: dict[str, str]


def parse_raw_csv(text: str) -> RawTable:
    """ncu's `--csv --page raw` output: header row, units row, one row per profiled launch."""
    lines = [line for line in text.splitlines() if line.strip() and not line.startswith("==")]
    table = list(csv.reader(io.StringIO("\n".join(lines))))
    if not table:
        return RawTable([], {})
    header = table[0]
    if "Kernel Name" not in header:
        raise GpuprofError("ncu's CSV has no 'Kernel Name' column; it is not the output of `--page raw --csv`.")
    body = table[1:]
    units_row = body.pop(0) if body and body[0] and body[0][0] == "" else [""] * len(header)
    nvtx_column = next((c for c in header if any(h in c for h in NVTX_COLUMN_HINTS)), None)
    units: dict[str, str] = {}
    rows = []
    for cells in body:
        cells += [""] * (len(header) - len(cells))
        row: dict = {"nvtx": None}
        for name, unit, value in zip(header, units_row, cells):
            if name in _ID_COLUMNS:
                key = _ID_COLUMNS[name]
                row[key] = int(value) if key in ("ncu_id", "pid") and value.strip().isdigit() else value
            elif name == nvtx_column:
                row["nvtx"] = value
            elif "__" in name:  # metric names look like unit__counter.rollup
                number = parse_value(value)
                scale, base = _unit_scale(unit)
                row[column_name(name)] = None if number is None else number * scale
                units[column_name(name)] = base
        rows.append(row)
    return RawTable(rows, units)
