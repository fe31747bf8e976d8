"""Measured ceilings: the denominators of every "% of peak" figure.

`measure` times a large device-to-device copy and a read-only streaming kernel (DRAM bandwidth), cuBLAS matrix
products in fp16, bf16 and fp32 (compute), and times the copy a second time to show how repeatable the harness is.
`load` finds the peaks.json measured on this GPU, or falls back to the datasheet and says so.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from gpuprof import harness
from gpuprof.bench import measure_point
from gpuprof.device import GPUInfo, datasheet_for, software_versions
from gpuprof.errors import GpuprofError
from gpuprof.ops import get_op
from gpuprof.records import TRACES, gpu_dir, utc_now

PEAK_KEYS = ("copy_gbps", "read_gbps", "fp16_tflops", "bf16_tflops", "fp32_tflops")

COPY_BYTES = 1 << 30  # 1 GiB source, 1 GiB destination: far beyond any L2
MATMUL_SIZE = 8192


def default_path(gpu_name: str, root: Path = TRACES, quick: bool = False) -> Path:
    """Where peaks.json lives; a --quick run's rough ceilings go beside it, never in its place."""
    return gpu_dir(gpu_name, root) / ("peaks-quick.json" if quick else "peaks.json")


def _points(l2_bytes: int, options: harness.TimingOptions, copy_bytes: int, matmul: int) -> list[tuple[str, dict]]:
    """(ceiling key, measure_point arguments) for each ceiling, copy first and last (the repeat check)."""
    n16 = copy_bytes // 2
    copy = ("copy_gbps", dict(op=get_op("copy"), impl="torch", shape={"n": n16}, dtype="bf16"))
    mm = {"m": matmul, "n": matmul, "k": matmul}
    return [
        copy,
        ("read_gbps", dict(op=get_op("read"), impl="triton", shape={"n": n16}, dtype="bf16")),
        ("fp16_tflops", dict(op=get_op("matmul"), impl="cublas", shape=mm, dtype="fp16")),
        ("bf16_tflops", dict(op=get_op("matmul"), impl="cublas", shape=mm, dtype="bf16")),
        ("fp32_tflops", dict(op=get_op("matmul"), impl="cublas", shape=mm, dtype="fp32")),
        ("copy_repeat", copy[1]),
    ]


def measure(
    gpu: GPUInfo,
    command: str,
    git_commit: str | None,
    options: harness.TimingOptions = harness.TimingOptions(max_time_s=3.0),
    copy_bytes: int = COPY_BYTES,
    matmul: int = MATMUL_SIZE,
    progress: Callable[[str], None] = lambda _: None,
    quick: bool = False,
) -> dict:
    """Measure every ceiling on the current GPU; the result is what peaks.json holds (`quick`: a rough check with
    small sizes, marked as such in its peaks)."""
    peaks: dict = {}
    points = []
    for key, args in _points(gpu.l2_bytes, options, copy_bytes, matmul):
        progress(key)
        p = measure_point(**args, device="cuda", options=options, l2_bytes=gpu.l2_bytes, extra={"ceiling": key})
        points.append(p)
        if p["status"] != "ok":
            raise GpuprofError(f"measuring {key} failed: {p['error']}")
        peaks.setdefault(key, p["gbps"] if key.endswith("gbps") or key == "copy_repeat" else p["tflops"])
    repeat = peaks.pop("copy_repeat")
    first, second = points[0]["time_us"], points[-1]["time_us"]
    peaks["source"] = "measured"
    if quick:
        peaks["quick"] = True
    return {
        "gpu": gpu.manifest(),
        "versions": software_versions(),
        "git_commit": git_commit,
        "command": command,
        "started_at": utc_now(),
        "peaks": peaks,
        "repeatability": {
            "what": "the copy timed twice in one run: relative difference of the two medians",
            "first_us": first,
            "second_us": second,
            "diff_pct": 100.0 * abs(second - first) / first,
            "second_gbps": repeat,
        },
        "points": points,
    }


def datasheet_peaks(gpu_name: str) -> dict | None:
    """Ceilings from the vendor's datasheet, labelled as such; None for a GPU not in the table."""
    d = datasheet_for(gpu_name)
    if d is None:
        return None
    return {
        "copy_gbps": d.memory_gbps,
        "read_gbps": d.memory_gbps,
        "fp16_tflops": d.fp16_tflops,
        "bf16_tflops": d.bf16_tflops,
        "fp32_tflops": d.fp32_tflops,
        "source": "datasheet",
        "datasheet": f"{d.name}: {d.source}",
    }


def load(gpu_name: str, path: Path | None = None, root: Path = TRACES) -> dict:
    """The manifest's `peaks`: measured from peaks.json when there is one, else the datasheet, labelled.

    A quick run's file (peaks-quick.json) is never the default; passed as `path`, its source says it is rough.
    """
    candidate = path or default_path(gpu_name, root)
    if candidate.is_file():
        try:
            data = json.loads(candidate.read_text())
            peaks = dict(data["peaks"])
        except (json.JSONDecodeError, KeyError, TypeError):
            raise GpuprofError(f"{candidate} is not a peaks file (a JSON object with a 'peaks' object).")
        missing = [k for k in PEAK_KEYS if k not in peaks]
        if missing:
            raise GpuprofError(f"{candidate} lacks {', '.join(missing)}; measure again with `gpuprof peaks`.")
        if peaks.get("quick"):
            peaks["source"] = f"measured by a quick rough check, not full ceilings ({candidate})"
        else:
            peaks["source"] = f"measured ({candidate})"
        return peaks
    if path is not None:
        raise GpuprofError(f"no peaks file at {path}; measure one with `gpuprof peaks --out {path}`.")
    sheet = datasheet_peaks(gpu_name)
    if sheet is None:
        raise GpuprofError(
            f"no measured peaks for {gpu_name!r} under {root} and no datasheet entry for it; run `gpuprof peaks` first."
        )
    return sheet
