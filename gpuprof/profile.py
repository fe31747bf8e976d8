"""Run a command under Nsight Compute, keep the measured launches only, and join their counters to the points.

The parent (`gpuprof profile`, or `gpuprof bench --counters ncu`) starts the command under `ncu` with the NVTX
filter `gpuprof@measure/` and two environment variables. A gpuprof process that finds them (`ChildSession`) makes
each point's check and warm-up as usual, then a handful of untimed calls inside the `measure` range instead of
the timing loop, and appends the point (with its NVTX message and process id) to a points file. The parent reads
ncu's report back as CSV and joins each profiled launch to its point by (process id, point number), the number
that the point's NVTX message `<kernel>/<impl> #<n> ...` carries.

Everything lands in one run directory: report.ncu-rep (open it in Nsight Compute), ncu.log, raw.csv,
kernels.jsonl (one row per profiled launch), points.jsonl (the points with their `ncu_*` columns), manifest.json
(with the ncu command, version, metrics and their units).
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from gpuprof import nvtx
from gpuprof.counters import ncu
from gpuprof.errors import GpuprofError
from gpuprof.records import SHAPE_KEYS, TRACES, Run, command_line, dumps, new_run_dir, read_points, utc_now

ENV_POINTS = "GPUPROF_PROFILE_POINTS"
ENV_CALLS = "GPUPROF_PROFILE_CALLS"
DEFAULT_CALLS = 3
_DURATION = ncu.column_name("gpu__time_duration.sum")


@dataclass(frozen=True)
class ChildSession:
    """In a process run by `gpuprof profile`: `calls` untimed calls per point, each point written to `points`."""

    calls: int
    points: Path

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> ChildSession | None:
        path = env.get(ENV_POINTS)
        if not path:
            return None
        try:
            calls = int(env.get(ENV_CALLS, DEFAULT_CALLS))
        except ValueError:
            raise GpuprofError(f"{ENV_CALLS} must be a whole number, not {env.get(ENV_CALLS)!r}.") from None
        return cls(max(calls, 1), Path(path))

    def record(self, point: Mapping) -> None:
        with open(self.points, "a") as f:
            f.write(dumps({**point, "profile_pid": os.getpid()}) + "\n")


@dataclass
class Request:
    """What to profile and how."""

    command: list[str]
    out: Path
    sets: list[str] = field(default_factory=lambda: ["speed-of-light"])
    extra_metrics: list[str] = field(default_factory=list)
    calls: int = DEFAULT_CALLS
    nvtx_include: str | None = nvtx.MEASURE_FILTER  # None: every kernel (bound by launch_count)
    launch_count: int | None = None


@dataclass
class Result:
    out: Path
    report: Path
    metrics: list[ncu.Metric]
    kernels: list[dict]  # one per profiled launch
    points: list[dict]  # the command's gpuprof points, with ncu_* columns


Runner = Callable[..., subprocess.CompletedProcess]


def default_out(gpu_name: str, root: Path = TRACES) -> Path:
    """traces/<gpu-slug>/profile-<UTC time>."""
    return new_run_dir(gpu_name, "profile", root)


def target_command(command: Sequence[str]) -> list[str]:
    """The command to profile; `gpuprof ...` runs as `python -m gpuprof ...` of this very installation."""
    if not command:
        raise GpuprofError("name the command to profile after `--`, e.g. gpuprof profile -- gpuprof bench copy --n 100000000.")
    if Path(command[0]).name == "gpuprof":
        return [sys.executable, "-m", "gpuprof", *command[1:]]
    return list(command)


def check_nvtx(command: Sequence[str], nvtx_include: str | None) -> None:
    """Refuse to filter a gpuprof command by NVTX range where the nvtx package, which marks its ranges, is missing."""
    if nvtx_include and command and Path(command[0]).name == "gpuprof" and not nvtx.available():
        raise GpuprofError("the nvtx package is not installed, so gpuprof marks no launches for ncu's NVTX filter; "
                           "install it (pip install nvtx).")


def check_out(out: Path) -> None:
    """Refuse an --out that holds another kind of run (a bench or sweep): profiling there replaces points.jsonl.

    An earlier profile run there (its manifest has an ncu command) is fine to profile over again.
    """
    manifest = out / "manifest.json"
    if not manifest.exists() and not (out / "points.jsonl").exists():
        return
    try:
        grid = json.loads(manifest.read_text()).get("grid") or {}
    except (OSError, ValueError, AttributeError):
        grid = {}
    if "ncu_command" not in grid:
        raise GpuprofError(f"{out} holds a run that is not a profile run, whose points profiling would replace; "
                           "choose another --out.")


def run(
    request: Request,
    runner: Runner | None = None,
    ncu_path: str | None = None,
    compute_capability: float | None = None,
    gpu: Mapping | None = None,
    versions: Mapping | None = None,
    git_commit: str | None = None,
) -> Result:
    """Profile the command, read the report back, join launches to points; write everything under request.out."""
    runner = runner or subprocess.run
    ncu_path = ncu_path or ncu.find_ncu()
    metrics = ncu.metrics_for(request.sets, request.extra_metrics, compute_capability)
    command = target_command(request.command)
    check_nvtx(request.command, request.nvtx_include)
    out = Path(request.out)
    check_out(out)
    out.mkdir(parents=True, exist_ok=True)
    report, log, child_points = out / "report.ncu-rep", out / "ncu.log", out / "child-points.jsonl"
    for stale in (report, log, child_points):
        stale.unlink(missing_ok=True)
    argv = ncu.profile_command(ncu_path, command, metrics, report, log, request.nvtx_include, request.launch_count)
    env = {**os.environ, ENV_POINTS: str(child_points.resolve()), ENV_CALLS: str(request.calls)}
    done = runner(argv, env=env, capture_output=True, text=True)
    (out / "command-output.txt").write_text((done.stdout or "") + (done.stderr or ""))
    messages = (log.read_text() if log.exists() else "") + (done.stderr or "")
    failure = None
    if done.returncode != 0 or ncu.application_failed(messages):
        output = [l.strip() for l in (done.stderr or done.stdout or "").splitlines() if l.strip() and "==" not in l]
        failure = f"the profiled command failed (exit status {done.returncode}): {output[-1] if output else 'no output'}"
    ncu.check_messages(messages, request.nvtx_include, failure)
    if not report.exists():
        raise ncu.no_kernel_matched(request.nvtx_include)
    imported = runner(ncu.import_command(ncu_path, report), capture_output=True, text=True)
    if imported.returncode != 0:
        raise GpuprofError(f"`ncu --import {report}` failed: {(imported.stderr or '').strip()[:200]}")
    (out / "raw.csv").write_text(imported.stdout)
    table = ncu.parse_raw_csv(imported.stdout)
    if not table.rows:
        raise ncu.no_kernel_matched(request.nvtx_include)
    kernels = label_kernels(table.rows)
    points = join(kernels, read_points(child_points) if child_points.exists() else [], request.calls)
    _write(out, request, argv, ncu_version(ncu_path, runner), metrics, table.units, kernels, points,
           gpu, versions, git_commit)
    return Result(out, report, metrics, kernels, points)


def ncu_version(ncu_path: str, runner: Runner | None = None) -> str | None:
    done = (runner or subprocess.run)([ncu_path, "--version"], capture_output=True, text=True)
    lines = [l.strip() for l in (done.stdout or "").splitlines() if l.strip()]
    return lines[-1] if done.returncode == 0 and lines else None


def label_kernels(rows: Sequence[dict]) -> list[dict]:
    """Each launch with its gpuprof point number and phase, read from its NVTX ranges."""
    out = []
    for row in rows:
        cell = row.get("nvtx") or ""
        ranges = [name for domain, name in ncu.nvtx_ranges(cell) if domain == nvtx.DOMAIN]
        found = next(filter(None, map(nvtx.find_point_message, ranges)), None) or nvtx.find_point_message(cell)
        phases = [name for name in ranges if name in nvtx.PHASES]
        out.append({**row, "point_id": found.point_id if found else None,
                    "nvtx_range": " > ".join(ranges) if ranges else None, "phase": phases[-1] if phases else None})
    return out


def aggregate(kernels: Sequence[dict], calls: int) -> dict:
    """One point's ncu columns from its profiled launches.

    Counters (`.sum`: bytes, durations) are summed over the kernels of a call and averaged over calls; rates and
    percentages are averaged weighted by kernel duration, so a call of several kernels reads as one.
    """
    columns = [c for c in dict.fromkeys(k for row in kernels for k in row) if c.startswith("ncu_") and c != "ncu_id"]
    out: dict = {"ncu_launches": len(kernels), "ncu_calls": calls,
                 "ncu_kernel_names": ";".join(sorted({str(r.get("kernel_name")) for r in kernels}))}
    for column in columns:
        pairs = [(r[column], r.get(_DURATION) or 0.0) for r in kernels if r.get(column) is not None]
        if not pairs:
            continue
        if column.endswith("_sum"):
            out[column] = sum(v for v, _ in pairs) / calls
        else:
            weight = sum(w for _, w in pairs)
            out[column] = (sum(v * w for v, w in pairs) / weight) if weight > 0 else sum(v for v, _ in pairs) / len(pairs)
    read, write = out.get(ncu.column_name("dram__bytes_read.sum")), out.get(ncu.column_name("dram__bytes_write.sum"))
    if read is not None and write is not None and out.get(_DURATION):
        out["ncu_dram_gbps"] = (read + write) / out[_DURATION]  # bytes per ns = GB/s
    return out


def join(kernels: Sequence[dict], points: Sequence[dict], calls: int) -> list[dict]:
    """The points, each with the ncu columns of its launches (matched on process id and point number)."""
    by_point: dict[tuple, list[dict]] = {}
    for k in kernels:
        by_point.setdefault((k.get("pid"), k.get("point_id")), []).append(k)
    joined = []
    for p in points:
        message = nvtx.find_point_message(p.get("nvtx_range") or "")
        launches = by_point.get((p.get("profile_pid"), message.point_id if message else None), [])
        extra = aggregate(launches, p.get("profile_calls") or calls) if launches else {"ncu_launches": 0}
        joined.append({**p, **extra})
    return joined


def point_key(point: Mapping) -> tuple:
    """What identifies a point across two runs of the same grid."""
    return tuple(point.get(k) for k in ("kernel", "impl", "dtype", "model", *SHAPE_KEYS))


def merge(timed: Sequence[dict], profiled: Sequence[Mapping]) -> int:
    """Copy the ncu columns of profiled points into the timed points with the same key; how many matched."""
    by_key = {point_key(p): p for p in profiled}
    matched = 0
    for p in timed:
        source = by_key.get(point_key(p))
        if source is None:
            continue
        p.update({k: v for k, v in source.items() if k.startswith("ncu_")})
        matched += 1
    return matched


def _write(out, request, argv, version, metrics, units, kernels, points, gpu, versions, git_commit) -> None:
    manifest = {
        "gpu": dict(gpu) if gpu else None,
        "versions": dict(versions) if versions else None,
        "git_commit": git_commit,
        "command": command_line(),
        "started_at": utc_now(),
        "peaks": None,
        "grid": {
            "profiled_command": shlex.join(request.command),
            "ncu_command": shlex.join(argv),
            "ncu_version": version,
            "metric_sets": request.sets,
            "metrics": [m.name for m in metrics],
            "units": units,
            "nvtx_include": request.nvtx_include,
            "calls_per_point": request.calls,
            "note": "ncu replays and serialises each launch: times here are ncu's, never the benchmark's timing.",
        },
    }
    (out / "points.jsonl").unlink(missing_ok=True)
    run_dir = Run.create(out, manifest)
    for p in points:
        run_dir.append(p)
    with open(out / "kernels.jsonl", "w") as f:
        for k in kernels:
            f.write(dumps(k) + "\n")
