"""The serving workload: how long prompts and outputs are, fixed or as a distribution.

Syntax, one value per option: a token count (`512`), or `uniform:LO:HI` (every whole number from LO to HI equally
likely). A CSV of requests (`--lengths FILE`, columns `prompt` and `output`) gives their joint distribution.
Prompt and output distributions given separately are taken as independent.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gpuprof.errors import GpuprofError

DEFAULT_PROMPT = "512"
DEFAULT_OUTPUT = "256"
# Columns accepted in a CSV of requests, first match wins.
PROMPT_COLUMNS = ("prompt", "prompt_tokens", "prompt_len", "input", "input_tokens", "input_len")
OUTPUT_COLUMNS = ("output", "output_tokens", "output_len", "completion_tokens")
_MAX_SUPPORT = 1025  # values kept of a uniform range: evenly spaced, so the mean stays exact


@dataclass(frozen=True)
class Workload:
    """Requests as paired (prompt, output) token counts, each pair equally likely."""

    prompt: np.ndarray
    output: np.ndarray
    description: str

    @property
    def mean_prompt(self) -> float:
        return float(self.prompt.mean())

    @property
    def mean_output(self) -> float:
        return float(self.output.mean())

    @property
    def max_tokens(self) -> int:
        """The longest sequence (prompt + output): what vLLM's --max-model-len must allow."""
        return int((self.prompt + self.output).max())

    def kv_tokens_per_sequence(self, block: int = 1) -> float:
        """Mean KV-cache tokens a sequence holds at its peak (prompt + output), in whole blocks of `block`."""
        peak = self.prompt + self.output
        return float((np.ceil(peak / block) * block).mean())

    def mean_decode_context(self) -> float:
        """The context one decode step attends over, averaged over every decode step of every request.

        A request with prompt p and output o runs o steps over contexts p + 1, ..., p + o; long outputs weigh
        more because they take more steps.
        """
        p, o = self.prompt.astype(float), self.output.astype(float)
        return float((o * p + o * (o + 1) / 2).sum() / o.sum())

    def summary(self) -> dict:
        return {
            "description": self.description,
            "mean_prompt": self.mean_prompt,
            "mean_output": self.mean_output,
            "max_tokens": self.max_tokens,
            "mean_decode_context": self.mean_decode_context(),
        }


def parse_lengths(spec: str, option: str) -> np.ndarray:
    """'512' -> [512]; 'uniform:128:1024' -> the whole numbers 128..1024 (evenly thinned when many)."""
    text = spec.strip().lower()
    if text.isdigit() and int(text) > 0:
        return np.array([int(text)])
    parts = text.split(":")
    if len(parts) == 3 and parts[0] == "uniform" and parts[1].isdigit() and parts[2].isdigit():
        lo, hi = int(parts[1]), int(parts[2])
        if 0 < lo <= hi:
            count = min(hi - lo + 1, _MAX_SUPPORT)
            return np.linspace(lo, hi, count)
    raise GpuprofError(f"{option} takes a positive token count (512) or uniform:LO:HI with 0 < LO <= HI "
                       f"(uniform:128:1024), not {spec!r}.")


def from_specs(prompt: str | None, output: str | None) -> Workload:
    """Independent prompt and output lengths (defaults: 512-token prompts, 256-token outputs)."""
    prompt, output = prompt or DEFAULT_PROMPT, output or DEFAULT_OUTPUT
    p, o = np.meshgrid(parse_lengths(prompt, "--prompt"), parse_lengths(output, "--output"), indexing="ij")
    return Workload(p.ravel(), o.ravel(), f"prompt {prompt}, output {output} tokens")


def from_csv(path: Path) -> Workload:
    """One request a row, with a prompt-length and an output-length column."""
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise GpuprofError(f"cannot read the lengths file {path} ({e.__class__.__name__}).")
    if not rows:
        raise GpuprofError(f"the lengths file {path} has no rows; it needs a header and one request a row.")
    columns = {c.strip().lower(): c for c in rows[0] if c}
    prompt_col = next((columns[c] for c in PROMPT_COLUMNS if c in columns), None)
    output_col = next((columns[c] for c in OUTPUT_COLUMNS if c in columns), None)
    if prompt_col is None or output_col is None:
        raise GpuprofError(f"the lengths file {path} needs a prompt column ({', '.join(PROMPT_COLUMNS)}) and an "
                           f"output column ({', '.join(OUTPUT_COLUMNS)}).")
    prompt, output = [], []
    for line, row in enumerate(rows, 2):
        try:
            p, o = int(row[prompt_col]), int(row[output_col])
        except (TypeError, ValueError):
            p = o = 0
        if p <= 0 or o <= 0:
            raise GpuprofError(f"{path}:{line}: prompt and output lengths must be positive whole numbers.")
        prompt.append(p)
        output.append(o)
    return Workload(np.array(prompt), np.array(output), f"{len(rows)} requests from {path}")
