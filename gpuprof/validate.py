"""Advisor validation: the advisor's predicted decode throughput against `gpuprof decode` measurements.

For every ok `decode_step` point of a decode run, the advisor predicts the same step (`predict_step`: the run's
model shapes, batch, context and dtype) with the calibration `gpuprof advise` would use, and the error is
(predicted - measured) / measured. The verdict covers batch sizes 1 to 256 (issue #8's criterion).

Which context a measurement had, from gpuprof/decode.py and decode_bench.py:
- the timed step (`tokens_per_s`) replays one CUDA graph at fixed lengths: every sequence holds `ctx` tokens,
  the one being decoded included (`DecodeBatch.step` leaves the lengths alone). That is what the advisor calls
  the context of a step (a request with prompt p decodes its first token over context p + 1), so it is
  predicted at exactly `ctx`; the `--steps` of the run do not change it.
- the greedy loop (`loop_tokens_per_s`) then decodes `loop_steps` tokens with lengths advancing: contexts ctx,
  ctx + 1, ..., ctx + steps - 1, so it is predicted at their mean, ctx + (steps - 1) / 2. It also pays for
  argmax and feeding tokens back, which the step model leaves out: it is shown, not judged.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from gpuprof.advisor import calibration as calibration_lib
from gpuprof.advisor.calibration import SMALL_KERNELS, Calibration
from gpuprof.advisor.model import predict_step
from gpuprof.device import git_commit, gpu_slug
from gpuprof.errors import GpuprofError
from gpuprof.models import ModelShape, get_model
from gpuprof.ops.base import dtype_bytes
from gpuprof.records import TRACES, Run, command_line, utc_now, write_json

FORMAT = "gpuprof-validation/1"
DEFAULT_TOLERANCE_PCT = 10.0
JUDGED_BATCHES = (1, 256)  # smallest and largest batch size the verdict covers
FILE_NAME = "validation.json"


@dataclass(frozen=True)
class DecodeRun:
    path: Path
    manifest: dict
    model: ModelShape
    points: list[dict]  # every decode_step point, whatever its status

    @property
    def gpu(self) -> str | None:
        """The GPU the run was measured on; None for a run on the CPU."""
        return (self.manifest.get("gpu") or {}).get("name")

    @property
    def impl(self) -> str | None:
        """The decode implementation of the run (gpuprof or torch), as its grid records it."""
        return (self.manifest.get("grid") or {}).get("impl")


def read_decode_run(path: Path) -> DecodeRun:
    """A `gpuprof decode` run directory with at least one ok point; one clear sentence otherwise."""
    path = Path(path)
    run = Run.open(path)
    manifest = run.manifest()
    points = [p for p in run.points() if p.get("kernel") == "decode_step"]
    if not points:
        raise GpuprofError(f"{path} is not a gpuprof decode run (it holds no decode_step points); give the --out "
                           "directory of `gpuprof decode`.")
    if not any(_measured(p) for p in points):
        statuses = Counter(str(p.get("status")) for p in points)
        listed = ", ".join(f"{n} {s}" for s, n in statuses.items())
        raise GpuprofError(f"{path} holds no ok decode_step points ({listed}); there is nothing to compare.")
    return DecodeRun(path, manifest, run_model(path, manifest, points), points)


def _measured(point: Mapping) -> bool:
    return point.get("status") == "ok" and (point.get("tokens_per_s") or 0) > 0


def run_model(path: Path, manifest: Mapping, points: Sequence[Mapping]) -> ModelShape:
    """The shapes the run decoded: as its manifest's grid recorded them, else its model's preset."""
    recorded = (manifest.get("grid") or {}).get("model")
    if isinstance(recorded, dict):
        try:
            return ModelShape(**recorded)
        except TypeError:
            raise GpuprofError(f"{path}: the model recorded in manifest.json (grid.model) is not a gpuprof model "
                               "shape; record the run again with `gpuprof decode`.") from None
    name = recorded if isinstance(recorded, str) else points[0].get("model")
    try:
        return get_model(str(name))
    except GpuprofError:
        raise GpuprofError(f"{path} decoded model {name!r}, which is no gpuprof preset, and its manifest does not "
                           "record the model's shapes; record the run again with `gpuprof decode`.") from None


def timed_context(point: Mapping) -> float:
    """The context of the timed step: `ctx` tokens per sequence, the new one included."""
    return float(point["ctx"])


def loop_context(point: Mapping) -> float | None:
    """The mean context of the greedy loop (lengths ctx .. ctx + steps - 1); None where no loop ran."""
    steps = point.get("loop_steps") or 0
    if steps < 1 or not point.get("loop_tokens_per_s"):
        return None
    return float(point["ctx"]) + (steps - 1) / 2


def error_pct(predicted: float, measured: float) -> float:
    """The prediction's error in % of the measurement: positive when the advisor promises too much."""
    return 100.0 * (predicted - measured) / measured


def resolve_calibration(gpu: str, dtype: str, path: Path | None = None, step_overhead_us: float | None = None,
                        root: Path = TRACES) -> Calibration:
    """The calibration `gpuprof advise --gpu GPU` would use, refused if it was measured on another GPU."""
    calibration = calibration_lib.resolve(gpu, dtype, path, root)
    if step_overhead_us is not None:
        calibration = calibration_lib.with_step_overhead(calibration, step_overhead_us)
    fitted_on = calibration.provenance.get("gpu")
    if fitted_on and gpu_slug(fitted_on) != gpu_slug(gpu):
        where = calibration.provenance.get("file", "the calibration")
        raise GpuprofError(f"{where} was measured on {fitted_on}, not on {gpu}; give a calibration of {gpu}, or "
                           f"--gpu {fitted_on!r} to compare across GPUs on purpose.")
    return calibration


def compare_point(point: Mapping, model: ModelShape, calibration: Calibration, tolerance_pct: float) -> dict:
    """One row: the measured step and loop against the advisor's predictions at their contexts."""
    size = dtype_bytes(point["dtype"])
    step = predict_step(model, calibration, point["batch"], timed_context(point), size)
    measured, predicted = float(point["tokens_per_s"]), step.tokens_per_s
    error = error_pct(predicted, measured)
    lo, hi = JUDGED_BATCHES
    row = {
        "batch": point["batch"], "ctx": point["ctx"], "context": step.context,
        "measured_tokens_per_s": measured, "predicted_tokens_per_s": predicted, "error_pct": error,
        "within_tolerance": abs(error) <= tolerance_pct, "judged": lo <= point["batch"] <= hi,
        "measured_step_ms": point.get("step_ms"), "predicted_step_ms": step.step_us / 1e3,
        "predicted_attention_ms": step.attention_us / 1e3, "predicted_linear_ms": step.linear_us / 1e3,
        "predicted_small_ms": step.small_us / 1e3,
        "loop_context": None, "loop_measured_tokens_per_s": None, "loop_predicted_tokens_per_s": None,
        "loop_error_pct": None,
    }
    context = loop_context(point)
    if context is not None:
        loop = predict_step(model, calibration, point["batch"], context, size)
        row.update(loop_context=context, loop_measured_tokens_per_s=point["loop_tokens_per_s"],
                   loop_predicted_tokens_per_s=loop.tokens_per_s,
                   loop_error_pct=error_pct(loop.tokens_per_s, point["loop_tokens_per_s"]))
    return row


def summarize(rows: Sequence[Mapping], tolerance_pct: float) -> dict:
    """The verdict over the judged batch sizes: the largest |error| and whether it is within the tolerance."""
    lo, hi = JUDGED_BATCHES
    judged = [r for r in rows if r["judged"]]
    if not judged:
        return {"batches": [], "max_abs_error_pct": None, "worst_batch": None, "meets_tolerance": None,
                "verdict": f"no ok batch size from {lo} to {hi} was measured: nothing to judge"}
    worst = max(judged, key=lambda r: abs(r["error_pct"]))
    meets = abs(worst["error_pct"]) <= tolerance_pct
    verdict = (f"max |error| {abs(worst['error_pct']):.1f}% (batch {worst['batch']}) over batches "
               f"{', '.join(str(r['batch']) for r in judged)}: {'within' if meets else 'NOT within'} "
               f"±{tolerance_pct:g}%")
    return {"batches": [r["batch"] for r in judged], "max_abs_error_pct": abs(worst["error_pct"]),
            "worst_batch": worst["batch"], "meets_tolerance": meets, "verdict": verdict}


def validate_run(run: DecodeRun, calibration_path: Path | None = None, gpu: str | None = None,
                 tolerance_pct: float = DEFAULT_TOLERANCE_PCT, step_overhead_us: float | None = None,
                 root: Path = TRACES) -> dict:
    """One run's validation document: rows per batch size, the verdict, notes and provenance."""
    target = gpu or run.gpu
    if target is None:
        raise GpuprofError(f"{run.path} was measured on the CPU (its manifest names no GPU), which the advisor does "
                           "not predict; validate a GPU run, or give --gpu NAME to exercise the comparison anyway.")
    measured = sorted((p for p in run.points if _measured(p)), key=lambda p: p["batch"])
    dtypes = sorted({str(p.get("dtype")) for p in measured})
    if len(dtypes) > 1:
        raise GpuprofError(f"{run.path} mixes dtypes ({', '.join(dtypes)}); a decode run has one.")
    calibration = resolve_calibration(target, dtypes[0], calibration_path, step_overhead_us, root)
    rows = [compare_point(p, run.model, calibration, tolerance_pct) for p in measured]
    grid = run.manifest.get("grid") or {}
    return {
        "format": FORMAT,
        "run": str(run.path),
        "model": run.model.name,
        "dtype": dtypes[0],
        "impl": run.impl,
        "ctx": grid.get("ctx"),
        "steps": grid.get("steps"),
        "measured_on": run.gpu,
        "predicted_for": target,
        "tolerance_pct": tolerance_pct,
        "judged_batches": list(JUDGED_BATCHES),
        "calibration": calibration.to_dict(),
        "rows": rows,
        "not_measured": [{"batch": p.get("batch"), "status": p.get("status"), "error": p.get("error")}
                         for p in run.points if not _measured(p)],
        "summary": summarize(rows, tolerance_pct),
        "notes": _notes(run, target, calibration, rows),
        "provenance": {
            "decode_run": str(run.path),
            "decode_git_commit": run.manifest.get("git_commit"),
            "decode_command": run.manifest.get("command"),
            "decode_started_at": run.manifest.get("started_at"),
            "calibration_source": calibration.source,
            "validated_with": git_commit(),
            "command": command_line(),
            "created_at": utc_now(),
        },
    }


def _notes(run: DecodeRun, target: str, calibration: Calibration, rows: Sequence[Mapping]) -> list[str]:
    notes = []
    if run.gpu is None:
        notes.append(f"measured on the CPU, predicted for {target}: a check of the comparison, not a validation")
    elif gpu_slug(run.gpu) != gpu_slug(target):
        notes.append(f"measured on {run.gpu}, predicted for {target} (--gpu): the errors compare two GPUs")
    if not calibration.calibrated:
        notes.append(f"predictions: {calibration.source}, so throughput is over-predicted; fit a calibration with "
                     "`gpuprof sweep` + `gpuprof calibrate`")
    if run.impl == "torch":
        notes.append("the run used --impl torch, whose small work takes about fifty launches per layer; the advisor "
                     "predicts gpuprof's fused step (about four), so expect this run to be slower than predicted")
    notes.append(f"the small kernels (norms, rotary, activation) are {SMALL_KERNELS}")
    if calibration.step_overhead_us == 0:
        notes.append("no per-step overhead in the prediction (sampling, scheduling): the calibration has none; "
                     "see --step-overhead-us")
    lo, hi = JUDGED_BATCHES
    outside = [r["batch"] for r in rows if not r["judged"]]
    if outside:
        notes.append(f"batch sizes outside {lo} to {hi} ({', '.join(map(str, outside))}) are shown, not judged")
    if any(r["loop_error_pct"] is not None for r in rows):
        notes.append("loop: the greedy loop after timing, predicted at its mean context; it also pays for argmax "
                     "and feeding tokens back, which the step model leaves out (shown, not judged)")
    return notes


def validate(paths: Sequence[Path], calibration_path: Path | None = None, gpu: str | None = None,
             tolerance_pct: float = DEFAULT_TOLERANCE_PCT, step_overhead_us: float | None = None,
             root: Path = TRACES) -> dict:
    """Validate every run (all are read and checked before any file is written); write RUN/validation.json."""
    if not tolerance_pct > 0:
        raise GpuprofError(f"--tolerance must be a positive percentage, not {tolerance_pct:g}.")
    runs = [read_decode_run(p) for p in paths]
    documents = [validate_run(r, calibration_path, gpu, tolerance_pct, step_overhead_us, root) for r in runs]
    for run, document in zip(runs, documents):
        write_json(run.path / FILE_NAME, document)
    verdicts = [d["summary"]["meets_tolerance"] for d in documents]
    return {"tolerance_pct": tolerance_pct, "decode_runs": [str(r.path) for r in runs],
            "meets_tolerance": None if None in verdicts else all(verdicts), "runs": documents}
