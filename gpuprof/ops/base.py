"""What an operation gives the harness: inputs, launches per implementation, a reference, exact work counts.

A new kernel or implementation is one `Op` (or one more entry in an op's `impls`) and one test file; `bench`,
`sweep`, `profile` and `report` take it from the registry in `gpuprof.ops` without further change.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch

from gpuprof.errors import GpuprofError

DTYPES: dict[str, torch.dtype] = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


def torch_dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise GpuprofError(f"unknown dtype {name!r}; valid dtypes are {', '.join(DTYPES)}.")
    return DTYPES[name]


def dtype_bytes(name: str) -> int:
    return torch.empty((), dtype=torch_dtype(name)).element_size()


@dataclass(frozen=True)
class Work:
    """The minimum bytes a call must move through device memory, and the floating-point operations it does."""

    bytes: int
    flops: int


@dataclass
class Launch:
    """One implementation bound to one input set.

    `run()` performs the operation and returns its output. `out` is the preallocated tensor `run` writes into,
    if any: it is poisoned with NaN before the correctness check, so an unwritten element cannot pass.
    """

    run: Callable[[], torch.Tensor]
    out: torch.Tensor | None = None


class Op:
    """Base of an operation. Subclasses set `kernel`, `impls`, and implement the methods below."""

    kernel: str = ""
    impls: tuple[str, ...] = ()
    shape_keys: tuple[str, ...] = ()  # the contract's shape fields that this op uses
    shape_help: dict[str, str] = {}  # what each shape field counts, for the error when one is missing
    shape_example: str = ""  # shape options of a sensible first run, for the same error
    # Check the worst row of the output's leading dimension instead of the whole: where the rows are separate
    # problems (the sequences of a batch) whose norms differ widely.
    error_per_row: bool = False

    def shape(self, **given: int) -> dict[str, int]:
        """Complete and check a shape (fill defaults, reject impossible combinations with GpuprofError)."""
        missing = [k for k in self.shape_keys if given.get(k) is None]
        if missing:
            needs = ", ".join(f"--{k.replace('_', '-')} ({self.shape_help.get(k, k)})" for k in missing)
            raise GpuprofError(f"{self.kernel} needs {needs}; for example {self.shape_example}.")
        return {k: int(given[k]) for k in self.shape_keys}

    def work(self, shape: Mapping[str, int], dtype: str) -> Work:
        raise NotImplementedError

    def input_bytes(self, shape: Mapping[str, int], dtype: str) -> int:
        """Device memory one input set (with its output) occupies."""
        raise NotImplementedError

    def make_inputs(self, shape: Mapping[str, int], dtype: str, device: str, generator: torch.Generator) -> dict:
        """Fresh random inputs on `device`, drawn there with `generator` (a generator of that device)."""
        raise NotImplementedError

    def launch(self, impl: str, inputs: dict) -> Launch:
        """Bind an implementation to inputs; raise `Unsupported` where it cannot run them."""
        raise NotImplementedError

    def reference(self, inputs: dict) -> torch.Tensor:
        """The plain-torch answer in float32 or float64."""
        raise NotImplementedError

    def tolerance(self, dtype: str) -> float:
        """Largest relative error ||out - ref|| / ||ref|| accepted for this dtype (of the worst row, with
        `error_per_row`)."""
        return {"fp32": 1e-4, "fp16": 5e-3, "bf16": 1e-2}[dtype]

    def available(self, impl: str, device: str) -> str | None:
        """None if `impl` can run on `device`, else the reason it cannot."""
        return None
