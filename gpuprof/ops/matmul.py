"""Dense matrix product through cuBLAS (torch.matmul): the tensor-core (fp16, bf16) and fp32 ceilings."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from gpuprof.errors import Unsupported
from gpuprof.ops.base import Launch, Op, Work, dtype_bytes, torch_dtype


class Matmul(Op):
    """C[m, n] = A[m, k] @ B[k, n]. fp32 measures the plain FMA rate as long as TF32
    stays off (torch's default, `torch.backends.cuda.matmul.allow_tf32 = False`)."""

    kernel = "matmul"
    impls = ("cublas",)
    shape_keys = ("m", "n", "k")
    shape_help = {"m": "rows of A and C", "n": "columns of B and C", "k": "columns of A, rows of B"}
    shape_example = "--m 1,64 --n 4096 --k 4096"

    def work(self, shape: Mapping[str, int], dtype: str) -> Work:
        m, n, k = shape["m"], shape["n"], shape["k"]
        return Work(bytes=(m * k + k * n + m * n) * dtype_bytes(dtype), flops=2 * m * n * k)

    def input_bytes(self, shape: Mapping[str, int], dtype: str) -> int:
        return self.work(shape, dtype).bytes

    def make_inputs(self, shape, dtype, device, generator) -> dict:
        t = torch_dtype(dtype)
        a = torch.randn(shape["m"], shape["k"], generator=generator, device=device, dtype=t)
        b = torch.randn(shape["k"], shape["n"], generator=generator, device=device, dtype=t)
        return {"a": a, "b": b, "c": torch.empty(shape["m"], shape["n"], dtype=t, device=device)}

    def launch(self, impl: str, inputs: dict) -> Launch:
        if impl != "cublas":
            raise Unsupported(f"matmul has no implementation {impl!r}; it has {', '.join(self.impls)}.")
        a, b, c = inputs["a"], inputs["b"], inputs["c"]
        return Launch(run=lambda: torch.matmul(a, b, out=c), out=c)

    def reference(self, inputs: dict) -> torch.Tensor:
        return inputs["a"].double() @ inputs["b"].double()

    def tolerance(self, dtype: str) -> float:
        return {"fp32": 1e-5, "fp16": 2e-3, "bf16": 1e-2}[dtype]
