"""Run the CUDA kernels on the CPU (csrc/cpu_emulator.cuh): their logic, tested without a GPU.

g++ compiles each csrc/ source with GPUPROF_CPU_EMULATOR defined into a shared library holding every
instantiation in `INSTANCES`, cached on disk by content hash under `cache_dir()`. Each CUDA thread runs as a
fiber, so a launch of a few blocks takes milliseconds to seconds: for tests and small checks only.
"""

from __future__ import annotations

import ctypes
import functools
import os
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from gpuprof.cuda import source
from gpuprof.cuda.instances import INSTANCES

_CTYPES = {
    np.dtype(np.uint64): ctypes.c_uint64,
    np.dtype(np.int64): ctypes.c_int64,
    np.dtype(np.int32): ctypes.c_int32,
    np.dtype(np.float32): ctypes.c_float,
}
_LOCK = threading.Lock()  # the emulator's scheduler state is global: one launch at a time


def cache_dir() -> Path:
    return Path(os.environ.get("GPUPROF_CACHE_DIR", Path.home() / ".cache" / "gpuprof")) / "emulator"


def compiler() -> str | None:
    return os.environ.get("CXX") or shutil.which("g++")


def unavailable_reason() -> str | None:
    from gpuprof.cuda.runtime import cuda_include_dir

    if compiler() is None:
        return "the CPU emulator of the CUDA kernels needs a C++ compiler (g++), and none was found."
    include = cuda_include_dir()
    if include is None or not os.path.isfile(os.path.join(include, "vector_types.h")):
        return "the CPU emulator of the CUDA kernels needs the CUDA headers (cuda_fp16.h); set CUDA_PATH."
    return None


def wrapper_source(source_name: str) -> str:
    """The C++ unit g++ compiles: the kernel source plus one type-erased entry per instantiation."""
    entries = ",\n".join(f"    gpuprof_emu::bind_kernel(&{name})" for name in INSTANCES[source_name])
    return f"""#define GPUPROF_CPU_EMULATOR 1
#include "{source_name}"
#include <cstdio>

static const std::function<void(void**)> kKernels[] = {{
{entries}
}};

extern "C" int gpuprof_emu_launch(int index, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by,
                                  unsigned bz, void** args, char* error, int error_size) {{
  const auto& kernel = kKernels[index];
  const std::string message = gpuprof_emu::run_grid([&] {{ kernel(args); }}, dim3(gx, gy, gz), dim3(bx, by, bz));
  if (message.empty()) return 0;
  std::snprintf(error, error_size, "%s", message.c_str());
  return 1;
}}
"""


@functools.lru_cache(maxsize=None)
def _library(source_name: str) -> ctypes.CDLL:
    from gpuprof.cuda.runtime import cuda_include_dir

    unit = wrapper_source(source_name)
    cxx = compiler()
    include = cuda_include_dir()
    version = subprocess.run([cxx, "--version"], capture_output=True, text=True).stdout
    key = source.digest(source.all_files_digest(), unit, version, str(include))
    target = cache_dir() / f"{Path(source_name).stem}-{key}.so"
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory() as tmp:
            unit_path = Path(tmp) / "unit.cpp"
            unit_path.write_text(unit)
            built = Path(tmp) / target.name
            command = [cxx, "-std=c++17", "-O2", "-shared", "-fPIC", "-fno-strict-aliasing", "-w"]
            command += [f"-I{source.CSRC_DIR}", f"-I{include}", str(unit_path), "-o", str(built)]
            result = subprocess.run(command, capture_output=True, text=True)
            if result.returncode != 0:
                raise RuntimeError(f"g++ could not build the CPU emulator of {source_name}:\n{result.stderr[-4000:]}")
            os.replace(built, target)  # atomic: a concurrent build of the same key is harmless
    library = ctypes.CDLL(str(target))
    library.gpuprof_emu_launch.restype = ctypes.c_int
    library.gpuprof_emu_launch.argtypes = [ctypes.c_int] + [ctypes.c_uint] * 6 + [ctypes.c_void_p] * 2 + [ctypes.c_int]
    return library


def launch(
    source_name: str,
    name_expression: str,
    grid: tuple[int, int, int],
    block: tuple[int, int, int],
    args: Sequence[np.generic],
) -> None:
    """Run one kernel over its grid on the CPU; host pointers stand in for device pointers."""
    index = INSTANCES[source_name].index(name_expression)
    values = [_CTYPES[np.asarray(a).dtype](a.item()) for a in args]
    argv = (ctypes.c_void_p * len(values))(*[ctypes.cast(ctypes.pointer(v), ctypes.c_void_p) for v in values])
    error = ctypes.create_string_buffer(512)
    library = _library(source_name)
    with _LOCK:
        status = library.gpuprof_emu_launch(index, *grid, *block, argv, error, len(error))
    if status != 0:
        raise RuntimeError(f"{name_expression} failed in the CPU emulator: {error.value.decode()}")
