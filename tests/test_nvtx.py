"""NVTX range names and nesting: what profilers filter on, checked with a recording domain on the CPU."""

import json
import time

import pytest
import torch

from gpuprof import nvtx
from gpuprof.bench import measure_point
from gpuprof.harness import TimingOptions
from gpuprof.ops.base import Launch
from gpuprof.profile import ENV_CALLS, ENV_POINTS
from test_bench import Scale

QUICK = TimingOptions(warmup_ms=0, max_time_s=0.02, min_reps=3)


class Recorder:
    """Stands in for the nvtx domain: keeps the push/pop events and the current stack."""

    def __init__(self):
        self.events = []
        self.stack = []

    def push_range(self, *, message):
        self.events.append(("push", message))
        self.stack.append(message)

    def pop_range(self):
        self.events.append(("pop", self.stack.pop()))


@pytest.fixture
def recorder(monkeypatch):
    r = Recorder()
    monkeypatch.setattr(nvtx, "_domain", r)
    return r


class Double(Scale):
    """test_bench's y = 2x; remembers the NVTX stack at each call, and can fail while timed."""

    kernel = "double"
    impls = ("torch", "fails-when-timed")

    def __init__(self, recorder):
        self.recorder = recorder
        self.stacks = []

    def launch(self, impl, inputs):
        x, out = inputs["x"], torch.empty_like(inputs["x"])

        def run():
            self.stacks.append(tuple(self.recorder.stack))
            if impl == "fails-when-timed" and "measure" in self.recorder.stack:
                raise RuntimeError("kernel fault")
            torch.mul(x, 2, out=out)
            return out

        return Launch(run=run, out=out)


def test_point_message_names_kernel_impl_and_parameters():
    message = nvtx.point_message("attention", "triton", 3, {"batch": 256, "ctx": 2048, "page_size": None,
                                                            "dtype": "bf16", "model": None})
    assert message == "attention/triton #3 batch=256 ctx=2048 dtype=bf16"
    found = nvtx.find_point_message(message)
    assert (found.kernel, found.impl, found.point_id) == ("attention", "triton", 3)
    assert found.params == {"batch": "256", "ctx": "2048", "dtype": "bf16"}


def test_point_message_never_holds_ncu_separators():
    message = nvtx.point_message("gemv", "torch-sdpa-flash", 12, {"model": 'meta-llama/Llama 3: "8B"', "m": 1})
    params = message.split(" #12 ", 1)[1].split(" ")
    assert params == ["model=meta-llama_Llama_3___8B_", "m=1"]
    assert ":" not in message and '"' not in message
    assert nvtx.find_point_message(message).params["m"] == "1"


def test_find_point_message_inside_an_ncu_cell():
    cell = '4242  "gpuprof:copy/torch #7 n=1000 dtype=bf16:none:none:none:none:none:none"  "gpuprof:measure:none"'
    found = nvtx.find_point_message(cell)
    assert (found.kernel, found.point_id, found.params["n"]) == ("copy", 7, "1000")
    assert nvtx.find_point_message("measure") is None


def test_filter_and_phases_are_the_documented_names():
    assert nvtx.DOMAIN == "gpuprof" and nvtx.MEASURE_FILTER == "gpuprof@measure/"
    assert nvtx.PHASES == ("check", "warmup", "measure", "counters")
    with pytest.raises(ValueError, match="phase"):
        with nvtx.phase("timing"):
            pass


def test_no_tool_attached_means_a_do_nothing_domain():
    # Nothing injects an NVTX tool into the test process: ranges must cost nothing and record nothing.
    assert nvtx.available()
    assert not nvtx.enabled()


def test_ranges_cost_next_to_nothing_without_a_tool():
    # ~2 us per range on a laptop CPU; the bound only catches real work slipping in (string registration, imports).
    start = time.perf_counter()
    for i in range(1000):
        with nvtx.nvtx_range(f"copy/torch #{i} n=10"), nvtx.phase("measure"):
            pass
    assert time.perf_counter() - start < 0.5


def test_ranges_pop_when_the_block_raises(recorder):
    with pytest.raises(KeyError):
        with nvtx.nvtx_range("outer"):
            with nvtx.phase("measure"):
                raise KeyError("x")
    assert recorder.stack == [] and recorder.events[-1] == ("pop", "outer")


def test_measure_point_nests_phases_inside_the_point_range(recorder):
    op = Double(recorder)
    p = measure_point(op, "torch", {"n": 64}, "fp32", device="cpu", options=QUICK)
    assert p["status"] == "ok" and p["nvtx_range"].startswith("double/torch #") and "n=64 dtype=fp32" in p["nvtx_range"]
    pushes = [m for kind, m in recorder.events if kind == "push"]
    assert pushes == [p["nvtx_range"], "check", "warmup", "measure"]
    assert recorder.stack == []
    timed = [s for s in op.stacks if s and s[-1] == "measure"]
    assert len(timed) == p["reps"] and all(s[0] == p["nvtx_range"] for s in op.stacks)
    assert {s[-1] for s in op.stacks} == {"check", "warmup", "measure"}


def test_each_point_gets_its_own_number(recorder):
    op = Double(recorder)
    ids = [nvtx.find_point_message(measure_point(op, "torch", {"n": 8}, "fp32", device="cpu", options=QUICK)
                                   ["nvtx_range"]).point_id for _ in range(3)]
    assert len(set(ids)) == 3 and ids == sorted(ids)


def test_a_failing_point_leaves_the_stack_balanced(recorder):
    p = measure_point(Double(recorder), "fails-when-timed", {"n": 8}, "fp32", device="cpu", options=QUICK)
    assert p["status"] == "error" and "kernel fault" in p["error"]
    assert recorder.stack == []


def test_under_gpuprof_profile_only_a_few_untimed_calls_sit_in_measure(recorder, monkeypatch, tmp_path):
    points_file = tmp_path / "points.jsonl"
    monkeypatch.setenv(ENV_POINTS, str(points_file))
    monkeypatch.setenv(ENV_CALLS, "2")
    op = Double(recorder)
    p = measure_point(op, "torch", {"n": 16}, "fp32", device="cpu", options=QUICK)
    assert p["status"] == "ok" and p["time_us"] is None and p["profile_calls"] == 2
    assert [s[-1] for s in op.stacks].count("measure") == 2
    written = [json.loads(line) for line in points_file.read_text().splitlines()]
    assert len(written) == 1 and written[0]["nvtx_range"] == p["nvtx_range"] and written[0]["profile_pid"] > 0
