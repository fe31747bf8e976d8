"""Replicas of a decode loop on one GPU, with and without NVIDIA MPS, against one process at the total batch.

Each replica is its own process (`python -m gpuprof.replicate --worker SPEC`): it builds the model, prepares its
batch and CUDA graph, says it is ready and waits. Once every replica is ready the parent says go with one absolute
deadline, a time.monotonic() value: on Linux that is CLOCK_MONOTONIC, one clock for every process, so parent and
replicas agree on it. Every replica decodes step after step, notes when each step completed, and stops at the
first step completed at or past the deadline. Aggregate tokens/s counts only the steps completed inside the common
window, while every replica was decoding (see `_aggregate`), so a replica that runs on alone is not counted.
With MPS, gpuprof runs its own MPS control daemon in a private pipe directory under a temp dir and quits it
afterwards. Every exit path (normal end, a replica failing, a timeout, Ctrl-C, SIGTERM) kills the replicas' process
groups and quits the daemon; a replica also dies with its parent (Linux PR_SET_PDEATHSIG, which the replica sets
on itself) if gpuprof is killed.

The parent never initialises CUDA: the replicas alone hold contexts, under MPS or not.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import queue
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from gpuprof.bench import Collector
from gpuprof.errors import GpuprofError
from gpuprof.models import get_model
from gpuprof.records import new_point

CONTROL = "nvidia-cuda-mps-control"
PREFIX = "gpuprof-replica"  # the worker's protocol lines on stdout start with this; anything else is ignored
MPS_ENV = ("CUDA_MPS_PIPE_DIRECTORY", "CUDA_MPS_LOG_DIRECTORY")
MODES = ("no-mps", "mps")
PARENT_ENV = "GPUPROF_PARENT"  # the pid of the gpuprof that started a replica, which the replica watches


@dataclass(frozen=True)
class ReplicaSpec:
    """What one replica decodes, sent to the worker as JSON."""

    model: str
    batch: int
    ctx: int = 1024
    dtype: str = "bf16"
    impl: str = "gpuprof"
    attention_impl: str = "triton"
    linear_impls: tuple[str, ...] = ("triton", "cublas")
    page_size: int = 16
    seed: int = 0
    duration_s: float = 5.0
    device: str = "cuda"

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> ReplicaSpec:
        fields = json.loads(text)
        return cls(**{**fields, "linear_impls": tuple(fields["linear_impls"])})


class ReplicaFailed(GpuprofError):
    """A replica could not run its part; `status` is the record status (error, oom, unsupported)."""

    def __init__(self, message: str, status: str = "error") -> None:
        super().__init__(message)
        self.status = status


# ---------------------------------------------------------------------------------------------------- MPS


def find_control(control: str = CONTROL) -> str:
    path = shutil.which(control)
    if path is None:
        raise GpuprofError(
            f"MPS needs {control} (it comes with the NVIDIA driver) and it is not on PATH; run with --mps off."
        )
    return path


class MpsDaemon:
    """An MPS control daemon of our own, in the foreground, with its pipes and logs in a private temp dir."""

    def __init__(self, control: str = CONTROL, start_timeout_s: float = 15.0) -> None:
        self.control = find_control(control)
        self.start_timeout_s = start_timeout_s
        self.root: Path | None = None
        self.proc: subprocess.Popen | None = None
        self.env: dict[str, str] = {}

    def __enter__(self) -> MpsDaemon:
        self.root = Path(tempfile.mkdtemp(prefix="gpuprof-mps-"))
        pipe, log = self.root / "pipe", self.root / "log"
        pipe.mkdir()
        log.mkdir()
        self.env = {**plain_env(), "CUDA_MPS_PIPE_DIRECTORY": str(pipe), "CUDA_MPS_LOG_DIRECTORY": str(log)}
        try:
            with open(self.root / "daemon.out", "w") as out:
                self.proc = subprocess.Popen([self.control, "-f"], env=self.env, stdin=subprocess.DEVNULL,
                                             stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
            self._wait_until_up()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def ask(self, command: str) -> subprocess.CompletedProcess:
        """Send one command to our daemon, as `echo COMMAND | nvidia-cuda-mps-control` does."""
        return subprocess.run([self.control], input=command + "\n", env=self.env, capture_output=True, text=True,
                              timeout=10)

    def _wait_until_up(self) -> None:
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise GpuprofError(f"the MPS control daemon exited with status {self.proc.returncode}: "
                                   f"{self._log_tail() or 'it left no message'}.")
            if self.ask("get_server_list").returncode == 0:
                return
            time.sleep(0.1)
        raise GpuprofError(f"the MPS control daemon did not answer within {self.start_timeout_s:g} s.")

    def _log_tail(self) -> str:
        for name in ("daemon.out", "log/control.log"):
            path = self.root / name if self.root else None
            if path and path.is_file():
                lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
                if lines:
                    return lines[-1].strip()
        return ""

    def stop(self) -> None:
        """Quit the daemon (it shuts down its MPS server), kill it if it does not go, and remove the temp dir."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(OSError, subprocess.SubprocessError):
                self.ask("quit")
                self.proc.wait(timeout=10.0)
            _stop_process(self.proc)  # only where quit did not end it
        self.proc = None
        if self.root is not None:
            shutil.rmtree(self.root, ignore_errors=True)
            self.root = None


def plain_env() -> dict[str, str]:
    """This process's environment without MPS variables, so a replica run without MPS really runs without it."""
    return {k: v for k, v in os.environ.items() if k not in MPS_ENV}


# ---------------------------------------------------------------------------------------------------- processes


def die_with_parent(parent: int) -> None:
    """In the replica itself: Linux kills it when gpuprof dies, so a killed gpuprof leaves no replica behind.

    Set here rather than through Popen's preexec_fn, which Python documents as unsafe while the parent runs
    threads (it does: one reader per replica). A parent that died before this call would go unwatched; then this
    process's parent is no longer `parent`, and the replica stops at once.
    """
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
    if os.getppid() != parent:
        sys.exit(f"gpuprof (process {parent}) is gone, so this replica stops.")


def _stop_process(proc: subprocess.Popen, grace_s: float = 5.0) -> None:
    """SIGTERM to the process group (the replica and anything it started), SIGKILL after grace_s, then reap."""
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 10.0)):
        if proc.poll() is not None:
            break
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=wait_s)
    # the group may outlive its leader (a compiler the replica started): make sure it is gone too
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


def worker_command() -> list[str]:
    return [sys.executable, "-m", "gpuprof.replicate", "--worker"]


class ReplicaSet:
    """R replica processes speaking the worker protocol: `PREFIX ready`, `go DEADLINE` on stdin, `PREFIX result`."""

    def __init__(self, specs: Sequence[ReplicaSpec], env: Mapping[str, str], command: Sequence[str] | None = None,
                 log_dir: Path | None = None) -> None:
        self.specs = list(specs)
        self.env = dict(env)
        self.command = list(command or worker_command())
        self.log_dir = log_dir
        self.procs: list[subprocess.Popen] = []
        self.logs: list[Path] = []
        self.lines: queue.Queue = queue.Queue()
        self.readers: list[threading.Thread] = []
        self._own_log_dir = False

    def __enter__(self) -> ReplicaSet:
        if self.log_dir is None:
            self.log_dir = Path(tempfile.mkdtemp(prefix="gpuprof-replicas-"))
            self._own_log_dir = True
        try:
            for i, spec in enumerate(self.specs):
                self._start(i, spec)
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _start(self, index: int, spec: ReplicaSpec) -> None:
        log = self.log_dir / f"replica-{index}.stderr"
        self.logs.append(log)
        with open(log, "w") as err:
            env = {**self.env, "GPUPROF_REPLICA": str(index), PARENT_ENV: str(os.getpid())}
            proc = subprocess.Popen([*self.command, spec.to_json()], env=env, stdin=subprocess.PIPE,
                                    stdout=subprocess.PIPE, stderr=err, text=True, bufsize=1, start_new_session=True)
        self.procs.append(proc)
        reader = threading.Thread(target=self._read, args=(index, proc), daemon=True)
        reader.start()
        self.readers.append(reader)

    def _read(self, index: int, proc: subprocess.Popen) -> None:
        for line in proc.stdout:
            if line.startswith(PREFIX + " "):
                kind, _, payload = line[len(PREFIX) + 1 :].strip().partition(" ")
                self.lines.put((index, kind, payload))
        self.lines.put((index, "eof", ""))

    def _next(self, deadline: float, waiting_for: str) -> tuple[int, str, str]:
        try:
            return self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            raise ReplicaFailed(f"the replicas did not {waiting_for} within the time allowed.") from None

    def _failure(self, index: int, kind: str, payload: str) -> ReplicaFailed:
        if kind == "result":
            result = json.loads(payload)
            return ReplicaFailed(f"replica {index}: {result.get('error')}", result.get("status", "error"))
        rc = self.procs[index].wait()
        return ReplicaFailed(f"replica {index} exited with status {rc}: {self.stderr_tail(index) or 'no message'}.")

    def stderr_tail(self, index: int) -> str:
        lines = [line for line in self.logs[index].read_text(errors="replace").splitlines() if line.strip()]
        return lines[-1].strip() if lines else ""

    def wait_ready(self, timeout_s: float) -> None:
        """Return once every replica said ready; raise ReplicaFailed when one fails first or time runs out."""
        deadline = time.monotonic() + timeout_s
        ready: set[int] = set()
        while len(ready) < len(self.procs):
            index, kind, payload = self._next(deadline, "become ready")
            if kind != "ready":
                raise self._failure(index, kind, payload)
            ready.add(index)

    def go(self, deadline: float) -> None:
        """Start every replica; each decodes until `deadline`, a time.monotonic() value shared by all processes."""
        for proc in self.procs:
            proc.stdin.write(f"go {deadline!r}\n")
            proc.stdin.flush()

    def results(self, timeout_s: float) -> list[dict]:
        deadline = time.monotonic() + timeout_s
        results: dict[int, dict] = {}
        while len(results) < len(self.procs):
            index, kind, payload = self._next(deadline, "report their results")
            if kind == "eof" and index in results:
                continue  # it reported, then exited
            if kind != "result":
                raise self._failure(index, kind, payload)
            result = json.loads(payload)
            if result.get("status") != "ok":
                raise self._failure(index, kind, payload)
            results[index] = result
        return [results[i] for i in range(len(self.procs))]

    def close(self) -> None:
        """Stop every replica still running (process groups, SIGTERM then SIGKILL), reap them, remove the logs."""
        for proc in self.procs:
            with contextlib.suppress(OSError):
                proc.stdin.close()
        for proc in self.procs:
            _stop_process(proc)
        for reader in self.readers:
            reader.join(timeout=5)
        if self._own_log_dir and self.log_dir is not None:
            shutil.rmtree(self.log_dir, ignore_errors=True)


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM raises KeyboardInterrupt while inside, so the same cleanup runs as for Ctrl-C."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


# ---------------------------------------------------------------------------------------------------- measuring


def _device_used_bytes() -> int | None:
    """Memory in use on the GPU (contexts included) as NVML sees it; None where NVML cannot say."""
    try:
        import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return None
    try:
        visible = os.environ.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0].strip() or "0"
        if visible.isdigit():
            handle = pynvml.nvmlDeviceGetHandleByIndex(int(visible))
        else:
            handle = pynvml.nvmlDeviceGetHandleByUUID(visible)
        return int(pynvml.nvmlDeviceGetMemoryInfo(handle).used)
    except pynvml.NVMLError:
        return None
    finally:
        pynvml.nvmlShutdown()


def probe_gpu():
    """gpuprof.device.info(), asked of a short-lived process so that this one never holds a CUDA context."""
    from gpuprof.device import GPUInfo

    code = "import json; from gpuprof.device import info; g = info(); print(json.dumps(g.manifest() if g else None))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=plain_env())
    if done.returncode != 0:
        raise GpuprofError(f"could not describe the GPU: {done.stderr.strip().splitlines()[-1:] or 'no message'}.")
    found = json.loads(done.stdout.strip().splitlines()[-1])
    return GPUInfo(**found) if found else None


def run_replicas(
    spec: ReplicaSpec,
    replicas: int,
    mps: bool,
    *,
    command: Sequence[str] | None = None,
    control: str = CONTROL,
    collectors: Sequence[Collector] = (),
    ready_timeout_s: float = 900.0,
) -> dict:
    """One record: `replicas` processes each decoding spec.batch sequences, under MPS or not."""
    shape = get_model(spec.model)
    point = new_point(kernel="decode_replicas", impl=spec.impl, model=shape.name, dtype=spec.dtype, batch=spec.batch,
                      ctx=spec.ctx, hq=shape.heads, hkv=shape.kv_heads, head_dim=shape.head_dim,
                      page_size=spec.page_size, tokens_per_s=None, step_ms=None, memory_bytes=None,
                      joules_per_token=None)
    point.update(replicas=replicas, mps=mps, total_batch=replicas * spec.batch, duration_s=spec.duration_s)
    with contextlib.ExitStack() as stack:
        env = stack.enter_context(MpsDaemon(control)).env if mps else plain_env()
        group = stack.enter_context(ReplicaSet([spec] * replicas, env, command))
        try:
            group.wait_ready(ready_timeout_s)
            point["device_used_bytes"] = _device_used_bytes() if spec.device == "cuda" else None
            for c in collectors:
                c.start(point)
            group.go(time.monotonic() + spec.duration_s)
            results = group.results(spec.duration_s + 120.0)
            counters: dict = {}
            for c in collectors:
                counters.update(c.stop(point))
            point.update(_aggregate(results, spec.batch), **counters, status="ok")
        except ReplicaFailed as e:
            point.update(status=e.status, error=str(e))
            return point
    # the collectors' window is a little longer than the common one: their mean power stands for the common window's
    if counters.get("nvml_power_w") is not None:
        point["joules_per_token"] = counters["nvml_power_w"] / point["tokens_per_s"]
    return point


def _aggregate(results: list[dict], batch: int) -> dict:
    """Aggregate tokens/s over the common window, the time during which every replica was decoding.

    Each replica reports `start` (when it could begin its first step) and `ends` (when each step completed), all
    time.monotonic() values. The common window runs from the latest start to the earliest last end: before it some
    replica had not begun, after it some replica had stopped and the rest had the GPU to themselves. A replica's
    tokens are batch x its steps completed in (window start, window end]; a step that began before the window
    counts whole and one still running at its end not at all, so each replica's count is off by at most one step.
    tokens_per_s = all replicas' tokens / window length. Step latency is the median of each replica's median step.
    """
    start = max(r["start"] for r in results)
    end = min(r["ends"][-1] for r in results)
    steps = [sum(1 for t in r["ends"] if start < t <= end) for r in results]
    if end <= start or 0 in steps:
        raise ReplicaFailed("the replicas did not all complete a step while all were decoding; "
                            "give them a longer --duration.")
    window_s = end - start
    step_ms = [r["step_ms"] for r in results]
    memory = [r.get("memory_bytes") for r in results]
    return {
        "tokens_per_s": sum(steps) * batch / window_s,
        "step_ms": statistics.median(step_ms),
        "time_us": statistics.median(step_ms) * 1e3,
        "replica_step_ms": step_ms,
        "replica_tokens_per_s": [n * batch / window_s for n in steps],
        "memory_bytes": sum(memory) if None not in memory else None,
        "tokens": sum(steps) * batch,
        "window_s": window_s,
    }


def plan(spec: ReplicaSpec, replica_counts: Sequence[int], modes: Sequence[str] = MODES,
         baseline: bool = True) -> list[tuple[ReplicaSpec, int, str]]:
    """(spec, replicas, mode) per record: for each R, one process at R x B (mode "single"), then each mode."""
    runs = []
    for r in replica_counts:
        if baseline and r > 1:
            runs.append((replace(spec, batch=r * spec.batch), 1, "single"))
        runs += [(spec, r, mode) for mode in modes]
    return runs


def replicate(
    spec: ReplicaSpec,
    replica_counts: Sequence[int],
    *,
    modes: Sequence[str] = MODES,
    baseline: bool = True,
    command: Sequence[str] | None = None,
    control: str = CONTROL,
    collectors: Sequence[Collector] = (),
    ready_timeout_s: float = 900.0,
    on_point: Callable[[dict], None] | None = None,
) -> list[dict]:
    """Every record of the plan, each compared with one process at the same total batch (`vs_single`)."""
    unknown = [m for m in modes if m not in MODES]
    if unknown or not modes:
        raise GpuprofError(f"replication modes are {', '.join(MODES)}, not {', '.join(unknown) or 'none'}.")
    if "mps" in modes:
        find_control(control)  # before any work, not after the first runs
    points = []
    with sigterm_as_interrupt():
        for run_spec, replicas, mode in plan(spec, replica_counts, modes, baseline):
            point = run_replicas(run_spec, replicas, mode == "mps", command=command, control=control,
                                 collectors=collectors, ready_timeout_s=ready_timeout_s)
            point["mode"] = mode
            point["vs_single"] = _vs_single(point, points)
            points.append(point)
            if on_point:
                on_point(point)
    return points


def _vs_single(point: dict, earlier: list[dict]) -> float | None:
    """Aggregate tokens/s over that of one process without MPS at the same total batch, measured before it."""
    single = next((p for p in earlier if p["replicas"] == 1 and not p["mps"] and p["status"] == "ok"
                   and p["total_batch"] == point["total_batch"]), None)
    if single is None and point["replicas"] == 1 and not point["mps"]:
        single = point
    if single is None or point["status"] != "ok" or not single["tokens_per_s"]:
        return None
    return point["tokens_per_s"] / single["tokens_per_s"]


# ---------------------------------------------------------------------------------------------------- the worker


class HostMark:
    """The point after a step on the CPU, where a step is done when step() returns: the time then."""

    def __init__(self) -> None:
        self.time = time.monotonic()

    def wait(self) -> float:
        return self.time

    def ms_since(self, earlier: HostMark) -> float:
        return (self.time - earlier.time) * 1e3


class CudaMark:
    """A CUDA event queued after a step: wait() returns the host's time once the GPU has passed it."""

    def __init__(self) -> None:
        import torch

        self.event = torch.cuda.Event(enable_timing=True)
        self.event.record()

    def wait(self) -> float:
        self.event.synchronize()
        return time.monotonic()

    def ms_since(self, earlier: CudaMark) -> float:
        return earlier.event.elapsed_time(self.event)


def decode_window(step: Callable[[], object], deadline: float, mark: Callable[[], HostMark | CudaMark]) -> dict:
    """Steps back to back until the first one completed at or past `deadline` (time.monotonic()).

    Returns when the first step could begin (`start`), when each step completed (`ends`) and the step times. One
    step stays queued behind the one waited for, so the GPU does not idle between steps while the host looks at
    the clock; that queued step ends after the deadline and counts nowhere.
    """
    before = mark()
    start = before.wait()
    step()
    current = mark()
    ends: list[float] = []
    samples_ms: list[float] = []
    while True:
        step()
        queued = mark()
        ends.append(current.wait())
        samples_ms.append(current.ms_since(before))
        if ends[-1] >= deadline:
            break
        before, current = current, queued
    queued.wait()
    return {"start": start, "ends": ends, "step_ms": statistics.median(samples_ms),
            "step_ms_min": min(samples_ms), "step_ms_max": max(samples_ms)}


def worker_main(spec: ReplicaSpec, stdin=None, stdout=None) -> int:
    """The replica process: prepare, say ready, wait for go and the deadline, decode until it, report."""
    import torch

    from gpuprof.decode import build_decoder, make_backend, prepare_batch
    from gpuprof.errors import Unsupported

    stdin, stdout = stdin or sys.stdin, stdout or sys.stdout

    def say(kind: str, payload: dict | None = None) -> None:
        stdout.write(f"{PREFIX} {kind}" + (f" {json.dumps(payload)}" if payload is not None else "") + "\n")
        stdout.flush()

    try:
        backend = make_backend(spec.impl, spec.attention_impl, spec.linear_impls)
        decoder = build_decoder(get_model(spec.model), spec.dtype, spec.device, backend, spec.seed)
        prepared = prepare_batch(decoder, spec.batch, spec.ctx, 0, spec.page_size, spec.seed)
        if not torch.isfinite(prepared.step().float()).all():
            raise GpuprofError("the decode step produced NaN or inf logits.")
    except Unsupported as e:
        say("result", {"status": "unsupported", "error": str(e)})
        return 0
    except torch.cuda.OutOfMemoryError:
        say("result", {"status": "oom", "error": f"out of device memory for a batch of {spec.batch}."})
        return 0
    except GpuprofError as e:
        say("result", {"status": "error", "error": str(e)})
        return 0
    cuda = decoder.device.type == "cuda"
    say("ready")
    words = stdin.readline().split()
    if len(words) != 2 or words[0] != "go":
        return 0  # the parent gave up on this run
    result = decode_window(prepared.step, float(words[1]), CudaMark if cuda else HostMark)
    result["memory_bytes"] = torch.cuda.max_memory_allocated() if cuda else None
    say("result", {"status": "ok", **result})
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] != "--worker":
        sys.exit("usage: python -m gpuprof.replicate --worker SPEC_JSON (started by `gpuprof replicate`)")
    die_with_parent(int(os.environ.get(PARENT_ENV, os.getppid())))  # first, before the slow part
    sys.exit(worker_main(ReplicaSpec.from_json(sys.argv[2])))
