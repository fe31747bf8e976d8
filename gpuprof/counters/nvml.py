"""NVML device sampler: GPM utilisations, power, clocks, temperature, clock-event reasons and energy per point.

`NvmlSampler` is a `gpuprof.bench.Collector`. While a point's calls run back to back (harness.sustain, at least
`min_window_s`), a background thread reads power, clocks, temperature and clock-event reasons every
`interval_s`; GPM metrics and the total-energy counter are read once at each end of the window, because a GPM
metric is the difference of two samples (samples closer than ~100 ms give zeros or errors) and the energy counter
moves in coarse steps. `summarize` turns one window's raw readings into record columns; it is a plain function,
tested on the CPU with readings recorded from a real device (tests/data/nvml/).

GPM needs Hopper or newer; where it is missing, or NVML itself is, the sampler says so once and the benchmark goes
on without those columns. The sampler watches the CUDA device the benchmark runs on: NVML's numbering differs
from CUDA's, so the device is found by its UUID (gpuprof.device.nvml_handle).
"""

from __future__ import annotations

import math
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Protocol

# NVML_GPM_METRIC_* identifiers (nvml.h) and the record columns they fill.
GPM_COLUMNS: dict[str, int] = {
    "nvml_dram_util_pct": 10,  # DRAM_BW_UTIL: DRAM bandwidth used vs. the theoretical maximum
    "nvml_sm_util_pct": 2,  # SM_UTIL: share of SMs busy
    "nvml_sm_occupancy_pct": 3,  # SM_OCCUPANCY: warps resident vs. the theoretical maximum
    "nvml_tensor_util_pct": 5,  # ANY_TENSOR_UTIL: time the SMs did any tensor operation
    "nvml_hmma_util_pct": 7,  # HMMA_TENSOR_UTIL: time the SMs did half-precision tensor operations
    "nvml_fp16_util_pct": 13,  # FP16_UTIL: non-tensor FP16 math
    "nvml_fp32_util_pct": 12,  # FP32_UTIL: non-tensor FP32 math
    "nvml_gpu_active_pct": 1,  # GRAPHICS_UTIL: time any compute or graphics work was active
}

# nvmlClocksEventReason* bits (nvml.h): why the clocks were below their maximum.
CLOCK_EVENT_REASONS: dict[int, str] = {
    0x1: "gpu_idle",
    0x2: "applications_clocks",
    0x4: "sw_power_cap",
    0x8: "hw_slowdown",
    0x10: "sync_boost",
    0x20: "sw_thermal",
    0x40: "hw_thermal",
    0x80: "hw_power_brake",
    0x100: "display_clocks",
}

GPM_MIN_INTERVAL_S = 0.1  # NVML: GPM samples closer than this give zeros or errors


class NvmlUnavailable(Exception):
    """NVML cannot be used here; the message says why in one sentence."""


@dataclass(frozen=True)
class Reading:
    """One periodic sample; None where the device refused that query."""

    t: float  # seconds since the window began
    power_w: float | None
    sm_clock_mhz: int | None
    mem_clock_mhz: int | None
    temperature_c: int | None
    clock_event_reasons: int | None


class Device(Protocol):
    """What the sampler asks of NVML (PynvmlDevice, or a fake in tests)."""

    name: str

    def gpm_supported(self) -> bool: ...

    def gpm_sample(self) -> object: ...  # raises NvmlUnavailable, with nothing left allocated, when refused

    def gpm_metrics(self, first: object, second: object, ids: Sequence[int]) -> dict[int, float | None]: ...

    def gpm_free(self, sample: object) -> None: ...

    def energy_mj(self) -> int | None: ...

    def read(self, t: float) -> Reading: ...

    def close(self) -> None: ...


@dataclass
class Window:
    """The raw readings of one point's window: what `summarize` turns into columns, and what tests replay."""

    seconds: float
    readings: list[Reading]
    energy_mj: tuple[int | None, int | None]
    gpm: dict[int, float | None] | None  # None where GPM is not supported
    calls: int | None = None  # calls made in the window, where the caller said

    def to_json(self) -> dict:
        out = asdict(self)
        out["gpm"] = None if self.gpm is None else {str(k): v for k, v in self.gpm.items()}
        return out

    @classmethod
    def from_json(cls, data: Mapping) -> Window:
        gpm = data.get("gpm")
        return cls(
            seconds=data["seconds"],
            readings=[Reading(**r) for r in data["readings"]],
            energy_mj=tuple(data["energy_mj"]),
            gpm=None if gpm is None else {int(k): v for k, v in gpm.items()},
            calls=data.get("calls"),
        )


def reason_names(bits: int) -> list[str]:
    """Names of the clock-event reason bits set in `bits` (unknown bits as hex)."""
    names = [name for bit, name in CLOCK_EVENT_REASONS.items() if bits & bit]
    unknown = bits & ~sum(CLOCK_EVENT_REASONS)
    return names + ([hex(unknown)] if unknown else [])


def _mean(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return sum(present) / len(present) if present else None


def summarize(window: Window) -> dict:
    """Record columns for one window: GPM averages over the window, mean power and clocks, energy in joules."""
    out: dict = {"nvml_window_s": window.seconds, "nvml_samples": len(window.readings)}
    for column, metric in GPM_COLUMNS.items():
        value = (window.gpm or {}).get(metric)
        if value is not None and math.isfinite(value):
            out[column] = value
    readings = window.readings
    sampled_power = _mean([r.power_w for r in readings])
    first, last = window.energy_mj
    if first is not None and last is not None and last >= first and window.seconds > 0:
        # The counter's difference across the whole window: coarse steps average out, sampling gaps do not matter.
        out["nvml_energy_j"] = (last - first) / 1e3
        out["nvml_power_w"] = out["nvml_energy_j"] / window.seconds
        if window.calls:
            out["nvml_energy_per_call_j"] = out["nvml_energy_j"] / window.calls
    elif sampled_power is not None:
        out["nvml_power_w"] = sampled_power
    if sampled_power is not None:
        out["nvml_power_sampled_w"] = sampled_power
    out["nvml_sm_clock_mhz"] = _mean([r.sm_clock_mhz for r in readings])
    out["nvml_mem_clock_mhz"] = _mean([r.mem_clock_mhz for r in readings])
    temperatures = [r.temperature_c for r in readings if r.temperature_c is not None]
    out["nvml_temperature_max_c"] = max(temperatures) if temperatures else None
    bits = [r.clock_event_reasons for r in readings if r.clock_event_reasons is not None]
    if bits:
        seen = 0
        for b in bits:
            seen |= b
        out["nvml_clock_event_reasons"] = ",".join(reason_names(seen)) or "none"
    return {k: v for k, v in out.items() if v is not None}


def _stderr(message: str) -> None:
    print(message, file=sys.stderr)


class NvmlSampler:
    """Collector: NVML readings over each point's counter window, summarized into `nvml_*` columns."""

    def __init__(
        self,
        device: Device,
        interval_s: float = 0.1,
        min_window_s: float = 1.0,
        notify: Callable[[str], None] = _stderr,
    ) -> None:
        if min_window_s < 5 * GPM_MIN_INTERVAL_S:
            raise ValueError(f"an NVML window needs at least {5 * GPM_MIN_INTERVAL_S} s, not {min_window_s}")
        self.device = device
        self.interval_s = interval_s
        self.min_window_s = min_window_s  # harness.sustain runs the point's calls at least this long
        self.notify = notify
        self.gpm = device.gpm_supported()
        if not self.gpm:
            notify(f"NVML GPM metrics are not supported on {device.name} (they need Hopper or newer): the "
                   "nvml_*_util columns are left out; power, clocks and energy are still recorded.")
        self._told_missing: set[int] = set()
        self._readings: list[Reading] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.last_window: Window | None = None

    @classmethod
    def open(cls, index: int = 0, notify: Callable[[str], None] = _stderr, nvml: object = None, **options):
        """A sampler on CUDA device `index`, or None (said once through `notify`) where NVML cannot be used."""
        try:
            device = open_device(index, nvml)
        except NvmlUnavailable as e:
            notify(f"NVML counters are off: {e}; the benchmark goes on without nvml_* columns.")
            return None
        return cls(device, notify=notify, **options)

    def start(self, point: Mapping) -> None:
        self._stop.clear()
        self._t0 = time.perf_counter()
        self._readings = [self.device.read(0.0)]
        self._energy0 = self.device.energy_mj()
        self._gpm0 = self._gpm_sample() if self.gpm else None
        self._thread = threading.Thread(target=self._sample_until_stopped, name="gpuprof-nvml", daemon=True)
        self._thread.start()

    def _sample_until_stopped(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._readings.append(self.device.read(time.perf_counter() - self._t0))

    def stop(self, point: Mapping) -> dict:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        seconds = time.perf_counter() - self._t0
        self._readings.append(self.device.read(seconds))
        energy1 = self.device.energy_mj()
        gpm = self._gpm_over_window(seconds) if self.gpm else None
        self.last_window = Window(seconds, self._readings, (self._energy0, energy1), gpm,
                                  calls=point.get("counters_window_calls"))
        return summarize(self.last_window)

    def _gpm_sample(self) -> object | None:
        """A GPM sample, or None after turning GPM off (said once) where the device refuses one."""
        try:
            return self.device.gpm_sample()
        except NvmlUnavailable as e:
            # A driver can refuse GPM although it reported support (MIG, a busy profiler): the point still
            # gets power, clocks and energy rather than failing.
            self.gpm = False
            self.notify(f"NVML GPM metrics are off on {self.device.name}: {e}; the nvml_*_util columns are left "
                        "out from here on.")
            return None

    def _gpm_over_window(self, seconds: float) -> dict[int, float | None] | None:
        gpm1 = self._gpm_sample()
        if gpm1 is None:
            self.device.gpm_free(self._gpm0)
            return None
        try:
            if seconds < GPM_MIN_INTERVAL_S:
                return None
            values = self.device.gpm_metrics(self._gpm0, gpm1, sorted(set(GPM_COLUMNS.values())))
        finally:
            self.device.gpm_free(self._gpm0)
            self.device.gpm_free(gpm1)
        missing = {m for m, v in values.items() if v is None} - self._told_missing
        if missing:
            self._told_missing |= missing
            names = ", ".join(c for c, m in GPM_COLUMNS.items() if m in missing)
            self.notify(f"NVML on {self.device.name} does not offer {names}; those columns are left out.")
        return values

    def close(self) -> None:
        self.device.close()


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


class PynvmlDevice:
    """The Device protocol on nvidia-ml-py (pynvml)."""

    def __init__(self, nvml, index: int, props=None) -> None:
        from gpuprof.device import nvml_handle

        self._nvml = nvml
        self._handle = nvml_handle(nvml, index, props)  # CUDA's device `index`, whatever NVML numbers it
        self.name = _text(nvml.nvmlDeviceGetName(self._handle))

    def _query(self, fn_name: str, *args):
        """The value of one NVML query, or None where this device or driver refuses it."""
        fn = getattr(self._nvml, fn_name, None)
        if fn is None:
            return None
        try:
            return fn(self._handle, *args)
        except self._nvml.NVMLError:
            return None

    def gpm_supported(self) -> bool:
        support = self._query("nvmlGpmQueryDeviceSupport")
        return bool(support is not None and support.isSupportedDevice)

    def gpm_sample(self) -> object:
        """A filled GPM sample; NvmlUnavailable (nothing left allocated) where NVML refuses one."""
        nvml = self._nvml
        try:
            sample = nvml.nvmlGpmSampleAlloc()
        except nvml.NVMLError as e:
            raise NvmlUnavailable(f"NVML could not allocate a GPM sample ({e})") from None
        try:
            nvml.nvmlGpmSampleGet(self._handle, sample)
        except nvml.NVMLError as e:
            nvml.nvmlGpmSampleFree(sample)
            raise NvmlUnavailable(f"NVML refused a GPM sample ({e})") from None
        return sample

    def gpm_metrics(self, first: object, second: object, ids: Sequence[int]) -> dict[int, float | None]:
        nvml = self._nvml
        request = nvml.c_nvmlGpmMetricsGet_t()
        request.version = nvml.NVML_GPM_METRICS_GET_VERSION
        request.numMetrics = len(ids)
        request.sample1 = first
        request.sample2 = second
        for i, metric in enumerate(ids):
            request.metrics[i].metricId = metric
        try:
            nvml.nvmlGpmMetricsGet(request)
        except nvml.NVMLError:
            return {metric: None for metric in ids}
        return {
            int(m.metricId): (float(m.value) if m.nvmlReturn == nvml.NVML_SUCCESS else None)
            for m in request.metrics[: len(ids)]
        }

    def gpm_free(self, sample: object) -> None:
        self._nvml.nvmlGpmSampleFree(sample)

    def energy_mj(self) -> int | None:
        value = self._query("nvmlDeviceGetTotalEnergyConsumption")
        return None if value is None else int(value)

    def read(self, t: float) -> Reading:
        nvml = self._nvml
        power_mw = self._query("nvmlDeviceGetPowerUsage")
        reasons = self._query("nvmlDeviceGetCurrentClocksEventReasons")
        if reasons is None:  # drivers before the 535 rename
            reasons = self._query("nvmlDeviceGetCurrentClocksThrottleReasons")
        return Reading(
            t=t,
            power_w=None if power_mw is None else power_mw / 1e3,
            sm_clock_mhz=self._query("nvmlDeviceGetClockInfo", nvml.NVML_CLOCK_SM),
            mem_clock_mhz=self._query("nvmlDeviceGetClockInfo", nvml.NVML_CLOCK_MEM),
            temperature_c=self._query("nvmlDeviceGetTemperature", nvml.NVML_TEMPERATURE_GPU),
            clock_event_reasons=reasons,
        )

    def close(self) -> None:
        try:
            self._nvml.nvmlShutdown()
        except self._nvml.NVMLError:
            pass


def open_device(index: int = 0, nvml: object = None, props=None) -> PynvmlDevice:
    """CUDA device `index` in NVML (`props`: its torch properties, asked of torch if None); NvmlUnavailable says
    why not."""
    if nvml is None:
        try:
            import pynvml as nvml
        except ImportError:
            raise NvmlUnavailable("the nvidia-ml-py package (pynvml) is not installed") from None
    try:
        nvml.nvmlInit()
    except nvml.NVMLError as e:
        raise NvmlUnavailable(f"NVML did not start ({e}); is an NVIDIA driver loaded?") from None
    try:
        return PynvmlDevice(nvml, index, props)
    except nvml.NVMLError as e:
        nvml.nvmlShutdown()
        raise NvmlUnavailable(f"NVML does not find CUDA device {index} ({e})") from None


def record_window(out: str, seconds: float = 2.0) -> dict:
    """On a GPU: run a large device copy for `seconds` under the sampler and write its raw window as test data."""
    import json
    from pathlib import Path

    import torch

    from gpuprof.bench import measure_point
    from gpuprof.device import current_cuda_index, info, require_gpu, software_versions
    from gpuprof.harness import TimingOptions
    from gpuprof.ops import get_op

    require_gpu("recording NVML test data")
    gpu = info()
    sampler = NvmlSampler.open(current_cuda_index(), min_window_s=seconds)
    if sampler is None:
        raise SystemExit("NVML is not usable here; nothing recorded.")
    point = measure_point(get_op("copy"), "torch", {"n": 1 << 29}, "bf16", device="cuda",
                          options=TimingOptions(max_time_s=0.5), l2_bytes=gpu.l2_bytes, collectors=[sampler])
    sampler.close()
    data = {
        "source": f"recorded by `python -m gpuprof.counters.nvml {out}` on {gpu.name}",
        "gpu": gpu.manifest(),
        "versions": software_versions(),
        "torch_cuda": torch.version.cuda,
        "point": point,
        "window": sampler.last_window.to_json(),
    }
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(data, indent=1, default=str) + "\n")
    return data


if __name__ == "__main__":  # python -m gpuprof.counters.nvml OUT.json [SECONDS]
    record_window(sys.argv[1], float(sys.argv[2]) if len(sys.argv) > 2 else 2.0)
