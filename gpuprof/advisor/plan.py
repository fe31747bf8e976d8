"""From a throughput curve (measured or predicted) to a serving plan: B_opt, memory, replicas, vLLM settings.

`advise_model` predicts the curve from a model, a calibration and a workload; `advise_profile` takes a measured
curve and, given a model, adds the memory and replica plan. Both return one JSON-ready dictionary, which the CLI
prints as tables or as JSON.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from gpuprof.advisor.calibration import SMALL_KERNELS, Calibration
from gpuprof.advisor.criteria import RULES, Criteria, CurvePoint, choose
from gpuprof.advisor.memory import BLOCK_TOKENS, DEFAULT_FRACTION, DEFAULT_WORKSPACE_BYTES, MemoryBudget
from gpuprof.advisor.model import StepPrediction, aggregate, predict_step
from gpuprof.advisor.profile import ServingTable
from gpuprof.advisor.workload import Workload
from gpuprof.errors import GpuprofError
from gpuprof.models import ModelShape
from gpuprof.ops.base import dtype_bytes

VLLM_DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}
SAME_THROUGHPUT = 0.01  # replica counts whose throughput differs by less than this are a tie: fewer wins


@dataclass(frozen=True)
class Gpu:
    name: str
    memory_bytes: int
    memory_source: str  # where the memory size comes from: this GPU, the datasheet, or --gpu-memory-gb


@dataclass(frozen=True)
class Deployment:
    dtype: str = "bf16"
    fraction: float = DEFAULT_FRACTION
    workspace_bytes: int = DEFAULT_WORKSPACE_BYTES
    rule: str = "gain"  # which rule's batch the plan is built on

    def __post_init__(self) -> None:
        if self.rule not in RULES:
            raise GpuprofError(f"--rule must be one of {', '.join(RULES)}, not {self.rule!r}.")
        if self.dtype not in VLLM_DTYPES:
            raise GpuprofError(f"--dtype must be one of {', '.join(VLLM_DTYPES)}, not {self.dtype!r}.")


@dataclass(frozen=True)
class Serving:
    """What is served, where, with which time model, under which workload."""

    model: ModelShape
    calibration: Calibration
    gpu: Gpu
    workload: Workload


def require_context_fits(model: ModelShape, workload: Workload) -> None:
    """Stop where the longest sequence is beyond the model's positions: vLLM refuses that --max-model-len."""
    if workload.max_tokens > model.max_position:
        raise GpuprofError(
            f"the longest sequence ({workload.max_tokens} tokens, prompt + output) exceeds {model.name}'s "
            f"{model.max_position} positions; shorten the prompt or output, or choose a model with a longer context.")


def budget_for(serving: Serving, deployment: Deployment) -> MemoryBudget:
    require_context_fits(serving.model, serving.workload)
    size = dtype_bytes(deployment.dtype)
    model, gpu = serving.model, serving.gpu
    budget = MemoryBudget(gpu.memory_bytes, model.weight_bytes(size), model.kv_bytes_per_token(size),
                          serving.workload.kv_tokens_per_sequence(BLOCK_TOKENS), deployment.fraction,
                          deployment.workspace_bytes)
    budget.require_batch_one(f"{model.name} in {deployment.dtype} on {gpu.name}")
    return budget


def default_batches(max_batch: int) -> list[int]:
    """Powers of two up to the largest batch that fits, and that batch itself."""
    batches = [1 << i for i in range(max_batch.bit_length()) if 1 << i <= max_batch]
    return batches + ([max_batch] if batches[-1] != max_batch else [])


def predict_steps(serving: Serving, deployment: Deployment, batches: Sequence[int]) -> dict[int, StepPrediction]:
    context = serving.workload.mean_decode_context()
    size = dtype_bytes(deployment.dtype)
    return {b: predict_step(serving.model, serving.calibration, b, context, size) for b in batches}


def advise_model(serving: Serving, criteria: Criteria, deployment: Deployment,
                 batches: Sequence[int] | None = None) -> dict:
    """Predict the curve over batch sizes, choose B_opt, and plan memory, replicas and vLLM settings."""
    budget = budget_for(serving, deployment)
    max_batch, notes = budget.max_batch(), []
    if batches:
        too_big = sorted(b for b in batches if b > max_batch)
        batches = sorted({b for b in batches if b <= max_batch})
        if too_big:
            notes.append(f"batches {', '.join(map(str, too_big))} do not fit in memory (at most {max_batch}) "
                         "and were left out")
        if not batches:
            raise GpuprofError(
                f"none of the --batches fits in memory; one replica holds at most {max_batch} sequences.")
    else:
        batches = default_batches(max_batch)
    steps = predict_steps(serving, deployment, batches)
    curve = [CurvePoint(b, s.tokens_per_s, s.itl_ms) for b, s in steps.items()]
    end = "the largest batch that fits in memory, which is what limits it" if batches[-1] == max_batch else None
    report = _choose(curve, criteria, deployment, "predicted", end)
    plan = _serving_plan(serving, deployment, budget, steps, report["b_opt"],
                         (max_batch, "the largest batch one replica holds"), report["latency_bound_ms"], anchors={})
    report["notes"] = notes + plan.pop("notes")
    report.update(plan, mode="model", predictions=[s.to_dict() for s in steps.values()])
    return report


def advise_profile(table: ServingTable, criteria: Criteria, deployment: Deployment,
                   serving: Serving | None = None) -> dict:
    """Choose B_opt on a measured curve; with a model, plan memory and replicas around the measured points."""
    report = _choose(table.points, criteria, deployment, "measured",
                     "the largest measured batch; larger ones may still pay")
    for row in report["curve"]:
        row.update(table.extra.get(row["batch"], {}))
    report["mode"] = "profile"
    report["profile"] = {"path": str(table.path), "columns": table.columns, "notes": table.notes}
    b_opt = report["b_opt"]
    if serving is None:
        report.update(gpu=None, model=None, workload=None, prediction=None, memory=None, replicas=None, pareto=None,
                      vllm={"max_num_seqs": b_opt})
        report["notes"].append("give --model (and the workload) for the memory plan, replicas and vLLM memory settings")
        return report
    budget = budget_for(serving, deployment)
    fitting = [p for p in table.points if p.batch <= budget.max_batch()]
    if len(fitting) < len(table.points):
        report["notes"].append(f"batches above {budget.max_batch()} were measured but do not fit this workload's "
                               "KV cache in the memory plan; they are left out of replicas and the Pareto frontier")
    steps = predict_steps(serving, deployment, [p.batch for p in fitting])
    largest = _largest_reachable(table.points[-1].batch, budget.max_batch())
    plan = _serving_plan(serving, deployment, budget, steps, b_opt, largest, report["latency_bound_ms"],
                         anchors={p.batch: p for p in fitting})
    report["notes"] += plan.pop("notes")
    report.update(plan)
    return report


def _largest_reachable(measured: int, fits: int) -> tuple[int, str]:
    """The batch "memory freed" is counted from: the largest measured, unless it does not fit in memory."""
    if measured <= fits:
        return measured, "the largest measured batch"
    # Memory a plan could never hold is not freed by choosing B_opt: count from the largest batch that fits.
    return fits, f"the largest batch that fits in memory; the largest measured, {measured}, does not"


def _choose(curve: Sequence[CurvePoint], criteria: Criteria, deployment: Deployment, origin: str,
            end: str | None) -> dict:
    selection = choose(curve, criteria, *([end] if end else []))
    return {
        "criteria": {**asdict(criteria), "rule": deployment.rule},
        "curve_origin": origin,
        **selection.to_dict(),
        "b_opt": selection.choices[deployment.rule].batch,
        "rule": deployment.rule,
        "notes": [],
    }


def _serving_plan(serving: Serving, deployment: Deployment, budget: MemoryBudget, steps: dict[int, StepPrediction],
                  b_opt: int, largest: tuple[int, str], bound_ms: float | None, anchors: dict[int, CurvePoint]) -> dict:
    """Memory, replicas, the Pareto frontier and vLLM settings; `anchors` are measured points to scale from."""
    plan = {"gpu": asdict(serving.gpu), "model": _model_summary(serving.model, deployment.dtype),
            "workload": serving.workload.summary(), "prediction": _prediction_summary(serving.calibration),
            "memory": _memory(budget, serving.gpu, b_opt, largest), "replicas": None, "pareto": None,
            "vllm": {"max_num_seqs": b_opt}, "notes": []}
    notes = plan["notes"]
    if b_opt in steps:
        rows = {b: _replica_rows(s, budget, anchors.get(b), bound_ms) for b, s in steps.items()}
        instances = _best_replicas(rows[b_opt])
        every_plan = [r for batch_rows in rows.values() for r in batch_rows]
        plan.update(replicas=rows[b_opt], pareto=pareto_frontier(every_plan),
                    vllm=vllm_settings(serving.model, deployment.dtype, b_opt, budget.utilization(b_opt), instances,
                                       serving.workload.max_tokens))
        notes += _pareto_notes(plan["pareto"], b_opt, instances)
        if anchors:
            notes.append("replica rows: the measured single-instance point scaled by the model's predicted "
                         "replica gain")
    else:
        notes.append(f"B_opt {b_opt} does not fit this workload's KV cache in memory; no replica plan")
    notes += _model_notes(serving.calibration)
    return plan


def _pareto_notes(pareto: list[dict] | None, b_opt: int, instances: int) -> list[str]:
    if pareto is None:
        return ["no inter-token latency in the profile: the throughput/latency Pareto frontier needs one"]
    best = max((r for r in pareto if r["within_latency"] is not False), key=lambda r: r["tokens_per_s"], default=None)
    if best is None or (best["batch"], best["replicas"]) == (b_opt, instances):
        return []
    return [f"on the Pareto frontier, {best['replicas']} replica(s) at batch {best['batch']} give "
            f"{best['tokens_per_s']:,.0f} tokens/s at {best['itl_ms']:.3g} ms per token, the most within the "
            "latency bound"]


def _replica_rows(step: StepPrediction, budget: MemoryBudget, anchor: CurvePoint | None,
                  bound_ms: float | None) -> list[dict]:
    """Predicted throughput and latency of 1, 2, ... replicas at one batch, as many as fit in memory.

    With an anchor (a measured single-instance point) the rows are the measurement times the predicted ratio.
    """
    one_tps, one_itl = aggregate(step, 1)
    rows = []
    for replicas in range(1, budget.max_replicas(step.batch) + 1):
        tps, itl = aggregate(step, replicas)
        if anchor is not None:
            tps = anchor.tokens_per_s * tps / one_tps
            itl = anchor.itl_ms * itl / one_itl if anchor.itl_ms is not None else None
        within = None if bound_ms is None or itl is None else itl <= bound_ms
        rows.append({"replicas": replicas, "batch": step.batch, "tokens_per_s": tps, "itl_ms": itl,
                     "within_latency": within, "memory_bytes": replicas * budget.replica_bytes(step.batch),
                     "utilization_each": budget.utilization(step.batch)})
    return rows


def _best_replicas(rows: list[dict]) -> int:
    """The replica count with the most throughput within the latency bound; fewer replicas win near-ties."""
    allowed = [r for r in rows if r["within_latency"] is not False] or rows[:1]
    best = max(r["tokens_per_s"] for r in allowed)
    return next(r["replicas"] for r in allowed if r["tokens_per_s"] >= (1 - SAME_THROUGHPUT) * best)


def pareto_frontier(rows: list[dict]) -> list[dict] | None:
    """The (batch, replicas) points no other point beats on both throughput and per-token latency."""
    if any(r["itl_ms"] is None for r in rows):
        return None
    frontier, best = [], 0.0
    for r in sorted(rows, key=lambda r: (r["itl_ms"], -r["tokens_per_s"])):
        if r["tokens_per_s"] > best:
            frontier.append(r)
            best = r["tokens_per_s"]
    return frontier


def _memory(budget: MemoryBudget, gpu: Gpu, b_opt: int, largest: tuple[int, str]) -> dict:
    largest_batch, largest_what = largest
    return {
        "gpu_memory_bytes": gpu.memory_bytes,
        "gpu_memory_source": gpu.memory_source,
        "fraction": budget.fraction,
        "usable_bytes": budget.usable_bytes,
        "workspace_bytes": budget.workspace_bytes,
        "workspace_is_assumed": True,
        "weights_bytes": budget.weights_bytes,
        "kv_bytes_per_token": budget.kv_bytes_per_token,
        "kv_tokens_per_sequence": budget.kv_tokens_per_sequence,
        "block_tokens": BLOCK_TOKENS,
        "b_opt": b_opt,
        "kv_bytes_b_opt": budget.kv_bytes(b_opt),
        "replica_bytes_b_opt": budget.replica_bytes(b_opt),
        "largest_batch": largest_batch,
        "largest_batch_is": largest_what,
        "kv_bytes_largest": budget.kv_bytes(largest_batch),
        # Nothing is freed where B_opt itself is beyond the largest batch that fits (no plan holds it).
        "freed_bytes": max(budget.kv_bytes(largest_batch) - budget.kv_bytes(b_opt), 0.0),
        "max_batch_one_replica": budget.max_batch(),
    }


def hub_id(model: ModelShape) -> str:
    """The Hugging Face id vLLM loads: from a preset's config URL, else the model's own name."""
    found = re.match(r"https://huggingface\.co/([^/]+/[^/]+)/", model.source)
    return found.group(1) if found else model.name


def vllm_settings(model: ModelShape, dtype: str, batch: int, utilization: float, instances: int,
                  max_model_len: int, first_port: int = 8000) -> dict:
    commands = [
        f"vllm serve {hub_id(model)} --dtype {VLLM_DTYPES[dtype]} --max-num-seqs {batch} "
        f"--gpu-memory-utilization {utilization:.2f} --max-model-len {max_model_len} --port {first_port + i}"
        for i in range(instances)
    ]
    return {"max_num_seqs": batch, "gpu_memory_utilization": utilization, "instances": instances,
            "max_model_len": max_model_len, "commands": commands,
            "start": "start the instances one after another: each checks at start-up that its share of memory is free"}


def _model_summary(model: ModelShape, dtype: str) -> dict:
    size = dtype_bytes(dtype)
    return {"name": model.name, "source": model.source, "dtype": dtype, "layers": model.layers,
            "hidden": model.hidden, "heads": model.heads, "kv_heads": model.kv_heads, "head_dim": model.head_dim,
            "params": model.params(), "weights_bytes": model.weight_bytes(size),
            "kv_bytes_per_token": model.kv_bytes_per_token(size)}


def _prediction_summary(calibration: Calibration) -> dict:
    return {"source": calibration.source, "calibrated": calibration.calibrated,
            "provenance": calibration.provenance, "step_overhead_us": calibration.step_overhead_us,
            "kernels": {name: asdict(fit) for name, fit in calibration.kernels.items()}}


def _model_notes(calibration: Calibration) -> list[str]:
    notes = []
    if not calibration.calibrated:
        notes.append(f"predictions: {calibration.source}; fit a calibration with `gpuprof sweep` + `gpuprof calibrate`")
    notes.append(f"the small kernels of a step (norms, rotary, activation) are {SMALL_KERNELS}")
    if calibration.step_overhead_us == 0:
        notes.append("per-step overhead (sampling, scheduling) not included: it is not measured yet")
    notes.append("time to first token (prefill) is not predicted")
    return notes
