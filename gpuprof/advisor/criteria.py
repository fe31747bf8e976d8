"""Choosing the batch size from a throughput curve: the paper's gain rule and the plateau rule.

Gain rule ("Mind the Memory Gap"): g(B) = T(B) / (B x T(1)), the throughput at batch B relative to perfect linear
scaling from batch 1 (from the smallest batch on the curve, per sequence, where batch 1 is missing). B_opt is the
largest batch with g(B) > epsilon whose mean inter-token latency (ITL) stays within a bound: by default 5 x the
ITL at the batch nearest to 32.

Plateau rule: the smallest batch whose throughput is within a fraction (default 10%) of the best on the curve.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from gpuprof.errors import GpuprofError

RULES = ("gain", "plateau")
REFERENCE_BATCH = 32  # the paper's latency bound is a multiple of the ITL measured nearest to this batch


@dataclass(frozen=True)
class CurvePoint:
    """Throughput (tokens/s) and mean inter-token latency (ms, None where not known) at one batch size."""

    batch: int
    tokens_per_s: float
    itl_ms: float | None = None


@dataclass(frozen=True)
class Criteria:
    epsilon: float = 0.2
    latency_factor: float = 5.0
    max_itl_ms: float | None = None  # an absolute bound; replaces the factor
    plateau_within: float = 0.1

    def __post_init__(self) -> None:
        if not 0 < self.epsilon < 1:
            raise GpuprofError(
                f"--epsilon must lie strictly between 0 and 1 (the paper uses 0.2), not {self.epsilon:g}.")
        if not self.latency_factor > 0:
            raise GpuprofError(f"--latency-factor must be positive (the paper uses 5), not {self.latency_factor:g}.")
        if self.max_itl_ms is not None and not self.max_itl_ms > 0:
            raise GpuprofError(f"--max-itl-ms must be a positive number of milliseconds, not {self.max_itl_ms:g}.")
        if not 0 <= self.plateau_within < 1:
            raise GpuprofError(
                f"--plateau-within must lie in [0, 1) (0.1: within 10% of the best), not {self.plateau_within:g}.")


@dataclass(frozen=True)
class Choice:
    rule: str
    batch: int
    why: str


@dataclass(frozen=True)
class Selection:
    """The curve with its gain and latency verdict per batch, the bound used, and what each rule chose."""

    rows: list[dict]
    latency_bound_ms: float | None
    latency_bound_rule: str
    choices: dict[str, Choice]

    def to_dict(self) -> dict:
        return {
            "curve": self.rows,
            "latency_bound_ms": self.latency_bound_ms,
            "latency_bound_rule": self.latency_bound_rule,
            "choices": {name: vars(c) for name, c in self.choices.items()},
        }


def nearest_batch(batches: Sequence[int], target: int = REFERENCE_BATCH) -> int:
    """The batch closest to `target` (the smaller one on a tie)."""
    return min(batches, key=lambda b: (abs(b - target), b))


def latency_bound(curve: Sequence[CurvePoint], criteria: Criteria) -> tuple[float | None, str]:
    """The ITL bound in ms and a sentence saying where it comes from (None where the curve has no ITL)."""
    if criteria.max_itl_ms is not None:
        if any(p.itl_ms is None for p in curve):
            raise GpuprofError(
                "--max-itl-ms needs the mean inter-token latency at every batch size, and the curve lacks it.")
        return criteria.max_itl_ms, f"--max-itl-ms {criteria.max_itl_ms:g}"
    if any(p.itl_ms is None for p in curve):
        return None, "none: no inter-token latency was given, so only the gain limits the batch"
    ref = next(p for p in curve if p.batch == nearest_batch([p.batch for p in curve]))
    bound = criteria.latency_factor * ref.itl_ms
    return bound, f"{criteria.latency_factor:g} x the ITL at batch {ref.batch} ({ref.itl_ms:.3g} ms)"


def choose(curve: Sequence[CurvePoint], criteria: Criteria, end: str = "the largest batch on the curve") -> Selection:
    """Apply both rules to a curve of distinct batch sizes; `end` says what the curve's last batch is."""
    curve = sorted(curve, key=lambda p: p.batch)
    if not curve:
        raise GpuprofError("the throughput curve is empty; at least one batch size is needed.")
    base = curve[0]
    per_sequence = base.tokens_per_s / base.batch  # T(1), or the smallest batch normalised per sequence
    bound, bound_rule = latency_bound(curve, criteria)
    rows = []
    for p in curve:
        within = None if bound is None else p.itl_ms <= bound
        rows.append({"batch": p.batch, "tokens_per_s": p.tokens_per_s, "itl_ms": p.itl_ms,
                     "gain": p.tokens_per_s / (p.batch * per_sequence), "within_latency": within})
    choices = {"gain": _gain_choice(rows, criteria.epsilon, bound, end),
               "plateau": _plateau_choice(rows, criteria, bound)}
    return Selection(rows, bound, bound_rule, choices)


def _gain_choice(rows: list[dict], epsilon: float, bound: float | None, end: str) -> Choice:
    eligible = [r for r in rows if r["gain"] > epsilon and r["within_latency"] is not False]
    if not eligible:
        lowest = min(rows, key=lambda r: r["itl_ms"])
        raise GpuprofError(f"no batch size has a mean ITL within the bound of {bound:.3g} ms "
                           f"(the lowest is {lowest['itl_ms']:.3g} ms at batch {lowest['batch']}).")
    best = eligible[-1]
    larger = [r for r in rows if r["batch"] > best["batch"]]
    if not larger:
        why = f"the gain never fell to epsilon ({best['gain']:.2f} > {epsilon:g} at {end})"
    else:
        nxt = larger[0]
        reason = (f"gain {nxt['gain']:.2f} <= epsilon {epsilon:g}" if nxt["gain"] <= epsilon
                  else f"ITL {nxt['itl_ms']:.3g} ms > bound {bound:.3g} ms")
        why = (f"largest batch with gain > {epsilon:g} within the latency bound (gain {best['gain']:.2f}); "
               f"batch {nxt['batch']} is out: {reason}")
    return Choice("gain", best["batch"], why)


def _plateau_choice(rows: list[dict], criteria: Criteria, bound: float | None) -> Choice:
    top = max(rows, key=lambda r: r["tokens_per_s"])
    floor = (1 - criteria.plateau_within) * top["tokens_per_s"]
    pick = next(r for r in rows if r["tokens_per_s"] >= floor)
    why = (f"smallest batch within {criteria.plateau_within:.0%} of the best throughput "
           f"({top['tokens_per_s']:,.0f} tokens/s at batch {top['batch']})")
    if pick["within_latency"] is False:
        why += f"; its ITL {pick['itl_ms']:.3g} ms exceeds the bound {bound:.3g} ms"
    return Choice("plateau", pick["batch"], why)
