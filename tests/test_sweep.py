"""The sweep: grid declaration, planning, point-by-point recording, out-of-memory skipping, resume, Ctrl-C, CLI.

The real "attention" and "gemv" ops come from another branch; here fake ops with the same names, shape keys,
implementation names and work formulas are patched into the registry, and run on the CPU at tiny shapes.
"""

import json
import sys

import pytest
import torch
from click.testing import CliRunner

from gpuprof import sweep
from gpuprof.cli import main
from gpuprof.errors import GpuprofError, Unsupported
from gpuprof.harness import TimingOptions
from gpuprof.ops import OPS
from gpuprof.ops.base import Launch, Op, Work, dtype_bytes, torch_dtype
from gpuprof.records import POINT_KEYS, Run

QUICK = TimingOptions(warmup_ms=0, max_time_s=0.01, min_reps=3)

# A tiny model in Hugging Face config.json form (Llama-like: gated MLP, GQA 4:2).
TINY_CONFIG = {"model_type": "llama", "hidden_size": 32, "num_attention_heads": 4, "num_key_value_heads": 2,
               "num_hidden_layers": 3, "intermediate_size": 48, "vocab_size": 80, "hidden_act": "silu",
               "max_position_embeddings": 256, "_name_or_path": "tiny-llama"}


class FakeAttention(Op):
    """Decode attention over a contiguous cache, with the real op's names; 'broken' returns a wrong answer."""

    kernel = "attention"
    impls = ("triton", "cuda", "torch-sdpa-flash", "torch-sdpa-efficient", "torch-sdpa-math")
    shape_keys = ("batch", "ctx", "hq", "hkv", "head_dim", "page_size")
    broken: tuple[str, ...] = ()

    def shape(self, **given):
        if given["head_dim"] % 8:
            raise GpuprofError(f"head_dim {given['head_dim']} is not a multiple of 8.")
        return {k: int(given[k]) for k in self.shape_keys}

    def work(self, shape, dtype):
        b, l, hq, hkv, d = (shape[k] for k in ("batch", "ctx", "hq", "hkv", "head_dim"))
        return Work(bytes=(2 * b * hkv * l * d + 2 * b * hq * d) * dtype_bytes(dtype), flops=4 * b * hq * l * d)

    def input_bytes(self, shape, dtype):
        return self.work(shape, dtype).bytes

    def make_inputs(self, shape, dtype, device, generator):
        b, l, hq, hkv, d = (shape[k] for k in ("batch", "ctx", "hq", "hkv", "head_dim"))
        t = torch_dtype(dtype)
        return {"q": torch.randn(b, hq, d, generator=generator).to(t),
                "k": torch.randn(b, hkv, l, d, generator=generator).to(t),
                "v": torch.randn(b, hkv, l, d, generator=generator).to(t)}

    def launch(self, impl, inputs):
        if impl == "cuda":
            raise Unsupported("cuda attention is not built here.")
        out = torch.empty_like(inputs["q"])

        def run():
            ref = self.reference(inputs).to(out.dtype)
            out.copy_(ref * (1.5 if impl in self.broken else 1.0))
            return out

        return Launch(run=run, out=out)

    def reference(self, inputs):
        q, k, v = (inputs[n].double() for n in ("q", "k", "v"))
        group = q.shape[1] // k.shape[1]
        k, v = k.repeat_interleave(group, 1), v.repeat_interleave(group, 1)
        scores = torch.einsum("bhd,bhld->bhl", q, k) / q.shape[-1] ** 0.5
        return torch.einsum("bhl,bhld->bhd", scores.softmax(-1), v)


class FakeGemv(Op):
    """y = x @ w^T with the real op's implementation names; triton and cuda take m up to 256."""

    kernel = "gemv"
    impls = ("triton", "cuda", "cublas")
    shape_keys = ("m", "n", "k")

    def work(self, shape, dtype):
        m, n, k = shape["m"], shape["n"], shape["k"]
        return Work(bytes=(m * k + n * k + m * n) * dtype_bytes(dtype), flops=2 * m * n * k)

    def input_bytes(self, shape, dtype):
        return self.work(shape, dtype).bytes

    def make_inputs(self, shape, dtype, device, generator):
        t = torch_dtype(dtype)
        return {"x": torch.randn(shape["m"], shape["k"], generator=generator).to(t),
                "w": torch.randn(shape["n"], shape["k"], generator=generator).to(t)}

    def launch(self, impl, inputs):
        x, w = inputs["x"], inputs["w"]
        if impl != "cublas" and x.shape[0] > 256:
            raise Unsupported(f"{impl} gemv takes m up to 256, not {x.shape[0]}.")
        out = torch.empty(x.shape[0], w.shape[0], dtype=x.dtype)
        return Launch(run=lambda: out.copy_(x.float() @ w.float().T), out=out)

    def reference(self, inputs):
        return inputs["x"].double() @ inputs["w"].double().T


@pytest.fixture
def fake_ops(monkeypatch):
    attention, gemv = FakeAttention(), FakeGemv()
    monkeypatch.setitem(OPS, "attention", attention)
    monkeypatch.setitem(OPS, "gemv", gemv)
    return attention, gemv


@pytest.fixture
def tiny_model(tmp_path):
    path = tmp_path / "tiny" / "config.json"
    path.parent.mkdir()
    path.write_text(json.dumps(TINY_CONFIG))
    return str(path)


def invoke(*args):
    return CliRunner().invoke(main, list(args))


# --- the grid ----------------------------------------------------------------------------------------------------


def test_default_grid_has_400_points(fake_ops):
    points = sweep.plan(sweep.make_grid())
    # per model: 10 batches x (5 linear layers x 3 impls + 1 attention x 5 impls)
    assert len(points) == 2 * 10 * (5 * 3 + 5) == 400
    assert sweep.grid_summary(points) == {("llama-2-7b", "linear"): 150, ("llama-2-7b", "attention"): 50,
                                          ("opt-1.3b", "linear"): 150, ("opt-1.3b", "attention"): 50}
    assert len({p.key() for p in points}) == 400
    batches = [p.batch for p in points]
    assert batches == sorted(batches) and batches[0] == 1 and batches[-1] == 512


def test_plan_follows_the_record_conventions(fake_ops):
    grid = sweep.make_grid(models=["llama-3-8b"], batches=[8], ctxs=[1024, 4096], page_size=32)
    points = sweep.plan(grid)
    linear = {p.fields()["layer"]: p for p in points if p.kernel == "linear" and p.impl == "cublas"}
    assert set(linear) == {"qkv", "o", "gate_up", "down", "lm_head"}
    assert linear["qkv"].shape == {"m": 8, "n": 4096 + 2 * 1024, "k": 4096}
    assert linear["qkv"].fields()["count"] == 32 and linear["lm_head"].fields()["count"] == 1
    assert all(p.fields()["batch"] == 8 and p.fields().get("ctx") is None for p in linear.values())
    attention = [p for p in points if p.kernel == "attention"]
    assert len(attention) == 2 * 5
    for p in attention:
        assert p.shape["hq"] == 32 and p.shape["hkv"] == 8 and p.shape["head_dim"] == 128
        assert p.shape["page_size"] == (0 if p.impl.startswith("torch-sdpa") else 32)
        assert p.fields()["count"] == 32


def test_grid_roundtrips_through_the_manifest(fake_ops, tiny_model):
    grid = sweep.make_grid(models=[tiny_model, "opt-1.3b"], batches=[4, 1, 4], impls=["triton", "cublas"])
    again = sweep.Grid.from_manifest(json.loads(json.dumps(grid.to_manifest())))
    assert again == grid and again.batches == (1, 4)
    assert [p.key() for p in sweep.plan(again)] == [p.key() for p in sweep.plan(grid)]


@pytest.mark.parametrize("kwargs, message", [
    ({"models": ["gpt-9"]}, "unknown model 'gpt-9'"),
    ({"kernels": ["softmax"]}, "unknown kernel softmax"),
    ({"impls": ["cutlass"]}, "no swept kernel has an implementation cutlass"),
    ({"impls": ["cublas"]}, "--impl names no implementation of attention"),
    ({"dtypes": ["fp32"]}, "fp16 or bf16, not fp32"),
    ({"batches": [0, 2]}, "--batch takes positive"),
    ({"page_size": -1}, "--page-size"),
    ({"max_time_s": 0}, "--max-time"),
])
def test_grid_mistakes_are_one_sentence(fake_ops, kwargs, message):
    with pytest.raises(GpuprofError, match=message.replace("(", r"\(")):
        sweep.make_grid(**kwargs)


def test_without_the_ops_the_sweep_says_which_is_missing(monkeypatch):
    monkeypatch.delitem(OPS, "attention", raising=False)
    with pytest.raises(GpuprofError, match="unknown kernel 'attention'"):
        sweep.make_grid()


# --- measuring and recording -------------------------------------------------------------------------------------


def _tiny_sweep(tiny_model, tmp_path, **grid_kwargs):
    grid = sweep.make_grid(models=[tiny_model], ctxs=[24], page_size=16, **grid_kwargs)
    run = sweep.new_run(tmp_path / "run", grid, gpu=None, peaks=None, device="cpu", counters=[], command="t")
    return grid, run, sweep.plan(grid)


def test_a_new_sweep_over_an_old_run_suggests_resuming_it(tiny_model, tmp_path):
    grid, run, _ = _tiny_sweep(tiny_model, tmp_path)
    with pytest.raises(GpuprofError, match=f"finish it with `gpuprof sweep --resume {run.path}`"):
        sweep.new_run(run.path, grid, gpu=None, peaks=None, device="cpu", counters=[], command="t")


def test_sweep_on_the_cpu_records_every_point(fake_ops, tiny_model, tmp_path):
    fake_ops[0].broken = ("torch-sdpa-efficient",)
    grid, run, points = _tiny_sweep(tiny_model, tmp_path, batches=[1, 3])
    seen = []
    outcome = sweep.run_sweep(points, run, sweep.Measurer(device="cpu", options=QUICK),
                              on_point=lambda p, r: seen.append(r["status"]))
    records = run.points()
    assert len(records) == len(points) == 2 * (5 * 3 + 5) and len(seen) == len(points)
    assert outcome.measured == len(points) and outcome.already_done == 0 and outcome.elapsed_s > 0
    assert all(set(POINT_KEYS) <= set(r) for r in records)
    by = {(r["kernel"], r.get("layer"), r["impl"], r["batch"]): r for r in records}
    qkv = by[("linear", "qkv", "cublas", 3)]
    assert qkv["status"] == "ok" and qkv["m"] == 3 and qkv["n"] == 32 + 2 * 16 and qkv["k"] == 32
    assert qkv["count"] == 3 and qkv["op"] == "gemv" and qkv["model"] == "tiny-llama" and qkv["time_us"] > 0
    assert qkv["bytes"] == (3 * 32 + 64 * 32 + 3 * 64) * 2
    assert qkv["intensity"] == pytest.approx(qkv["flops"] / qkv["bytes"])
    att = by[("attention", None, "triton", 3)]
    assert att["status"] == "ok" and att["ctx"] == 24 and att["hq"] == 4 and att["hkv"] == 2 and att["page_size"] == 16
    assert att["count"] == 3 and att["max_rel_err"] < 1e-2
    assert by[("attention", None, "cuda", 1)]["status"] == "unsupported"
    broken = by[("attention", None, "torch-sdpa-efficient", 1)]
    assert broken["status"] == "error" and "relative error" in broken["error"]


def test_an_op_rejecting_the_models_shape_is_recorded_unsupported(fake_ops, tmp_path):
    odd = dict(TINY_CONFIG, hidden_size=20, num_attention_heads=4, num_key_value_heads=4)  # head_dim 5
    path = tmp_path / "odd.json"
    path.write_text(json.dumps(odd))
    grid, run, points = _tiny_sweep(str(path), tmp_path, batches=[1], kernels=["attention"], impls=["triton"])
    sweep.run_sweep(points, run, sweep.Measurer(device="cpu", options=QUICK))
    (record,) = run.points()
    assert record["status"] == "unsupported" and "head_dim 5" in record["error"] and record["bytes"] > 0


def test_an_unforeseen_failure_is_recorded_and_the_sweep_goes_on(fake_ops, tiny_model, tmp_path, monkeypatch):
    def explode(*args):
        raise TypeError("unsupported operand type(s)\nmore detail")

    monkeypatch.setattr(fake_ops[0], "make_inputs", explode)
    grid, run, points = _tiny_sweep(tiny_model, tmp_path, batches=[1], impls=["triton", "cublas"])
    outcome = sweep.run_sweep(points, run, sweep.Measurer(device="cpu", options=QUICK))
    assert outcome.statuses == {"ok": 10, "error": 1}
    (att,) = [r for r in run.points() if r["kernel"] == "attention"]
    assert att["error"] == "TypeError: unsupported operand type(s)" and att["bytes"] > 0


def test_larger_batches_after_an_oom_are_not_attempted(fake_ops, tiny_model, tmp_path):
    grid, run, points = _tiny_sweep(tiny_model, tmp_path, batches=[1, 2, 4, 8], kernels=["attention"],
                                    impls=["triton", "torch-sdpa-math"])
    measured = []

    def measure(p):
        measured.append((p.impl, p.batch))
        status = "oom" if p.impl == "triton" and p.batch >= 2 else "ok"
        return sweep.not_measured(p, status, "out of device memory." if status == "oom" else None)

    outcome = sweep.run_sweep(points, run, measure)
    assert ("triton", 2) in measured and ("triton", 4) not in measured and ("torch-sdpa-math", 8) in measured
    records = {(r["impl"], r["batch"]): r for r in run.points()}
    assert records[("triton", 8)]["status"] == "oom" and "batch 2" in records[("triton", 8)]["error"]
    assert records[("triton", 8)]["bytes"] == FakeAttention().work(points[-2].shape, "bf16").bytes
    assert outcome.statuses == {"ok": 5, "oom": 3}


def test_an_interrupted_sweep_keeps_its_points_and_resumes(fake_ops, tiny_model, tmp_path):
    grid, run, points = _tiny_sweep(tiny_model, tmp_path, batches=[1, 2], impls=["triton", "cublas"])
    calls = []

    def measure_then_interrupt(p):
        if len(calls) == 5:
            raise KeyboardInterrupt
        calls.append(p.key())
        return sweep.Measurer(device="cpu", options=QUICK)(p)

    with pytest.raises(KeyboardInterrupt):
        sweep.run_sweep(points, run, measure_then_interrupt)
    assert len(run.points()) == 5
    with open(run.points_path, "a") as f:
        f.write('{"kernel": "linear", "impl"')  # a line cut short by the interruption
    outcome = sweep.run_sweep(points, Run.open(run.path), sweep.Measurer(device="cpu", options=QUICK))
    assert outcome.already_done == 5 and outcome.measured == len(points) - 5
    keys = [tuple(r.get(k) for k in sweep.KEY_FIELDS) for r in run.points()]
    assert sorted(keys, key=str) == sorted((p.key() for p in points), key=str)


def test_counters_are_asked_for_lazily(monkeypatch):
    assert sweep.make_counter_collectors([]) == []
    with pytest.raises(GpuprofError, match="unknown counters perf"):
        sweep.make_counter_collectors(["perf"])
    monkeypatch.setitem(sys.modules, "gpuprof.counters", None)  # as in a build without gpuprof.counters
    with pytest.raises(GpuprofError, match="counters are not available"):
        sweep.make_counter_collectors(["nvml"])


def test_counter_collectors_reach_the_records(fake_ops, tiny_model, tmp_path, monkeypatch):
    class FakeCounters:
        def start(self, point):
            self.started = True

        def stop(self, point):
            return {"nvml_dram_util_pct": 91.0}

    module = type(sys)("gpuprof.counters")
    module.make_collectors = lambda names: [FakeCounters() for _ in names]
    monkeypatch.setitem(sys.modules, "gpuprof.counters", module)
    grid, run, points = _tiny_sweep(tiny_model, tmp_path, batches=[1], kernels=["attention"], impls=["triton"])
    measurer = sweep.Measurer(device="cpu", options=QUICK, collectors=sweep.make_counter_collectors(["nvml"]))
    sweep.run_sweep(points, run, measurer)
    assert run.points()[0]["nvml_dram_util_pct"] == 91.0


# --- the command -------------------------------------------------------------------------------------------------


def test_cli_dry_run_needs_no_gpu(fake_ops, monkeypatch):
    monkeypatch.setattr("gpuprof.device.cuda_available", lambda: False)
    r = invoke("sweep", "--dry-run")
    assert r.exit_code == 0, r.output
    assert "400 points" in r.output and "llama-2-7b: largest input set" in r.output


def test_cli_sweep_on_cpu_then_resume(fake_ops, tiny_model, tmp_path, monkeypatch):
    out = tmp_path / "run"
    monkeypatch.setattr("sys.argv", ["gpuprof", "sweep"])
    r = invoke("sweep", "--model", tiny_model, "--batch", "1,2", "--ctx", "16", "--impl", "triton,cublas",
               "--max-time", "0.01", "--device", "cpu", "--out", str(out))
    assert r.exit_code == 0, r.output
    assert "measured 22 points (22 ok)" in r.output and f"gpuprof report {out}" in r.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["grid"]["batches"] == [1, 2] and manifest["grid"]["device"] == "cpu"
    assert manifest["grid"]["models"]["tiny-llama"]["layers"] == 3 and manifest["peaks"] is None
    assert manifest["sessions"][0]["measured"] == 22 and not manifest["sessions"][0]["interrupted"]
    r = invoke("sweep", "--resume", str(out))
    assert r.exit_code == 0 and "measured 0 points" in r.output and "22 were already done" in r.output
    assert len(json.loads((out / "manifest.json").read_text())["sessions"]) == 2


def test_cli_ctrl_c_keeps_finished_points(fake_ops, tiny_model, tmp_path, monkeypatch):
    out = tmp_path / "run"
    real = sweep.Measurer.__call__
    calls = []

    def interrupt_third(self, p):
        calls.append(p)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(self, p)

    monkeypatch.setattr(sweep.Measurer, "__call__", interrupt_third)
    r = invoke("sweep", "--model", tiny_model, "--batch", "1,2", "--ctx", "16", "--max-time", "0.01",
               "--device", "cpu", "--out", str(out))
    assert r.exit_code == 130
    assert "interrupted: 2 finished points kept" in r.output and f"--resume {out}" in r.output
    assert len((out / "points.jsonl").read_text().splitlines()) == 2
    session = json.loads((out / "manifest.json").read_text())["sessions"][0]
    assert session["interrupted"] and session["measured"] == 2


@pytest.mark.parametrize("args, message", [
    (("--model", "gpt-9", "--dry-run"), "unknown model 'gpt-9'"),
    (("--batch", "1,x", "--dry-run"), "--batch takes whole numbers"),
    (("--ctx", "-4", "--dry-run"), "--ctx takes"),
    (("--device", "cpu"), "--device cpu needs --out"),
    (("--counters", "nvml,perf", "--device", "cpu"), "unknown counters perf"),
    (("--resume", "nowhere"), "nowhere is not a gpuprof run directory"),
])
def test_cli_mistakes_are_one_sentence(fake_ops, args, message):
    r = invoke("sweep", *args)
    assert r.exit_code == 1, r.output
    assert message in r.output and "Traceback" not in r.output and r.output.count("\n") == 1


def test_cli_resume_refuses_grid_options(fake_ops, tmp_path):
    r = invoke("sweep", "--resume", str(tmp_path), "--batch", "4")
    assert r.exit_code == 1 and "drop --batch" in r.output


def test_cli_needs_a_gpu(fake_ops, monkeypatch):
    monkeypatch.setattr("gpuprof.device.cuda_available", lambda: False)
    r = invoke("sweep")
    assert r.exit_code == 1 and "gpuprof sweep needs an NVIDIA GPU" in r.output


@pytest.mark.gpu
def test_gpu_sweep_of_the_real_ops(tmp_path):
    """On a GPU, with the real ops: every point of a small Llama-2-7B grid is checked, timed and recorded."""
    from gpuprof import peaks as peaks_lib
    from gpuprof.device import info

    if "attention" not in OPS or "gemv" not in OPS:
        pytest.skip("the attention and gemv ops are not in this build")
    gpu = info()
    peaks = peaks_lib.load(gpu.name)
    grid = sweep.make_grid(models=["llama-2-7b"], batches=[1, 64], ctxs=[512])
    run = sweep.new_run(tmp_path / "run", grid, gpu=gpu, peaks=peaks, device="cuda", counters=[], command="t")
    points = sweep.plan(grid)
    measurer = sweep.Measurer(device="cuda", peaks=peaks, options=TimingOptions(max_time_s=0.05),
                              l2_bytes=gpu.l2_bytes)
    sweep.run_sweep(points, run, measurer)
    records = run.points()
    assert len(records) == len(points)
    for r in records:
        if r["impl"] in ("triton", "cublas"):
            assert r["status"] == "ok", r["error"]
            assert r["gbps"] > 0 and r["pct_copy_bw"] > 0 and r["max_rel_err"] <= 1e-2


def test_a_cpu_sweep_makes_a_report(fake_ops, tiny_model, tmp_path):
    """sweep -> report end to end (a CPU run has no ceilings: the report says so and still plots)."""
    from gpuprof import report

    grid, run, points = _tiny_sweep(tiny_model, tmp_path, batches=[1, 2, 4], impls=["triton", "cublas"])
    sweep.run_sweep(points, run, sweep.Measurer(device="cpu", options=QUICK))
    made = report.make_report(run.path)
    assert len(made.images) == 3 and "tiny-llama" in made.markdown.read_text()


def test_cli_resume_on_another_gpu_is_refused(fake_ops, tiny_model, tmp_path, monkeypatch):
    from gpuprof.cli import sweep as sweep_cli
    from gpuprof.device import GPUInfo

    out = tmp_path / "run"
    monkeypatch.setattr("sys.argv", ["gpuprof", "sweep"])
    r = invoke("sweep", "--model", tiny_model, "--batch", "1", "--ctx", "16", "--kernel", "attention", "--impl",
               "triton", "--max-time", "0.01", "--device", "cpu", "--out", str(out))
    assert r.exit_code == 0, r.output
    # Make it a run started on an H100, then resume on a machine whose GPU is an A100.
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["gpu"] = {"name": "NVIDIA H100 80GB HBM3"}
    manifest["grid"]["device"] = "cuda"
    (out / "manifest.json").write_text(json.dumps(manifest))
    a100 = GPUInfo(name="NVIDIA A100-SXM4-80GB", sm_count=108, memory_bytes=80 << 30, l2_bytes=40 << 20,
                   driver=None, cuda=None, compute_capability="8.0")
    monkeypatch.setattr(sweep_cli, "require_gpu", lambda what: None)
    monkeypatch.setattr(sweep_cli, "info", lambda: a100)
    r = invoke("sweep", "--resume", str(out))
    assert r.exit_code == 1 and "Traceback" not in r.output and r.output.count("\n") == 1
    assert "was measured on NVIDIA H100 80GB HBM3 and this machine runs it on NVIDIA A100-SXM4-80GB" in r.output
    assert len(run_points(out)) == 1  # nothing was added


def run_points(path):
    return [json.loads(line) for line in (path / "points.jsonl").read_text().splitlines()]


def test_require_same_gpu():
    from gpuprof.cli.sweep import require_same_gpu
    from gpuprof.device import GPUInfo

    h100 = GPUInfo(name="NVIDIA H100 80GB HBM3", sm_count=132, memory_bytes=80 << 30, l2_bytes=50 << 20,
                   driver=None, cuda=None, compute_capability="9.0")
    require_same_gpu({"gpu": {"name": "NVIDIA H100 80GB HBM3"}}, h100, "run")
    require_same_gpu({"gpu": None}, None, "run")  # a CPU run resumed on the CPU
    with pytest.raises(GpuprofError, match="run was measured on the CPU and this machine runs it on NVIDIA H100"):
        require_same_gpu({"gpu": None}, h100, "run")
    with pytest.raises(GpuprofError, match="measured on NVIDIA H100 80GB HBM3 and this machine runs it on the CPU"):
        require_same_gpu({"gpu": {"name": "NVIDIA H100 80GB HBM3"}}, None, "run")


def test_cli_resume_of_a_run_without_a_grid(fake_ops, tmp_path):
    (tmp_path / "manifest.json").write_text(json.dumps({"gpu": None, "peaks": None}))
    r = invoke("sweep", "--resume", str(tmp_path))
    assert r.exit_code == 1 and "Traceback" not in r.output and r.output.count("\n") == 1
    assert "was not made by `gpuprof sweep` (its manifest has no sweep grid)" in r.output


@pytest.mark.parametrize("value", ["nan", "inf", "-1"])
def test_cli_max_time_must_be_a_positive_finite_number(fake_ops, value):
    r = invoke("sweep", "--max-time", value, "--dry-run")
    assert r.exit_code == 1 and "--max-time takes a positive number of seconds" in r.output
    assert "nan min" not in r.output and "inf min" not in r.output
