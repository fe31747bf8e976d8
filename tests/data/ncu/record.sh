#!/usr/bin/env bash
# Record real Nsight Compute outputs for tests/data/ncu/ (and an NVML window for tests/data/nvml/) on a GPU machine.
# Run from the repository root with gpuprof installed, ncu on PATH and the nvtx package importable:
#     bash tests/data/ncu/record.sh
# The files are named after the GPU (e.g. nvidia-h100-80gb-hbm3-*); the tests pick every recorded file up by its
# suffix. ERR_NVGPUCTRPERM needs a user without counter permission, so that log stays hand-made.
set -euo pipefail
slug=$(python3 -c "from gpuprof.device import info, gpu_slug; print(gpu_slug(info().name))")
ncu_dir=tests/data/ncu
nvml_dir=tests/data/nvml
work=$(mktemp -d)

record() {  # name, then the gpuprof bench arguments
    local name=$1; shift
    gpuprof profile --set all --calls 2 --out "$work/$name" -- gpuprof bench "$@"
    cp "$work/$name/raw.csv" "$ncu_dir/$slug-$name.raw.csv"
    cp "$work/$name/child-points.jsonl" "$ncu_dir/$slug-$name.points.jsonl"
}
record copy copy --n 268435456,1048576 --dtype bf16
record read read --n 268435456 --dtype bf16
record matmul matmul --m 1,64 --n 4096 --k 4096 --dtype bf16

# ncu's own messages for a filter that matches nothing and for an unknown metric (both commands fail on purpose).
gpuprof profile --nvtx-include "gpuprof@no-such-range/" --out "$work/none" -- gpuprof bench copy --n 1048576 || true
cp "$work/none/ncu.log" "$ncu_dir/$slug-log-no-kernels.txt"
gpuprof profile --metrics no_such__metric.sum --out "$work/bad" -- gpuprof bench copy --n 1048576 || true
cp "$work/bad/ncu.log" "$ncu_dir/$slug-log-unknown-metric.txt"

python3 -m gpuprof.counters.nvml "$nvml_dir/$slug-copy-window.json" 2
echo "recorded into $ncu_dir and $nvml_dir; run: python3 -m pytest -q tests/test_ncu.py tests/test_nvml.py tests/test_profile.py"
