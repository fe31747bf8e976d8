"""The minimum bytes and FLOPs of the two kernels of a decode step, counted one way for fitting and predicting.

`gpuprof calibrate` fits effective bandwidth and compute to these counts, and the advisor predicts with the same
counts, so a counting convention (a page table, a bias vector) cannot bias a prediction: it is absorbed into the
fitted rates. Both kernels are counted as the record contract's `bytes` and `flops`: every input read once and
every output written once; a multiply-add is 2 FLOPs.
"""

from __future__ import annotations

from dataclasses import dataclass

from gpuprof.models import ModelShape


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


# Bookkeeping launches of every step in gpuprof/decode.py (Decoder.step): positions from the lengths (2), page and
# slot of each new token (4), the token embedding (1); learned positions add an index shift, a lookup and a sum.
_STEP_BOOKKEEPING = 7
_LEARNED_POSITIONS = 3


def small_kernel_work(model: ModelShape, batch: int, dtype_bytes: int) -> list[tuple[str, Work, int]]:
    """The step's small kernels as gpuprof's decode runs them: (name, work of one call, calls per step).

    Per layer: residual add + norm twice, rotary + cache write, the activation; then the final add + norm and the
    bookkeeping. They move kilobytes at decode batch sizes, so their time is mostly their fixed cost per call.
    """
    d, size = model.hidden, dtype_bytes
    qkv = (model.heads + 2 * model.kv_heads) * model.head_dim
    add_norm = Work(bytes=float(4 * batch * d * size + 4 * d * 4), flops=0.0)  # x, delta in; x, h out; fp32 weight
    rotary = Work(bytes=float(2 * batch * qkv * size), flops=0.0)
    inner = model.intermediate
    act_in = 2 * inner if model.mlp == "gated" else inner
    activation = Work(bytes=float(batch * (act_in + inner) * size), flops=0.0)
    bookkeeping = Work(bytes=float(batch * (d * size + 64)), flops=0.0)
    calls = _STEP_BOOKKEEPING + (0 if model.rotary else _LEARNED_POSITIONS)
    return [
        ("add_norm", add_norm, 2 * model.layers + 1),
        ("rotary_cache_write", rotary, model.layers),
        ("activation", activation, model.layers),
        ("bookkeeping", bookkeeping, calls),
    ]
