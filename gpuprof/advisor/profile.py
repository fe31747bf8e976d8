"""Reading a table of measured serving runs (one row per maximum batch size) into a throughput curve.

CSV, JSON (a list of objects, or an object holding one under "runs", "results", "rows" or "data") or JSON Lines
(such as a gpuprof points.jsonl with `batch`, `tokens_per_s` and `step_ms`). Common column names are recognised;
the report says which column was used for what. Several rows at one batch size (repeats) are combined by their
median.
"""

from __future__ import annotations

import csv
import json
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from gpuprof.advisor.criteria import CurvePoint
from gpuprof.errors import GpuprofError

# Candidate names per role, in order of preference (matched case-insensitively).
COLUMNS: dict[str, tuple[str, ...]] = {
    "batch": ("batch_size", "batch", "max_num_seqs", "max_batch_size", "max_concurrency", "concurrency", "bs"),
    "throughput": ("output_throughput", "output_tokens_per_s", "output_token_throughput", "tokens_per_s",
                   "throughput", "token_throughput", "total_token_throughput"),
    "itl": ("mean_itl_ms", "itl_ms", "mean_tpot_ms", "tpot_ms", "step_ms", "median_itl_ms", "median_tpot_ms"),
    "ttft": ("mean_ttft_ms", "ttft_ms", "median_ttft_ms"),
    "kv_cache_usage": ("kv_cache_usage", "kv_cache_usage_pct", "kv_cache_usage_perc", "gpu_cache_usage_perc"),
}
REQUIRED = ("batch", "throughput")
_JSON_LIST_KEYS = ("runs", "results", "rows", "data")


@dataclass
class ServingTable:
    """A measured curve with the columns it came from, and what else was measured per batch."""

    path: Path
    points: list[CurvePoint]
    columns: dict[str, str]
    extra: dict[int, dict] = field(default_factory=dict)  # batch -> {"ttft_ms": ..., "kv_cache_usage": ...}
    notes: list[str] = field(default_factory=list)


def read_rows(path: Path) -> list[dict]:
    """The rows of a CSV, JSON or JSON Lines file, as dictionaries."""
    path = Path(path)
    if not path.is_file():
        raise GpuprofError(f"no profile file at {path}.")
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise GpuprofError(f"cannot read the profile {path} ({e.__class__.__name__}).")
    suffix = path.suffix.lower()
    try:
        if suffix == ".jsonl":
            rows = [json.loads(line) for line in text.splitlines() if line.strip()]
        elif suffix == ".json":
            rows = _json_rows(json.loads(text))
        else:
            rows = list(csv.DictReader(text.splitlines()))
    except json.JSONDecodeError as e:
        raise GpuprofError(f"the profile {path} is not valid JSON (line {e.lineno}: {e.msg}).")
    except csv.Error as e:
        raise GpuprofError(f"the profile {path} is not a valid CSV table ({e}).")
    if not rows or not all(isinstance(r, dict) for r in rows):
        raise GpuprofError(f"the profile {path} holds no table rows; it needs one row (object) per batch size.")
    return rows


def _json_rows(data: object) -> list:
    if isinstance(data, dict):
        for key in _JSON_LIST_KEYS:
            if isinstance(data.get(key), list):
                return data[key]
        return []
    return data if isinstance(data, list) else []


def find_column(rows: list[dict], role: str, given: str | None = None) -> str | None:
    """The column used for a role: the one named by the user, else the first known name present."""
    present = {str(k).strip().lower(): k for r in rows for k in r}
    if given is not None:
        if given.lower() not in present:
            names = ", ".join(map(str, present.values()))
            raise GpuprofError(f"the profile has no column {given!r}; its columns are {names}.")
        return present[given.lower()]
    return next((present[c] for c in COLUMNS[role] if c in present), None)


def _number(value: object, path: Path, row: int, column: str) -> float | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise GpuprofError(f"{path} row {row}: {column} {value!r} is not a number.")
    if not math.isfinite(number):  # nan or inf parse as floats, but no measurement is one: leave the cell empty
        raise GpuprofError(f"{path} row {row}: {column} {value!r} is not a finite number; leave a missing value "
                           "empty.")
    return number


def read_profile(path: Path, batch_column: str | None = None, throughput_column: str | None = None,
                 itl_column: str | None = None) -> ServingTable:
    """Read a serving table into a curve of distinct batch sizes; every bad row is one clear error."""
    path = Path(path)
    rows = read_rows(path)
    notes = []
    if any("status" in r for r in rows):
        kept = [r for r in rows if r.get("status", "ok") == "ok"]
        if len(kept) < len(rows):
            notes.append(f"{len(rows) - len(kept)} rows whose status is not ok were left out")
        rows = kept
    given = {"batch": batch_column, "throughput": throughput_column, "itl": itl_column}
    columns = {role: find_column(rows, role, given.get(role)) for role in COLUMNS}
    for role in REQUIRED:
        if columns[role] is None:
            raise GpuprofError(f"the profile {path} has no {role} column (one of {', '.join(COLUMNS[role])}); "
                               f"name it with --{role}-column.")
    columns = {role: col for role, col in columns.items() if col is not None}
    by_batch: dict[int, list[dict]] = {}
    for i, row in enumerate(rows, 1):
        values = {role: _number(row.get(col), path, i, col) for role, col in columns.items()}
        batch, throughput = values["batch"], values["throughput"]
        if batch is None or batch < 1 or batch != int(batch):
            raise GpuprofError(f"{path} row {i}: the batch size must be a positive whole number, "
                               f"not {row.get(columns['batch'])!r}.")
        if throughput is None or throughput <= 0:
            raise GpuprofError(f"{path} row {i}: the throughput must be a positive number, "
                               f"not {row.get(columns['throughput'])!r}.")
        if "itl" in columns and (values["itl"] is None or values["itl"] <= 0):
            raise GpuprofError(f"{path} row {i}: the inter-token latency ({columns['itl']}) must be a positive number.")
        by_batch.setdefault(int(batch), []).append(values)
    return _combine(path, by_batch, columns, notes)


def _combine(path: Path, by_batch: dict[int, list[dict]], columns: dict[str, str], notes: list[str]) -> ServingTable:
    """One point per batch size: the median of its rows."""
    points, extra = [], {}
    for batch in sorted(by_batch):
        group = by_batch[batch]
        if len(group) > 1:
            notes.append(f"batch {batch}: {len(group)} rows, their medians used")
        median = {role: _median([v[role] for v in group]) for role in columns}
        points.append(CurvePoint(batch, median["throughput"], median.get("itl")))
        extra[batch] = {f"{role}_ms" if role == "ttft" else role: median[role]
                        for role in ("ttft", "kv_cache_usage") if role in columns}
    return ServingTable(path, points, columns, extra, notes)


def _median(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return statistics.median(known) if known else None
