"""Memory arithmetic on real model configs, and the workload statistics it uses."""

import json

import numpy as np
import pytest

from gpuprof.advisor import workload
from gpuprof.advisor.memory import GiB, MemoryBudget
from gpuprof.advisor.calibration import datasheet_roofline
from gpuprof.advisor.plan import Deployment, Gpu, Serving, budget_for
from gpuprof.errors import GpuprofError
from gpuprof.models import get_model

H100 = Gpu("NVIDIA H100 80GB HBM3", 80 * GiB, "datasheet")


def plan_budget(model, gpu, load, deployment):
    return budget_for(Serving(model, datasheet_roofline("NVIDIA H100 80GB HBM3", "bf16"), gpu, load), deployment)


@pytest.mark.parametrize(
    "name, dtype, kv_per_token",
    [
        ("llama-2-7b", "bf16", 2 * 32 * 32 * 128 * 2),  # MHA: 512 KiB per token
        ("llama-3-8b", "bf16", 2 * 32 * 8 * 128 * 2),  # GQA, 8 KV heads: 128 KiB
        ("qwen2.5-0.5b", "fp16", 2 * 24 * 2 * 64 * 2),
        ("opt-1.3b", "fp32", 2 * 24 * 32 * 64 * 4),
    ],
)
def test_kv_and_weight_bytes_of_presets(name, dtype, kv_per_token):
    model = get_model(name)
    budget = plan_budget(model, H100, workload.from_specs("512", "256"), Deployment(dtype=dtype))
    size = 4 if dtype == "fp32" else 2
    assert budget.kv_bytes_per_token == kv_per_token
    assert budget.weights_bytes == model.params() * size
    assert budget.kv_bytes(10) == 10 * 768 * kv_per_token


def test_llama_2_7b_on_h100_by_hand():
    # Weights 6,738,415,616 x 2 B; 768 tokens x 512 KiB = 0.375 GiB a sequence; 72 GiB usable, 2 GiB workspace.
    budget = plan_budget(get_model("llama-2-7b"), H100, workload.from_specs("512", "256"), Deployment())
    weights_gib = 6_738_415_616 * 2 / GiB
    assert budget.max_batch() == int((72 - weights_gib - 2) / 0.375) == 153
    assert budget.utilization(153) == 0.90  # (12.55 + 57.375 + 2) / 80 = 0.899, rounded up
    assert budget.utilization(16) == 0.26 and budget.max_replicas(16) == 3  # 20.55 GiB each
    assert budget.replica_bytes(16) == pytest.approx((weights_gib + 6 + 2) * GiB)


def test_hf_config_json_memory(tmp_path):
    config = {"model_type": "mistral", "hidden_size": 4096, "num_attention_heads": 32, "num_key_value_heads": 8,
              "num_hidden_layers": 32, "intermediate_size": 14336, "vocab_size": 32000, "hidden_act": "silu",
              "max_position_embeddings": 32768, "tie_word_embeddings": False}
    (tmp_path / "config.json").write_text(json.dumps(config))
    model = get_model(str(tmp_path))
    budget = plan_budget(model, H100, workload.from_specs("1000", "24"), Deployment())
    assert budget.kv_bytes_per_token == 2 * 32 * 8 * 128 * 2
    assert budget.kv_tokens_per_sequence == 1024  # 1024 tokens are whole blocks of 16
    assert budget.weights_bytes == get_model("mistral-7b").params() * 2


def test_kv_tokens_round_up_to_whole_blocks():
    w = workload.from_specs("500", "10")  # 510 tokens -> 32 blocks of 16 = 512
    assert w.kv_tokens_per_sequence(16) == 512 and w.kv_tokens_per_sequence(1) == 510


def test_replicas_never_exceed_the_memory_fraction():
    budget = MemoryBudget(80 * GiB, 2 * GiB, 128 * 1024, 1000.0, fraction=0.9)
    for batch in (1, 8, 64, 256):
        assert budget.max_replicas(batch) * budget.utilization(batch) <= 0.9 + 1e-9
        assert budget.max_replicas(batch) * budget.replica_bytes(batch) <= budget.usable_bytes


def test_model_that_cannot_fit_at_batch_one_is_one_sentence():
    l4 = Gpu("NVIDIA L4", 24 * GiB, "datasheet")
    with pytest.raises(GpuprofError, match=r"llama-2-13b in bf16 on NVIDIA L4 cannot fit even at batch 1: it needs 2\d\.\d GiB "
                                           r"\(weights 24\.2 GiB, .*more than the 21\.6 GiB usable \(90% of 24\.0 GiB\)"):
        plan_budget(get_model("llama-2-13b"), l4, workload.from_specs("512", "256"), Deployment())


def test_a_workload_too_long_for_memory_at_batch_one():
    # A 131072-token sequence of Llama-3.1-8B takes 16 GiB of KV cache: within its context, beyond a 24 GiB card
    # that also holds 15 GiB of weights.
    small = Gpu("a 24 GiB GPU", 24 * GiB, "test")
    with pytest.raises(GpuprofError, match="cannot fit even at batch 1"):
        plan_budget(get_model("llama-3.1-8b"), small, workload.from_specs("131000", "72"), Deployment())


def test_a_workload_beyond_the_model_context():
    # 1M-token sequences: beyond Llama-2-7B's 4096 positions, which is said before memory is.
    with pytest.raises(GpuprofError, match="exceeds llama-2-7b's 4096 positions"):
        plan_budget(get_model("llama-2-7b"), H100, workload.from_specs("1000000", "1"), Deployment())


@pytest.mark.parametrize("kwargs, message", [({"fraction": 0}, "--memory-fraction"), ({"fraction": 1.2}, "--memory-fraction"),
                                             ({"workspace_bytes": -1}, "--workspace-gb")])
def test_memory_options_out_of_range(kwargs, message):
    with pytest.raises(GpuprofError, match=message):
        MemoryBudget(80 * GiB, GiB, 1024, 100.0, **kwargs)


def test_mean_decode_context_matches_step_by_step_average(tmp_path):
    path = tmp_path / "requests.csv"
    requests = [(100, 3), (10, 50), (2000, 1)]
    path.write_text("prompt_tokens,output_tokens\n" + "".join(f"{p},{o}\n" for p, o in requests))
    w = workload.from_csv(path)
    contexts = [p + t for p, o in requests for t in range(1, o + 1)]
    assert w.mean_decode_context() == pytest.approx(np.mean(contexts))
    assert w.max_tokens == 2001 and w.mean_prompt == pytest.approx(2110 / 3)


def test_uniform_distribution_statistics():
    w = workload.from_specs("uniform:100:300", "uniform:1:9")
    assert w.mean_prompt == pytest.approx(200) and w.mean_output == pytest.approx(5)
    assert w.max_tokens == 309
    contexts = [p + t for p in range(100, 301) for o in range(1, 10) for t in range(1, o + 1)]
    assert w.mean_decode_context() == pytest.approx(np.mean(contexts))


def test_wide_uniform_range_keeps_its_mean():
    w = workload.from_specs("uniform:1:100000", "10")
    assert len(w.prompt) <= 1025 and w.mean_prompt == pytest.approx(50000.5)


@pytest.mark.parametrize("spec", ["0", "-5", "abc", "uniform:10", "uniform:0:10", "uniform:20:10", "normal:5:1", "1.5"])
def test_bad_length_specs(spec):
    with pytest.raises(GpuprofError, match="--prompt takes a positive token count"):
        workload.from_specs(spec, "10")


@pytest.mark.parametrize(
    "content, message",
    [("", "has no rows"), ("prompt,output\n", "has no rows"), ("a,b\n1,2\n", "needs a prompt column"),
     ("prompt,output\n10,0\n", ":2: prompt and output lengths must be positive"), ("input_len,output_len\n5,x\n", ":2:")],
)
def test_bad_lengths_files(tmp_path, content, message):
    path = tmp_path / "lengths.csv"
    path.write_text(content)
    with pytest.raises(GpuprofError, match=message):
        workload.from_csv(path)


def test_missing_lengths_file(tmp_path):
    with pytest.raises(GpuprofError, match="cannot read the lengths file"):
        workload.from_csv(tmp_path / "none.csv")


def test_every_datasheet_entry_has_its_memory_size():
    from gpuprof.device import DATASHEETS, datasheet_for

    assert all(d.memory_bytes >= 16 * GiB for d in DATASHEETS)
    assert datasheet_for("NVIDIA H100 80GB HBM3").memory_bytes == 80 * GiB


def test_datasheet_plans_with_what_cuda_reports_or_a_stated_margin():
    from gpuprof.device import DATASHEET_MEMORY_MARGIN, DATASHEETS

    for d in DATASHEETS:
        planned, source = d.planning_memory()
        assert planned < d.memory_bytes  # CUDA never reports the marketed size
        if d.cuda_memory_bytes:
            assert planned == d.cuda_memory_bytes and d.cuda_memory_seen_at.startswith("https://")
            assert d.cuda_memory_bytes > 0.95 * d.memory_bytes  # a seen total, not a different product's
        else:
            assert planned == int(d.memory_bytes * (1 - DATASHEET_MEMORY_MARGIN)) and "margin" in source
