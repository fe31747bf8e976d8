#!/usr/bin/env bash
# Device call 4 (about 9 min): whole decode steps, replicas with and without MPS, advisor validation (issue #8).
source scripts/h100/setup.sh
[ -f "$G/peaks.json" ] || step peaks 240 gpuprof peaks
B=1,8,16,32,64,128,256,512
for m in opt-1.3b qwen2.5-1.5b llama-2-7b; do
    step decode-$m 120 gpuprof decode --model $m --batch $B --ctx 1024 --counters nvml --out $G/decode-$m
done
step replicate 150 gpuprof replicate --model opt-1.3b --replicas 1,2,4 --batch 32 --ctx 1024 --counters nvml --out $G/replicate-opt-1.3b
step validate 30 gpuprof validate $G/decode-opt-1.3b $G/decode-qwen2.5-1.5b $G/decode-llama-2-7b
pack call4
