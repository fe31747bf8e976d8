"""`gpuprof advise` and `gpuprof calibrate` end to end, without a GPU, and every bad input as one sentence."""

import json

import pytest
from advisor_runs import make_run
from click.testing import CliRunner

from gpuprof import device
from gpuprof.advisor.calibration import UNCALIBRATED
from gpuprof.cli import main

REAL_CUDA_AVAILABLE = device.cuda_available


@pytest.fixture(autouse=True)
def isolated(monkeypatch, tmp_path):
    """No GPU, and a working folder without traces/, so the datasheet roofline is what a fresh checkout gets."""
    monkeypatch.setattr(device, "cuda_available", lambda: False)
    monkeypatch.chdir(tmp_path)


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def advise_json(*args):
    r = invoke("advise", *args, "--json")
    assert r.exit_code == 0, r.output
    return json.loads(r.output)


def test_model_mode_works_without_gpu_from_the_datasheet():
    r = invoke("advise", "--model", "llama-2-7b")
    assert r.exit_code == 0, r.output
    assert UNCALIBRATED in r.output and "B_opt = " in r.output and "gain rule -> batch" in r.output
    assert "vllm serve meta-llama/Llama-2-7b-hf --dtype bfloat16 --max-num-seqs" in r.output
    assert "Traceback" not in r.output


def test_model_mode_json():
    report = advise_json("--model", "llama-3-8b", "--prompt", "1024", "--output", "256")
    assert report["mode"] == "model" and report["gpu"]["name"] == "NVIDIA H100 80GB HBM3"
    assert report["gpu"]["memory_source"].startswith("H100 SXM5 80GB: the total CUDA reports, 79.11 GiB, as seen at https://")
    assert report["gpu"]["memory_bytes"] == 81008 << 20  # 79.11 GiB, not the marketed 80
    assert report["prediction"] == {**report["prediction"], "source": UNCALIBRATED, "calibrated": False}
    batches = [row["batch"] for row in report["curve"]]
    assert batches[:3] == [1, 2, 4] and batches[-1] == report["memory"]["max_batch_one_replica"]
    assert report["b_opt"] == report["choices"]["gain"]["batch"] in batches
    gains = [row["gain"] for row in report["curve"]]
    assert gains[0] == 1 and all(a >= b for a, b in zip(gains, gains[1:]))
    assert report["memory"]["kv_bytes_per_token"] == 131072 and report["memory"]["kv_tokens_per_sequence"] == 1280
    v = report["vllm"]
    assert v["max_num_seqs"] == report["b_opt"] and v["instances"] == len(v["commands"]) >= 1
    assert v["instances"] * v["gpu_memory_utilization"] <= 0.9 + 1e-9 and v["max_model_len"] == 1280


def test_gpu_without_a_cuda_total_plans_with_the_labelled_margin():
    report = advise_json("--model", "llama-2-7b", "--gpu", "NVIDIA L4")
    assert report["gpu"]["memory_bytes"] == int(24 * 2**30 * 0.9)
    assert "24 GiB less a 10% margin (an assumption" in report["gpu"]["memory_source"]


def test_memory_freed_against_the_largest_batch():
    report = advise_json("--model", "qwen2.5-0.5b", "--epsilon", "0.5")
    m = report["memory"]
    assert m["b_opt"] < m["largest_batch"] == m["max_batch_one_replica"]
    assert m["freed_bytes"] == pytest.approx((m["largest_batch"] - m["b_opt"]) * m["kv_tokens_per_sequence"] * m["kv_bytes_per_token"])
    replicas = report["replicas"]
    assert [r["replicas"] for r in replicas] == list(range(1, len(replicas) + 1)) and len(replicas) > 1


def test_latency_bound_and_rule_options():
    report = advise_json("--model", "llama-2-7b", "--max-itl-ms", "6", "--rule", "plateau", "--batches", "1,8,16,32,64")
    assert report["latency_bound_ms"] == 6 and report["rule"] == "plateau"
    assert report["b_opt"] == report["choices"]["plateau"]["batch"]
    assert all(row["itl_ms"] <= 6 for row in report["curve"] if row["batch"] <= report["choices"]["gain"]["batch"])


def write_profile(path):
    rows = [(1, 95, 10.5), (8, 720, 11.1), (32, 2400, 13.3), (64, 3600, 17.8), (128, 4300, 29.8), (256, 4600, 55.7)]
    path.write_text("max_num_seqs,output_throughput,mean_itl_ms\n" + "".join(f"{b},{t},{i}\n" for b, t, i in rows))
    return path


def test_profile_mode_by_hand(tmp_path):
    report = advise_json("--profile", write_profile(tmp_path / "runs.csv"))
    # g(B) = T(B) / (95 B): 0.95 at 8, 0.79 at 32, 0.59 at 64, 0.35 at 128, 0.19 at 256; bound 5 x 13.3 = 66.5 ms.
    assert report["latency_bound_ms"] == pytest.approx(66.5) and report["b_opt"] == 128
    assert "batch 256 is out: gain 0.19 <= epsilon 0.2" in report["choices"]["gain"]["why"]
    assert report["choices"]["plateau"]["batch"] == 128  # 4300 >= 0.9 x 4600
    assert report["vllm"] == {"max_num_seqs": 128} and report["memory"] is None
    assert report["profile"]["columns"] == {"batch": "max_num_seqs", "throughput": "output_throughput", "itl": "mean_itl_ms"}
    r = invoke("advise", "--profile", tmp_path / "runs.csv", "--epsilon", "0.4")
    assert r.exit_code == 0 and "B_opt = 64" in r.output and "columns used" in r.output


def test_profile_mode_with_model_anchors_replicas_on_the_measurement(tmp_path):
    report = advise_json("--profile", write_profile(tmp_path / "runs.csv"), "--model", "llama-3.2-1b")
    first = report["replicas"][0]
    assert first["replicas"] == 1 and first["tokens_per_s"] == 4300 and first["itl_ms"] == pytest.approx(29.8)
    assert report["memory"]["b_opt"] == 128 and report["memory"]["largest_batch"] == 256
    assert report["vllm"]["max_num_seqs"] == 128 and report["pareto"]


def test_calibrate_then_advise_uses_the_calibration(tmp_path):
    run = make_run(tmp_path / "traces" / "nvidia-h100-80gb-hbm3" / "run1")
    r = invoke("calibrate", run)
    assert r.exit_code == 0, r.output
    assert "attention" in r.output and "linear" in r.output and "written to" in r.output
    assert (run / "calibration.json").is_file() and (tmp_path / "traces/nvidia-h100-80gb-hbm3/calibration.json").is_file()
    report = advise_json("--model", "llama-2-7b")
    assert report["prediction"]["calibrated"] and str(run) in report["prediction"]["source"]
    assert report["prediction"]["provenance"]["git_commit"] == "abc1234"
    fitted = report["curve"][0]["itl_ms"]
    assert advise_json("--model", "llama-2-7b", "--step-overhead-us", "1000")["curve"][0]["itl_ms"] == pytest.approx(fitted + 1)


@pytest.mark.parametrize(
    "args, message",
    [
        (("--model", "gpt-5"), "unknown model 'gpt-5'"),
        (("--model", "llama-2-7b", "--epsilon", "0"), "--epsilon must lie strictly between 0 and 1"),
        (("--model", "llama-2-7b", "--epsilon", "1"), "--epsilon must lie strictly between 0 and 1"),
        (("--model", "llama-2-7b", "--epsilon", "1.5"), "--epsilon must lie strictly between 0 and 1"),
        (("--model", "llama-2-7b", "--latency-factor", "0"), "--latency-factor must be positive"),
        (("--model", "llama-2-13b", "--gpu", "NVIDIA L4"), "cannot fit even at batch 1"),
        (("--model", "llama-3.1-8b", "--gpu", "NVIDIA GeForce RTX 4090", "--prompt", "120000"),
         "cannot fit even at batch 1"),
        (("--model", "llama-2-7b", "--prompt", "200000"), "exceeds llama-2-7b's 4096 positions"),
        (("--model", "llama-2-7b", "--gpu", "Tesla T4"), "no datasheet memory size for 'Tesla T4'; give it with --gpu-memory-gb"),
        (("--model", "llama-2-7b", "--gpu", "Tesla T4", "--gpu-memory-gb", "16"), "no calibration and no datasheet entry for 'Tesla T4'"),
        (("--model", "llama-2-7b", "--batches", "4096"), "none of the --batches fits in memory"),
        (("--model", "llama-2-7b", "--batches", "0,4"), "--batches takes positive whole numbers"),
        (("--model", "llama-2-7b", "--prompt", "uniform:9:1"), "--prompt takes a positive token count"),
        (("--model", "llama-2-7b", "--memory-fraction", "1.5"), "--memory-fraction must lie in (0, 1]"),
        (("--model", "llama-2-7b", "--calibration", "missing.json"), "no calibration file at missing.json"),
        (("--profile", "missing.csv"), "no profile file at missing.csv"),
    ],
)
def test_bad_input_is_one_sentence(args, message):
    r = invoke("advise", *args)
    assert r.exit_code == 1, r.output
    assert r.output.startswith("Error: ") and message in r.output
    assert "Traceback" not in r.output and r.output.count("\n") == 1


def test_config_without_needed_fields(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 64, "num_attention_heads": 4}))
    r = invoke("advise", "--model", tmp_path / "config.json")
    assert r.exit_code == 1 and "lacks num_hidden_layers" in r.output and r.output.count("\n") == 1


@pytest.mark.parametrize("content", ["", "batch,throughput\n", "[1,2", "batch,throughput\nx,1\n"])
def test_empty_or_malformed_profile(tmp_path, content):
    path = tmp_path / ("p.json" if content.startswith("[") else "p.csv")
    path.write_text(content)
    r = invoke("advise", "--profile", path)
    assert r.exit_code == 1 and r.output.startswith("Error: ") and r.output.count("\n") == 1


@pytest.mark.parametrize("args", [(), ("--model", "llama-2-7b", "--lengths", "x.csv", "--prompt", "5")])
def test_usage_errors(args):
    r = invoke("advise", *args)
    assert r.exit_code == 2


def test_calibrate_a_folder_that_is_not_a_run(tmp_path):
    r = invoke("calibrate", tmp_path)
    assert r.exit_code == 1 and "is not a gpuprof run directory" in r.output


def test_profile_b_opt_that_does_not_fit_the_workload(tmp_path):
    # 3072-token sequences of Llama-2-7B take 1.5 GiB each: 37 fit in the 79.11 GiB CUDA reports on an H100, the
    # measured B_opt of 128 does not.
    report = advise_json("--profile", write_profile(tmp_path / "runs.csv"), "--model", "llama-2-7b",
                         "--prompt", "2048", "--output", "1024")
    assert report["b_opt"] == 128 and report["memory"]["max_batch_one_replica"] == 37
    assert report["replicas"] is None and report["vllm"] == {"max_num_seqs": 128}
    assert any("B_opt 128 does not fit" in n for n in report["notes"])


@pytest.mark.gpu
def test_plans_for_the_visible_gpu_by_default(monkeypatch):
    import torch

    monkeypatch.setattr(device, "cuda_available", REAL_CUDA_AVAILABLE)
    report = advise_json("--model", "qwen2.5-0.5b")
    assert report["gpu"]["name"] == torch.cuda.get_device_name()
    assert report["gpu"]["memory_bytes"] == torch.cuda.get_device_properties(0).total_memory
    assert report["gpu"]["memory_source"] == "this GPU, as CUDA reports it"


def test_sequence_beyond_the_model_context_is_one_error(tmp_path):
    r = invoke("advise", "--model", "llama-3-8b", "--prompt", "8000", "--output", "1000")
    assert r.exit_code != 0 and "Traceback" not in r.output and "vllm serve" not in r.output
    assert "the longest sequence (9000 tokens, prompt + output) exceeds llama-3-8b's 8192 positions" in r.output
    r = invoke("advise", "--profile", write_profile(tmp_path / "runs.csv"), "--model", "llama-3-8b",
               "--prompt", "8000", "--output", "1000")
    assert r.exit_code != 0 and "exceeds llama-3-8b's 8192 positions" in r.output


def test_llama_3_1_hub_id_plans_its_own_context():
    report = advise_json("--model", "meta-llama/Llama-3.1-8B", "--prompt", "8000", "--output", "1000")
    assert report["vllm"]["max_model_len"] == 9000
    assert all(c.startswith("vllm serve meta-llama/Llama-3.1-8B ") for c in report["vllm"]["commands"])


@pytest.mark.parametrize("args", [("--workspace-gb", "nan"), ("--gpu-memory-gb", "nan"), ("--gpu-memory-gb", "inf"),
                                  ("--memory-fraction", "nan"), ("--step-overhead-us", "inf")])
def test_non_finite_numbers_are_one_sentence(args):
    r = invoke("advise", "--model", "llama-2-7b", *args)
    assert r.exit_code == 1 and "Traceback" not in r.output and r.output.count("\n") == 1
    assert f"{args[0]} takes a finite number, not {float(args[1])}." in r.output


def test_memory_freed_counts_from_the_largest_batch_that_fits(tmp_path):
    # Measured up to 256, but Llama-2-7B at 768 tokens a sequence holds at most 151 on an H100: freed is counted
    # from 151, not from the 96 GiB of KV cache a batch of 256 would need.
    report = advise_json("--profile", write_profile(tmp_path / "runs.csv"), "--model", "llama-2-7b")
    m = report["memory"]
    assert m["b_opt"] == 128 and m["largest_batch"] == m["max_batch_one_replica"] == 151
    assert "the largest measured, 256, does not" in m["largest_batch_is"]
    per_sequence = m["kv_tokens_per_sequence"] * m["kv_bytes_per_token"]
    assert m["freed_bytes"] == pytest.approx((151 - 128) * per_sequence)


def test_nothing_is_freed_when_b_opt_does_not_fit(tmp_path):
    report = advise_json("--profile", write_profile(tmp_path / "runs.csv"), "--model", "llama-2-7b",
                         "--prompt", "2048", "--output", "1024")
    m = report["memory"]
    assert m["b_opt"] == 128 > m["largest_batch"] == 37 and m["freed_bytes"] == 0
