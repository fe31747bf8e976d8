"""Run directories: manifest.json, points.jsonl written point by point, reading back, resume.

The field names here are the contract in shared/design.md: report, calibrate, advisor and anyone's pandas
notebook read these files (`pandas.read_json(path, lines=True)`).
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import math
import os
import shlex
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from gpuprof.errors import GpuprofError

SHAPE_KEYS = ("batch", "ctx", "hq", "hkv", "head_dim", "page_size", "m", "n", "k")
POINT_KEYS = (
    ("kernel", "impl", "model", "dtype")
    + SHAPE_KEYS
    + ("status", "error")
    + ("time_us", "time_us_min", "time_us_max", "time_us_iqr", "reps")
    + ("bytes", "flops", "intensity", "gbps", "tflops", "pct_copy_bw", "pct_peak_flops")
)
TRACES = Path("traces")  # where results measured on real GPUs live, one folder per GPU

MANIFEST_KEYS = ("gpu", "versions", "git_commit", "command", "started_at", "peaks", "grid")
STATUSES = ("ok", "oom", "unsupported", "error")


def new_point(**fields: object) -> dict:
    """A point with every contract key present (None where it does not apply), then the given fields."""
    point: dict = {key: None for key in POINT_KEYS}
    point.update(fields)
    if point["status"] is not None and point["status"] not in STATUSES:
        raise ValueError(f"status must be one of {STATUSES}, not {point['status']!r}")
    return point


def add_work(point: dict, peaks: Mapping | None) -> dict:
    """Fill intensity, gbps, tflops and the % of ceilings from `bytes`, `flops` and `time_us`."""
    nbytes, flops, t = point.get("bytes"), point.get("flops"), point.get("time_us")
    if nbytes and flops is not None:
        point["intensity"] = flops / nbytes
    if t and t > 0:
        if nbytes is not None:
            point["gbps"] = nbytes / t / 1e3
        if flops is not None:
            point["tflops"] = flops / t / 1e6
    if peaks:
        copy = peaks.get("copy_gbps")
        if copy and point.get("gbps") is not None:
            point["pct_copy_bw"] = 100.0 * point["gbps"] / copy
        peak = peaks.get(f"{point.get('dtype')}_tflops") if point.get("dtype") else None
        if peak and point.get("tflops") is not None:
            point["pct_peak_flops"] = 100.0 * point["tflops"] / peak
    return point


def new_manifest(gpu: object | None, peaks: Mapping | None, grid: Mapping, command: str | None = None) -> dict:
    """A run's manifest for this process: the GPU (a GPUInfo, or None), versions, commit, command, start time."""
    from gpuprof.device import git_commit, software_versions

    return {
        "gpu": gpu.manifest() if gpu is not None else None,
        "versions": software_versions(),
        "git_commit": git_commit(),
        "command": command or command_line(),
        "started_at": utc_now(),
        "peaks": dict(peaks) if peaks else None,
        "grid": dict(grid),
    }


def gpu_dir(gpu_name: str, root: Path = TRACES) -> Path:
    """traces/<gpu-slug>: where this GPU's peaks.json, calibration.json and run directories go."""
    from gpuprof.device import gpu_slug

    return Path(root) / gpu_slug(gpu_name)


def new_run_dir(gpu_name: str, kind: str, root: Path = TRACES) -> Path:
    """A fresh, sortable run directory name: traces/<gpu-slug>/<kind>-YYYYMMDD-HHMMSS (UTC)."""
    return gpu_dir(gpu_name, root) / f"{kind}-{dt.datetime.now(dt.timezone.utc).strftime('%Y%m%d-%H%M%S')}"


def utc_now() -> str:
    return dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat()


def command_line(argv: list[str] | None = None) -> str:
    """The exact command, as a shell would take it back."""
    argv = list(sys.argv if argv is None else argv)
    if argv and argv[0].endswith(("/gpuprof", "gpuprof/__main__.py")):
        argv[0] = "gpuprof"
    return shlex.join(argv)


def _clean(value: object) -> object:
    """JSON has no NaN or infinity: write them as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def dumps(point: Mapping) -> str:
    return json.dumps({k: _clean(v) for k, v in point.items()}, separators=(",", ":"))


def check_writable(path: Path, flag: str, directory: bool = False) -> None:
    """Raise one sentence now, before minutes of measuring, where `path` (a file, or a `directory` to create or
    fill) cannot be written: a file in its way, a directory where a file should go, a folder we may not write."""
    path = Path(path)
    if directory and path.exists() and not path.is_dir():
        raise GpuprofError(f"{flag} {path} is a file; name a directory.")
    if not directory and path.is_dir():
        raise GpuprofError(f"{flag} {path} is a directory; name a file.")
    # The nearest folder that exists is where the first file or folder will be made.
    existing = path if directory and path.is_dir() else path.parent
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise GpuprofError(f"{flag} {path} cannot be written: {existing} is a file, not a directory.")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise GpuprofError(f"{flag} {path} cannot be written: this user may not write in {existing}.")


def _cannot_write(path: Path, e: OSError) -> GpuprofError:
    return GpuprofError(f"could not write {path}: {e.strerror or e}.")


def write_json(path: Path, obj: object) -> None:
    """Write JSON atomically, so a reader never sees half a file."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps(obj, indent=2, default=str) + "\n")
        os.replace(tmp, path)
    except OSError as e:
        raise _cannot_write(path, e) from None


def read_points(path: Path) -> list[dict]:
    """Every point of a points.jsonl; a last line cut short by an interrupted run is skipped."""
    points = []
    lines = Path(path).read_text().splitlines()
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            points.append(json.loads(line))
        except json.JSONDecodeError:
            if i == len(lines):
                break
            raise GpuprofError(f"{path}:{i} is not a JSON object; a points file holds one JSON object per line.")
    return points


def write_csv(points: Iterable[Mapping], path: Path) -> None:
    """The same points as CSV: contract columns first, extra columns after, in order of first appearance."""
    points = list(points)
    columns = list(POINT_KEYS)
    for p in points:
        columns += [k for k in p if k not in columns]
    try:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=columns)
            writer.writeheader()
            for p in points:
                writer.writerow({k: _clean(p.get(k)) for k in columns})
    except OSError as e:
        raise _cannot_write(path, e) from None


NEW_OUT = "choose a new --out directory, or delete the old one"


@dataclass
class Run:
    """One run directory: traces/<gpu-slug>/<run-id>/ with manifest.json and points.jsonl."""

    path: Path

    @property
    def manifest_path(self) -> Path:
        return self.path / "manifest.json"

    @property
    def points_path(self) -> Path:
        return self.path / "points.jsonl"

    @classmethod
    def create(cls, path: Path, manifest: Mapping, if_exists: str = NEW_OUT) -> Run:
        """A new run directory; `if_exists` tells the user what to do when `path` already holds one (only the
        commands that can resume a run should suggest it)."""
        missing = [k for k in MANIFEST_KEYS if k not in manifest]
        if missing:
            raise ValueError(f"manifest lacks {missing}")
        path = Path(path)
        if (path / "points.jsonl").exists():
            raise GpuprofError(f"{path} already holds a run; {if_exists}.")
        write_json(path / "manifest.json", dict(manifest))  # makes the directory
        try:
            (path / "points.jsonl").touch()
        except OSError as e:
            raise _cannot_write(path / "points.jsonl", e) from None
        return cls(path)

    @classmethod
    def open(cls, path: Path) -> Run:
        path = Path(path)
        if not (path / "manifest.json").is_file():
            raise GpuprofError(f"{path} is not a gpuprof run directory (it has no manifest.json).")
        return cls(path)

    def manifest(self) -> dict:
        """manifest.json as a dict; a damaged or foreign file is one sentence naming it."""
        try:
            manifest = json.loads(self.manifest_path.read_text())
        except (ValueError, OSError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            raise GpuprofError(f"{self.manifest_path} cannot be read as JSON ({e.__class__.__name__}); it is damaged "
                               "or not a gpuprof manifest.") from None
        if not isinstance(manifest, dict):
            raise GpuprofError(f"{self.manifest_path} holds a JSON {type(manifest).__name__}, not the object a gpuprof "
                               "manifest is.")
        return manifest

    def append(self, point: Mapping) -> None:
        """Write one finished point and make it durable, so an interrupted run loses nothing."""
        try:
            with open(self.points_path, "a") as f:
                f.write(dumps(point) + "\n")
                f.flush()
                os.fsync(f.fileno())
        except OSError as e:  # a full disk, a directory removed under the run
            raise _cannot_write(self.points_path, e) from None

    def points(self) -> list[dict]:
        return read_points(self.points_path) if self.points_path.exists() else []

    def done(self, key_fields: Iterable[str]) -> set[tuple]:
        """Keys of points already recorded (any status), to skip on --resume."""
        fields = tuple(key_fields)
        return {tuple(p.get(k) for k in fields) for p in self.points()}

    def repair(self) -> None:
        """Drop a last line cut short by an interruption, before appending after it."""
        if not self.points_path.exists():
            return
        text = self.points_path.read_text()
        if text and not text.endswith("\n"):
            self.points_path.write_text(text[: text.rfind("\n") + 1])
