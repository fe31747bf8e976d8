"""Predicting a decode step from a model's shapes and a calibration.

One step at batch B and mean context c runs layers x attention(B, c) and, for every weight matrix, `count` x
linear(B) (the lm_head once), the small kernels between them (norms, rotary, activation: about four per layer,
`work.small_kernel_work`), plus the step's fixed overhead. Tokens/s = B / step time. The step also records how
long the GPU is busy (without fixed costs), which is what replicas sharing one GPU compete for.
"""

from __future__ import annotations

from dataclasses import dataclass

from gpuprof.advisor.calibration import Calibration
from gpuprof.advisor.work import attention_work, linear_work, small_kernel_work
from gpuprof.models import ModelShape


@dataclass(frozen=True)
class StepPrediction:
    batch: int
    context: float
    step_us: float  # one decode step of one instance running alone
    busy_us: float  # the part of it the GPU spends moving bytes and doing math
    attention_us: float  # all layers' attention calls, fixed costs included
    linear_us: float  # all weight matrices, fixed costs included
    small_us: float  # the small kernels (norms, rotary, activation, bookkeeping), fixed costs included
    bytes: float
    flops: float

    @property
    def tokens_per_s(self) -> float:
        return self.batch / self.step_us * 1e6

    @property
    def itl_ms(self) -> float:
        return self.step_us / 1e3

    def to_dict(self) -> dict:
        return {"batch": self.batch, "context": self.context, "step_us": self.step_us, "busy_us": self.busy_us,
                "attention_us": self.attention_us, "linear_us": self.linear_us, "small_us": self.small_us,
                "bytes": self.bytes,
                "flops": self.flops, "tokens_per_s": self.tokens_per_s, "itl_ms": self.itl_ms}


def predict_step(model: ModelShape, calibration: Calibration, batch: int, context: float,
                 dtype_bytes: int) -> StepPrediction:
    """Predicted time of one decode step of `batch` sequences whose mean context is `context` tokens."""
    attention_fit, linear_fit = calibration.kernels["attention"], calibration.kernels["linear"]
    small_fit = calibration.small_kernel_fit()
    attention = attention_work(batch, context, model.heads, model.kv_heads, model.head_dim, dtype_bytes)
    linears = [(linear_fit, linear_work(batch, l.n, l.k, dtype_bytes), l.count) for l in model.linears()]
    smalls = [(small_fit, work, count) for _, work, count in small_kernel_work(model, batch, dtype_bytes)]
    calls = [(attention_fit, attention, model.layers)] + linears + smalls
    attention_us = model.layers * attention_fit.time_us(attention)
    linear_us = sum(count * fit.time_us(work) for fit, work, count in linears)
    small_us = sum(count * fit.time_us(work) for fit, work, count in smalls)
    return StepPrediction(
        batch=batch,
        context=context,
        step_us=attention_us + linear_us + small_us + calibration.step_overhead_us,
        busy_us=sum(count * fit.busy_us(work) for fit, work, count in calls),
        attention_us=attention_us,
        linear_us=linear_us,
        small_us=small_us,
        bytes=sum(count * work.bytes for _, work, count in calls),
        flops=sum(count * work.flops for _, work, count in calls),
    )


def aggregate(step: StepPrediction, replicas: int) -> tuple[float, float]:
    """(tokens/s of all replicas together, per-token latency in ms) for `replicas` copies sharing one GPU.

    In one round every replica runs one step. The GPU must do every replica's busy work (bandwidth and math are
    shared), while each replica's fixed costs overlap the others' work: a round lasts the longer of one
    replica's own step and the sum of all replicas' busy time.
    """
    round_us = max(step.step_us, replicas * step.busy_us)
    return replicas * step.batch / round_us * 1e6, round_us / 1e3
