"""The parts together, as a user runs them on a machine without a GPU: sweep -> report, decode -> validate.

Each part has its own tests; this one catches a break in what one part hands the next (record fields, run
directories, the CLI). Real kernels run: Triton through its interpreter, cuBLAS's place taken by torch on the CPU.
"""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from gpuprof.cli import main

TINY = {"model_type": "llama", "hidden_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2, "intermediate_size": 256, "vocab_size": 512, "max_position_embeddings": 512,
        "hidden_act": "silu", "rms_norm_eps": 1e-5, "_name_or_path": "tiny-llama"}


@pytest.fixture
def config(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(TINY))
    return path


def run(*args: str) -> str:
    result = CliRunner().invoke(main, list(args))
    assert result.exit_code == 0, result.output
    return result.output


@pytest.mark.interpreter
def test_sweep_then_report_on_the_cpu(config, tmp_path):
    out = tmp_path / "sweep"
    run("sweep", "--model", str(config), "--batch", "1,3", "--ctx", "40", "--impl", "triton,torch-sdpa-math,cublas",
        "--max-time", "0.01", "--device", "cpu", "--out", str(out))
    points = [json.loads(line) for line in (out / "points.jsonl").read_text().splitlines()]
    # 2 batches x (attention: 2 impls + 5 weight matrices x 2 impls)
    assert len(points) == 24 and all(p["status"] == "ok" for p in points), [p["error"] for p in points]
    assert {p["kernel"] for p in points} == {"attention", "linear"}
    run("report", str(out))
    report = (out / "report" / "report.md").read_text()
    assert "tiny-llama" in report and (out / "report" / "roofline.png").stat().st_size > 10_000


@pytest.mark.interpreter
def test_decode_then_validate_on_the_cpu(config, tmp_path):
    out = tmp_path / "decode"
    run("decode", "--model", str(config), "--batch", "2", "--ctx", "24", "--device", "cpu", "--impl", "gpuprof",
        "--max-time", "0.05", "--steps", "2", "--linear", "triton", "--out", str(out))
    points = [json.loads(line) for line in (out / "points.jsonl").read_text().splitlines()]
    assert [p["status"] for p in points] == ["ok"] and all(p["tokens_per_s"] > 0 for p in points)
    data = json.loads(run("validate", str(out), "--gpu", "NVIDIA H100 80GB HBM3", "--json"))
    rows = data["runs"][0]["rows"]
    assert [r["batch"] for r in rows] == [2]
    assert all(r["predicted_tokens_per_s"] > r["measured_tokens_per_s"] for r in rows)  # an H100 beats this CPU
