"""B_opt on hand-made curves: the paper's gain rule, its latency bound, and the plateau rule."""

import numpy as np
import pytest

from gpuprof.advisor.criteria import Criteria, CurvePoint, choose, nearest_batch
from gpuprof.errors import GpuprofError

BATCHES = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512]


def saturating(batches, knee, itl0=10.0):
    """T(B) = 1000 B / (B + knee) tokens/s, so g(B) = (1 + knee) / (B + knee); ITL = B / T(B) in ms."""
    points = []
    for b in batches:
        t = 1000.0 * b / (b + knee)
        points.append(CurvePoint(b, t, itl0 * (b + knee) / (1 + knee)))
    return points


def test_plateau_curve_gain_rule_matches_closed_form():
    # g(B) = 9 / (B + 8) > 0.2  <=>  B < 37: the largest batch on the grid below that is 32.
    sel = choose(saturating(BATCHES, knee=8), Criteria(epsilon=0.2, latency_factor=100))
    assert sel.choices["gain"].batch == 32
    assert "batch 64 is out: gain 0.12 <= epsilon 0.2" in sel.choices["gain"].why
    gains = {r["batch"]: r["gain"] for r in sel.rows}
    assert gains[64] == pytest.approx(9 / 72)


def test_plateau_rule_picks_smallest_batch_within_fraction():
    curve = saturating(BATCHES, knee=8)
    best = max(p.tokens_per_s for p in curve)
    sel = choose(curve, Criteria(plateau_within=0.1, latency_factor=100))
    expected = min(p.batch for p in curve if p.tokens_per_s >= 0.9 * best)
    assert sel.choices["plateau"].batch == expected == 64  # 889 tokens/s >= 0.9 x 985
    assert "within 10% of the best" in sel.choices["plateau"].why


def test_monotone_linear_curve_keeps_the_largest_batch():
    curve = [CurvePoint(b, 100.0 * b, 10.0) for b in BATCHES]  # perfect scaling, flat latency
    sel = choose(curve, Criteria())
    assert sel.choices["gain"].batch == 512
    assert all(r["gain"] == pytest.approx(1.0) for r in sel.rows)
    assert "never fell to epsilon" in sel.choices["gain"].why
    assert sel.choices["plateau"].batch == 512


@pytest.mark.parametrize("seed", range(5))
def test_noisy_curve_moves_b_opt_by_at_most_one_grid_step(seed):
    rng = np.random.default_rng(seed)
    clean = saturating(BATCHES, knee=8)
    noisy = [CurvePoint(p.batch, p.tokens_per_s * rng.uniform(0.95, 1.05), p.itl_ms) for p in clean]
    got = choose(noisy, Criteria(latency_factor=100)).choices["gain"].batch
    assert got in (16, 32, 64)


def test_latency_bound_limits_the_batch():
    # Perfect throughput scaling, but the ITL grows: 5 x ITL(32) = 5 x 32 = 160 ms admits batches up to 128.
    curve = [CurvePoint(b, 100.0 * b, float(b)) for b in BATCHES]
    sel = choose(curve, Criteria(epsilon=0.2, latency_factor=5))
    assert sel.latency_bound_ms == pytest.approx(160.0)
    assert sel.choices["gain"].batch == 128
    assert "ITL 256 ms > bound 160 ms" in sel.choices["gain"].why
    assert [r["within_latency"] for r in sel.rows] == [True] * 8 + [False] * 2


def test_absolute_latency_bound_replaces_the_factor():
    curve = [CurvePoint(b, 100.0 * b, float(b)) for b in BATCHES]
    sel = choose(curve, Criteria(max_itl_ms=20))
    assert sel.latency_bound_ms == 20 and sel.choices["gain"].batch == 16
    assert sel.latency_bound_rule == "--max-itl-ms 20"


def test_plateau_rule_reports_a_latency_violation():
    curve = [CurvePoint(b, 100.0 * b, float(b)) for b in BATCHES]
    sel = choose(curve, Criteria(max_itl_ms=20))
    assert sel.choices["plateau"].batch == 512 and "exceeds the bound" in sel.choices["plateau"].why


def test_missing_batch_one_normalises_the_smallest_batch_per_sequence():
    curve = [CurvePoint(4, 400.0), CurvePoint(8, 600.0), CurvePoint(16, 640.0)]
    sel = choose(curve, Criteria())
    assert [r["gain"] for r in sel.rows] == pytest.approx([1.0, 0.75, 0.4])
    assert sel.latency_bound_ms is None and "no inter-token latency" in sel.latency_bound_rule


@pytest.mark.parametrize("batches, nearest", [([1, 16, 64], 16), ([24, 40], 24), ([32, 33], 32), ([100, 200], 100)])
def test_reference_batch_is_the_nearest_to_32(batches, nearest):
    assert nearest_batch(batches) == nearest


def test_no_batch_within_an_absolute_bound_is_one_sentence():
    curve = [CurvePoint(b, 100.0 * b, 50.0 + b) for b in (1, 2, 4)]
    with pytest.raises(GpuprofError, match=r"no batch size has a mean ITL within the bound of 10 ms \(the lowest is 51 ms at batch 1\)"):
        choose(curve, Criteria(max_itl_ms=10))


def test_absolute_bound_without_latency_column():
    with pytest.raises(GpuprofError, match="--max-itl-ms needs the mean inter-token latency"):
        choose([CurvePoint(1, 10.0), CurvePoint(2, 15.0)], Criteria(max_itl_ms=10))


@pytest.mark.parametrize("epsilon", [0.0, 1.0, -0.1, 1.5])
def test_epsilon_outside_open_unit_interval(epsilon):
    with pytest.raises(GpuprofError, match="--epsilon must lie strictly between 0 and 1"):
        Criteria(epsilon=epsilon)


@pytest.mark.parametrize("kwargs, option", [({"latency_factor": 0}, "--latency-factor"), ({"max_itl_ms": -1}, "--max-itl-ms"),
                                            ({"plateau_within": 1.0}, "--plateau-within")])
def test_other_criteria_out_of_range(kwargs, option):
    with pytest.raises(GpuprofError, match=option):
        Criteria(**kwargs)
