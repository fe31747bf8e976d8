"""The report: analysis (ridge crossing, plateau, composed decode step, evidence), plots, markdown, and errors.

The run used here is SYNTHETIC: times come from a simple roofline model of a made-up GPU (ceilings below), so the
expected findings can be computed independently. It lives in a temporary directory and is never committed.
"""

import json

import pytest
from click.testing import CliRunner

from gpuprof import report
from gpuprof.cli import main
from gpuprof.errors import GpuprofError
from gpuprof.models import get_model
from gpuprof.records import Run, add_work, new_point

# The made-up GPU's ceilings (not a measurement of anything).
PEAKS = {"copy_gbps": 3000.0, "read_gbps": 3100.0, "fp16_tflops": 700.0, "bf16_tflops": 700.0,
         "fp32_tflops": 50.0, "source": "synthetic test data"}
BATCHES = [2**i for i in range(10)]
CTX = 2048
MANIFEST = {"gpu": {"name": "Synthetic GPU (test data)", "sm_count": 100, "memory_bytes": 80 * 2**30,
                    "l2_bytes": 50 * 2**20, "driver": "0", "cuda": "0"},
            "versions": {"python": "3", "torch": "x"}, "git_commit": "abc", "command": "gpuprof sweep",
            "started_at": "2026-01-01T00:00:00+00:00", "peaks": PEAKS, "grid": {},
            "sessions": [{"elapsed_s": 200.0}]}


def attention_efficiency(batch: int) -> float:
    """Fraction of copy bandwidth the synthetic attention reaches: poor at batch 1, 92% from batch 64 on."""
    return min(0.92, 0.3 + 0.1 * batch.bit_length())


def modelled_time_us(nbytes: int, flops: int, bw_eff: float, flop_eff: float = 0.7) -> float:
    return max(nbytes / (PEAKS["copy_gbps"] * bw_eff * 1e3), flops / (PEAKS["bf16_tflops"] * flop_eff * 1e6)) + 4.0


def linear_point(model, lin, batch, impl):
    m, n, k = batch, lin.n, lin.k
    p = new_point(kernel="linear", impl=impl, model=model.name, dtype="bf16", batch=batch, m=m, n=n, k=k,
                  layer=lin.name, count=lin.count, op="gemv", bytes=(m * k + n * k + m * n) * 2, flops=2 * m * n * k)
    if impl == "triton" and batch > 256:
        p.update(status="unsupported", error="triton gemv takes m up to 256.")
        return add_work(p, PEAKS)
    p.update(status="ok", time_us=modelled_time_us(p["bytes"], p["flops"], 0.9 if impl == "triton" else 0.75))
    return add_work(p, PEAKS)


def attention_point(model, batch, impl, counters=False):
    hq, hkv, d = model.heads, model.kv_heads, model.head_dim
    p = new_point(kernel="attention", impl=impl, model=model.name, dtype="bf16", batch=batch, ctx=CTX, hq=hq,
                  hkv=hkv, head_dim=d, page_size=0 if impl.startswith("torch") else 16, count=model.layers,
                  bytes=(2 * batch * hkv * CTX * d + 2 * batch * hq * d) * 2, flops=4 * batch * hq * CTX * d)
    if impl == "torch-sdpa-flash" and batch == 512:
        p.update(status="oom", error="needs 16 GiB of inputs, more than the device has free.")
        return add_work(p, PEAKS)
    eff = attention_efficiency(batch) * (1.0 if impl == "triton" else 0.9)
    p.update(status="ok", time_us=modelled_time_us(p["bytes"], p["flops"], eff))
    add_work(p, PEAKS)
    if counters:
        p["ncu_dram__throughput_avg_pct_of_peak_sustained_elapsed"] = 100 * eff
        p["ncu_sm__throughput_avg_pct_of_peak_sustained_elapsed"] = 12.0
    return p


def write_run(path, models=("llama-2-7b", "opt-1.3b"), counters=False, batches=BATCHES):
    run = Run.create(path, MANIFEST)
    for batch in batches:
        for model in map(get_model, models):
            for lin in model.linears():
                for impl in ("triton", "cublas"):
                    run.append(linear_point(model, lin, batch, impl))
            for impl in ("triton", "torch-sdpa-flash"):
                run.append(attention_point(model, batch, impl, counters))
    return path


@pytest.fixture
def synthetic_run(tmp_path):
    return write_run(tmp_path / "sweep-synthetic")


# --- analysis ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("batches, values, expected", [
    ([1, 2, 4, 8], [1.0, 2.0, 4.0, 4.1], 4),  # doubles, doubles, then +2.5%
    ([1, 2, 4, 8], [1.0, 2.0, 4.0, 8.0], None),  # still growing at the last batch
    ([1, 2, 4, 8], [5.0, 5.1, 5.0, 5.2], 1),  # flat from the start
    ([1, 2, 4, 8], [1.0, 1.01, 2.0, 2.01], 4),  # a late jump restarts the search
    ([1, 4], [1.0, 1.08], 1),  # +8% over two doublings is +3.9% per doubling
    ([1, 4], [1.0, 1.12], None),  # +5.8% per doubling
    ([8], [3.0], None),  # one batch: nothing to compare
])
def test_plateau_batch(batches, values, expected):
    assert report.plateau_batch(batches, values) == expected


def test_growth_per_doubling():
    assert report.growth_per_doubling(1, 1.0, 2, 1.5) == pytest.approx(0.5)
    assert report.growth_per_doubling(2, 1.0, 8, 4.0) == pytest.approx(1.0)


def test_ridge_point_and_crossing():
    assert report.ridge_point(PEAKS, "bf16") == pytest.approx(700e3 / 3000)
    assert report.ridge_point({}, "bf16") is None
    points = [{"batch": b, "intensity": i} for b, i in ((1, 1.0), (64, 60.0), (256, 240.0), (512, 400.0))]
    assert report.ridge_crossing(points, 233.3) == 256
    assert report.ridge_crossing(points, 500.0) is None
    assert report.ridge_crossing(points, None) is None


def test_best_series_keeps_the_fastest_ok_point(synthetic_run):
    data = report.load_run(synthetic_run)
    series = report.best_series(data.points)
    att = series[("llama-2-7b", "bf16", "attention", CTX)]
    assert [p["batch"] for p in att] == BATCHES
    assert all(p["impl"] == "triton" for p in att)  # faster than the modelled SDPA everywhere
    qkv = series[("llama-2-7b", "bf16", "qkv", None)]
    assert [p["impl"] for p in qkv] == ["triton"] * 9 + ["cublas"]  # triton is unsupported at 512
    assert list(series)[0][2] == "attention" and list(series)[1][2] == "qkv"


def test_composed_step_adds_every_kernel_times_its_count(synthetic_run):
    data = report.load_run(synthetic_run)
    steps = {(s.model, s.batch): s for s in report.compose_steps(data, report.best_series(data.points))}
    assert len(steps) == 2 * len(BATCHES)
    model = get_model("opt-1.3b")
    expected_linear = sum(min(linear_point(model, lin, 8, impl)["time_us"] for impl in ("triton", "cublas"))
                          * lin.count for lin in model.linears())
    expected_attention = attention_point(model, 8, "triton")["time_us"] * model.layers
    step = steps[("opt-1.3b", 8)]
    assert step.linear_us == pytest.approx(expected_linear)
    assert step.attention_us == pytest.approx(expected_attention)
    assert step.tokens_per_s == pytest.approx(8 / ((expected_linear + expected_attention) * 1e-6))


def test_a_step_is_composed_only_where_every_kernel_finished(tmp_path):
    path = write_run(tmp_path / "r", models=("opt-1.3b",), batches=[1, 2])
    lines = (path / "points.jsonl").read_text().splitlines()
    keep = [line for line in lines if not ('"layer":"down"' in line and '"batch":2,' in line)]
    (path / "points.jsonl").write_text("\n".join(keep) + "\n")
    data = report.load_run(path)
    assert [s.batch for s in report.compose_steps(data, report.best_series(data.points))] == [1]


def test_findings_and_evidence_on_the_synthetic_run(synthetic_run):
    data = report.load_run(synthetic_run)
    series = report.best_series(data.points)
    ridge = report.ridge_point(PEAKS, "bf16")
    rows = {(r[0], r[2]): r for r in report.findings(data, series, report.compose_steps(data, series))}
    assert rows[("llama-2-7b", f"attention (ctx {CTX})")][4] == "never (up to 512)"
    lin = get_model("llama-2-7b").linears()[0]
    intensity = {b: 2 * b * lin.n * lin.k / ((b * lin.k + lin.n * lin.k + b * lin.n) * 2) for b in BATCHES}
    expected = next(b for b in BATCHES if intensity[b] >= ridge)
    assert rows[("llama-2-7b", "linear qkv")][4] == str(expected)
    # attention's throughput (sequences/s) follows its bandwidth: +12.5% from 16 to 32, then +2.2% and flat
    assert rows[("llama-2-7b", f"attention (ctx {CTX})")][5] == "32"
    assert ("opt-1.3b", f"decode step, ctx {CTX} (composed)") in rows
    evidence = {(r[0], r[2].split(":")[0]): r for r in report.evidence(data, series)}
    dram, compute = [r for r in report.evidence(data, series) if r[0] == "llama-2-7b" and "batch ≥ 256" in r[2]]
    assert float(dram[3].rstrip("%")) == pytest.approx(92.0, abs=0.2) and dram[5] == "yes"
    assert "lowest achieved GB/s, % of measured copy bandwidth" in dram[2]
    assert "highest achieved TFLOP/s" in compute[2] and compute[5] == "yes"
    flat = evidence[("llama-2-7b", f"attention ctx {CTX}")]
    assert flat[5] == "yes" and "apart" in flat[3]
    assert evidence[("llama-2-7b", "linear qkv")][5] == "yes"


def test_counter_columns_are_preferred_and_named(tmp_path):
    data = report.load_run(write_run(tmp_path / "r", models=("opt-1.3b",), counters=True))
    series = report.best_series(data.points)
    rows = [r for r in report.evidence(data, series) if "batch ≥ 256" in r[2]]
    assert "Nsight Compute" in rows[0][2] and "DRAM" in rows[0][2] and rows[0][5] == "yes"
    assert "SM throughput" in rows[1][2] and rows[1][3] == "12.0%" and rows[1][5] == "yes"


# --- files ---------------------------------------------------------------------------------------------------------


def test_report_writes_markdown_and_pngs(synthetic_run):
    made = report.make_report(synthetic_run)
    assert made.markdown == synthetic_run / "report" / "report.md"
    assert [p.name for p in made.images] == ["roofline.png", "utilization.png", "decode_step.png"]
    for image in made.images:
        assert image.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and image.stat().st_size > 20_000
    text = made.markdown.read_text()
    for heading in ("# Sweep report: sweep-synthetic", "## Memory-gap evidence", "## Findings", "## Plots",
                    "## Decode step (composed from measured kernels, not an end-to-end decode)", "## Implementations",
                    "## Points that did not finish ok"):
        assert heading in text
    assert "![roofline.png](roofline.png)" in text and "Synthetic GPU (test data)" in text
    assert "sweep time: 3.3 min" in text and "oom" in text and "triton gemv takes m up to 256." in text


def test_report_without_ceilings_still_plots(tmp_path):
    path = write_run(tmp_path / "r", models=("opt-1.3b",), batches=[1, 2, 4])
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["peaks"] = None
    (path / "manifest.json").write_text(json.dumps(manifest))
    text = report.make_report(path, tmp_path / "out").markdown.read_text()
    assert "no % of peak and no ridge point" in text and "no ceilings" in text


def test_report_mistakes_are_one_sentence(tmp_path):
    with pytest.raises(GpuprofError, match="not a gpuprof run directory"):
        report.make_report(tmp_path)
    run = Run.create(tmp_path / "empty", MANIFEST)
    with pytest.raises(GpuprofError, match="holds no attention or linear points"):
        report.make_report(run.path)
    run.append(new_point(kernel="copy", impl="torch", status="ok", time_us=1.0))
    with pytest.raises(GpuprofError, match="holds no attention or linear points"):
        report.make_report(run.path)
    run.append(new_point(kernel="attention", impl="triton", batch=1, status="oom", error="no room."))
    with pytest.raises(GpuprofError, match="none of the 1 points .* finished ok \\(1 oom\\)"):
        report.make_report(run.path)


def test_cli_report(synthetic_run, tmp_path):
    r = CliRunner().invoke(main, ["report", str(synthetic_run), "--out", str(tmp_path / "rep")])
    assert r.exit_code == 0, r.output
    assert "report.md" in r.output and (tmp_path / "rep" / "decode_step.png").is_file()
    r = CliRunner().invoke(main, ["report", str(tmp_path / "nothing")])
    assert r.exit_code == 1 and "is not a gpuprof run directory" in r.output and "Traceback" not in r.output


def test_non_number_ceilings_are_missing():
    assert report.ridge_point({"bf16_tflops": "fast", "copy_gbps": 3000}, "bf16") is None
    assert report.ridge_point({"bf16_tflops": 700, "copy_gbps": None}, "bf16") is None
    assert report.ridge_point({"bf16_tflops": True, "copy_gbps": 3000}, "bf16") is None
    assert report.ridge_point({"bf16_tflops": float("nan"), "copy_gbps": 3000}, "bf16") is None


def test_foreign_manifest_gpu_and_peaks_give_a_report(tmp_path):
    # A manifest from another tool: a GPU without memory_bytes and ceilings that are not numbers.
    foreign = {**MANIFEST, "gpu": {"name": "Some GPU"}, "peaks": {"copy_gbps": "n/a", "bf16_tflops": "n/a",
                                                                  "source": "someone's notes"}}
    path = write_run(tmp_path / "foreign", models=("llama-2-7b",))
    (path / "manifest.json").write_text(json.dumps(foreign))
    r = CliRunner().invoke(main, ["report", str(path), "--out", str(tmp_path / "rep")])
    assert r.exit_code == 0, r.output
    text = (tmp_path / "rep" / "report.md").read_text()
    assert "- GPU: Some GPU, None SMs, memory unknown" in text and "copy - GB/s" in text


def test_cli_report_of_a_damaged_manifest(synthetic_run):
    (synthetic_run / "manifest.json").write_text("{cut sh")
    r = CliRunner().invoke(main, ["report", str(synthetic_run)])
    assert r.exit_code == 1 and "manifest.json cannot be read as JSON" in r.output and "Traceback" not in r.output
