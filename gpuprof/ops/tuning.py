"""Launch configurations: a planned default, or the fastest candidate timed once on this GPU and remembered.

The first call with a new key (say, gemv bf16 with M in the 16 bucket, N 14336, K 4096) times every candidate
configuration on the caller's own tensors and keeps the fastest, in memory and in a JSON file per GPU model
(`~/.cache/gpuprof/tuning-<gpu>.json`, or the path in GPUPROF_TUNE_CACHE). Later calls, in this process or the
next, find it there, so a choice is made once and then stays fixed. Ties go to the earlier candidate, and the
planned default is always the first candidate.

Nothing is timed on the CPU, under Triton's interpreter or with GPUPROF_TUNE=0 (the planned default is used), nor
while a CUDA graph is being captured (a choice already made is used, else the default).
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

import torch

Config = TypeVar("Config")

# Stand-in SM count on the CPU (interpreter): small, so plans stay cheap to interpret yet still split.
CPU_SM_COUNT = 4
_FORMAT = 1


def sm_count(device: torch.device | str) -> int:
    """Streaming multiprocessors of a CUDA device; CPU_SM_COUNT for the CPU."""
    device = torch.device(device)
    if device.type != "cuda":
        return CPU_SM_COUNT
    return torch.cuda.get_device_properties(device).multi_processor_count


def tuning_enabled(device: torch.device | str) -> bool:
    from gpuprof.kernels.common import interpreting  # not at import: Triton reads TRITON_INTERPRET as kernels load

    device = torch.device(device)
    return device.type == "cuda" and not interpreting() and os.environ.get("GPUPROF_TUNE", "1") != "0"


def _versions() -> dict:
    import triton

    return {"format": _FORMAT, "torch": torch.__version__, "triton": triton.__version__}


class TuningCache:
    """Chosen configurations by key, backed by one JSON file (written whole, atomically, after each choice).

    A file written by other torch or triton versions is ignored: a compiler change can change the best choice.
    """

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.entries: dict[str, dict] = {}
        if path is not None and path.is_file():
            try:
                data = json.loads(path.read_text())
                if data.get("versions") == _versions():
                    self.entries = dict(data["entries"])
            except (OSError, ValueError, KeyError, TypeError, AttributeError):
                self.entries = {}

    def get(self, key: str) -> dict | None:
        entry = self.entries.get(key)
        return entry["config"] if entry else None

    def put(self, key: str, config: dict, time_us: float, tried: int) -> None:
        self.entries[key] = {"config": config, "time_us": time_us, "candidates": tried}
        if self.path is None:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile("w", dir=self.path.parent, delete=False, suffix=".tmp") as f:
                json.dump({"versions": _versions(), "entries": self.entries}, f, indent=1, sort_keys=True)
            os.replace(f.name, self.path)
        except OSError:
            pass  # an unwritable cache costs a re-tune in the next process, nothing more


_caches: dict[str, TuningCache] = {}


def cache_for(device: torch.device | str) -> TuningCache:
    """The cache of the GPU model of `device` (one per process and model)."""
    from gpuprof.device import gpu_slug

    name = torch.cuda.get_device_name(torch.device(device))
    if name not in _caches:
        given = os.environ.get("GPUPROF_TUNE_CACHE")
        path = Path(given) if given else Path.home() / ".cache" / "gpuprof" / f"tuning-{gpu_slug(name)}.json"
        _caches[name] = TuningCache(path)
    return _caches[name]


def time_gpu_us(fn: Callable[[], object]) -> float:
    """Median time of fn in microseconds, with L2 flushed between calls (Triton's do_bench)."""
    import triton.testing

    return 1e3 * triton.testing.do_bench(fn, warmup=5, rep=25, return_mode="median")


def fastest(
    candidates: Sequence[Config], run: Callable[[Config], object], timer: Callable[[Callable[[], object]], float]
) -> tuple[Config, float]:
    """The candidate with the smallest time (the earliest among equals); candidates that fail to run are skipped."""
    best, best_us = None, float("inf")
    for candidate in candidates:
        try:
            us = timer(lambda: run(candidate))
        except Exception:  # noqa: BLE001 - a config can exceed shared memory or registers: just not a candidate
            continue
        if us < best_us:
            best, best_us = candidate, us
    if best is None:
        raise RuntimeError("no candidate configuration could run")
    return best, best_us


def choose(
    key: str,
    candidates: Sequence[Config],
    run: Callable[[Config], object],
    device: torch.device | str,
    *,
    cache: TuningCache | None = None,
    timer: Callable[[Callable[[], object]], float] = time_gpu_us,
    enabled: bool | None = None,
) -> Config:
    """The configuration to launch with: candidates[0] (the planned default) where tuning is off; else the cached
    choice for `key`; else the fastest candidate, timed now and cached (the default while a CUDA graph is being
    captured, where nothing can be timed). Configs are dataclasses."""
    default = candidates[0]
    if not (tuning_enabled(device) if enabled is None else enabled) or len(candidates) == 1:
        return default
    cache = cache if cache is not None else cache_for(device)
    kind = type(default)
    known = cache.get(key)
    if known is not None:
        try:
            return kind(**known)
        except TypeError:
            pass  # written by an older layout of the config: tune again
    if torch.cuda.is_available() and torch.cuda.is_current_stream_capturing():
        return default  # nothing can be timed inside a CUDA graph capture
    best, best_us = fastest(candidates, run, timer)
    cache.put(key, dataclasses.asdict(best), best_us, len(candidates))
    return best
