"""Replica processes and the MPS daemon, with stand-ins for the worker and for nvidia-cuda-mps-control.

What matters most here is cleanup: after a normal end, a replica failing, a timeout, Ctrl-C or SIGTERM, no replica
process is left and our MPS daemon was told to quit and its temp dir removed.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import replace
from pathlib import Path

import pytest
from click.testing import CliRunner

from gpuprof import replicate as rep
from gpuprof.cli import main
from gpuprof.errors import GpuprofError
from gpuprof.replicate import MpsDaemon, ReplicaSpec, plan, replicate, run_replicas

FAKE_WORKER = textwrap.dedent(
    """
    import json, os, signal, sys, time
    spec = json.loads(sys.argv[-1])
    index = int(os.environ["GPUPROF_REPLICA"])
    mode = os.environ.get("FAKE_WORKER", "ok")
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})  # a replica stopped early leaves no empty pid file
    with open(os.path.join(os.environ["FAKE_PIDS"], str(os.getpid())), "w") as f:
        f.write(os.environ.get("CUDA_MPS_PIPE_DIRECTORY", ""))
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
    print("loading weights ...", flush=True)  # not protocol: ignored
    if mode == "fail" and index == 1:
        print("Traceback ...\\nRuntimeError: replica one broke", file=sys.stderr)
        sys.exit(3)
    if mode == "oom" and index == 0:
        print("gpuprof-replica result " + json.dumps({"status": "oom", "error": "out of device memory"}), flush=True)
        sys.exit(0)
    if mode == "hang":
        time.sleep(600)
    print("gpuprof-replica ready", flush=True)
    words = sys.stdin.readline().split()
    if words[:1] != ["go"]:
        sys.exit(0)
    deadline = float(words[1])
    if mode == "die-after-go" and index == 0:
        sys.exit(5)
    period = float(os.environ.get("FAKE_PERIOD", "0.02")) * (index + 1)  # replicas of different speeds
    start, ends = time.monotonic(), []
    while not ends or ends[-1] < deadline:
        time.sleep(period)
        ends.append(time.monotonic())
    if mode == "overrun" and index == 0:  # runs on after the deadline, fast, as if alone on the GPU
        for _ in range(100):
            time.sleep(0.002)
            ends.append(time.monotonic())
    print("gpuprof-replica result " + json.dumps({
        "status": "ok", "start": start, "ends": ends, "step_ms": 2.0 + index, "memory_bytes": 1000}), flush=True)
    """
)

FAKE_CONTROL = textwrap.dedent(
    """
    import os, sys, time, pathlib
    pipe = pathlib.Path(os.environ["CUDA_MPS_PIPE_DIRECTORY"])
    log = open(os.environ["FAKE_MPS_LOG"], "a", buffering=1)
    if sys.argv[1:] == ["-f"]:
        if os.environ.get("FAKE_MPS") == "broken":
            print("An instance of this daemon is already running", flush=True)
            sys.exit(1)
        log.write(f"daemon start {pipe}\\n")
        log.flush()
        (pipe / "control").touch()
        while not (pipe / "quit").exists():
            time.sleep(0.02)
        log.write("daemon exit\\n")
        sys.exit(0)
    if not (pipe / "control").exists():
        print("Cannot find MPS control daemon process", file=sys.stderr)
        sys.exit(1)
    command = sys.stdin.readline().strip()
    log.write(f"command {command}\\n")
    if command == "quit":
        (pipe / "quit").touch()
    """
)

SPEC = ReplicaSpec(model="llama-2-7b", batch=4, duration_s=0.2, device="cpu")


@pytest.fixture
def fakes(tmp_path, monkeypatch):
    """A fake worker command, a fake nvidia-cuda-mps-control first on PATH, and where both leave traces."""
    bin_dir, pids = tmp_path / "bin", tmp_path / "pids"
    bin_dir.mkdir()
    pids.mkdir()
    worker = tmp_path / "fake_worker.py"
    worker.write_text(FAKE_WORKER)
    control = bin_dir / "nvidia-cuda-mps-control"
    control.write_text(f"#!{sys.executable}\n" + FAKE_CONTROL)
    control.chmod(0o755)
    log = tmp_path / "mps.log"
    log.touch()
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_PIDS", str(pids))
    monkeypatch.setenv("FAKE_MPS_LOG", str(log))
    monkeypatch.setenv("CUDA_MPS_PIPE_DIRECTORY", "/somewhere/else")  # must not leak into runs without MPS

    class Fakes:
        command = [sys.executable, str(worker)]
        mps_log = log

        @staticmethod
        def replica_pids() -> dict[int, str]:
            return {int(p.name): p.read_text() for p in pids.iterdir()}

    return Fakes


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def assert_cleaned_up(fakes, mps: bool) -> None:
    pids = fakes.replica_pids()
    assert pids and not [p for p in pids if alive(p)]
    log = fakes.mps_log.read_text()
    if mps:
        assert "command quit" in log and log.rstrip().endswith("daemon exit")
        pipe_dirs = set(pids.values())
        assert len(pipe_dirs) == 1 and not Path(pipe_dirs.pop()).exists()  # the private temp dir is gone
    else:
        assert set(pids.values()) == {""}


@pytest.mark.parametrize("mps", [False, True])
def test_replicas_report_and_leave_nothing_behind(fakes, mps):
    point = run_replicas(SPEC, 3, mps, command=fakes.command)
    assert point["status"] == "ok", point["error"]
    assert point["replicas"] == 3 and point["total_batch"] == 12 and point["mps"] is mps
    assert point["replica_step_ms"] == [2.0, 3.0, 4.0] and point["step_ms"] == 3.0
    assert point["tokens"] > 0 and point["tokens_per_s"] == pytest.approx(point["tokens"] / point["window_s"])
    assert point["memory_bytes"] == 3000 and point["model"] == "llama-2-7b"
    assert_cleaned_up(fakes, mps)


@pytest.mark.parametrize("mode", ["ok", "overrun"])
def test_aggregate_counts_only_the_common_window(fakes, monkeypatch, mode):
    """Replicas of different speeds (10, 20, 30 ms a step); with "overrun", replica 0 runs on alone, fast, after
    the deadline. Only the window in which all three decode counts, so the aggregate is the sum of their speeds."""
    monkeypatch.setenv("FAKE_WORKER", mode)
    monkeypatch.setenv("FAKE_PERIOD", "0.01")
    point = run_replicas(replace(SPEC, duration_s=1.0), 3, False, command=fakes.command)
    assert point["status"] == "ok", point["error"]
    each = [4 / 0.01, 4 / 0.02, 4 / 0.03]  # tokens/s of each replica at its own speed
    assert point["replica_tokens_per_s"] == pytest.approx(each, rel=0.2)
    assert point["tokens_per_s"] == pytest.approx(sum(each), rel=0.15)
    assert 0.8 < point["window_s"] < 1.2


def test_common_window_definition():
    """Window = (latest start, earliest last end]; steps completed inside it count, whole."""
    results = [
        {"start": 0.0, "ends": [0.1 * i for i in range(1, 11)], "step_ms": 100.0},  # 10 steps up to 1.0
        {"start": 0.05, "ends": [0.3, 0.55, 0.8, 1.05], "step_ms": 250.0},
        {"start": 0.0, "ends": [0.1 * i for i in range(1, 11)] + [1.0 + 0.02 * i for i in range(1, 26)],
         "step_ms": 100.0},  # ran on alone until 1.5: not counted
    ]
    point = rep._aggregate(results, batch=2)
    assert point["window_s"] == pytest.approx(0.95)
    assert point["tokens"] == (10 + 3 + 10) * 2  # the steps ending in (0.05, 1.0]
    assert point["tokens_per_s"] == pytest.approx(46 / 0.95)
    assert point["replica_tokens_per_s"] == pytest.approx([20 / 0.95, 6 / 0.95, 20 / 0.95])
    assert point["step_ms"] == 100.0 and point["replica_step_ms"] == [100.0, 250.0, 100.0]


def test_replicas_whose_windows_do_not_overlap_are_an_error():
    results = [{"start": 0.0, "ends": [0.5, 1.0], "step_ms": 1.0}, {"start": 1.1, "ends": [1.2], "step_ms": 1.0}]
    with pytest.raises(rep.ReplicaFailed, match="longer --duration"):
        rep._aggregate(results, batch=1)


def test_decode_window_checks_the_deadline_after_every_step():
    deadline = time.monotonic() + 0.2
    window = rep.decode_window(lambda: time.sleep(0.01), deadline, rep.HostMark)
    ends = window["ends"]
    assert window["start"] < ends[0] and ends == sorted(ends)
    assert ends[-2] < deadline <= ends[-1] < deadline + 0.05  # stopped at the first step past the deadline
    assert 9 <= window["step_ms"] < 20


def test_monotonic_clock_is_shared_by_processes():
    """The deadline is a time.monotonic() value read in other processes: on Linux that is CLOCK_MONOTONIC."""
    if sys.platform.startswith("linux"):
        assert time.get_clock_info("monotonic").implementation == "clock_gettime(CLOCK_MONOTONIC)"
    child = float(subprocess.run([sys.executable, "-c", "import time; print(time.monotonic())"],
                                 capture_output=True, text=True, check=True).stdout)
    assert abs(child - time.monotonic()) < 5.0


@pytest.mark.parametrize("mode, status, message", [
    ("fail", "error", "replica 1 exited with status 3: RuntimeError: replica one broke."),
    ("oom", "oom", "replica 0: out of device memory"),
    ("die-after-go", "error", "replica 0 exited with status 5"),
])
def test_a_failing_replica_is_recorded_and_the_rest_stopped(fakes, monkeypatch, mode, status, message):
    monkeypatch.setenv("FAKE_WORKER", mode)
    point = run_replicas(SPEC, 3, True, command=fakes.command)
    assert point["status"] == status and message in point["error"]
    assert point["tokens_per_s"] is None
    assert_cleaned_up(fakes, mps=True)


def test_replicas_that_never_get_ready_time_out(fakes, monkeypatch):
    monkeypatch.setenv("FAKE_WORKER", "hang")
    point = run_replicas(SPEC, 2, True, command=fakes.command, ready_timeout_s=1.0)
    assert point["status"] == "error" and "did not become ready" in point["error"]
    assert_cleaned_up(fakes, mps=True)


INTERRUPTED = textwrap.dedent(
    """
    import sys
    from gpuprof.replicate import ReplicaSpec, replicate
    spec = ReplicaSpec(model="llama-2-7b", batch=2, duration_s=0.1, device="cpu")
    replicate(spec, [2], modes=["mps"], baseline=False, command=[sys.executable, sys.argv[1]])
    """
)


def test_replicas_are_started_without_preexec_fn(fakes, monkeypatch):
    """preexec_fn is unsafe while the reader threads of earlier replicas run: the replica sets PDEATHSIG itself."""
    started = []
    popen = subprocess.Popen

    def recording_popen(*args, **kwargs):
        started.append(kwargs)
        return popen(*args, **kwargs)

    monkeypatch.setattr(subprocess, "Popen", recording_popen)
    assert run_replicas(SPEC, 2, False, command=fakes.command)["status"] == "ok"
    assert len(started) == 2 and not any(kw.get("preexec_fn") for kw in started)
    assert {kw["env"][rep.PARENT_ENV] for kw in started} == {str(os.getpid())}


def running(pid: int) -> bool:
    """Alive and not a zombie (a killed grandchild may wait a while for init to reap it)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def test_worker_whose_gpuprof_is_already_gone_stops_at_once(tiny_config):
    spec = ReplicaSpec(model=str(tiny_config), batch=1, ctx=8, impl="torch", device="cpu")
    env = {**os.environ, rep.PARENT_ENV: "1"}  # not our pid: as if gpuprof died and the worker was reparented
    done = subprocess.run([*rep.worker_command(), spec.to_json()], env=env, stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and "gpuprof (process 1) is gone" in done.stderr
    assert "gpuprof-replica" not in done.stdout


KILLED_PARENT = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from gpuprof.replicate import ReplicaSet, ReplicaSpec, plain_env
    group = ReplicaSet([ReplicaSpec.from_json(sys.argv[1])], plain_env(), log_dir=Path(sys.argv[2])).__enter__()
    group.wait_ready(120)
    group.go(time.monotonic() + 600)
    print(group.procs[0].pid, flush=True)
    time.sleep(600)
    """
)


def test_decoding_replica_dies_with_its_gpuprof(tmp_path, tiny_config):
    """gpuprof killed with SIGKILL (no cleanup runs): the replica, mid-window, goes too (PR_SET_PDEATHSIG)."""
    spec = ReplicaSpec(model=str(tiny_config), batch=1, ctx=8, impl="torch", device="cpu")
    parent = subprocess.Popen([sys.executable, "-c", KILLED_PARENT, spec.to_json(), str(tmp_path)],
                              stdout=subprocess.PIPE, text=True)
    try:
        replica = int(parent.stdout.readline())
        time.sleep(0.3)
        assert running(replica), "the replica should be decoding"
    finally:
        parent.kill()
        parent.wait()
    deadline = time.monotonic() + 30
    while running(replica) and time.monotonic() < deadline:
        time.sleep(0.05)
    left = running(replica)
    if left:  # leave no orphan behind when this fails
        os.killpg(replica, signal.SIGKILL)
    assert not left


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupt_stops_replicas_and_quits_mps(fakes, tmp_path, monkeypatch, sig):
    monkeypatch.setenv("FAKE_WORKER", "hang")
    parent = subprocess.Popen([sys.executable, "-c", INTERRUPTED, fakes.command[1]], stderr=subprocess.PIPE,
                              text=True)
    deadline = time.monotonic() + 60
    while len(fakes.replica_pids()) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(fakes.replica_pids()) == 2, "the replicas never started"
    parent.send_signal(sig)
    _, stderr = parent.communicate(timeout=60)
    assert parent.returncode != 0 and "KeyboardInterrupt" in stderr
    assert_cleaned_up(fakes, mps=True)


def test_mps_daemon_that_fails_to_start_is_one_sentence(fakes, monkeypatch):
    monkeypatch.setenv("FAKE_MPS", "broken")
    with pytest.raises(GpuprofError, match="MPS control daemon exited with status 1: An instance of this daemon"):
        with MpsDaemon():
            pass


def test_mps_daemon_env_and_commands(fakes):
    with MpsDaemon() as daemon:
        pipe = Path(daemon.env["CUDA_MPS_PIPE_DIRECTORY"])
        assert pipe.is_dir() and Path(daemon.env["CUDA_MPS_LOG_DIRECTORY"]).is_dir()
        assert daemon.ask("get_server_list").returncode == 0
    assert not pipe.exists() and "command quit" in fakes.mps_log.read_text()


def test_missing_mps_control_is_said_before_any_work(fakes, monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(GpuprofError, match="run with --mps off"):
        replicate(SPEC, [1, 2], command=fakes.command)
    assert fakes.replica_pids() == {}


def test_plan_and_comparison_with_one_process(fakes):
    assert [(s.batch, r, m) for s, r, m in plan(SPEC, [1, 2])] == [
        (4, 1, "no-mps"), (4, 1, "mps"), (8, 1, "single"), (4, 2, "no-mps"), (4, 2, "mps")]
    points = replicate(SPEC, [1, 2], command=fakes.command)
    assert [p["mode"] for p in points] == ["no-mps", "mps", "single", "no-mps", "mps"]
    single = points[2]
    assert single["vs_single"] == 1.0 and points[0]["vs_single"] == 1.0
    assert points[3]["vs_single"] == pytest.approx(points[3]["tokens_per_s"] / single["tokens_per_s"])


def test_spec_round_trips_through_json():
    spec = ReplicaSpec(model="opt-1.3b", batch=8, linear_impls=("cublas",))
    assert ReplicaSpec.from_json(spec.to_json()) == spec


@pytest.fixture
def tiny_config(tmp_path) -> Path:
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"model_type": "llama", "hidden_size": 64, "num_attention_heads": 4,
                                  "num_key_value_heads": 2, "num_hidden_layers": 2, "intermediate_size": 96,
                                  "vocab_size": 97, "max_position_embeddings": 256, "hidden_act": "silu"}))
    return config


def test_real_worker_on_the_cpu(tmp_path, tiny_config):
    """The real `python -m gpuprof.replicate --worker` protocol, with the torch model on the CPU."""
    config = tiny_config
    out = tmp_path / "run"
    r = CliRunner().invoke(main, ["replicate", "--model", str(config), "--device", "cpu", "--impl", "torch",
                                  "--mps", "off", "--replicas", "2", "--batch", "2", "--ctx", "16",
                                  "--duration", "0.3", "--out", str(out)])
    assert r.exit_code == 0, r.output
    points = [json.loads(line) for line in (out / "points.jsonl").read_text().splitlines()]
    assert [(p["mode"], p["replicas"], p["batch"]) for p in points] == [("single", 1, 4), ("no-mps", 2, 2)]
    for p in points:
        assert p["status"] == "ok", p["error"]
        assert p["tokens"] > 0 and p["tokens_per_s"] > 0 and len(p["replica_step_ms"]) == p["replicas"]


@pytest.mark.parametrize("args, message", [
    (("--device", "cpu", "--mps", "on"), "with --device cpu use --mps off"),
    (("--device", "cpu", "--mps", "off", "--duration", "0"), "--duration must be positive"),
    (("--device", "cpu", "--mps", "off", "--duration", "nan"), "--duration must be positive and finite"),
    (("--device", "cpu", "--mps", "off", "--duration", "inf"), "--duration must be positive and finite"),
    (("--device", "cpu", "--mps", "off", "--duration", "-1"), "--duration must be positive and finite"),
    (("--device", "cpu", "--mps", "off", "--ready-timeout", "nan"), "--ready-timeout must be positive and finite"),
    (("--device", "cpu", "--mps", "off", "--replicas", "two"), "--replicas takes whole numbers"),
])
def test_cli_mistakes_are_one_sentence(args, message):
    r = CliRunner().invoke(main, ["replicate", "--model", "opt-1.3b", "--batch", "4", *args])
    assert r.exit_code == 1 and message in r.output and "Traceback" not in r.output


def test_cli_checks_the_context_before_starting_replicas(tmp_path, tiny_config):
    out = tmp_path / "run"
    r = CliRunner().invoke(main, ["replicate", "--model", str(tiny_config), "--device", "cpu", "--mps", "off",
                                  "--batch", "2", "--ctx", "600", "--out", str(out)])
    assert r.exit_code == 1 and "a context of 600 plus 0 decoded tokens exceeds" in r.output
    assert "Traceback" not in r.output and not out.exists()


def test_cli_fails_when_every_point_failed(monkeypatch):
    from gpuprof.cli import replicate as cli

    def failing(spec, counts, **kwargs):
        return [{"mode": "no-mps", "replicas": 1, "batch": 4, "total_batch": 4, "status": "oom",
                 "error": "replica 0: out of device memory."}]

    monkeypatch.setattr(cli, "replicate", failing)
    r = CliRunner().invoke(main, ["replicate", "--model", "opt-1.3b", "--batch", "4", "--device", "cpu",
                                  "--mps", "off", "--replicas", "1"])
    assert r.exit_code == 1 and "every run failed; the first with: replica 0: out of device memory." in r.output
    assert "Traceback" not in r.output


def test_cli_needs_a_gpu_unless_told_cpu(monkeypatch):
    from gpuprof import device

    monkeypatch.setattr(device, "cuda_available", lambda: False)
    r = CliRunner().invoke(main, ["replicate", "--model", "opt-1.3b", "--batch", "4"])
    assert r.exit_code == 1 and "needs an NVIDIA GPU" in r.output


@pytest.mark.gpu
def test_replicas_on_the_gpu_with_and_without_mps():
    """Real replicas of a small model; MPS where this machine has its control program."""
    modes = rep.MODES if rep.shutil.which(rep.CONTROL) else ("no-mps",)
    spec = ReplicaSpec(model="qwen2.5-0.5b", batch=8, ctx=256, duration_s=1.0, impl="torch")
    points = replicate(spec, [1, 2], modes=modes)
    for p in points:
        assert p["status"] == "ok", p["error"]
        assert p["tokens_per_s"] > 0 and p["memory_bytes"] > 0 and p["device_used_bytes"] > 0
