#!/usr/bin/env bash
# Compile every CUDA kernel instantiation (gpuprof/cuda/instances.py) with the machine's nvcc for sm_90a and
# sm_80, with `-Xptxas -v`; fail on any register spill or stack frame. Needs gpuprof importable (installed)
# and nvcc, no GPU. Extra arguments go to `python -m gpuprof.cuda.compile_check` (e.g. --nvrtc, --arch sm_89).
set -euo pipefail
# From a neutral folder: in the repository root the source tree would shadow the installed package, whose
# gpuprof.csrc is the csrc/ folder mapped by setup.py.
cd "${TMPDIR:-/tmp}"
if ! command -v "${NVCC:-nvcc}" >/dev/null; then
    echo "compile_csrc: nvcc not found; set NVCC or put the CUDA toolkit on PATH." >&2
    exit 1
fi
exec python3 -m gpuprof.cuda.compile_check "$@"
