"""GPU memory arithmetic: weights, KV cache, replicas, and the vLLM memory setting that realises a plan.

One replica needs its weights, the KV cache of its batch (every sequence at its peak, prompt + output, in whole
cache blocks), and a workspace allowance for activations, CUDA graphs and the CUDA context. The allowance is an
assumption (default 2 GiB), not a measurement; `--workspace-gb` changes it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from gpuprof.errors import GpuprofError

GiB = 1 << 30
DEFAULT_FRACTION = 0.9  # vLLM's default --gpu-memory-utilization
DEFAULT_WORKSPACE_BYTES = 2 * GiB
BLOCK_TOKENS = 16  # vLLM's default KV-cache block size


@dataclass(frozen=True)
class MemoryBudget:
    gpu_memory_bytes: int
    weights_bytes: int
    kv_bytes_per_token: int
    kv_tokens_per_sequence: float
    fraction: float = DEFAULT_FRACTION  # of the GPU's memory that all replicas together may use
    workspace_bytes: int = DEFAULT_WORKSPACE_BYTES

    def __post_init__(self) -> None:
        if not 0 < self.fraction <= 1:
            raise GpuprofError(f"--memory-fraction must lie in (0, 1] (vLLM's default is 0.9), not {self.fraction:g}.")
        if self.workspace_bytes < 0:
            raise GpuprofError("--workspace-gb must not be negative.")
        if self.gpu_memory_bytes <= 0:
            raise GpuprofError("--gpu-memory-gb must be positive.")

    @property
    def usable_bytes(self) -> float:
        return self.fraction * self.gpu_memory_bytes

    def kv_bytes(self, batch: int) -> float:
        return batch * self.kv_tokens_per_sequence * self.kv_bytes_per_token

    def replica_bytes(self, batch: int) -> float:
        return self.weights_bytes + self.kv_bytes(batch) + self.workspace_bytes

    def utilization(self, batch: int) -> float:
        """vLLM's --gpu-memory-utilization for one replica at `batch`: its share of the GPU, rounded up to 0.01."""
        return math.ceil(round(100 * self.replica_bytes(batch) / self.gpu_memory_bytes, 6)) / 100

    def max_replicas(self, batch: int) -> int:
        """How many replicas at `batch` fit, each given its rounded-up utilization."""
        return int(math.floor(self.fraction / self.utilization(batch) + 1e-9))

    def max_batch(self) -> int:
        """The largest batch one replica can hold (0 where not even one sequence fits)."""
        room = self.usable_bytes - self.weights_bytes - self.workspace_bytes
        batch = max(int(room // (self.kv_tokens_per_sequence * self.kv_bytes_per_token)), 0)
        while batch > 0 and self.max_replicas(batch) < 1:
            batch -= 1
        return batch

    def require_batch_one(self, what: str) -> None:
        """Stop with one sentence where even one sequence does not fit."""
        if self.max_batch() >= 1:
            return
        raise GpuprofError(
            f"{what} cannot fit even at batch 1: it needs {self.replica_bytes(1) / GiB:.1f} GiB (weights "
            f"{self.weights_bytes / GiB:.1f} GiB, KV cache {self.kv_bytes(1) / GiB:.2f} GiB, workspace "
            f"{self.workspace_bytes / GiB:.1f} GiB), more than the {self.usable_bytes / GiB:.1f} GiB usable "
            f"({self.fraction:.0%} of {self.gpu_memory_bytes / GiB:.1f} GiB)."
        )
