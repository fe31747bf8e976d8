"""Input checks shared by the op launchers, each failing with one sentence that names the argument."""

from __future__ import annotations

from collections.abc import Iterable

import torch

from gpuprof.errors import GpuprofError

HALF_DTYPES = (torch.float16, torch.bfloat16)


def describe(t: torch.Tensor) -> str:
    return f"{t.dtype} of shape {tuple(t.shape)}"


def require_tensors(named: Iterable[tuple[str, object]]) -> None:
    for name, t in named:
        if not isinstance(t, torch.Tensor):
            raise GpuprofError(f"{name} must be a torch.Tensor, not {type(t).__name__}.")


def require_half(name: str, t: torch.Tensor) -> None:
    if t.dtype not in HALF_DTYPES:
        raise GpuprofError(f"{name} must be torch.float16 or torch.bfloat16, not {t.dtype}.")


def require_same_device(first: str, ref: torch.Tensor, named: Iterable[tuple[str, torch.Tensor | None]]) -> None:
    for name, t in named:
        if t is not None and t.device != ref.device:
            raise GpuprofError(f"{name} is on {t.device} but {first} is on {ref.device}; "
                               "all inputs must be on one device.")


def require_same_dtype(first: str, ref: torch.Tensor, named: Iterable[tuple[str, torch.Tensor | None]]) -> None:
    for name, t in named:
        if t is not None and t.dtype != ref.dtype:
            raise GpuprofError(f"{name} must have {first}'s dtype {ref.dtype}, not {t.dtype}.")


def require_last_dim_contiguous(named: Iterable[tuple[str, torch.Tensor | None]]) -> None:
    """The kernels read rows with vector loads: the innermost dimension must have stride 1."""
    for name, t in named:
        if t is not None and t.shape[-1] > 1 and t.stride(-1) != 1:
            raise GpuprofError(f"{name}'s last dimension must be contiguous (stride 1, not {t.stride(-1)}); "
                               f"pass {name}.contiguous().")


def byte_range(t: torch.Tensor) -> tuple[int, int]:
    """[first, last + 1) bytes that `t`'s elements can occupy (its extent: gaps between strided rows included)."""
    start = t.data_ptr()
    if t.numel() == 0:
        return start, start
    last = sum((size - 1) * stride for size, stride in zip(t.shape, t.stride()))
    return start, start + (last + 1) * t.element_size()


def require_no_overlap(out: torch.Tensor | None, named: Iterable[tuple[str, torch.Tensor | None]]) -> None:
    """The kernels read their inputs while writing `out` (and the tuner writes every candidate into it), so an
    `out` sharing memory with an input gives wrong results. Extents are compared, which is conservative: two
    interleaved views of one buffer count as overlapping."""
    if out is None:
        return
    out_start, out_end = byte_range(out)
    for name, t in named:
        if t is None or t.device != out.device:
            continue
        start, end = byte_range(t)
        if start < out_end and out_start < end:
            raise GpuprofError(f"out must not overlap {name} in memory (the kernel reads {name} while writing out); "
                               "pass a separate out tensor.")
