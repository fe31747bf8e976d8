"""The registry of operations: `bench`, `sweep` and `profile` look kernels up here by name."""

from __future__ import annotations

from gpuprof.errors import GpuprofError
from gpuprof.ops.attention import Attention
from gpuprof.ops.base import Launch, Op, Work
from gpuprof.ops.gemv import Gemv
from gpuprof.ops.matmul import Matmul
from gpuprof.ops.memory import Copy, Read

OPS: dict[str, Op] = {op.kernel: op for op in (Copy(), Read(), Matmul(), Attention(), Gemv())}


def get_op(kernel: str) -> Op:
    if kernel not in OPS:
        raise GpuprofError(f"unknown kernel {kernel!r}; valid kernels are {', '.join(sorted(OPS))}.")
    return OPS[kernel]


__all__ = ["OPS", "Launch", "Op", "Work", "get_op"]
