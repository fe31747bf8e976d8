"""Fitting a calibration from a sweep run: recovering known rates, provenance, files, and bad runs."""

import json

import pytest
from advisor_runs import ATTENTION_TRUTH, GPU, LINEAR_TRUTH, PEAKS, attention_points, linear_points, make_run

from gpuprof.advisor import calibration as calibration_lib
from gpuprof.calibrate import calibrate, fastest_points, fit_run
from gpuprof.errors import GpuprofError


@pytest.fixture
def run(tmp_path):
    return make_run(tmp_path / "run")


def test_linear_rates_recovered_within_noise(run):
    fit = fit_run(run)["kernels"]["linear"]
    gbps, tflops, overhead = LINEAR_TRUTH
    assert fit["gbps"] == pytest.approx(gbps, rel=0.03)
    assert fit["tflops"] == pytest.approx(tflops, rel=0.05)
    assert fit["overhead_us"] == pytest.approx(overhead, rel=0.25)
    d = fit["details"]
    assert d["gbps_source"] == d["tflops_source"] == "fitted"
    assert d["memory_bound_points"] > 0 and d["compute_bound_points"] > 0
    assert d["median_rel_err"] < 0.03 and d["points"] == 50
    assert fit["impl"] == "cublas" and d["recorded_bytes_ratio"] == pytest.approx(1.0)


def test_attention_compute_rate_is_not_invented(run):
    fit = fit_run(run)["kernels"]["attention"]
    assert fit["gbps"] == pytest.approx(ATTENTION_TRUTH[0], rel=0.03)
    assert fit["overhead_us"] == pytest.approx(ATTENTION_TRUTH[2], rel=0.25)
    assert fit["tflops"] == PEAKS["bf16_tflops"]
    assert fit["details"]["tflops_source"].startswith("not identifiable (no compute-bound point)")
    assert fit["details"]["compute_bound_points"] == 0 and fit["impl"] == "triton"


def test_fastest_ok_implementation_per_shape():
    points = linear_points()
    best = fastest_points(points, "linear")
    assert len(best) == 50 and {p["status"] for p in best} == {"ok"}
    for p in best:
        same = [q["time_us"] for q in points if q["status"] == "ok" and (q["m"], q["n"], q["k"]) == (p["m"], p["n"], p["k"])]
        assert p["time_us"] == min(same)


def test_exact_model_is_fitted_almost_exactly(tmp_path):
    run = make_run(tmp_path / "run", attention_points(noise=0) + linear_points(noise=0))
    for fit in fit_run(run)["kernels"].values():
        assert fit["details"]["median_rel_err"] < 0.005


def test_files_written_with_provenance(run, tmp_path):
    calibration, written = calibrate(run, root=tmp_path / "traces", step_overhead_us=120.0)
    assert written == [run / "calibration.json", tmp_path / "traces" / "nvidia-h100-80gb-hbm3" / "calibration.json"]
    on_disk = json.loads(written[1].read_text())
    assert on_disk == json.loads(json.dumps(calibration))
    prov = on_disk["provenance"]
    assert prov["run"] == str(run) and prov["gpu"] == GPU and prov["git_commit"] == "abc1234"
    assert prov["run_started_at"] == "2025-01-01T00:00:00+00:00" and prov["created_at"]
    assert on_disk["step_overhead_us"] == 120.0
    loaded = calibration_lib.load(written[1])
    assert loaded.calibrated and loaded.step_overhead_us == 120.0 and str(run) in loaded.source


def test_out_option_replaces_the_traces_copy(run, tmp_path):
    _, written = calibrate(run, out=tmp_path / "mine.json", root=tmp_path / "traces")
    assert written[1] == tmp_path / "mine.json" and not (tmp_path / "traces").exists()


def test_run_without_gpu(tmp_path):
    run = make_run(tmp_path / "cpu-run", gpu=None)
    with pytest.raises(GpuprofError, match="was not measured on a GPU"):
        fit_run(run)


def test_run_with_one_kernel_only(tmp_path):
    run = make_run(tmp_path / "run", linear_points())
    with pytest.raises(GpuprofError, match="has 0 ok attention shapes in bf16; a calibration needs at least 3 of each kernel"):
        fit_run(run)


def test_run_with_two_dtypes_needs_a_choice(tmp_path):
    run = make_run(tmp_path / "run", attention_points() + linear_points() + attention_points("fp16") + linear_points("fp16"))
    with pytest.raises(GpuprofError, match=r"several dtypes \(bf16, fp16\); choose one with --dtype"):
        fit_run(run)
    assert fit_run(run, dtype="fp16")["dtype"] == "fp16"
    with pytest.raises(GpuprofError, match="no ok attention or linear points in fp32"):
        fit_run(run, dtype="fp32")


def test_empty_run(tmp_path):
    run = make_run(tmp_path / "run", [])
    with pytest.raises(GpuprofError, match="no ok attention or linear points"):
        fit_run(run)


def test_not_a_run_directory(tmp_path):
    with pytest.raises(GpuprofError, match="is not a gpuprof run directory"):
        fit_run(tmp_path)


def test_negative_step_overhead(run):
    with pytest.raises(GpuprofError, match="--step-overhead-us must not be negative"):
        fit_run(run, step_overhead_us=-1)


def test_attention_fits_the_decode_step_kernels_not_the_sdpa_baselines(tmp_path):
    # Hand-made run: per shape, triton (paged, page_size 16) at the truth and an SDPA baseline (page_size 0) that
    # is faster. The decode step cannot run SDPA, so the fit must follow triton and say which impls were eligible.
    from advisor_runs import _point
    from gpuprof.advisor.work import attention_work
    points = []
    for batch in (1, 4, 16, 64, 256):
        shape = dict(batch=batch, ctx=2048, hq=32, hkv=32, head_dim=128)
        work = attention_work(batch, 2048, 32, 32, 128, 2)
        t = 6.0 + work.bytes / (2000.0 * 1e3)
        points.append(_point("attention", "triton", "bf16", work, t, page_size=16, **shape))
        points.append(_point("attention", "torch-sdpa-flash", "bf16", work, t / 2, page_size=0, **shape))
    run = make_run(tmp_path / "run", points + linear_points())
    fit = fit_run(run)["kernels"]["attention"]
    assert fit["details"]["points"] == 5 and fit["impl"] == "triton"
    assert fit["gbps"] == pytest.approx(2000.0, rel=0.02)
    assert fit["details"]["eligible_impls"] == ["triton"]
    assert fit_run(run)["kernels"]["linear"]["details"]["eligible_impls"] == ["cublas", "cuda"]


def test_attention_shapes_differing_only_in_page_size_are_one_shape():
    from advisor_runs import _point
    from gpuprof.advisor.work import attention_work
    work = attention_work(8, 1024, 32, 8, 128, 2)
    shape = dict(batch=8, ctx=1024, hq=32, hkv=8, head_dim=128)
    points = [_point("attention", "triton", "bf16", work, 30.0, page_size=16, **shape),
              _point("attention", "cuda", "bf16", work, 20.0, page_size=32, **shape)]
    best = fastest_points(points, "attention")
    assert [p["impl"] for p in best] == ["cuda"]


def test_run_with_only_sdpa_attention_says_what_was_counted(tmp_path):
    points = [dict(p, impl="torch-sdpa-math", page_size=0) for p in attention_points() if p["status"] == "ok"]
    run = make_run(tmp_path / "run", points + linear_points())
    with pytest.raises(GpuprofError, match=r"has 0 ok attention shapes .*counting triton, cuda"):
        fit_run(run)


def test_step_impls_match_the_attention_op():
    from gpuprof.calibrate import STEP_IMPLS
    from gpuprof.ops.attention import IMPLS
    assert STEP_IMPLS["attention"] == IMPLS
