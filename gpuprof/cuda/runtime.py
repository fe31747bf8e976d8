"""Compile the CUDA kernels at first use and launch them on torch tensors.

On a GPU, a kernel instantiation is compiled by NVRTC through cupy's `RawModule` the first time it is launched
(a few seconds), for the device's own architecture, with `-lineinfo` so Nsight Compute shows source lines.
cupy keeps the compiled cubin on disk (`cache_dir()`), so later processes load it in milliseconds. Kernels run
on torch's current stream and read and write the tensors' memory in place: no copies, no cupy arrays.

On the CPU, the same sources run through the emulator in `gpuprof.cuda.emulator` (tests and `--device cpu`
checks only). Where a GPU is visible, CPU tensors are refused unless GPUPROF_CUDA_EMULATOR=1 asks for the
emulator: there they are far more likely a mistake than a wish to wait minutes for the emulator.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from gpuprof.cuda import source
from gpuprof.errors import GpuprofError, Unsupported

NVRTC_OPTIONS = ("--std=c++17", "-lineinfo")
EMULATOR_ENV = "GPUPROF_CUDA_EMULATOR"  # "1": run CPU tensors through the emulator even where a GPU is visible


def ptr(t: torch.Tensor | None) -> np.uint64:
    """A kernel's pointer argument: the tensor's device address (0 for None)."""
    return np.uint64(0 if t is None else t.data_ptr())


def is_packed(t: torch.Tensor) -> bool:
    """Contiguous and 16-byte aligned: what the kernels' 16-byte vector loads and stores need."""
    return t.is_contiguous() and t.data_ptr() % 16 == 0


def packed(t: torch.Tensor) -> torch.Tensor:
    """`t` itself when packed, else a packed copy: meant for small tensors (q, x), not caches or weights."""
    return t if is_packed(t) else t.clone(memory_format=torch.contiguous_format)


def packed_output(out: torch.Tensor | None, shape: Sequence[int], like: torch.Tensor) -> torch.Tensor:
    """Where a kernel writes: `out` when packed, else a new packed tensor (copy it into a strided `out` after)."""
    if out is not None and is_packed(out):
        return out
    return torch.empty(tuple(shape), dtype=like.dtype, device=like.device)


def deliver(out: torch.Tensor | None, result: torch.Tensor) -> torch.Tensor:
    """The call's return value: `result`, copied into `out` where the kernel wrote a packed temporary instead."""
    if out is None or result is out:
        return result
    return out.copy_(result)


def i32(v: int) -> np.int32:
    return np.int32(v)


def i64(v: int) -> np.int64:
    return np.int64(v)


def f32(v: float) -> np.float32:
    return np.float32(v)


def cache_dir() -> str:
    """Where cupy keeps compiled kernels between processes (its default, or $CUPY_CACHE_DIR)."""
    return os.environ.get("CUPY_CACHE_DIR", os.path.expanduser("~/.cupy/kernel_cache"))


def cuda_include_dir() -> str | None:
    """A directory holding cuda_fp16.h and cuda_bf16.h for NVRTC, which has no system headers of its own."""
    candidates: list[str] = []
    try:
        import cupy

        cupy_cuda = cupy.cuda.get_cuda_path()
        if cupy_cuda:
            candidates.append(os.path.join(cupy_cuda, "include"))
    except Exception:  # noqa: BLE001 - cupy missing or unable to locate CUDA: try the other places
        pass
    for var in ("CUDA_PATH", "CUDA_HOME"):
        if os.environ.get(var):
            candidates.append(os.path.join(os.environ[var], "include"))
    spec = importlib.util.find_spec("nvidia")  # pip's CUDA wheels (nvidia-cuda-runtime) install headers here
    for root in list(spec.submodule_search_locations or []) if spec else []:
        candidates += sorted(str(p.parent) for p in Path(root).glob("*/include/cuda_fp16.h"))
    nvcc = shutil.which("nvcc")
    if nvcc:
        candidates.append(str(Path(nvcc).resolve().parent.parent / "include"))
    candidates.append("/usr/local/cuda/include")
    for directory in candidates:
        if os.path.isfile(os.path.join(directory, "cuda_fp16.h")):
            return directory
    return None


def nvrtc_options() -> tuple[str, ...]:
    include = cuda_include_dir()
    if include is None:
        raise GpuprofError(
            "NVRTC needs the CUDA headers cuda_fp16.h and cuda_bf16.h and none were found; set CUDA_PATH to a "
            "CUDA toolkit, or `pip install nvidia-cuda-runtime`."
        )
    return NVRTC_OPTIONS + (f"-I{include}",)


def unavailable_reason(device: torch.device | str) -> str | None:
    """None if the CUDA kernels can run on `device`, else one sentence saying why not."""
    device = torch.device(device)
    if device.type == "cpu":
        from gpuprof.cuda import emulator

        return emulator_refusal() or emulator.unavailable_reason()
    if device.type != "cuda":
        return f"the CUDA kernels run on CUDA devices, not {device.type}."
    if importlib.util.find_spec("cupy") is None:
        return "the CUDA kernels are compiled by NVRTC through cupy, which is not installed (pip install '.[cuda]')."
    if cuda_include_dir() is None:
        return "NVRTC needs the CUDA headers (cuda_fp16.h); set CUDA_PATH or pip install nvidia-cuda-runtime."
    return None


def emulator_refusal() -> str | None:
    """Why CPU tensors must not go to the emulator here: a GPU is visible and GPUPROF_CUDA_EMULATOR=1 is unset."""
    if not torch.cuda.is_available() or os.environ.get(EMULATOR_ENV) == "1":
        return None
    return (f"impl 'cuda' got CPU tensors on a machine with a GPU; move them to the GPU, or set {EMULATOR_ENV}=1 "
            "to run the slow CPU emulator.")


@functools.lru_cache(maxsize=None)
def _function(source_name: str, name_expression: str, device_index: int):
    """The compiled kernel: NVRTC on first use in this process, cupy's disk cache after that."""
    import cupy
    from cupy.cuda.compiler import CompileException

    code = source.expanded(source_name)
    with cupy.cuda.Device(device_index):
        try:
            module = cupy.RawModule(code=code, options=nvrtc_options(), name_expressions=[name_expression])
            return module.get_function(name_expression)
        except CompileException as e:
            raise RuntimeError(f"NVRTC could not compile {name_expression}: {e}") from None


@functools.lru_cache(maxsize=None)
def _stream(stream_ptr: int, device_index: int):
    import cupy

    return cupy.cuda.ExternalStream(stream_ptr, device_index)


def launch(
    device: torch.device,
    source_name: str,
    name_expression: str,
    grid: tuple[int, int, int],
    block: tuple[int, int, int],
    args: Sequence[np.generic],
) -> None:
    """Launch one kernel of csrc/`source_name` over `grid` on `device`'s current torch stream."""
    if device.type == "cpu":
        from gpuprof.cuda import emulator

        refusal = emulator_refusal()
        if refusal:
            raise Unsupported(refusal)
        emulator.launch(source_name, name_expression, grid, block, args)
        return
    import cupy

    index = _index(device)
    function = _function(source_name, name_expression, index)
    with cupy.cuda.Device(index), _stream(torch.cuda.current_stream(index).cuda_stream, index):
        function(grid, block, tuple(args))


def sm_count(device: torch.device) -> int:
    """Streaming multiprocessors of the device, for grid sizing (the emulator pretends to have 4)."""
    if device.type != "cuda":
        return 4
    return _sm_count(_index(device))


@functools.lru_cache(maxsize=None)
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def _index(device: torch.device) -> int:
    return device.index if device.index is not None else torch.cuda.current_device()
