"""`gpuprof validate`: error arithmetic, contexts, calibration resolution, JSON output and every bad input.

Decode runs here are synthetic (hand-made records in the decode record format, or a tiny model decoded on the CPU)
and written under tmp_path only: traces/ holds real GPU measurements. Measurements are built from the advisor's
own prediction times a known factor, so each error has an exact expected value (to 1e-9 relative).
"""

import json

import pytest
from click.testing import CliRunner

from gpuprof.advisor.calibration import FORMAT as CALIBRATION_FORMAT
from gpuprof.advisor.calibration import UNCALIBRATED, datasheet_roofline, load
from gpuprof.advisor.model import predict_step
from gpuprof.cli import main
from gpuprof.device import gpu_slug
from gpuprof.errors import GpuprofError
from gpuprof.models import get_model
from gpuprof.ops.base import dtype_bytes
from gpuprof.records import Run, new_point
from gpuprof.validate import error_pct, loop_context, read_decode_run, summarize, timed_context, validate

H100 = "NVIDIA H100 80GB HBM3"
A100 = "NVIDIA A100-SXM4-80GB"
# A slow attention makes the context matter: predicting at the wrong context moves the error by whole percents.
ATTENTION = {"gbps": 500.0, "tflops": 400.0, "overhead_us": 8.0}
LINEAR = {"gbps": 2800.0, "tflops": 600.0, "overhead_us": 5.0}


@pytest.fixture(autouse=True)
def isolated(monkeypatch, tmp_path):
    """A working folder without traces/, so nothing measured elsewhere is picked up."""
    monkeypatch.chdir(tmp_path)


def invoke(*args):
    return CliRunner().invoke(main, ["validate", *map(str, args)])


def write_calibration(path, gpu=H100, dtype="bf16", step_overhead_us=0.0):
    """A synthetic calibration.json in the format `gpuprof calibrate` writes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    kernels = {"attention": {**ATTENTION, "impl": "triton", "details": {}},
               "linear": {**LINEAR, "impl": "cublas", "details": {}}}
    path.write_text(json.dumps({
        "format": CALIBRATION_FORMAT, "dtype": dtype, "kernels": kernels, "step_overhead_us": step_overhead_us,
        "provenance": {"run": "synthetic sweep", "gpu": gpu, "git_commit": "abc1234",
                       "run_started_at": "2025-01-01T00:00:00+00:00"}}))
    return path


def decode_point(batch, tokens_per_s, ctx=1024, dtype="bf16", model="llama-2-7b", status="ok", loop_steps=0,
                 loop_tokens_per_s=None):
    """One record as `gpuprof decode` writes it (kernel decode_step), with only the fields validation reads."""
    ok = status == "ok"
    return new_point(kernel="decode_step", impl="gpuprof", model=model, dtype=dtype, batch=batch, ctx=ctx,
                     status=status, error=None if ok else "synthetic failure.",
                     tokens_per_s=tokens_per_s if ok else None, step_ms=batch / tokens_per_s * 1e3 if ok else None,
                     loop_steps=loop_steps or None, loop_tokens_per_s=loop_tokens_per_s)


def make_decode_run(path, points, gpu=H100, model="llama-2-7b", ctx=1024, steps=32, dtype="bf16"):
    """A synthetic decode run; `model` is recorded as gpuprof decode does (its shapes) unless given as a dict."""
    grid_model = get_model(model).to_dict() if isinstance(model, str) else model
    manifest = {"gpu": {"name": gpu, "sm_count": 132, "memory_bytes": 80 << 30, "l2_bytes": 50 << 20,
                        "driver": "test", "cuda": "test"} if gpu else None,
                "versions": {}, "git_commit": "def5678", "command": "gpuprof decode (synthetic test run)",
                "started_at": "2025-01-02T00:00:00+00:00", "peaks": None,
                "grid": {"model": grid_model, "batches": [p["batch"] for p in points], "ctx": ctx, "steps": steps,
                         "dtype": dtype, "impl": "gpuprof"}}
    run = Run.create(path, manifest)
    for p in points:
        run.append(p)
    return path


def predicted(model, calibration, batch, context, dtype="bf16"):
    return predict_step(get_model(model), calibration, batch, context, dtype_bytes(dtype)).tokens_per_s


def test_error_arithmetic():
    assert error_pct(110.0, 100.0) == pytest.approx(10.0)
    assert error_pct(90.0, 100.0) == pytest.approx(-10.0)
    assert error_pct(300.0, 200.0) == pytest.approx(50.0)


def test_contexts_of_the_timed_step_and_the_loop():
    point = decode_point(8, 100.0, ctx=1000, loop_steps=33, loop_tokens_per_s=90.0)
    assert timed_context(point) == 1000  # replays leave the lengths alone: --steps does not move it
    assert loop_context(point) == 1016  # lengths 1000 .. 1032
    assert loop_context(decode_point(8, 100.0, ctx=1000)) is None  # --steps 0: no loop ran


def test_decode_keeps_the_contexts_validation_assumes():
    """The timed step leaves the lengths at ctx; the greedy loop advances them one per step (gpuprof.decode)."""
    from gpuprof.decode import TorchBackend, build_decoder, prepare_batch

    shape = get_model("qwen2.5-0.5b")
    tiny = type(shape)(**{**shape.to_dict(), "name": "tiny", "layers": 1, "hidden": 32, "heads": 2, "kv_heads": 1,
                          "head_dim": 16, "intermediate": 48, "vocab": 31})
    prepared = prepare_batch(build_decoder(tiny, "fp32", "cpu", TorchBackend()), 2, ctx=12, reserve=5)
    for _ in range(3):
        prepared.step()
    assert prepared.cache.seq_lens.tolist() == [12, 12]
    for _ in range(5):
        prepared.advance(prepared.step())
    assert prepared.cache.seq_lens.tolist() == [17, 17]  # the loop's steps ran at lengths 12 .. 16


# (batch, predicted / measured): the error in % is (factor - 1) x 100. Batch 512 is outside the judged 1..256.
FACTORS = [(1, 1.05), (8, 0.92), (64, 1.12), (256, 0.97), (512, 2.0)]


@pytest.mark.parametrize("model", ["opt-1.3b", "llama-2-7b", "qwen2.5-1.5b"])
@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
def test_rows_and_verdict_against_known_errors(tmp_path, model, dtype):
    calibration_file = write_calibration(tmp_path / "calibration.json", dtype=dtype)
    calibration = load(calibration_file)
    ctx, steps = 1024, 64
    points = [decode_point(b, predicted(model, calibration, b, ctx, dtype) / f, ctx, dtype, model, loop_steps=steps,
                           loop_tokens_per_s=predicted(model, calibration, b, ctx + (steps - 1) / 2, dtype))
              for b, f in FACTORS]
    points.insert(2, decode_point(128, None, ctx, dtype, model, status="oom"))
    run = make_decode_run(tmp_path / "run", points, model=model, ctx=ctx, steps=steps, dtype=dtype)

    report = validate([run], calibration_file, tolerance_pct=10.0)
    (doc,) = report["runs"]
    rows = {r["batch"]: r for r in doc["rows"]}
    assert list(rows) == [1, 8, 64, 256, 512]
    for batch, factor in FACTORS:
        assert rows[batch]["error_pct"] == pytest.approx(100 * (factor - 1), rel=1e-9)
        assert rows[batch]["context"] == ctx
        assert rows[batch]["loop_error_pct"] == pytest.approx(0.0, abs=1e-9)
        assert rows[batch]["within_tolerance"] == (abs(factor - 1) <= 0.10)
    assert rows[512]["judged"] is False and all(rows[b]["judged"] for b in (1, 8, 64, 256))
    assert doc["not_measured"] == [{"batch": 128, "status": "oom", "error": "synthetic failure."}]
    assert doc["summary"]["worst_batch"] == 64 and doc["summary"]["max_abs_error_pct"] == pytest.approx(12.0)
    assert doc["summary"]["meets_tolerance"] is False and report["meets_tolerance"] is False
    # A wider tolerance passes: batch 512's 100% error is shown but not judged.
    assert validate([run], calibration_file, tolerance_pct=15.0)["meets_tolerance"] is True


def test_summary_without_judged_batches():
    summary = summarize([{"batch": 512, "error_pct": 3.0, "judged": False}], 10.0)
    assert summary["meets_tolerance"] is None and "nothing to judge" in summary["verdict"]


def test_cpu_decode_run_end_to_end(tmp_path):
    """A tiny model decoded on the CPU by `gpuprof decode`, then validated against H100 predictions (a check)."""
    config = tmp_path / "config.json"
    config.write_text(json.dumps({
        "model_type": "llama", "hidden_size": 64, "num_attention_heads": 4, "num_key_value_heads": 2,
        "num_hidden_layers": 2, "intermediate_size": 96, "vocab_size": 97, "max_position_embeddings": 256,
        "hidden_act": "silu", "_name_or_path": "tiny-llama"}))
    run = tmp_path / "decode"
    decoded = CliRunner().invoke(main, ["decode", "--model", str(config), "--device", "cpu", "--impl", "torch",
                                        "--batch", "1,2", "--ctx", "8", "--steps", "3", "--max-time", "0.02",
                                        "--out", str(run)])
    assert decoded.exit_code == 0, decoded.output

    refused = invoke(run)
    assert refused.exit_code == 1 and "measured on the CPU" in refused.output and "Traceback" not in refused.output

    r = invoke(run, "--gpu", H100, "--json")
    assert r.exit_code == 0, r.output
    report = json.loads(r.output)
    (doc,) = report["runs"]
    assert doc == json.loads((run / "validation.json").read_text())
    assert report["decode_runs"] == [str(run)] and doc["model"] == "tiny-llama" and doc["measured_on"] is None
    assert doc["calibration"]["source"] == UNCALIBRATED and doc["provenance"]["calibration_source"] == UNCALIBRATED
    manifest = json.loads((run / "manifest.json").read_text())
    assert doc["provenance"]["decode_git_commit"] == manifest["git_commit"]
    assert any("measured on the CPU" in n for n in doc["notes"])
    points = {p["batch"]: p for p in Run.open(run).points()}
    calibration = datasheet_roofline(H100, "bf16")
    for row in doc["rows"]:
        measured = points[row["batch"]]["tokens_per_s"]
        shape = get_model(str(config))
        guess = predict_step(shape, calibration, row["batch"], 8, 2).tokens_per_s
        assert row["measured_tokens_per_s"] == measured and row["predicted_tokens_per_s"] == pytest.approx(guess)
        assert row["loop_context"] == 9  # lengths 8, 9, 10

    table = invoke(run, "--gpu", H100)
    assert table.exit_code == 0 and "tiny-llama" in table.output and "NOT within ±10%" in table.output


def test_calibration_resolved_as_advise_does(tmp_path):
    points = [decode_point(b, 1000.0 * b) for b in (1, 16)]
    run = make_decode_run(tmp_path / "run", points)

    (doc,) = validate([run])["runs"]  # nothing measured: the datasheet roofline, labelled
    assert doc["calibration"]["source"] == UNCALIBRATED and doc["calibration"]["calibrated"] is False

    default = write_calibration(tmp_path / "traces" / gpu_slug(H100) / "calibration.json")
    (doc,) = validate([run])["runs"]  # traces/<gpu-slug>/calibration.json of the run's GPU
    assert doc["calibration"]["calibrated"] and default == tmp_path / doc["calibration"]["provenance"]["file"]

    explicit = write_calibration(tmp_path / "elsewhere.json", step_overhead_us=50.0)
    (doc,) = validate([run], explicit)["runs"]  # --calibration wins
    assert doc["calibration"]["provenance"]["file"] == str(explicit) and doc["calibration"]["step_overhead_us"] == 50


def test_step_overhead_adds_to_every_predicted_step(tmp_path):
    run = make_decode_run(tmp_path / "run", [decode_point(b, 1000.0 * b) for b in (1, 64)])
    calibration = write_calibration(tmp_path / "calibration.json")
    base = validate([run], calibration)["runs"][0]["rows"]
    more = validate([run], calibration, step_overhead_us=250.0)["runs"][0]["rows"]
    for a, b in zip(base, more):
        assert b["predicted_step_ms"] - a["predicted_step_ms"] == pytest.approx(0.25)


def test_calibration_of_another_gpu_refused_unless_asked_for(tmp_path):
    run = make_decode_run(tmp_path / "run", [decode_point(1, 100.0)])
    a100 = write_calibration(tmp_path / "a100.json", gpu=A100)
    r = invoke(run, "--calibration", a100)
    assert r.exit_code == 1 and f"was measured on {A100}, not on {H100}" in r.output
    ok = invoke(run, "--calibration", a100, "--gpu", A100, "--json")
    assert ok.exit_code == 0, ok.output
    (doc,) = json.loads(ok.output)["runs"]
    assert doc["predicted_for"] == A100 and doc["measured_on"] == H100
    assert any("the errors compare two GPUs" in n for n in doc["notes"])


def test_runs_are_all_checked_before_anything_is_written(tmp_path):
    good = make_decode_run(tmp_path / "good", [decode_point(1, 100.0)])
    bad = make_decode_run(tmp_path / "bad", [decode_point(1, 100.0)], gpu="Some Unknown GPU")
    with pytest.raises(GpuprofError, match="no datasheet entry"):
        validate([good, bad])
    assert not (good / "validation.json").exists()


def test_several_runs(tmp_path):
    runs = [make_decode_run(tmp_path / m, [decode_point(1, 100.0, model=m)], model=m)
            for m in ("opt-1.3b", "qwen2.5-1.5b")]
    r = invoke(*runs, "--tolerance", "1e9")
    assert r.exit_code == 0, r.output
    assert "every run within" in r.output and all((run / "validation.json").is_file() for run in runs)


def set_grid_model(run, model):
    """Record only a name (or nothing) as the run's model, as a hand-made run might."""
    manifest = json.loads((run / "manifest.json").read_text())
    manifest["grid"]["model"] = model
    (run / "manifest.json").write_text(json.dumps(manifest))
    return run


def sweep_run(path):
    run = Run.create(path, {"gpu": {"name": H100}, "versions": {}, "git_commit": None, "command": "gpuprof sweep",
                            "started_at": "2025-01-01T00:00:00+00:00", "peaks": None, "grid": {}})
    run.append(new_point(kernel="attention", impl="triton", dtype="bf16", batch=1, ctx=1024, status="ok",
                         time_us=10.0))
    return path


BAD_INPUTS = {
    "not a run": (lambda p: p.mkdir() or p, [], "is not a gpuprof run directory"),
    "a sweep run": (sweep_run, [], "is not a gpuprof decode run"),
    "no ok points": (lambda p: make_decode_run(p, [decode_point(1, None, status="oom"),
                                                   decode_point(2, None, status="error")]),
                     [], "holds no ok decode_step points (1 oom, 1 error)"),
    "unknown model": (lambda p: set_grid_model(make_decode_run(p, [decode_point(1, 100.0, model="gpt-9")]), None),
                      [], "decoded model 'gpt-9', which is no gpuprof preset"),
    "malformed model": (lambda p: make_decode_run(p, [decode_point(1, 100.0)], model={"name": "x", "layers": 2}),
                        [], "is not a gpuprof model shape"),
    "cpu run": (lambda p: make_decode_run(p, [decode_point(1, 100.0)], gpu=None), [], "measured on the CPU"),
    "tolerance": (lambda p: make_decode_run(p, [decode_point(1, 100.0)]), ["--tolerance", "0"],
                  "--tolerance must be a positive percentage"),
    "mixed dtypes": (lambda p: make_decode_run(p, [decode_point(1, 100.0), decode_point(2, 200.0, dtype="fp16")]),
                     [], "mixes dtypes (bf16, fp16)"),
    "calibration dtype": (lambda p: make_decode_run(p, [decode_point(1, 100.0, dtype="fp16")], dtype="fp16"),
                          ["--calibration", "CALIBRATION"], "was fitted in bf16"),
    "missing calibration": (lambda p: make_decode_run(p, [decode_point(1, 100.0)]),
                            ["--calibration", "nowhere.json"], "no calibration file at nowhere.json"),
    "negative step overhead": (lambda p: make_decode_run(p, [decode_point(1, 100.0)]),
                               ["--step-overhead-us", "-1"], "must not be negative"),
}


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_input_is_one_sentence(tmp_path, case):
    make, extra, message = BAD_INPUTS[case]
    run = make(tmp_path / "run")
    calibration = write_calibration(tmp_path / "calibration.json")
    r = invoke(run, *[str(calibration) if a == "CALIBRATION" else a for a in extra])
    assert r.exit_code == 1, r.output
    assert message in r.output and "Traceback" not in r.output
    assert len(r.output.strip().splitlines()) == 1


def test_run_without_decode_shapes_uses_its_preset(tmp_path):
    by_point = set_grid_model(make_decode_run(tmp_path / "a", [decode_point(1, 100.0, model="opt-1.3b")]), None)
    assert read_decode_run(by_point).model == get_model("opt-1.3b")
    by_name = set_grid_model(make_decode_run(tmp_path / "b", [decode_point(1, 100.0)]), "facebook/opt-1.3b")
    assert read_decode_run(by_name).model == get_model("opt-1.3b")


@pytest.mark.gpu
def test_datasheet_roofline_bounds_a_real_decode(tmp_path):
    """On a GPU: the datasheet roofline's time is a lower bound, so it must over-predict every measured step.

    OPT-1.3B streams 2.6 GB of weights per step, 50x an H100's L2, so no step can beat DRAM bandwidth; a byte
    count that is too high (a tied embedding counted twice, say) or a context too long would break the bound.
    """
    from gpuprof.device import datasheet_for, info

    gpu = info()
    if datasheet_for(gpu.name) is None:
        pytest.skip(f"gpuprof has no datasheet entry for {gpu.name}")
    run = tmp_path / "decode-opt-1.3b"
    decoded = CliRunner().invoke(main, ["decode", "--model", "opt-1.3b", "--batch", "1,16,64", "--ctx", "512",
                                        "--steps", "4", "--max-time", "0.5", "--out", str(run)])
    assert decoded.exit_code == 0, decoded.output
    r = invoke(run, "--json")
    assert r.exit_code == 0, r.output
    (doc,) = json.loads(r.output)["runs"]
    assert doc["measured_on"] == gpu.name and doc["calibration"]["source"] == UNCALIBRATED
    assert [row["batch"] for row in doc["rows"]] == [1, 16, 64]
    for row in doc["rows"]:
        assert row["error_pct"] > 0, row
