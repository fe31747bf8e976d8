"""The decode step against a plain float32 implementation of the same model, and its benchmark records.

Tolerances (||logits - ref|| / ||ref||): bf16 2e-2, fp16 1e-2, fp32 1e-4 (the step in fp32 differs from the
reference only in summation order).
"""

from __future__ import annotations

import dataclasses
import json
import sys
import types

import pytest
import torch
from click.testing import CliRunner

from gpuprof import decode_bench
from gpuprof.bench import CheckFailed, relative_error
from gpuprof.cli import main
from gpuprof.decode import (
    GpuprofBackend,
    PagedKVCache,
    TorchBackend,
    build_decoder,
    choose_linear,
    make_backend,
    prepare_batch,
)
from gpuprof.decode_bench import DecodeSettings, measure_batch, run_decode
from gpuprof.decode_reference import ReferenceDecoder
from gpuprof.errors import GpuprofError, Unsupported
from gpuprof.harness import TimingOptions
from gpuprof.models import ModelShape, get_model
from gpuprof.records import POINT_KEYS

try:
    import gpuprof.ops.attention  # noqa: F401
    import gpuprof.ops.gemv  # noqa: F401

    HAVE_OPS = True
except ImportError:
    HAVE_OPS = False
needs_ops = pytest.mark.skipif(not HAVE_OPS, reason="gpuprof.ops.attention not available")

TOLERANCE = {"bf16": 2e-2, "fp16": 1e-2, "fp32": 1e-4}
QUICK = TimingOptions(warmup_ms=0, max_time_s=0.02, min_reps=3, cold_l2=False, graph=False)


def tiny(family: str, head_dim: int = 16, **changes) -> ModelShape:
    """Tiny models of each architecture family gpuprof decodes."""
    heads = 4 if head_dim == 16 else 2
    base = dict(name=f"tiny-{family}", layers=2, hidden=64 if head_dim == 16 else 128, heads=heads, kv_heads=heads // 2,
                head_dim=head_dim, intermediate=96, vocab=97, max_position=256, mlp="gated", activation="silu",
                norm="rmsnorm", rotary=True, tied_embeddings=False)
    families = {
        "llama": {},
        "opt": dict(mlp="plain", activation="relu", norm="layernorm", rotary=False, tied_embeddings=True,
                    attn_bias="all", mlp_bias=True, position_offset=2),
        "qwen2": dict(attn_bias="qkv", tied_embeddings=True),
        "gelu-mqa": dict(mlp="plain", activation="gelu", kv_heads=1),
    }
    return ModelShape(**{**base, **families[family], **changes})


FAMILIES = ("llama", "opt", "qwen2", "gelu-mqa")


def decode_and_compare(decoder, lengths: list[int], steps: int, page_size: int, seed: int = 0,
                       use_graph: bool = False, corrupt=None) -> list[float]:
    """Random history of the given lengths in both caches, then `steps` teacher-forced steps; errors per step."""
    shape, device = decoder.shape, decoder.device
    batch, longest = len(lengths), max(lengths)
    gen = torch.Generator().manual_seed(seed)
    size = (shape.layers, batch, longest, shape.kv_heads, shape.head_dim)
    k_hist = torch.randn(size, generator=gen).to(device=device, dtype=decoder.dtype)
    v_hist = torch.randn(size, generator=gen).to(device=device, dtype=decoder.dtype)
    cache = PagedKVCache.allocate(shape, batch, longest + steps, page_size, decoder.dtype_name, device, seed + 1)
    cache.k.fill_(float("nan"))  # any slot read that was never written poisons the logits
    cache.v.fill_(float("nan"))
    cache.write_history(k_hist, v_hist)
    cache.seq_lens.copy_(torch.tensor(lengths) + 1)
    if corrupt:
        corrupt(cache)
    reference = ReferenceDecoder(shape, decoder.weights, batch, longest + steps)
    reference.load_history(k_hist, v_hist, lengths)
    tokens = torch.zeros(batch, dtype=torch.long, device=device)
    graph = None
    errors = []
    for _ in range(steps):
        tokens.copy_(torch.randint(shape.vocab, (batch,), generator=gen))
        if use_graph and graph is None:
            from gpuprof.decode import StepGraph

            graph = StepGraph(decoder, tokens, cache)
        logits = graph.replay() if graph else decoder.step(tokens, cache)
        errors.append(relative_error(logits, reference.step(tokens)))
        cache.seq_lens.add_(1)
    return errors


# ------------------------------------------------------------------------------------------- CPU, torch backend


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("dtype", ["bf16", "fp16", "fp32"])
def test_torch_backend_matches_reference(family, dtype):
    decoder = build_decoder(tiny(family), dtype, "cpu", TorchBackend(), seed=3)
    errors = decode_and_compare(decoder, lengths=[5, 23, 0, 16], steps=4, page_size=8)
    assert max(errors) <= TOLERANCE[dtype], errors


@pytest.mark.parametrize(
    "corrupt",
    [
        pytest.param(lambda c: c.block_table.copy_(c.block_table.roll(1, dims=1)), id="block-table-rolled"),
        pytest.param(lambda c: c.seq_lens.add_(-1), id="lengths-short-by-one"),
    ],
)
def test_comparison_catches_cache_mistakes(corrupt):
    """The comparison is sharp enough to fail: a wrong block table or wrong lengths give wrong logits."""
    decoder = build_decoder(tiny("llama"), "fp32", "cpu", TorchBackend(), seed=3)
    errors = decode_and_compare(decoder, lengths=[9, 20, 17], steps=2, page_size=4, corrupt=corrupt)
    assert not max(errors) <= 1e-2


def test_cache_writes_land_in_the_pages_of_the_block_table():
    shape = tiny("llama")
    cache = PagedKVCache.allocate(shape, batch=3, max_len=10, page_size=4, dtype="fp32", device="cpu", seed=5)
    assert cache.max_len == 12 and sorted(cache.block_table.flatten().tolist()) == list(range(9))
    cache.k.zero_()
    cache.v.zero_()
    k = torch.randn(3, shape.kv_heads, shape.head_dim)
    positions = torch.tensor([0, 5, 11])
    cache.write(1, k, -k, positions)
    for b, pos in enumerate(positions.tolist()):
        page = cache.block_table[b, pos // 4].item()
        assert torch.equal(cache.k[1, page, pos % 4], k[b]) and torch.equal(cache.v[1, page, pos % 4], -k[b])
    assert cache.k[0].abs().sum() == 0 and cache.k[1].count_nonzero() == k.count_nonzero()


def test_greedy_loop_advances_lengths_and_rewinds():
    decoder = build_decoder(tiny("opt"), "bf16", "cpu", TorchBackend(), seed=1)
    prepared = prepare_batch(decoder, batch=2, ctx=7, reserve=3, page_size=4)
    assert prepared.cache.seq_lens.tolist() == [7, 7] and prepared.graph is None
    logits = prepared.step()
    prepared.advance(logits)
    assert prepared.tokens.tolist() == logits.argmax(-1).tolist() and prepared.cache.seq_lens.tolist() == [8, 8]
    prepared.rewind()
    assert prepared.cache.seq_lens.tolist() == [7, 7]


def test_context_beyond_the_model_positions_is_refused():
    decoder = build_decoder(tiny("opt", max_position=32), "bf16", "cpu", TorchBackend())
    with pytest.raises(GpuprofError, match="exceeds tiny-opt's 32 positions"):
        run_decode(decoder, [1], DecodeSettings(ctx=30, steps=4, timing=QUICK))


def test_unknown_backend_is_one_sentence():
    with pytest.raises(GpuprofError, match="valid: gpuprof, torch"):
        make_backend("tensorrt")


# ------------------------------------------------------------------------------------------- linear choice


def fake_gemv(x, w, bias=None, *, impl, out=None):
    """Stands in for gpuprof.ops.gemv: 'good' is right, 'off' is 1% off, 'narrow' supports few rows."""
    if impl == "narrow" and x.shape[0] > 2:
        raise Unsupported("narrow handles at most 2 rows.")
    y = torch.nn.functional.linear(x, w, bias) * (1.01 if impl == "off" else 1.0)
    if out is None:
        return y
    return out.copy_(y)


def test_linear_choice_rejects_wrong_and_unsupported_candidates():
    w = torch.randn(48, 32)
    choice = choose_linear(fake_gemv, 4, w, None, ["off", "narrow", "good"])
    assert choice.impl == "good" and set(choice.rejected) == {"off", "narrow"}
    assert "relative error" in choice.rejected["off"] and choice.times_us == {}  # nothing timed on the CPU
    assert choose_linear(fake_gemv, 2, w, torch.randn(48), ["narrow", "good"]).impl == "narrow"
    with pytest.raises(CheckFailed, match="no linear implementation runs"):
        choose_linear(fake_gemv, 4, w, None, ["off", "narrow"])


# ------------------------------------------------------------------------------------------- records and CLI


def test_run_decode_records_the_contract_fields():
    decoder = build_decoder(tiny("qwen2"), "bf16", "cpu", TorchBackend())
    seen = []
    points = run_decode(decoder, [1, 3], DecodeSettings(ctx=20, steps=3, page_size=8, timing=QUICK),
                        on_point=seen.append)
    assert seen == points and [p["batch"] for p in points] == [1, 3]
    for p in points:
        assert set(POINT_KEYS) <= set(p) and p["status"] == "ok", p["error"]
        assert p["kernel"] == "decode_step" and p["impl"] == "torch" and p["ctx"] == 20
        assert p["tokens_per_s"] == pytest.approx(p["batch"] / (p["step_ms"] / 1e3))
        assert p["loop_steps"] == 3 and p["loop_tokens_per_s"] > 0
        assert p["kv_bytes"] == p["batch"] * 24 * tiny("qwen2").kv_bytes_per_token(2)
        assert p["bytes"] > 0 and p["flops"] > 0 and p["joules_per_token"] is None


def test_points_that_do_not_fit_are_recorded_as_oom(monkeypatch):
    monkeypatch.setattr(decode_bench, "_free_bytes", lambda device: 1 << 20)
    decoder = build_decoder(tiny("llama"), "bf16", "cpu", TorchBackend())
    (point,) = run_decode(decoder, [64], DecodeSettings(ctx=20, steps=0, timing=QUICK))
    assert point["status"] == "oom" and "GiB are free after the weights" in point["error"]
    assert point["time_us"] is None


class FakeEnergy:
    """A collector reporting 3 J for any window, so joules per token is 3 / (steps x batch)."""

    def start(self, point):
        self.started = True

    def stop(self, point):
        assert self.started
        return {"nvml_energy_j": 3.0, "nvml_power_w": 300.0}


def test_energy_per_token_from_collectors():
    decoder = build_decoder(tiny("llama"), "bf16", "cpu", TorchBackend())
    settings = DecodeSettings(ctx=10, steps=0, timing=QUICK, energy_window_s=1e-6)
    point = measure_batch(decoder, 4, settings, collectors=[FakeEnergy()])
    assert point["status"] == "ok" and point["energy_steps"] == 10
    assert point["joules_per_token"] == pytest.approx(3.0 / 40) and point["nvml_energy_j"] == 3.0


@pytest.fixture
def tiny_config(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"model_type": "llama", "hidden_size": 64, "num_attention_heads": 4,
                                "num_key_value_heads": 2, "num_hidden_layers": 2, "intermediate_size": 96,
                                "vocab_size": 97, "max_position_embeddings": 256, "hidden_act": "silu"}))
    return path


def decode_cli(*args):
    return CliRunner().invoke(main, ["decode", *args])


def test_cli_writes_a_run_and_resumes(tmp_path, tiny_config):
    out = tmp_path / "run"
    args = ["--model", str(tiny_config), "--device", "cpu", "--impl", "torch", "--ctx", "12", "--steps", "2",
            "--max-time", "0.02", "--out", str(out)]
    r = decode_cli(*args, "--batch", "1,2")
    assert r.exit_code == 0, r.output
    lines = (out / "points.jsonl").read_text().splitlines()
    assert [json.loads(line)["batch"] for line in lines] == [1, 2]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["grid"]["batches"] == [1, 2] and manifest["grid"]["model"]["hidden"] == 64
    r = decode_cli(*args, "--batch", "1,2,3", "--resume")
    assert r.exit_code == 0, r.output
    assert [json.loads(line)["batch"] for line in (out / "points.jsonl").read_text().splitlines()] == [1, 2, 3]
    r = decode_cli(*args, "--batch", "4", "--resume", "--dtype", "fp16")
    assert r.exit_code == 1 and "holds a run with another dtype ('bf16')" in r.output


def test_cli_counters_go_through_gpuprof_counters(tmp_path, tiny_config, monkeypatch):
    asked = []
    fake = types.ModuleType("gpuprof.counters")
    fake.make_collectors = lambda names: asked.append(names) or [FakeEnergy()]
    monkeypatch.setitem(sys.modules, "gpuprof.counters", fake)
    r = decode_cli("--model", str(tiny_config), "--device", "cpu", "--impl", "torch", "--batch", "2", "--ctx", "8",
                   "--steps", "0", "--max-time", "0.02", "--counters", "nvml", "--json")
    assert r.exit_code == 0, r.output
    (point,) = json.loads(r.output)
    assert asked == [["nvml"]] and point["joules_per_token"] > 0


@pytest.mark.parametrize(
    "args, message",
    [
        (("--batch", "0"), "--batch takes positive whole numbers"),
        (("--linear", "fast"), "--linear takes triton, cuda and cublas"),
        (("--model", "gpt-5"), "unknown model 'gpt-5'"),
        (("--max-time", "0"), "--max-time must be positive"),
        (("--max-time", "nan"), "--max-time must be positive and finite"),
        (("--max-time", "inf"), "--max-time must be positive and finite"),
    ],
)
def test_cli_mistakes_are_one_sentence(args, message, tiny_config):
    base = {"--model": str(tiny_config), "--batch": "1", "--linear": "cublas", "--max-time": "1"}
    for flag, value in zip(args[::2], args[1::2]):
        base[flag] = value
    r = decode_cli("--device", "cpu", "--impl", "torch", *[x for kv in base.items() for x in kv])
    assert r.exit_code == 1 and message in r.output and "Traceback" not in r.output


def test_cli_on_the_cpu_cannot_switch_kernels_already_loaded_for_the_gpu(tiny_config, monkeypatch):
    import triton  # noqa: F401  (loaded, as if for a GPU)

    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    r = decode_cli("--model", str(tiny_config), "--device", "cpu", "--impl", "gpuprof")
    assert r.exit_code == 1 and "start gpuprof with TRITON_INTERPRET=1" in r.output


def test_cli_needs_a_gpu_unless_told_cpu(monkeypatch):
    from gpuprof import device

    monkeypatch.setattr(device, "cuda_available", lambda: False)
    r = decode_cli("--model", "llama-2-7b")
    assert r.exit_code == 1 and "needs an NVIDIA GPU" in r.output


# ------------------------------------------------------------------------------------------- gpuprof backend


@needs_ops
@pytest.mark.parametrize("family, linear_impls", [("llama", ("triton",)), ("llama", ("triton", "cublas")),
                                                  ("opt", ("triton",)), ("opt", ("triton", "cublas")),
                                                  ("qwen2", ("triton",)), ("gelu-mqa", ("triton",))])
def test_gpuprof_backend_matches_reference_on_cpu(family, linear_impls):
    """Our Triton kernels through the interpreter (head_dim 64: the attention kernel's smallest)."""
    if torch.cuda.is_available():
        pytest.skip("the GPU tests below cover this with real kernels")
    backend = GpuprofBackend("triton", linear_impls)
    decoder = build_decoder(tiny(family, head_dim=64), "bf16", "cpu", backend, seed=2)
    errors = decode_and_compare(decoder, lengths=[3, 18], steps=2, page_size=16)
    assert max(errors) <= TOLERANCE["bf16"], errors
    assert {c.impl for c in backend.choices.values()} == {"triton"}


def small(preset: str, layers: int = 2, vocab: int = 4096) -> ModelShape:
    """A preset's layer shapes with fewer layers and a smaller vocabulary, so a float32 reference is quick."""
    shape = get_model(preset)
    return dataclasses.replace(shape, name=f"{preset}-{layers}l", layers=layers, vocab=vocab)


@pytest.mark.gpu
@needs_ops
@pytest.mark.parametrize("preset", ["llama-3.2-1b", "opt-1.3b", "qwen2.5-0.5b", "llama-2-7b"])
@pytest.mark.parametrize("lengths", [[1], [37, 300, 5, 1024, 64]])
def test_gpuprof_graph_matches_reference_on_gpu(preset, lengths):
    backend = GpuprofBackend("triton", ("triton", "cublas"))
    decoder = build_decoder(small(preset), "bf16", "cuda", backend, seed=4)
    errors = decode_and_compare(decoder, lengths=lengths, steps=3, page_size=16, use_graph=True)
    assert max(errors) <= TOLERANCE["bf16"], errors
    assert all(c.times_us for c in backend.choices.values())  # measured, since there was a choice


@pytest.mark.gpu
@pytest.mark.parametrize("preset", ["llama-3.2-1b", "opt-1.3b"])
def test_torch_graph_matches_reference_on_gpu(preset):
    decoder = build_decoder(small(preset), "bf16", "cuda", TorchBackend(), seed=4)
    errors = decode_and_compare(decoder, lengths=[100, 3, 17], steps=3, page_size=16, use_graph=True)
    assert max(errors) <= TOLERANCE["bf16"], errors


@pytest.mark.gpu
@pytest.mark.parametrize("impl", ["torch", pytest.param("gpuprof", marks=needs_ops)])
def test_decode_points_on_gpu(impl):
    decoder = build_decoder(small("llama-3.2-1b", layers=4), "bf16", "cuda", make_backend(impl), seed=0)
    settings = DecodeSettings(ctx=256, steps=8, timing=TimingOptions(cold_l2=False, graph=False, max_time_s=0.3))
    points = run_decode(decoder, [1, 16, 300], settings)
    for p in points:
        assert p["status"] == "ok", p["error"]
        assert p["graph"] and p["timing_method"] == "events" and p["step_ms"] > 0
        assert p["memory_bytes"] >= p["weight_bytes"] + p["kv_bytes"]
        assert ("linear_qkv" not in p) if impl == "torch" else p["linear_qkv"] in ("triton", "cublas")
    if impl == "gpuprof":
        assert points[-1]["linear_qkv"] == "cublas"  # our GEMV takes at most 256 rows


def test_gpuprof_backend_calls_the_decided_kernel_api(monkeypatch):
    """Until the ops merge: stand-ins with the agreed signatures check what the backend hands them."""
    from gpuprof.decode import paged_attention_torch

    calls = []

    def decode_attention(q, k_cache, v_cache, seq_lens, block_table=None, *, scale=None, num_splits=None,
                         impl="triton", out=None):
        assert q.dim() == 3 and q.is_contiguous() and k_cache.dim() == 4 and k_cache.shape == v_cache.shape
        assert k_cache.shape[2:] == (q.shape[1] // 2, q.shape[2]) and seq_lens.dtype == torch.int32
        assert block_table.dtype == torch.int32 and block_table.shape[0] == q.shape[0] and impl == "triton"
        calls.append("attention")
        return paged_attention_torch(q, k_cache, v_cache, seq_lens, block_table, scale)

    def gemv(x, w, bias=None, *, impl="triton", out=None):
        calls.append(impl)
        return fake_gemv(x, w, bias, impl="good", out=out)

    for name, fn in (("attention", decode_attention), ("gemv", gemv)):
        module = types.ModuleType(f"gpuprof.ops.{name}")
        setattr(module, fn.__name__, fn)
        monkeypatch.setitem(sys.modules, f"gpuprof.ops.{name}", module)
    backend = GpuprofBackend("triton", ("cuda", "triton"))
    decoder = build_decoder(tiny("qwen2"), "bf16", "cpu", backend, seed=2)
    errors = decode_and_compare(decoder, lengths=[3, 18], steps=2, page_size=4)
    assert max(errors) <= TOLERANCE["bf16"], errors
    assert calls.count("attention") == 2 * 2 and {c.impl for c in backend.choices.values()} == {"cuda"}
    # qkv, o, gate_up, down, lm_head of the tiny model, at 2 rows
    assert sorted(backend.choices) == sorted([(2, 128, 64), (2, 64, 64), (2, 192, 64), (2, 64, 96), (2, 97, 64)])


def test_gpuprof_backend_without_ops_says_so(monkeypatch):
    monkeypatch.setitem(sys.modules, "gpuprof.ops.attention", None)
    with pytest.raises(GpuprofError, match="use --impl torch"):
        GpuprofBackend()
