"""Streaming memory operations used as bandwidth ceilings: a device-to-device copy and a read-only reduction."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from gpuprof.errors import Unsupported
from gpuprof.ops.base import Launch, Op, Work, dtype_bytes, torch_dtype


class Copy(Op):
    """dst = src over n elements: every byte read once and written once (both counted)."""

    kernel = "copy"
    impls = ("torch",)
    shape_keys = ("n",)
    shape_help = {"n": "elements"}
    shape_example = "--n 100000000"

    def work(self, shape: Mapping[str, int], dtype: str) -> Work:
        return Work(bytes=2 * shape["n"] * dtype_bytes(dtype), flops=0)

    def input_bytes(self, shape: Mapping[str, int], dtype: str) -> int:
        return self.work(shape, dtype).bytes

    def make_inputs(self, shape, dtype, device, generator) -> dict:
        src = torch.randn(shape["n"], generator=generator, device=device, dtype=torch_dtype(dtype))
        return {"src": src, "dst": torch.empty_like(src)}

    def launch(self, impl: str, inputs: dict) -> Launch:
        if impl != "torch":
            raise Unsupported(f"copy has no implementation {impl!r}; it has {', '.join(self.impls)}.")
        src, dst = inputs["src"], inputs["dst"]
        return Launch(run=lambda: dst.copy_(src), out=dst)

    def reference(self, inputs: dict) -> torch.Tensor:
        return inputs["src"].float()

    def tolerance(self, dtype: str) -> float:
        return 0.0


class Read(Op):
    """A read-only streaming reduction (our Triton kernel): n elements read, one float32 per program written."""

    kernel = "read"
    impls = ("triton",)
    shape_keys = ("n",)
    shape_help = {"n": "elements"}
    shape_example = "--n 100000000"

    def work(self, shape: Mapping[str, int], dtype: str) -> Work:
        return Work(bytes=shape["n"] * dtype_bytes(dtype), flops=shape["n"])

    def input_bytes(self, shape: Mapping[str, int], dtype: str) -> int:
        return self.work(shape, dtype).bytes

    def make_inputs(self, shape, dtype, device, generator) -> dict:
        x = torch.randn(shape["n"], generator=generator, device=device, dtype=torch_dtype(dtype))
        return {"x": x}

    def available(self, impl: str, device: str) -> str | None:
        return None

    def launch(self, impl: str, inputs: dict) -> Launch:
        from gpuprof.kernels.stream import read_sum, read_sum_partials

        if impl != "triton":
            raise Unsupported(f"read has no implementation {impl!r}; it has {', '.join(self.impls)}.")
        x = inputs["x"]
        partials = read_sum_partials(x)
        return Launch(run=lambda: read_sum(x, partials).sum().reshape(1), out=partials)

    def reference(self, inputs: dict) -> torch.Tensor:
        return inputs["x"].double().sum().reshape(1)

    def tolerance(self, dtype: str) -> float:
        return 1e-5
