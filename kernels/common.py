"""Pieces shared by the decode kernels: the interpreter switch, a matrix product that survives it, and the
split-K arrival counters (also used by the CUDA GEMV in gpuprof/cuda)."""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl


def interpreting() -> bool:
    """Whether Triton runs kernels through its CPU interpreter (TRITON_INTERPRET=1) instead of compiling them."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


@triton.jit
def dot_acc(a, b, acc, FP32_OPERANDS: tl.constexpr):
    """acc + a @ b with float32 accumulation.

    On the GPU the fp16/bf16 operands go to the tensor cores as they are. The interpreter computes a bf16 product
    wrongly (numpy has no bf16), so there the operands are widened first (FP32_OPERANDS); callers round values
    to the storage dtype before calling. The interpreter truncates float32 to bf16 where the GPU rounds to
    nearest, so bf16 errors measured on the CPU run up to about twice what the GPU gives.
    """
    if FP32_OPERANDS:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")
    return tl.dot(a, b, acc)


# Arrival counters of the split-K last-arrival reduction, zero between calls (the last split of a tile resets its
# own). Calls on one stream run one after another, so they share a set; concurrent streams each get their own.
# A set is never made during CUDA-graph capture: its zero fill would only be recorded, not run, and another graph
# or an eager call could use the set before that graph's first replay.
_arrivals: dict[tuple[torch.device, int], torch.Tensor] = {}
# Outgrown sets are kept: a CUDA graph captured earlier still points at the old set, which must stay allocated
# (and at zero) for its replays.
_outgrown: list[torch.Tensor] = []


def arrival_counters(device: torch.device, tiles: int) -> torch.Tensor:
    """int32 counters, one per output tile, zero between launches, for launches on the current stream of device."""
    stream = torch.cuda.current_stream(device).stream_id if device.type == "cuda" else 0
    key = (device, stream)
    counters = _arrivals.get(key)
    if counters is None or counters.numel() < tiles:
        if device.type == "cuda" and torch.cuda.is_current_stream_capturing():
            raise RuntimeError("split-K GEMV captured in a CUDA graph before any call on the capture stream: run it "
                               "once on that stream first (warm up on the stream you pass to torch.cuda.graph).")
        if counters is not None:
            _outgrown.append(counters)
        counters = torch.zeros(max(tiles, 1024), dtype=torch.int32, device=device)
        _arrivals[key] = counters
    return counters
