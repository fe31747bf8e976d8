"""gpuprof profile: the ncu run driven through a fake `ncu`, launches joined to points, every error path, the CLI.

The fake plays back tests/data/ncu/ (hand-made in ncu's documented layout; see its README for the recording).
"""

import json
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from gpuprof import device, nvtx
from gpuprof import profile as profile_lib
from gpuprof.cli import main
from gpuprof.cli.bench import int_list
from gpuprof.counters import ncu
from gpuprof.device import GPUInfo
from gpuprof.errors import GpuprofError
from gpuprof.profile import ChildSession, Request
from gpuprof.records import read_points

DATA = Path(__file__).parent / "data" / "ncu"
RAW = (DATA / "handmade-sol-copy-read.raw.csv").read_text()
POINTS = (DATA / "handmade-sol-copy-read.points.jsonl").read_text()
DURATION = "ncu_gpu__time_duration_sum"
REAL_RUN = subprocess.run
DRAM = "ncu_dram__throughput_avg_pct_of_peak_sustained_elapsed"


class FakeNcu:
    """Answers ncu's three command lines: --version, a profiling run (writes log, report, child points), --import."""

    def __init__(self, log="", csv=RAW, points=POINTS, exit_code=0, report=True, stderr=""):
        self.log, self.csv, self.points = log, csv, points
        self.exit_code, self.report, self.stderr = exit_code, report, stderr
        self.runs = []

    def __call__(self, argv, env=None, **kwargs):
        if not argv[0].endswith("ncu"):  # git and the like, asked by the CLI
            return REAL_RUN(argv, env=env, **kwargs)
        if "--version" in argv:
            return subprocess.CompletedProcess(argv, 0, "NVIDIA (R) Nsight Compute\nVersion 2025.3.1.0\n", "")
        if "--import" in argv:
            return subprocess.CompletedProcess(argv, 0, self.csv, "")
        self.runs.append((argv, env))
        Path(argv[argv.index("--log-file") + 1]).write_text(self.log)
        if self.report:
            Path(argv[argv.index("--export") + 1]).write_bytes(b"fake report")
        if self.points:
            Path(env[profile_lib.ENV_POINTS]).write_text(self.points)
        return subprocess.CompletedProcess(argv, self.exit_code, "the command's table\n", self.stderr)


def request(tmp_path, **kw):
    return Request(command=["gpuprof", "bench", "copy", "--n", "268435456"], out=tmp_path / "prof", **kw)


def test_run_joins_measured_launches_to_points_and_writes_a_run(tmp_path):
    fake = FakeNcu()
    result = profile_lib.run(request(tmp_path, calls=3), runner=fake, ncu_path="/opt/ncu")
    argv, env = fake.runs[0]
    assert argv[:3] == ["/opt/ncu", "--clock-control", "none"] and "gpuprof@measure/" in argv
    assert argv[-7:] == [sys.executable, "-m", "gpuprof", "bench", "copy", "--n", "268435456"]
    assert env[profile_lib.ENV_CALLS] == "3" and env[profile_lib.ENV_POINTS].endswith("child-points.jsonl")
    copy, read = result.points
    assert copy["ncu_launches"] == 3 and read["ncu_launches"] == 6  # read: a Triton kernel and a torch sum per call
    assert copy[DURATION] == pytest.approx((364102 + 365010 + 363874) / 3)
    assert read[DURATION] == pytest.approx((186330 + 186002 + 186411 + 3 * 4160) / 3)
    read_rows = [k for k in result.kernels if k["point_id"] == 2]
    weighted = sum(k[DRAM] * k[DURATION] for k in read_rows) / sum(k[DURATION] for k in read_rows)
    assert read[DRAM] == pytest.approx(weighted)
    assert read["ncu_kernel_names"].startswith("_read_sum_kernel;void at::native::reduce_kernel")
    assert all(k["phase"] == "measure" for k in result.kernels)
    out = tmp_path / "prof"
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["grid"]["nvtx_include"] == "gpuprof@measure/" and manifest["grid"]["ncu_version"] == "Version 2025.3.1.0"
    assert manifest["grid"]["units"][DURATION] == "nsecond"
    assert len((out / "points.jsonl").read_text().splitlines()) == 2
    assert len((out / "kernels.jsonl").read_text().splitlines()) == 9
    assert (out / "raw.csv").read_text() == RAW and (out / "command-output.txt").exists()


RAW_FILES = sorted(DATA.glob("*.raw.csv"))  # hand-made, and any recorded by tests/data/ncu/record.sh


@pytest.mark.parametrize("raw", RAW_FILES, ids=lambda p: p.name)
def test_every_profiled_launch_joins_its_point(raw):
    table = ncu.parse_raw_csv(raw.read_text())
    kernels = profile_lib.label_kernels(table.rows)
    points = read_points(raw.with_name(raw.name.replace(".raw.csv", ".points.jsonl")))
    joined = profile_lib.join(kernels, points, calls=profile_lib.DEFAULT_CALLS)
    assert kernels and all(k["phase"] == "measure" and k["point_id"] is not None for k in kernels)
    assert sum(p["ncu_launches"] for p in joined) == len(kernels)  # no launch left over, none counted twice
    for p in joined:
        if p["status"] == "ok":
            assert p["ncu_launches"] > 0 and p["ncu_launches"] % p["profile_calls"] == 0
            assert p[DURATION] > 0
    for k in kernels:
        for column, value in k.items():
            if column.endswith("pct_of_peak_sustained_elapsed") and value is not None:
                assert 0 <= value <= 100.5, (column, value)


def test_derived_dram_bandwidth():
    kernels = [{"pid": 1, "point_id": 1, DURATION: 1000.0, "ncu_dram__bytes_read_sum": 3e6,
                "ncu_dram__bytes_write_sum": 1e6, "kernel_name": "k"}] * 2
    out = profile_lib.aggregate(kernels, calls=2)
    assert out["ncu_dram_gbps"] == pytest.approx(4000.0) and out[DURATION] == 1000.0


def test_points_without_launches_and_other_processes_stay_unjoined():
    kernels = profile_lib.label_kernels(ncu.parse_raw_csv(RAW).rows)
    points = [json.loads(line) for line in POINTS.splitlines()]
    points[1]["profile_pid"] = 999  # same point number, another process
    joined = profile_lib.join(kernels, points, calls=3)
    assert joined[0]["ncu_launches"] == 3 and joined[1]["ncu_launches"] == 0 and DURATION not in joined[1]


def test_merge_into_timed_points_by_shape():
    timed = [{"kernel": "copy", "impl": "torch", "dtype": "bf16", "n": 268435456, "time_us": 360.0},
             {"kernel": "copy", "impl": "torch", "dtype": "bf16", "n": 1000, "time_us": 2.0}]
    profiled = [{"kernel": "copy", "impl": "torch", "dtype": "bf16", "n": 268435456, DRAM: 91.0, "time_us": None}]
    assert profile_lib.merge(timed, profiled) == 1
    assert timed[0][DRAM] == 91.0 and timed[0]["time_us"] == 360.0 and DRAM not in timed[1]


@pytest.mark.parametrize("fake, message", [
    (FakeNcu(log=(DATA / "handmade-log-errperm.txt").read_text()), "ERR_NVGPUCTRPERM"),
    (FakeNcu(log=(DATA / "handmade-log-no-kernels.txt").read_text(), report=False), "no kernel matched"),
    (FakeNcu(log=(DATA / "handmade-log-unknown-metric.txt").read_text(), exit_code=1), "does not know the metric"),
    (FakeNcu(report=False), "no kernel matched the NVTX filter"),
    (FakeNcu(csv='"ID","Kernel Name"\n"",""\n'), "no kernel matched the NVTX filter"),
    (FakeNcu(exit_code=3, stderr="Traceback ...\nRuntimeError: CUDA out of memory\n"), "status 3\\): RuntimeError"),
    (FakeNcu(log="==ERROR== The application returned an error code (1).\n", exit_code=1,
             stderr="Error: gemv has no implementation foo\n"), "failed \\(exit status 1\\): Error: gemv has no"),
])
def test_errors_are_one_sentence(tmp_path, fake, message):
    with pytest.raises(GpuprofError, match=message) as error:
        profile_lib.run(request(tmp_path), runner=fake, ncu_path="ncu")
    assert "\n" not in str(error.value)


def test_missing_nvtx_package_is_said_before_profiling(tmp_path, monkeypatch):
    monkeypatch.setattr(nvtx, "available", lambda: False)
    fake = FakeNcu()
    with pytest.raises(GpuprofError, match="nvtx package is not installed"):
        profile_lib.run(request(tmp_path), runner=fake, ncu_path="ncu")
    assert fake.runs == []
    profile_lib.run(Request(command=["./my_app"], out=tmp_path / "other"), runner=fake, ncu_path="ncu")


def test_any_command_gets_kernel_rows(tmp_path):
    fake = FakeNcu(points="")
    result = profile_lib.run(Request(command=["./my_app", "--size", "3"], out=tmp_path / "p", nvtx_include=None,
                                     launch_count=50), runner=fake, ncu_path="ncu")
    assert result.points == [] and len(result.kernels) == 9
    argv = fake.runs[0][0]
    assert "--nvtx" not in argv and argv[-3:] == ["./my_app", "--size", "3"] and "50" in argv


def test_target_command():
    assert profile_lib.target_command(["gpuprof", "bench", "copy"]) == [sys.executable, "-m", "gpuprof", "bench", "copy"]
    assert profile_lib.target_command(["/usr/bin/gpuprof", "info"])[:3] == [sys.executable, "-m", "gpuprof"]
    assert profile_lib.target_command(["./app", "x"]) == ["./app", "x"]
    with pytest.raises(GpuprofError, match="after `--`") as error:
        profile_lib.target_command([])
    # the example must be a command bench accepts
    example = shlex.split(str(error.value).split("e.g. ", 1)[1].rstrip("."))
    n = example[example.index("--n") + 1]
    assert example[:5] == ["gpuprof", "profile", "--", "gpuprof", "bench"] and int_list(n, "n") == [100000000]


def test_profile_refuses_an_out_holding_another_kind_of_run(tmp_path):
    from gpuprof.records import Run

    bench_run = Run.create(tmp_path / "prof", {"gpu": None, "versions": {}, "git_commit": None, "command": "x",
                                               "started_at": "t", "peaks": None, "grid": {"kernel": "copy"}})
    bench_run.append({"kernel": "copy", "time_us": 1.0})
    fake = FakeNcu()
    with pytest.raises(GpuprofError, match="not a profile run.*choose another --out") as error:
        profile_lib.run(request(tmp_path), runner=fake, ncu_path="/opt/ncu")
    assert "\n" not in str(error.value) and fake.runs == []
    assert len(bench_run.points()) == 1  # its points are still there


def test_profile_may_profile_over_an_earlier_profile_run(tmp_path):
    profile_lib.run(request(tmp_path), runner=FakeNcu(), ncu_path="/opt/ncu")
    again = profile_lib.run(request(tmp_path), runner=FakeNcu(), ncu_path="/opt/ncu")
    assert len(again.points) == 2 and len(read_points(tmp_path / "prof" / "points.jsonl")) == 2


def test_child_session_from_environment(tmp_path):
    assert ChildSession.from_env({}) is None
    session = ChildSession.from_env({profile_lib.ENV_POINTS: str(tmp_path / "p.jsonl"), profile_lib.ENV_CALLS: "5"})
    assert session.calls == 5
    session.record({"kernel": "copy", "time_us": float("nan")})
    assert json.loads((tmp_path / "p.jsonl").read_text())["time_us"] is None
    with pytest.raises(GpuprofError, match="whole number"):
        ChildSession.from_env({profile_lib.ENV_POINTS: "x", profile_lib.ENV_CALLS: "three"})


H100 = GPUInfo(name="NVIDIA H100 80GB HBM3", sm_count=132, memory_bytes=80 << 30, l2_bytes=50 << 20, driver="580",
               cuda="13.0", compute_capability="9.0")


@pytest.fixture
def fake_gpu(monkeypatch):
    monkeypatch.setattr("gpuprof.cli.profile.require_gpu", lambda what: None)
    monkeypatch.setattr("gpuprof.cli.profile.info", lambda: H100)
    monkeypatch.setattr(ncu, "find_ncu", lambda: "/opt/ncu")


def test_cli_profile_prints_a_short_table(tmp_path, fake_gpu, monkeypatch):
    fake = FakeNcu()
    monkeypatch.setattr(subprocess, "run", fake)
    r = CliRunner().invoke(main, ["profile", "--set", "sol", "--out", str(tmp_path / "p"), "--",
                                  "gpuprof", "bench", "copy", "--n", "268435456"])
    assert r.exit_code == 0, r.output
    assert "9 measured launches of 2 points" in r.output and "dram_%" in r.output and "ncu_us" in r.output
    assert "91.8" in r.output  # copy's duration-weighted DRAM throughput, printed
    assert fake.runs[0][0][-4:] == ["bench", "copy", "--n", "268435456"]


def test_cli_profile_gpgpu_counter_permission(tmp_path, fake_gpu, monkeypatch):
    monkeypatch.setattr(subprocess, "run", FakeNcu(log=(DATA / "handmade-log-errperm.txt").read_text()))
    r = CliRunner().invoke(main, ["profile", "--out", str(tmp_path / "p"), "--", "gpuprof", "bench", "copy"])
    assert r.exit_code == 1 and r.output.startswith("Error: ") and r.output.count("\n") == 1
    assert "ERR_NVGPUCTRPERM" in r.output and "Traceback" not in r.output


def test_cli_profile_needs_a_gpu_and_ncu(monkeypatch, tmp_path):
    monkeypatch.setattr(device, "cuda_available", lambda: False)
    r = CliRunner().invoke(main, ["profile", "--", "gpuprof", "bench", "copy"])
    assert r.exit_code == 1 and "needs an NVIDIA GPU" in r.output
    monkeypatch.setattr("gpuprof.cli.profile.require_gpu", lambda what: None)
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setenv("CUDA_HOME", str(tmp_path))
    monkeypatch.setattr(ncu, "_CUDA_DEFAULT", str(tmp_path))
    r = CliRunner().invoke(main, ["profile", "--", "gpuprof", "bench", "copy"])
    assert r.exit_code == 1 and "`ncu` was not found" in r.output


def test_cli_profile_bad_set(fake_gpu):
    r = CliRunner().invoke(main, ["profile", "--set", "roofline", "--", "./app"])
    assert r.exit_code == 1 and "unknown metric set 'roofline'" in r.output


@pytest.mark.parametrize("args, message", [
    (["--counters", "dcgm", "--device", "cpu"], "unknown counters dcgm"),
    (["--counters", "nvml", "--device", "cpu"], "needs --device cuda"),
])
def test_bench_counters_bad_input(args, message):
    r = CliRunner().invoke(main, ["bench", "copy", "--n", "8", *args])
    assert r.exit_code == 1 and message in r.output


def test_bench_counters_ncu_needs_ncu(monkeypatch, tmp_path):
    monkeypatch.setattr("gpuprof.cli.bench.require_gpu", lambda what: None)
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setenv("CUDA_HOME", str(tmp_path))
    monkeypatch.setattr(ncu, "_CUDA_DEFAULT", str(tmp_path))
    r = CliRunner().invoke(main, ["bench", "copy", "--n", "8", "--counters", "ncu"])
    assert r.exit_code == 1 and "`ncu` was not found" in r.output


def _bench_with_ncu(monkeypatch, tmp_path, profile_run=None):
    """`gpuprof bench ... --counters ncu` on a pretend GPU with a pretend ncu; returns the points measured."""
    import gpuprof.cli.bench as cli_bench

    gpu = GPUInfo(name="NVIDIA H100 80GB HBM3", sm_count=132, memory_bytes=80 << 30, l2_bytes=50 << 20,
                  driver=None, cuda=None, compute_capability="9.0")
    measured = []

    def fake_point(op, impl, shape, dtype, **kw):
        point = {"kernel": op.kernel, "impl": impl, "dtype": dtype, **shape, "status": "ok", "time_us": 10.0}
        measured.append(point)
        return point

    monkeypatch.setattr(cli_bench, "require_gpu", lambda what: None)
    monkeypatch.setattr(cli_bench, "info", lambda: gpu)
    monkeypatch.setattr(cli_bench.ncu, "find_ncu", lambda: "ncu")
    monkeypatch.setattr(cli_bench, "measure_point", fake_point)
    monkeypatch.setattr(cli_bench.profile_lib, "run", profile_run or (lambda *a, **k: pytest.fail("profiled")))
    monkeypatch.chdir(tmp_path)
    return measured


@pytest.mark.parametrize("args, message", [
    (["--ncu-set", "nope"], "unknown metric set 'nope'"),
    ([], "the nvtx package is not installed"),
])
def test_bench_counters_ncu_refuses_before_timing(monkeypatch, tmp_path, args, message):
    measured = _bench_with_ncu(monkeypatch, tmp_path)
    monkeypatch.setattr(nvtx, "available", lambda: not message.startswith("the nvtx"))
    r = CliRunner().invoke(main, ["bench", "copy", "--n", "8", "--counters", "ncu", *args])
    assert r.exit_code == 1 and message in r.output and measured == []


def test_bench_keeps_its_timed_rows_when_profiling_fails(monkeypatch, tmp_path):
    def fail(*args, **kwargs):
        raise GpuprofError("ncu failed: Profiling failed because a driver resource was unavailable.")

    _bench_with_ncu(monkeypatch, tmp_path, profile_run=fail)
    monkeypatch.setattr(nvtx, "available", lambda: True)
    r = CliRunner().invoke(main, ["bench", "copy", "--n", "8,16", "--counters", "ncu", "--out", "run",
                                  "--csv", "p.csv", "--json"])
    assert r.exit_code == 1 and "Traceback" not in r.output
    assert "warning: the rows have no ncu columns: ncu failed: Profiling failed" in r.output
    assert len((tmp_path / "p.csv").read_text().splitlines()) == 3
    assert len(read_points(tmp_path / "run" / "points.jsonl")) == 2
    assert '"time_us": 10.0' in r.output  # the JSON of the timed rows was printed


def test_bench_command_for_the_profiled_rerun():
    from gpuprof.cli.bench import bench_command

    argv = bench_command("gemv", ["triton", "cublas"], ["bf16"], {"m": "1,8", "n": "14336", "k": "4096", "batch": None},
                         2.0)
    assert argv[:3] == ["gpuprof", "bench", "gemv"] and "--counters" not in argv and "--out" not in argv
    assert argv[argv.index("--m") + 1] == "1,8" and "--batch" not in argv
    assert argv[argv.index("--impl") + 1] == "triton,cublas" and argv[argv.index("--device") + 1] == "cuda"


def _ncu_or_skip() -> str:
    try:
        return ncu.find_ncu()
    except GpuprofError as e:
        pytest.skip(str(e))


@pytest.mark.gpu
def test_profile_a_copy_under_real_ncu(tmp_path):
    ncu_path = _ncu_or_skip()
    result = profile_lib.run(Request(command=["gpuprof", "bench", "copy", "--n", "100000000,1000000"],
                                     out=tmp_path / "p", sets=["speed-of-light", "memory"], calls=2),
                             ncu_path=ncu_path)
    assert [p["ncu_launches"] for p in result.points] == [2, 2]  # exactly the measured calls, no warm-up
    big = result.points[0]
    assert big[DRAM] > 50 and big["ncu_dram_gbps"] > 0 and big["ncu_sm__throughput_avg_pct_of_peak_sustained_elapsed"] > 0
    # copy reads and writes n bf16 elements: DRAM bytes agree with the op's minimum within 5%
    assert big["ncu_dram__bytes_read_sum"] + big["ncu_dram__bytes_write_sum"] == pytest.approx(big["bytes"], rel=0.05)
    assert all(k["phase"] == "measure" for k in result.kernels)
    assert shutil.which(ncu_path) or Path(ncu_path).exists()


@pytest.mark.gpu
def test_bench_counters_ncu_adds_columns_to_timed_rows(tmp_path):
    _ncu_or_skip()
    r = CliRunner().invoke(main, ["bench", "copy", "--n", "100000000", "--counters", "ncu", "--max-time", "0.2",
                                  "--out", str(tmp_path / "run"), "--json"])
    assert r.exit_code == 0, r.output
    rows = [json.loads(line) for line in (tmp_path / "run" / "points.jsonl").read_text().splitlines()]
    assert len(rows) == 1 and rows[0]["time_us"] > 0 and rows[0]["ncu_launches"] == profile_lib.DEFAULT_CALLS
    assert rows[0][DRAM] > 50 and (tmp_path / "run" / "ncu" / "report.ncu-rep").exists()
