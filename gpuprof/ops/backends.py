"""Where our implementations can run: Triton needs a GPU or its interpreter; the CUDA C++ implementations
(`impl="cuda"`, imported only when asked for) need cupy and a GPU, or on the CPU the g++ emulator of
gpuprof.cuda (slow: for checks at small shapes)."""

from __future__ import annotations

import importlib
from types import ModuleType

import torch

from gpuprof.errors import GpuprofError


def cuda_module(op: str) -> ModuleType:
    """gpuprof.cuda.<op>; a GpuprofError saying why where it cannot be imported."""
    try:
        return importlib.import_module(f"gpuprof.cuda.{op}")
    except ImportError as e:
        raise GpuprofError(f"impl 'cuda' needs gpuprof.cuda.{op}, which cannot be imported here ({e}).") from e


def unavailable(op: str, impl: str, device: str) -> str | None:
    """None where `impl` of `op` can run on `device`, else why not (torch baselines are always tried)."""
    from gpuprof.kernels.common import interpreting  # not at import: Triton reads TRITON_INTERPRET as kernels load

    if impl == "triton" and device == "cpu" and not interpreting():
        return "Triton runs on the CPU only through its interpreter: set TRITON_INTERPRET=1."
    if impl != "cuda":
        return None
    if device == "cuda" and not torch.cuda.is_available():
        return "impl 'cuda' needs an NVIDIA GPU, and none is in use here."
    try:
        cuda_module(op)
    except GpuprofError as e:
        return str(e)
    from gpuprof.cuda import unavailable_reason

    return unavailable_reason(device)
