#!/usr/bin/env bash
# Device call 3 (about 8 min): the memory-gap sweep (issue #6), its report, and the H100 calibration (issue #7).
source scripts/h100/setup.sh
[ -f "$G/peaks.json" ] || step peaks 240 gpuprof peaks
step sweep 420 gpuprof sweep --out $G/sweep-default
step report 60 gpuprof report $G/sweep-default
step calibrate 30 gpuprof calibrate $G/sweep-default
step advise 30 gpuprof advise --model llama-2-7b
pack call3
