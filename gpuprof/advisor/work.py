"""The minimum bytes and FLOPs of the two kernels of a decode step, counted one way for fitting and predicting.

`gpuprof calibrate` fits effective bandwidth and compute to these counts, and the advisor predicts with the same
counts, so a counting convention (a page table, a bias vector) cannot bias a prediction: it is absorbed into the
fitted rates. Both kernels are counted as the record contract's `bytes` and `flops`: every input read once and
every output written once; a multiply-add is 2 FLOPs.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Work:
    bytes: float
    flops: float


def attention_work(batch: int, ctx: float, hq: int, hkv: int, head_dim: int, dtype_bytes: int) -> Work:
    """One decode-attention call of one layer: each of `batch` queries attends over `ctx` cached tokens.

    Bytes: the K and V caches (2 x batch x ctx x hkv x head_dim), the query and the output (batch x hq x
    head_dim each). FLOPs: q.K^T and p.V, 2 x 2 x batch x hq x ctx x head_dim; the softmax is left out.
    """
    kv = 2 * batch * ctx * hkv * head_dim
    q_and_out = 2 * batch * hq * head_dim
    return Work(bytes=(kv + q_and_out) * dtype_bytes, flops=4.0 * batch * hq * ctx * head_dim)


def linear_work(m: int, n: int, k: int, dtype_bytes: int) -> Work:
    """y[m, n] = x[m, k] @ W[n, k]^T: the weight, the input and the output once each; 2 m n k FLOPs."""
    return Work(bytes=float(n * k + m * k + m * n) * dtype_bytes, flops=2.0 * m * n * k)
