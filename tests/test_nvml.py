"""NVML sampler: window arithmetic on recorded readings, the sampling thread with a fake device, unsupported paths.

The files in tests/data/nvml/ are hand-made from the NVML documentation until a GPU session replaces them with
recordings (`python -m gpuprof.counters.nvml tests/data/nvml/h100-copy-window.json`, see its README).
"""

import json
import time
import types
from pathlib import Path

import pynvml
import pytest
import torch

from gpuprof.bench import measure_point
from gpuprof.counters import make_collectors, nvml
from gpuprof.errors import GpuprofError
from gpuprof.counters.nvml import GPM_COLUMNS, NvmlSampler, Reading, Window, summarize
from gpuprof.harness import TimingOptions
from gpuprof.ops import get_op

DATA = Path(__file__).parent / "data" / "nvml"
QUICK = TimingOptions(warmup_ms=0, max_time_s=0.02, min_reps=3)


def load(name: str) -> Window:
    return Window.from_json(json.loads((DATA / name).read_text())["window"])


class FakeDevice:
    """Scripted NVML device: energy rises 400 mJ per read, GPM metrics as given, every sample freed or not."""

    def __init__(self, gpm=True, metrics=None, name="Fake H100"):
        self.name = name
        self._gpm = gpm
        self.metrics = metrics if metrics is not None else {m: 50.0 for m in GPM_COLUMNS.values()}
        self.energy = 1_000_000
        self.live_samples = set()
        self.reads = 0
        self.closed = False
        self.samples_taken = 0
        self.refuse_gpm_after = None  # a count of samples: refuse every GPM sample after that many

    def gpm_supported(self):
        return self._gpm

    def gpm_sample(self):
        if self.refuse_gpm_after is not None and self.samples_taken >= self.refuse_gpm_after:
            raise nvml.NvmlUnavailable("NVML refused a GPM sample (Not Supported)")
        self.samples_taken += 1
        sample = object()
        self.live_samples.add(sample)
        return sample

    def gpm_metrics(self, first, second, ids):
        assert first in self.live_samples and second in self.live_samples and first is not second
        return {m: self.metrics.get(m) for m in ids}

    def gpm_free(self, sample):
        self.live_samples.remove(sample)

    def energy_mj(self):
        self.energy += 400
        return self.energy

    def read(self, t):
        self.reads += 1
        return Reading(t=t, power_w=400.0, sm_clock_mhz=1980, mem_clock_mhz=2619, temperature_c=50,
                       clock_event_reasons=0)

    def close(self):
        self.closed = True


def test_gpm_ids_and_reason_bits_are_nvmls():
    for column, metric in {"nvml_dram_util_pct": "DRAM_BW_UTIL", "nvml_sm_util_pct": "SM_UTIL",
                           "nvml_sm_occupancy_pct": "SM_OCCUPANCY", "nvml_tensor_util_pct": "ANY_TENSOR_UTIL",
                           "nvml_hmma_util_pct": "HMMA_TENSOR_UTIL", "nvml_fp16_util_pct": "FP16_UTIL",
                           "nvml_fp32_util_pct": "FP32_UTIL", "nvml_gpu_active_pct": "GRAPHICS_UTIL"}.items():
        assert GPM_COLUMNS[column] == getattr(pynvml, f"NVML_GPM_METRIC_{metric}")
    assert nvml.CLOCK_EVENT_REASONS[pynvml.nvmlClocksEventReasonSwPowerCap] == "sw_power_cap"
    assert nvml.CLOCK_EVENT_REASONS[pynvml.nvmlClocksEventReasonHwThermalSlowdown] == "hw_thermal"
    assert nvml.CLOCK_EVENT_REASONS[pynvml.nvmlClocksEventReasonGpuIdle] == "gpu_idle"
    assert nvml.reason_names(0x4 | 0x40 | 0x1000) == ["sw_power_cap", "hw_thermal", "0x1000"]


def test_summarize_a_hopper_window():
    w = load("handmade-h100-copy-window.json")
    out = summarize(w)
    energy = (w.energy_mj[1] - w.energy_mj[0]) / 1e3
    assert out["nvml_energy_j"] == pytest.approx(energy)
    assert out["nvml_power_w"] == pytest.approx(energy / w.seconds)  # from the counter, not the samples
    assert out["nvml_energy_per_call_j"] == pytest.approx(energy / w.calls)
    assert out["nvml_power_sampled_w"] == pytest.approx(sum(r.power_w for r in w.readings) / len(w.readings))
    assert out["nvml_dram_util_pct"] == w.gpm[10] and out["nvml_sm_util_pct"] == w.gpm[2]
    assert out["nvml_tensor_util_pct"] == w.gpm[5]
    assert "nvml_fp16_util_pct" not in out  # the device did not offer it
    assert out["nvml_clock_event_reasons"] == "gpu_idle,sw_power_cap"
    assert out["nvml_temperature_max_c"] == max(r.temperature_c for r in w.readings)
    assert out["nvml_samples"] == len(w.readings) and out["nvml_window_s"] == w.seconds


def test_summarize_without_gpm_or_energy_counter():
    w = load("handmade-pre-hopper-window.json")
    out = summarize(w)
    assert not any(c in out for c in GPM_COLUMNS)
    assert "nvml_energy_j" not in out and "nvml_clock_event_reasons" not in out
    assert out["nvml_power_w"] == pytest.approx((30.0 + 68.0 + 70.0) / 3)


@pytest.mark.parametrize("path", sorted(DATA.glob("*-window.json")), ids=lambda p: p.name)
def test_every_window_summarizes_to_plausible_columns(path):
    w = Window.from_json(json.loads(path.read_text())["window"])
    out = summarize(w)
    assert len(w.readings) >= 2 and all(b.t >= a.t for a, b in zip(w.readings, w.readings[1:]))
    for column in GPM_COLUMNS:
        assert 0 <= out.get(column, 0) <= 100
    assert 0 < out["nvml_power_w"] < 2000
    if "nvml_energy_j" in out:
        assert out["nvml_energy_j"] > 0


def test_window_json_round_trip():
    w = load("handmade-h100-copy-window.json")
    assert Window.from_json(json.loads(json.dumps(w.to_json()))) == w


def test_sampler_reads_on_schedule_and_frees_its_gpm_samples():
    device = FakeDevice()
    sampler = NvmlSampler(device, interval_s=0.02, min_window_s=0.5, notify=pytest.fail)
    sampler.start({})
    time.sleep(0.2)
    out = sampler.stop({"counters_window_calls": 100})
    assert not sampler._thread.is_alive() and device.live_samples == set()
    readings = sampler.last_window.readings
    assert 5 <= len(readings) <= 13  # start, ~10 ticks, stop
    assert all(b.t >= a.t for a, b in zip(readings, readings[1:]))
    assert out["nvml_dram_util_pct"] == 50.0 and out["nvml_energy_j"] == pytest.approx(0.4)
    assert out["nvml_energy_per_call_j"] == pytest.approx(0.004)
    assert 0.2 <= out["nvml_window_s"] < 1.0


def test_gpm_over_a_too_short_window_is_left_out():
    device = FakeDevice()
    sampler = NvmlSampler(device, interval_s=0.05, min_window_s=0.5, notify=pytest.fail)
    sampler.start({})
    out = sampler.stop({})
    assert not any(c in out for c in GPM_COLUMNS) and device.live_samples == set()
    assert "nvml_power_w" in out


def test_unsupported_gpm_is_said_once_and_the_rest_still_recorded():
    said = []
    sampler = NvmlSampler(FakeDevice(gpm=False, name="Tesla T4"), interval_s=0.01, notify=said.append)
    for _ in range(2):
        sampler.start({})
        time.sleep(0.02)
        out = sampler.stop({})
        assert "nvml_power_w" in out and not any(c in out for c in GPM_COLUMNS)
    assert len(said) == 1 and "Tesla T4" in said[0] and "Hopper" in said[0]


def test_metrics_the_device_lacks_are_said_once():
    said = []
    metrics = {m: 10.0 for m in GPM_COLUMNS.values()} | {GPM_COLUMNS["nvml_fp16_util_pct"]: None}
    sampler = NvmlSampler(FakeDevice(metrics=metrics), interval_s=0.05, notify=said.append)
    for _ in range(2):
        sampler.start({})
        time.sleep(0.12)
        out = sampler.stop({})
        assert "nvml_fp16_util_pct" not in out and out["nvml_sm_util_pct"] == 10.0
    assert len(said) == 1 and "nvml_fp16_util_pct" in said[0]


@pytest.mark.parametrize("refuse_after", [0, 1], ids=["at-start", "at-stop"])
def test_refused_gpm_sample_turns_gpm_off_once_and_frees_what_was_taken(refuse_after):
    said = []
    device = FakeDevice()
    device.refuse_gpm_after = refuse_after
    sampler = NvmlSampler(device, interval_s=0.05, min_window_s=0.5, notify=said.append)
    for _ in range(2):
        sampler.start({})
        time.sleep(0.12)
        out = sampler.stop({})
        assert "nvml_power_w" in out and not any(c in out for c in GPM_COLUMNS)
    assert not sampler.gpm and device.live_samples == set()
    assert len(said) == 1 and "GPM metrics are off" in said[0] and "refused" in said[0]


def test_measure_point_survives_a_refused_gpm_sample():
    device = FakeDevice()
    device.refuse_gpm_after = 0
    said = []
    sampler = NvmlSampler(device, interval_s=0.05, min_window_s=0.5, notify=said.append)
    p = measure_point(get_op("copy"), "torch", {"n": 4096}, "fp32", device="cpu", options=QUICK, collectors=[sampler])
    assert p["status"] == "ok" and "nvml_power_w" in p and "nvml_dram_util_pct" not in p and len(said) == 1


def test_a_collector_failing_to_start_is_recorded_and_the_started_ones_stopped():
    class Broken:
        def start(self, point):
            raise pynvml.NVMLError(pynvml.NVML_ERROR_GPU_IS_LOST)

        def stop(self, point):
            raise AssertionError("stopped without having started")

    device = FakeDevice()
    sampler = NvmlSampler(device, interval_s=0.02, min_window_s=0.5, notify=pytest.fail)
    p = measure_point(get_op("copy"), "torch", {"n": 4096}, "fp32", device="cpu", options=QUICK,
                      collectors=[sampler, Broken()])
    # The timing stands: the point is ok, without counter columns, and says why.
    assert p["status"] == "ok" and p["time_us"] > 0 and "nvml_power_w" not in p
    assert "Broken counters failed to start" in p["counters_error"] and "lost" in p["counters_error"]
    assert not sampler._thread.is_alive() and device.live_samples == set()


def test_pynvml_device_frees_a_gpm_sample_nvml_refused_to_fill():
    fake = _fake_nvml()

    def refuse(handle, sample):
        raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)

    fake.nvmlGpmSampleGet = refuse
    device = nvml.open_device(0, fake)
    with pytest.raises(nvml.NvmlUnavailable, match="refused a GPM sample"):
        device.gpm_sample()
    assert len(fake.freed) == 1


def test_window_shorter_than_gpm_allows_is_refused():
    with pytest.raises(ValueError, match="at least"):
        NvmlSampler(FakeDevice(), min_window_s=0.2)


def _fake_nvml(init_error=False, lacks=()):
    """A pynvml stand-in: real structs and constants, scripted functions."""
    module = types.SimpleNamespace(
        NVMLError=pynvml.NVMLError, NVML_SUCCESS=pynvml.NVML_SUCCESS, NVML_CLOCK_SM=pynvml.NVML_CLOCK_SM,
        NVML_CLOCK_MEM=pynvml.NVML_CLOCK_MEM, NVML_TEMPERATURE_GPU=pynvml.NVML_TEMPERATURE_GPU,
        NVML_GPM_METRICS_GET_VERSION=pynvml.NVML_GPM_METRICS_GET_VERSION,
        c_nvmlGpmMetricsGet_t=pynvml.c_nvmlGpmMetricsGet_t, shutdowns=[], freed=[],
    )

    def refuse(*args):
        raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)

    def init():
        if init_error:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_DRIVER_NOT_LOADED)

    def metrics_get(request):
        assert request.version == pynvml.NVML_GPM_METRICS_GET_VERSION and request.numMetrics == 3
        for i in range(request.numMetrics):
            m = request.metrics[i]
            m.value = float(m.metricId) * 2
            m.nvmlReturn = pynvml.NVML_ERROR_NOT_SUPPORTED if m.metricId == 13 else pynvml.NVML_SUCCESS
        return request

    functions = {
        "nvmlInit": init, "nvmlShutdown": lambda: module.shutdowns.append(1),
        "nvmlDeviceGetHandleByIndex": lambda i: f"handle{i}", "nvmlDeviceGetName": lambda h: b"NVIDIA H100 80GB HBM3",
        "nvmlGpmQueryDeviceSupport": lambda h: types.SimpleNamespace(isSupportedDevice=1),
        "nvmlGpmMetricsGet": metrics_get, "nvmlGpmSampleAlloc": pynvml.c_nvmlGpmSample_t,
        "nvmlGpmSampleGet": lambda h, s: s, "nvmlGpmSampleFree": lambda s: module.freed.append(s),
        "nvmlDeviceGetPowerUsage": lambda h: 512345,
        "nvmlDeviceGetClockInfo": lambda h, c: 1980 if c == pynvml.NVML_CLOCK_SM else 2619,
        "nvmlDeviceGetTemperature": refuse, "nvmlDeviceGetCurrentClocksEventReasons": lambda h: 4,
        "nvmlDeviceGetCurrentClocksThrottleReasons": lambda h: 8, "nvmlDeviceGetTotalEnergyConsumption": refuse,
    }
    for name, fn in functions.items():
        if name not in lacks:
            setattr(module, name, fn)
    return module


def test_pynvml_device_reads_structs_and_tolerates_refusals():
    fake = _fake_nvml()
    device = nvml.open_device(0, fake)
    assert device.name == "NVIDIA H100 80GB HBM3" and device.gpm_supported()
    first, second = device.gpm_sample(), device.gpm_sample()
    assert device.gpm_metrics(first, second, [2, 10, 13]) == {2: 4.0, 10: 20.0, 13: None}
    device.gpm_free(first)
    device.close()
    assert fake.freed == [first] and fake.shutdowns == [1]
    r = device.read(0.5)
    assert (r.power_w, r.sm_clock_mhz, r.mem_clock_mhz, r.temperature_c, r.clock_event_reasons) == (
        pytest.approx(512.345), 1980, 2619, None, 4)
    assert device.energy_mj() is None


def test_pynvml_device_on_older_drivers():
    device = nvml.open_device(0, _fake_nvml(lacks=("nvmlDeviceGetCurrentClocksEventReasons",
                                                   "nvmlGpmQueryDeviceSupport")))
    assert device.read(0.0).clock_event_reasons == 8 and not device.gpm_supported()


def test_no_nvml_says_so_once_and_gives_no_sampler(monkeypatch):
    said = []
    assert NvmlSampler.open(notify=said.append, nvml=_fake_nvml(init_error=True)) is None
    assert len(said) == 1 and "NVML counters are off" in said[0] and "driver" in said[0]
    monkeypatch.setitem(__import__("sys").modules, "pynvml", None)
    said.clear()
    assert NvmlSampler.open(notify=said.append) is None
    assert "nvidia-ml-py" in said[0]


def test_measure_point_adds_nvml_columns_over_a_window_of_back_to_back_calls():
    device = FakeDevice()
    sampler = NvmlSampler(device, interval_s=0.05, min_window_s=0.5, notify=pytest.fail)
    p = measure_point(get_op("copy"), "torch", {"n": 4096}, "fp32", device="cpu", options=QUICK, collectors=[sampler])
    assert p["status"] == "ok"
    assert p["counters_window_s"] >= 0.5 and p["counters_window_calls"] > 0
    assert 0 < p["counters_busy_pct"] and p["nvml_window_s"] >= p["counters_window_s"]
    assert p["nvml_dram_util_pct"] == 50.0 and p["nvml_energy_per_call_j"] == pytest.approx(
        p["nvml_energy_j"] / p["counters_window_calls"])
    assert device.live_samples == set()


def test_make_collectors(monkeypatch):
    assert make_collectors([]) == []
    with pytest.raises(GpuprofError, match="unknown counters perf"):
        make_collectors(["nvml", "perf"])
    with pytest.raises(GpuprofError, match="gpuprof profile -- gpuprof"):
        make_collectors(["ncu"])
    monkeypatch.setitem(__import__("sys").modules, "pynvml", None)
    said = []
    assert make_collectors(["nvml"], notify=said.append) == [] and len(said) == 1


def test_make_collectors_samples_torchs_current_device(monkeypatch):
    from gpuprof import device

    opened = []
    monkeypatch.setattr(device, "current_cuda_index", lambda: 2)
    monkeypatch.setattr(NvmlSampler, "open", classmethod(lambda cls, index=0, **kw: opened.append(index)))
    make_collectors(["nvml"])
    assert opened == [2]


def test_open_device_finds_the_cuda_device_by_uuid():
    fake = _fake_nvml()
    fake.nvmlDeviceGetHandleByUUID = lambda uuid: f"by-{uuid}"
    device = nvml.open_device(1, fake, props=types.SimpleNamespace(uuid="58f2b1a4-0c1d"))
    assert device._handle == "by-GPU-58f2b1a4-0c1d"


def test_a_collector_without_a_window_length_gets_one_batch_of_calls():
    class Constant:
        def start(self, point):
            self.started = True

        def stop(self, point):
            return {"nvml_dram_util_pct": 91.0}

    p = measure_point(get_op("copy"), "torch", {"n": 64}, "fp32", device="cpu", options=QUICK, collectors=[Constant()])
    assert p["nvml_dram_util_pct"] == 91.0 and p["counters_window_calls"] >= 1 and p["counters_window_s"] > 0


@pytest.mark.gpu
def test_nvml_columns_for_a_large_copy_on_the_gpu():
    from gpuprof.device import info

    sampler = NvmlSampler.open(min_window_s=1.0)
    if sampler is None:
        pytest.skip("NVML is not usable on this machine")
    p = measure_point(get_op("copy"), "torch", {"n": 1 << 28}, "bf16", device="cuda", l2_bytes=info().l2_bytes,
                      options=TimingOptions(max_time_s=0.3), collectors=[sampler])
    sampler.close()
    assert p["status"] == "ok" and p["counters_window_s"] >= 1.0 and p["counters_busy_pct"] > 90
    assert p["nvml_power_w"] > 0 and p["nvml_sm_clock_mhz"] > 0
    if sampler.gpm:  # a device-wide copy keeps DRAM busy: GPM must see it
        assert p["nvml_dram_util_pct"] > 50 and p["nvml_sm_util_pct"] > 50
    assert torch.cuda.is_available()
