"""The batching advisor: from measured serving curves, or a calibrated model, to batch size, memory and replicas.

Modules, one job each: `criteria` (the gain and plateau rules), `profile` (reading measured serving tables),
`workload` (prompt and output lengths), `work` (bytes and FLOPs of the decode kernels), `calibration` (per-kernel
time models), `model` (predicting a decode step), `memory` (weights, KV cache, replicas), `plan` (putting it
together), `render` (tables for people).
"""

from gpuprof.advisor.calibration import Calibration, KernelFit
from gpuprof.advisor.criteria import Criteria, CurvePoint, choose
from gpuprof.advisor.plan import Deployment, Gpu, Serving, advise_model, advise_profile

__all__ = ["Calibration", "Criteria", "CurvePoint", "Deployment", "Gpu", "KernelFit", "Serving", "advise_model",
           "advise_profile", "choose"]
