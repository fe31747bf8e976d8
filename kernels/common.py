"""Pieces shared by the Triton kernels: the interpreter switch and a matrix product that survives it."""

from __future__ import annotations

import os

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
    to the storage dtype before calling, so the interpreter still sees the GPU's rounding.
    """
    if FP32_OPERANDS:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")
    return tl.dot(a, b, acc)
