"""Our Triton kernels, compiled for sm_90 without a GPU: 16-byte global loads and no local memory.

The counterpart of the nvcc check of csrc/ (tests/test_csrc_compile.py). It runs gpuprof.triton_check in its own
process, since Triton fixes compiler or interpreter mode when it is imported and these tests run interpreted.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys


def test_planned_configurations_load_16_bytes_and_keep_off_local_memory():
    env = dict(os.environ, TRITON_INTERPRET="0", PYTHONWARNINGS="ignore")
    result = subprocess.run([sys.executable, "-m", "gpuprof.triton_check", "--json"], env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode in (0, 1), result.stderr[-3000:]
    reports = json.loads(result.stdout)
    assert {r["name"].split()[0] for r in reports} == {"gemv", "attention", "add_norm", "rotary_cache_write",
                                                       "gated_activation"}
    for r in reports:
        assert r["wide_loads"] > 0 or not r["expects_wide_loads"], f"{r['name']}: no 16-byte global loads"
        assert r["local_memory"] == 0 and r["local_bytes"] == 0 and r["stack_bytes"] == 0, r
        assert 0 < r["registers"] <= 255, r
    assert result.returncode == 0


def test_it_refuses_the_interpreter():
    env = dict(os.environ, TRITON_INTERPRET="1")
    result = subprocess.run([sys.executable, "-m", "gpuprof.triton_check"], env=env, capture_output=True, text=True)
    assert result.returncode == 2 and "TRITON_INTERPRET=0" in result.stderr
