"""Per-kernel time models: fitted from a sweep on the user's GPU (calibration.json), or the datasheet roofline.

A kernel call takes overhead_us + max(bytes / bandwidth, flops / compute): a roofline with a fixed cost per call
(launch, ramp-up, tail). The small kernels of a step (norms, rotary, activation) are not swept on their own: they
are priced like the linear fit, memory-bound kernels with its fixed cost per call. A decode step may add a fixed
per-step overhead (sampling, scheduling): 0 unless measured.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from gpuprof.advisor.work import Work
from gpuprof.records import TRACES, gpu_dir
from gpuprof.errors import GpuprofError

FORMAT = "gpuprof-calibration/1"
KERNELS = ("attention", "linear")
UNCALIBRATED = "datasheet roofline, not calibrated: predicted times are lower bounds"
STEP_OVERHEAD_UNMEASURED = "not measured: 0 (the end-to-end decode measurement gives it)"
SMALL_KERNELS = "priced like the linear fit (its bandwidth and fixed cost per call); not swept on their own"


@dataclass(frozen=True)
class KernelFit:
    """Effective rates of one kernel: GB/s, TFLOP/s and a fixed cost per call in microseconds."""

    gbps: float
    tflops: float
    overhead_us: float = 0.0
    impl: str | None = None  # the implementation most often fastest in the calibrating run
    details: dict = field(default_factory=dict)  # fit error, point count, where each rate came from

    def busy_us(self, work: Work) -> float:
        """Time the GPU is busy moving bytes and doing math, without the fixed cost."""
        memory = work.bytes / (self.gbps * 1e3)  # 1 GB/s moves 1e3 bytes per microsecond
        compute = work.flops / (self.tflops * 1e6)  # 1 TFLOP/s does 1e6 FLOPs per microsecond
        return max(memory, compute)

    def time_us(self, work: Work) -> float:
        return self.overhead_us + self.busy_us(work)


@dataclass(frozen=True)
class Calibration:
    kernels: dict[str, KernelFit]
    dtype: str
    step_overhead_us: float
    source: str  # one line for people: where these numbers come from
    calibrated: bool
    provenance: dict

    def small_kernel_fit(self) -> KernelFit:
        """The time model of the step's small kernels: the linear fit's bandwidth and fixed cost per call."""
        linear = self.kernels["linear"]
        return KernelFit(linear.gbps, linear.tflops, linear.overhead_us, None, {"source": SMALL_KERNELS})

    def to_dict(self) -> dict:
        return {
            "format": FORMAT,
            "dtype": self.dtype,
            "source": self.source,
            "calibrated": self.calibrated,
            "kernels": {name: asdict(fit) for name, fit in self.kernels.items()},
            "step_overhead_us": self.step_overhead_us,
            "provenance": self.provenance,
        }


def default_path(gpu_name: str, root: Path = TRACES) -> Path:
    return gpu_dir(gpu_name, root) / "calibration.json"


def load(path: Path) -> Calibration:
    """Read a calibration.json written by `gpuprof calibrate`; a clear error for anything else."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except OSError:
        raise GpuprofError(f"no calibration file at {path}; fit one with `gpuprof calibrate RUN`.")
    except json.JSONDecodeError:
        raise GpuprofError(f"{path} is not a calibration file (it is not valid JSON).")
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise GpuprofError(f"{path} is not a calibration file (it lacks \"format\": \"{FORMAT}\").")
    try:
        kernels = {name: _kernel_fit(data["kernels"][name]) for name in KERNELS}
        prov = dict(data["provenance"])
        step = float(data.get("step_overhead_us") or 0.0)
        dtype = str(data["dtype"])
    except (KeyError, TypeError, ValueError):
        raise GpuprofError(f"{path} lacks a fit for {' and '.join(KERNELS)}, a dtype or provenance; fit it again "
                           "with `gpuprof calibrate RUN` from a sweep of both kernels.")
    commit = prov.get("git_commit") or "commit unknown"
    source = (f"calibrated from {prov.get('run')} on {prov.get('gpu')} (gpuprof {commit}, "
              f"run {prov.get('run_started_at')}; file {path})")
    return Calibration(kernels, dtype, step, source, True, {**prov, "file": str(path)})


def _kernel_fit(entry: dict) -> KernelFit:
    fit = KernelFit(float(entry["gbps"]), float(entry["tflops"]), float(entry["overhead_us"]), entry.get("impl"),
                    dict(entry.get("details") or {}))
    if fit.gbps <= 0 or fit.tflops <= 0 or fit.overhead_us < 0:
        raise ValueError("fit out of range")
    return fit


def datasheet_roofline(gpu_name: str, dtype: str) -> Calibration:
    """The vendor's bandwidth and peak math rate, no efficiency factor and no overhead: times are lower bounds."""
    from gpuprof.peaks import datasheet_peaks

    sheet = datasheet_peaks(gpu_name)
    if sheet is None:
        raise GpuprofError(f"no calibration and no datasheet entry for {gpu_name!r}; run `gpuprof sweep` and "
                           "`gpuprof calibrate RUN` on it, or pass --calibration FILE.")
    fit = KernelFit(sheet["copy_gbps"], sheet[f"{dtype}_tflops"], 0.0, None, {"source": sheet["datasheet"]})
    prov = {"datasheet": sheet["datasheet"], "gpu": gpu_name}
    return Calibration({k: fit for k in KERNELS}, dtype, 0.0, UNCALIBRATED, False, prov)


def resolve(gpu_name: str, dtype: str, path: Path | None = None, root: Path = TRACES) -> Calibration:
    """The given calibration file, else the one measured on this GPU under `root`, else the datasheet roofline."""
    candidate = path or default_path(gpu_name, root)
    if path is None and not candidate.is_file():
        return datasheet_roofline(gpu_name, dtype)
    calibration = load(candidate)
    if calibration.dtype != dtype:
        raise GpuprofError(f"the calibration {candidate} was fitted in {calibration.dtype}; predict in that dtype "
                           f"(--dtype {calibration.dtype}) or calibrate a sweep run in {dtype}.")
    return calibration


def with_step_overhead(calibration: Calibration, step_overhead_us: float) -> Calibration:
    """The same calibration with a per-step overhead given by the user (measured elsewhere)."""
    if step_overhead_us < 0:
        raise GpuprofError("--step-overhead-us must not be negative.")
    return replace(calibration, step_overhead_us=step_overhead_us,
                   provenance={**calibration.provenance, "step_overhead": "--step-overhead-us"})
