"""Predicting decode steps from a calibration, replicas sharing a GPU, the Pareto frontier, calibration files."""

import json

import pytest

from gpuprof.advisor import calibration as calibration_lib
from gpuprof.advisor.calibration import Calibration, KernelFit
from gpuprof.advisor.model import aggregate, predict_step
from gpuprof.advisor.plan import pareto_frontier
from gpuprof.advisor.work import attention_work, linear_work, small_kernel_work
from gpuprof.errors import GpuprofError
from gpuprof.models import ModelShape, get_model

TINY = ModelShape(name="tiny", layers=2, hidden=64, heads=4, kv_heads=2, head_dim=16, intermediate=128, vocab=1000,
                  max_position=512, mlp="gated", activation="silu", norm="rmsnorm", rotary=True, tied_embeddings=False)


def calibration(attention=KernelFit(1000.0, 100.0, 5.0), linear=KernelFit(2000.0, 50.0, 3.0), step_overhead_us=0.0):
    return Calibration({"attention": attention, "linear": linear}, "bf16", step_overhead_us, "test", True, {})


def test_step_time_by_hand():
    b, ctx = 4, 100.0
    att = attention_work(b, ctx, 4, 2, 16, 2)
    # attention: K and V of 4 x 100 tokens x 2 heads x 16 dims, q and out of 4 x 4 x 16, in 2-byte elements.
    assert att.bytes == (2 * 4 * 100 * 2 * 16 + 2 * 4 * 4 * 16) * 2 and att.flops == 4 * 4 * 4 * 100 * 16
    expected = 2 * (5.0 + max(att.bytes / 1e6, att.flops / 1e8))
    for n, k, count in [(128, 64, 2), (64, 64, 2), (256, 64, 2), (64, 128, 2), (1000, 64, 1)]:
        lin = linear_work(b, n, k, 2)
        expected += count * (3.0 + max(lin.bytes / 2e6, lin.flops / 5e7))
    # Small kernels, priced like the linear fit: add + norm (x, delta in; x, h out; fp32 weight) 2 per layer + 1,
    # rotary + cache write (the qkv row in, q, k, v out) and the gated activation (gate, up in; out) 1 per layer,
    # 7 bookkeeping launches (a row of the embedding and 64 bytes of indices per sequence).
    small = [(4 * b * 64 * 2 + 4 * 64 * 4, 5), (2 * b * 8 * 16 * 2, 2), (b * (256 + 128) * 2, 2), (b * 192, 7)]
    expected += sum(count * (3.0 + nbytes / 2e6) for nbytes, count in small)
    step = predict_step(TINY, calibration(step_overhead_us=7.0), b, ctx, 2)
    assert step.step_us == pytest.approx(expected + 7.0)
    assert step.busy_us == pytest.approx(expected - 2 * 5.0 - 9 * 3.0 - 16 * 3.0)
    assert step.small_us == pytest.approx(sum(count * (3.0 + nbytes / 2e6) for nbytes, count in small))
    assert step.tokens_per_s == pytest.approx(b / (expected + 7.0) * 1e6)


def test_datasheet_roofline_llama_2_7b_batch_one():
    """Without overheads and far from the compute roof, a step moves its bytes at the datasheet bandwidth."""
    roof = calibration_lib.datasheet_roofline("NVIDIA H100 80GB HBM3", "bf16")
    assert not roof.calibrated and roof.source == calibration_lib.UNCALIBRATED
    assert roof.kernels["linear"].gbps == 3350 and roof.kernels["linear"].tflops == 989.4
    model = get_model("llama-2-7b")
    step = predict_step(model, roof, 1, 1000.0, 2)
    assert step.step_us == pytest.approx(step.bytes / 3350e3)
    # The linears move every weight matrix once: all weights but the input embedding and the norms.
    norms = (2 * model.layers + 1) * model.hidden
    linear_weights = (model.params() - model.vocab * model.hidden - norms) * 2
    kv = 1000 * model.kv_bytes_per_token(2)
    small = sum(work.bytes * count for _, work, count in small_kernel_work(model, 1, 2))
    assert small < 2e-3 * step.bytes  # kilobytes per call at batch 1
    assert step.bytes == pytest.approx(linear_weights + kv + small, rel=1e-3)


def test_one_replica_is_the_step_itself():
    step = predict_step(TINY, calibration(), 8, 64.0, 2)
    assert aggregate(step, 1) == pytest.approx((step.tokens_per_s, step.itl_ms))


def test_replicas_without_fixed_costs_share_bandwidth_and_gain_nothing():
    step = predict_step(TINY, calibration(KernelFit(1000.0, 100.0), KernelFit(2000.0, 50.0)), 8, 64.0, 2)
    for r in (1, 2, 4):
        tps, itl = aggregate(step, r)
        assert tps == pytest.approx(step.tokens_per_s) and itl == pytest.approx(r * step.itl_ms)


def test_replicas_hide_fixed_costs_until_the_gpu_is_busy():
    step = predict_step(TINY, calibration(step_overhead_us=50.0), 8, 64.0, 2)
    limit = step.step_us / step.busy_us  # replicas beyond this find the GPU busy
    assert limit > 2
    one, _ = aggregate(step, 1)
    two, itl_two = aggregate(step, 2)
    assert two == pytest.approx(2 * one) and itl_two == pytest.approx(step.itl_ms)
    many, itl_many = aggregate(step, int(limit) + 5)
    assert many == pytest.approx(step.batch / step.busy_us * 1e6)  # the GPU's own rate: more replicas add nothing
    assert itl_many == pytest.approx((int(limit) + 5) * step.busy_us / 1e3)


def test_pareto_frontier():
    rows = [{"batch": 1, "replicas": 1, "tokens_per_s": 100, "itl_ms": 5}, {"batch": 8, "replicas": 1, "tokens_per_s": 700, "itl_ms": 6},
            {"batch": 4, "replicas": 2, "tokens_per_s": 650, "itl_ms": 7}, {"batch": 16, "replicas": 1, "tokens_per_s": 1200, "itl_ms": 8},
            {"batch": 8, "replicas": 2, "tokens_per_s": 1200, "itl_ms": 9}]
    assert [(r["batch"], r["replicas"]) for r in pareto_frontier(rows)] == [(1, 1), (8, 1), (16, 1)]
    assert pareto_frontier([{"tokens_per_s": 1, "itl_ms": None}]) is None


def write(path, obj):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj) if not isinstance(obj, str) else obj)
    return path


def good_file():
    fit = {"gbps": 3000.0, "tflops": 600.0, "overhead_us": 4.0, "impl": "cuda", "details": {}}
    return {"format": calibration_lib.FORMAT, "dtype": "bf16", "kernels": {"attention": fit, "linear": fit},
            "step_overhead_us": 0.0, "provenance": {"run": "traces/x/run1", "gpu": "NVIDIA H100 80GB HBM3",
                                                    "git_commit": "abc", "run_started_at": "2025-01-01"}}


def test_resolve_uses_the_gpu_calibration_when_present(tmp_path):
    gpu = "NVIDIA H100 80GB HBM3"
    assert not calibration_lib.resolve(gpu, "bf16", root=tmp_path).calibrated
    write(calibration_lib.default_path(gpu, tmp_path), good_file())
    found = calibration_lib.resolve(gpu, "bf16", root=tmp_path)
    assert found.calibrated and "traces/x/run1" in found.source and "abc" in found.source
    with pytest.raises(GpuprofError, match=r"fitted in bf16; predict in that dtype \(--dtype bf16\)"):
        calibration_lib.resolve(gpu, "fp16", root=tmp_path)


def test_unknown_gpu_without_calibration(tmp_path):
    with pytest.raises(GpuprofError, match="no calibration and no datasheet entry for 'Tesla T4'"):
        calibration_lib.resolve("Tesla T4", "bf16", root=tmp_path)


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "no calibration file at"),
        ("{oops", "not valid JSON"),
        ({"kernels": {}}, "lacks \"format\""),
        ({**good_file(), "kernels": {"linear": good_file()["kernels"]["linear"]}}, "lacks a fit for attention and linear"),
        ({**good_file(), "kernels": {"attention": {"gbps": -1, "tflops": 1, "overhead_us": 0},
                                     "linear": good_file()["kernels"]["linear"]}}, "lacks a fit"),
    ],
)
def test_bad_calibration_files(tmp_path, content, message):
    path = tmp_path / "calibration.json"
    if content is not None:
        write(path, content)
    with pytest.raises(GpuprofError, match=message):
        calibration_lib.load(path)


def test_step_overhead_override():
    calib = calibration_lib.with_step_overhead(calibration(), 250.0)
    assert calib.step_overhead_us == 250.0
    with pytest.raises(GpuprofError, match="must not be negative"):
        calibration_lib.with_step_overhead(calib, -1.0)


def plan(step_overhead_us, kernel_overhead_us=(6.0, 4.0), **criteria):
    from gpuprof.advisor import workload
    from gpuprof.advisor.criteria import Criteria
    from gpuprof.advisor.plan import Deployment, Gpu, Serving, advise_model

    attention_us, linear_us = kernel_overhead_us
    calib = calibration(KernelFit(3000.0, 700.0, attention_us), KernelFit(3000.0, 600.0, linear_us), step_overhead_us)
    serving = Serving(get_model("llama-3.2-1b"), calib, Gpu("NVIDIA H100 80GB HBM3", 80 << 30, "test"),
                      workload.from_specs("uniform:64:512", "uniform:16:256"))
    return advise_model(serving, Criteria(**criteria), Deployment())


def test_instances_take_the_most_throughput_within_the_latency_bound():
    loose = plan(3000.0, latency_factor=100)
    rows = loose["replicas"]
    assert len(rows) >= 2 and loose["vllm"]["instances"] == max(rows, key=lambda r: r["tokens_per_s"])["replicas"] > 1
    strict = plan(3000.0)
    allowed = [r for r in strict["replicas"] if r["within_latency"]]
    assert strict["vllm"]["instances"] == max(allowed, key=lambda r: r["tokens_per_s"])["replicas"]
    assert all(r["itl_ms"] <= strict["latency_bound_ms"] for r in allowed)


def test_without_fixed_costs_one_instance_is_enough():
    report = plan(0.0, kernel_overhead_us=(0.0, 0.0), latency_factor=100)
    assert len(report["replicas"]) > 1 and report["vllm"]["instances"] == 1
    assert {round(r["tokens_per_s"]) for r in report["replicas"]} == {round(report["replicas"][0]["tokens_per_s"])}


def test_every_plan_is_on_or_behind_the_pareto_frontier():
    report = plan(3000.0)
    frontier = report["pareto"]
    assert all(a["itl_ms"] <= b["itl_ms"] and a["tokens_per_s"] < b["tokens_per_s"] for a, b in zip(frontier, frontier[1:]))
    for row in report["replicas"]:
        assert any(f["tokens_per_s"] >= row["tokens_per_s"] and f["itl_ms"] <= row["itl_ms"] for f in frontier)
