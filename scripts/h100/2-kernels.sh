#!/usr/bin/env bash
# Device call 2 (about 9 min): the kernel benchmarks of issues #3 and #4 and the counter runs of issue #5.
source scripts/h100/setup.sh
[ -f "$G/peaks.json" ] || step peaks 240 gpuprof peaks
I=triton,cuda,torch-sdpa-flash,torch-sdpa-efficient,torch-sdpa-math
step attention-standard 150 gpuprof bench attention --impl $I --batch 1,8,64,256 --ctx 2048,4096,8192 --max-time 0.5 --out $G/attention-standard
step attention-batch1 90 gpuprof bench attention --impl $I --batch 1 --ctx 4096,8192,16384,32768 --max-time 0.5 --out $G/attention-batch1
for nk in 4096x4096 14336x4096 4096x14336 8192x2048 2560x10240; do
    step gemv-$nk 40 gpuprof bench gemv --impl triton,cuda,cublas --m 1,2,4,8,16,32,64,128,256 --n ${nk%x*} --k ${nk#*x} --max-time 0.3 --out $G/gemv-$nk
done
step profile-attention 90 gpuprof profile --set speed-of-light,memory --out $G/profile-attention-b256-ctx2048 -- gpuprof bench attention --batch 256 --ctx 2048 --impl triton,cuda
step profile-gemv 60 gpuprof profile --set speed-of-light,memory --out $G/profile-gemv-m1 -- gpuprof bench gemv --m 1 --n 14336 --k 4096 --impl triton,cuda,cublas
step nvml-gemv 60 gpuprof bench gemv --m 1 --n 14336 --k 4096 --counters nvml --out $G/bench-gemv-m1-nvml
step record-test-data 120 bash tests/data/ncu/record.sh
pack call2
