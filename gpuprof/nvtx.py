"""NVTX ranges around gpuprof's launches, so profilers can keep exactly the measured ones.

Every point is one push/pop range of the domain `gpuprof`, named after what runs and where (the point message,
e.g. `attention/triton #3 batch=256 ctx=2048 hq=32 hkv=8 head_dim=128 dtype=bf16`). Inside it, one range per
phase: `check` (the correctness run), `warmup`, `measure` (the timed or profiled launches) and `counters` (the
window an NVML sampler watches). The phase is the innermost gpuprof range when a kernel launches, so the Nsight
Compute filter `gpuprof@measure/` selects the measured launches alone: by the Nsight Compute CLI guide (NVTX
Filtering), a single push/pop range name followed by `/` matches that range anywhere in the domain's stack (`[` and
`]` would pin it to the bottom or top), so the point's range around it does not get in the way. The `/` inside
`attention/triton` never takes part in a filter.

With no tool attached the nvtx package hands out a do-nothing domain (well under a microsecond per range, and
ranges wrap launch groups, never single launches); without the nvtx package the ranges are skipped altogether.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass

DOMAIN = "gpuprof"
PHASES = ("check", "warmup", "measure", "counters")
MEASURE_FILTER = f"{DOMAIN}@measure/"  # Nsight Compute's --nvtx-include for the measured launches

# Messages hold no ':' or '"': Nsight Compute separates the fields of its NVTX column with them.
_POINT = re.compile(r"(?P<kernel>[\w.+-]+)/(?P<impl>[\w.+-]+) #(?P<id>\d+)(?P<params>(?: [\w.+-]+=[\w.+-]+)*)")
_ids = itertools.count(1)
_domain = None


class _NoDomain:
    """Stands in where the nvtx package is not installed."""

    def push_range(self, *, message: str) -> None:
        pass

    def pop_range(self) -> None:
        pass


def domain():
    """The `gpuprof` NVTX domain: a do-nothing object unless a tool (nsys, ncu) is attached."""
    global _domain
    if _domain is None:
        try:
            import nvtx
        except ImportError:
            _domain = _NoDomain()
        else:
            _domain = nvtx.get_domain(DOMAIN)
    return _domain


def available() -> bool:
    """Whether the nvtx package is installed (without it, gpuprof emits no ranges)."""
    import importlib.util

    return importlib.util.find_spec("nvtx") is not None


def enabled() -> bool:
    """Whether a tool listens to the gpuprof domain in this process."""
    # nvtx's real Domain carries a handle; its stand-in for "no tool attached" does not.
    return getattr(domain(), "handle", None) is not None


@contextmanager
def nvtx_range(message: str) -> Iterator[None]:
    """A push/pop range of the gpuprof domain around the block, popped even when the block raises."""
    d = domain()
    d.push_range(message=message)
    try:
        yield
    finally:
        d.pop_range()


@contextmanager
def phase(name: str) -> Iterator[None]:
    """One of PHASES, nested inside the point's range."""
    if name not in PHASES:
        raise ValueError(f"phase must be one of {PHASES}, not {name!r}")
    with nvtx_range(name):
        yield


def next_point_id() -> int:
    """Numbers the points of this process 1, 2, 3, ...: with the process id, it joins profiler rows to points."""
    return next(_ids)


def _token(value: object) -> str:
    return re.sub(r"[^\w.+-]", "_", str(value))


def point_message(kernel: str, impl: str, point_id: int, params: Mapping[str, object]) -> str:
    """`<kernel>/<impl> #<id> key=value ...` for the parameters that are set, in the order given."""
    words = [f"{_token(kernel)}/{_token(impl)} #{point_id}"]
    words += [f"{_token(k)}={_token(v)}" for k, v in params.items() if v is not None]
    return " ".join(words)


@dataclass(frozen=True)
class PointMessage:
    kernel: str
    impl: str
    point_id: int
    params: dict[str, str]


def find_point_message(text: str) -> PointMessage | None:
    """The first point message inside `text` (a range name, or a whole cell of a profiler's NVTX column)."""
    m = _POINT.search(text)
    if m is None:
        return None
    params = dict(word.split("=", 1) for word in m.group("params").split())
    return PointMessage(m.group("kernel"), m.group("impl"), int(m.group("id")), params)
