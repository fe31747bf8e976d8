#!/usr/bin/env bash
# Device call 1 (about 8 min): ceilings, then every GPU correctness test. Nothing is timed before it is checked.
source scripts/h100/setup.sh
step peaks 240 gpuprof peaks
step gpu-tests 420 python3 -m pytest -q -m gpu --timeout 400 tests/ -p no:cacheprovider
pack call1
