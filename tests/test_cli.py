import json

import pytest
from click.testing import CliRunner

from gpuprof import device
from gpuprof.cli import main


@pytest.fixture
def no_gpu(monkeypatch):
    monkeypatch.setattr(device, "cuda_available", lambda: False)


def invoke(*args):
    return CliRunner().invoke(main, list(args))


def test_help_lists_commands():
    r = invoke("--help")
    assert r.exit_code == 0
    for name in ("info", "peaks", "bench"):
        assert name in r.output


def test_info_without_gpu(no_gpu):
    r = invoke("info")
    assert r.exit_code == 0
    assert "none visible" in r.output and "torch" in r.output


def test_info_json_without_gpu(no_gpu):
    r = invoke("info", "--json")
    data = json.loads(r.output)
    assert data["gpu"] is None and data["versions"]["torch"]


@pytest.mark.parametrize("args", [("peaks",), ("bench", "copy", "--n", "10")])
def test_gpu_commands_end_in_one_sentence(no_gpu, args):
    r = invoke(*args)
    assert r.exit_code == 1
    assert r.output.startswith("Error: ") and "needs an NVIDIA GPU" in r.output
    assert "Traceback" not in r.output and r.output.count("\n") == 1


def test_peaks_show_without_gpu_needs_a_name(no_gpu):
    r = invoke("peaks", "--show")
    assert r.exit_code == 2 and "--gpu" in r.output


def test_peaks_show_datasheet(no_gpu, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r = invoke("peaks", "--show", "--gpu", "NVIDIA H100 80GB HBM3", "--json")
    assert r.exit_code == 0 and json.loads(r.output)["source"] == "datasheet"


@pytest.mark.parametrize(
    "args, message",
    [
        (("bench", "matmul", "--batch", "3", "--device", "cpu"), "matmul takes no --batch"),
        (("bench", "matmul", "--m", "1,x", "--device", "cpu"), "--m takes whole numbers"),
        (("bench", "matmul", "--m", "0", "--device", "cpu"), "positive"),
        (("bench", "copy", "--impl", "foo", "--device", "cpu", "--n", "4"), "no implementation foo"),
        (("bench", "copy", "--dtype", "fp8", "--device", "cpu", "--n", "4"), "unknown dtype 'fp8'"),
        (("bench", "copy", "--impl", " , ", "--device", "cpu", "--n", "4"), "--impl needs at least one"),
        (("bench", "copy", "--dtype", "", "--device", "cpu", "--n", "4"), "--dtype needs at least one dtype"),
        (("bench", "copy", "--dtype", "fp32,fp8", "--device", "cpu", "--n", "4"), "unknown dtype 'fp8'"),
        (("bench", "copy", "--device", "cpu"), "copy needs --n (elements); for example --n 100000000."),
        (("bench", "read", "--device", "cpu"), "read needs --n (elements); for example --n 100000000."),
        (("bench", "copy", "--device", "cpu", "--n", "4", "--max-time", "nan"), "--max-time must be positive"),
        (("bench", "copy", "--device", "cpu", "--n", "4", "--max-time", "0"), "--max-time must be positive"),
        (("bench", "matmul", "--m", "4", "--device", "cpu"),
         "matmul needs --n (columns of B and C), --k (columns of A, rows of B); for example --m 1,64"),
    ],
)
def test_bench_bad_input(args, message, monkeypatch):
    monkeypatch.setattr("gpuprof.cli.bench.measure_point", lambda *a, **k: pytest.fail("measured a point first"))
    r = invoke(*args)
    assert r.exit_code == 1 and message in r.output and "Traceback" not in r.output


def test_bench_unknown_kernel():
    r = invoke("bench", "nope")
    assert r.exit_code == 2 and "nope" in r.output


def test_bench_on_cpu_writes_a_run(tmp_path, monkeypatch):
    out = tmp_path / "run"
    monkeypatch.setattr("sys.argv", ["/usr/bin/gpuprof", "bench", "matmul"])
    r = invoke("bench", "matmul", "--m", "4,8", "--n", "16", "--k", "32", "--dtype", "fp32",
               "--device", "cpu", "--max-time", "0.05", "--out", str(out), "--csv", str(tmp_path / "p.csv"), "--json")
    assert r.exit_code == 0, r.output
    printed = json.loads(r.output)
    points = printed["points"]
    assert [p["m"] for p in points] == [4, 8] and all(p["status"] == "ok" for p in points)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["grid"]["kernel"] == "matmul" and manifest["command"] == "gpuprof bench matmul"
    assert len((out / "points.jsonl").read_text().splitlines()) == 2
    assert (tmp_path / "p.csv").read_text().startswith("kernel,impl")
    # the same run metadata travels with the CSV and the JSON
    assert json.loads((tmp_path / "p.csv.manifest.json").read_text()) == manifest == printed["manifest"]
    assert manifest["versions"]["torch"] and manifest["grid"]["shapes"] == [{"m": 4, "n": 16, "k": 32},
                                                                            {"m": 8, "n": 16, "k": 32}]


def test_bench_over_an_existing_run_says_what_to_do(tmp_path):
    args = ("bench", "copy", "--n", "64", "--dtype", "fp32", "--device", "cpu", "--impl", "torch",
            "--max-time", "0.01", "--out", str(tmp_path / "run"))
    assert invoke(*args).exit_code == 0
    r = invoke(*args)
    assert r.exit_code == 1 and "choose a new --out directory, or delete the old one" in r.output
    assert "--resume" not in r.output


@pytest.mark.parametrize("flag, target, message", [
    ("--csv", "", "is a directory; name a file."),
    ("--csv", "f.txt/p.csv", "f.txt is a file, not a directory."),
    ("--out", "f.txt", "is a file; name a directory."),
])
def test_bench_refuses_unwritable_outputs_before_measuring(tmp_path, monkeypatch, flag, target, message):
    (tmp_path / "f.txt").write_text("x")
    monkeypatch.setattr("gpuprof.cli.bench.measure_point", lambda *a, **k: pytest.fail("measured first"))
    r = invoke("bench", "copy", "--n", "64", "--device", "cpu", "--impl", "torch", flag, str(tmp_path / target))
    assert r.exit_code == 1 and message in r.output and "Traceback" not in r.output
