import math
import random

import numpy as np
import pytest

from gpuprof import harness
from gpuprof.harness import TimingOptions, adaptive, quantile, summarize


@pytest.mark.parametrize("n", [1, 2, 5, 10, 101])
@pytest.mark.parametrize("q", [0.0, 0.25, 0.5, 0.75, 1.0])
def test_quantile_matches_numpy(n, q):
    values = sorted(random.Random(n).uniform(0, 100) for _ in range(n))
    assert quantile(values, q) == pytest.approx(np.quantile(values, q), rel=1e-12)


def test_summarize_fields():
    s = summarize([5.0, 1.0, 3.0, 2.0, 4.0])
    assert (s.median, s.min, s.max, s.q1, s.q3, s.n) == (3.0, 1.0, 5.0, 2.0, 4.0, 5)
    assert s.iqr == 2.0
    assert s.rel_precision == pytest.approx(1.57 * 2.0 / math.sqrt(5) / 3.0)


def test_single_sample_has_unknown_precision():
    assert summarize([7.0]).rel_precision == math.inf


def _noisy(center, spread, seed=0):
    rng = random.Random(seed)
    return lambda n: [center * (1 + rng.uniform(-spread, spread)) for _ in range(n)]


def test_adaptive_stops_early_on_quiet_samples():
    samples, converged = adaptive(_noisy(100.0, 0.001), TimingOptions(min_reps=10, batch=10, target_precision=0.005))
    assert converged and len(samples) == 10


def test_adaptive_takes_more_samples_when_noisy():
    opts = TimingOptions(min_reps=10, batch=10, target_precision=0.005, max_reps=5000, max_time_s=30)
    samples, converged = adaptive(_noisy(100.0, 0.05), opts)
    assert converged and len(samples) > 10
    assert summarize(samples).rel_precision <= 0.005


def test_adaptive_respects_max_reps():
    opts = TimingOptions(min_reps=10, batch=7, target_precision=1e-9, max_reps=40, max_time_s=30)
    samples, converged = adaptive(_noisy(100.0, 0.5), opts)
    assert not converged and len(samples) == 40


def test_adaptive_respects_time_budget():
    opts = TimingOptions(min_reps=10, batch=10, target_precision=1e-12, max_reps=10**9, max_time_s=0.05)
    samples, converged = adaptive(_noisy(100.0, 0.5), opts)
    assert not converged and len(samples) >= 10


def test_time_cpu_record_has_contract_fields():
    t = harness.time_cpu([lambda: sum(range(1000))], TimingOptions(warmup_ms=1, max_time_s=0.2))
    rec = t.record()
    for key in ("time_us", "time_us_min", "time_us_max", "time_us_iqr", "reps"):
        assert key in rec
    assert rec["time_us_min"] <= rec["time_us"] <= rec["time_us_max"]
    assert rec["reps"] == len(t.samples_us) and t.method == "cpu"


def test_time_cpu_rotates_input_sets():
    calls = []
    harness.time_cpu([lambda: calls.append(0), lambda: calls.append(1)], TimingOptions(warmup_ms=0, max_time_s=0.01))
    assert calls[:4] == [0, 1, 0, 1]


@pytest.mark.gpu
@pytest.mark.parametrize("graph", [False, True])
def test_cuda_timing_is_repeatable(graph):
    """The same kernel timed twice in one run: medians within 2% for a kernel longer than 20 us."""
    import torch

    x = torch.randn(1 << 27, device="cuda", dtype=torch.bfloat16)  # 256 MiB: ~170 us of copy on an H100
    y = torch.empty_like(x)
    opts = TimingOptions(graph=graph)
    first = harness.time_cuda([lambda: y.copy_(x)], opts).stats.median
    second = harness.time_cuda([lambda: y.copy_(x)], opts).stats.median
    assert first > 20
    assert abs(second - first) / first < 0.02
