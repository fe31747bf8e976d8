import json

import pytest

from gpuprof.errors import GpuprofError
from gpuprof.models import PRESETS, get_model

# Parameter totals as published with each model's weights (safetensors metadata / model cards).
PUBLISHED_PARAMS = {
    "opt-1.3b": 1_315_758_080,
    "opt-2.7b": 2_651_596_800,
    "llama-2-7b": 6_738_415_616,
    "llama-2-13b": 13_015_864_320,
    "llama-3-8b": 8_030_261_248,
    "llama-3.1-8b": 8_030_261_248,  # the same shapes as Llama 3 8B; only the context (131072) differs
    "llama-3.2-1b": 1_235_814_400,
    "mistral-7b": 7_241_732_096,
    "qwen2.5-0.5b": 494_032_768,
    "qwen2.5-1.5b": 1_543_714_304,
}


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_param_count_matches_published(name):
    assert get_model(name).params() == PUBLISHED_PARAMS[name]


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_names_its_source(name):
    assert get_model(name).source.startswith("https://huggingface.co/")


@pytest.mark.parametrize(
    "name, kv_bytes", [("llama-2-7b", 2 * 32 * 32 * 128 * 2), ("llama-3-8b", 2 * 32 * 8 * 128 * 2), ("opt-1.3b", 2 * 24 * 32 * 64 * 2)]
)
def test_kv_bytes_per_token(name, kv_bytes):
    assert get_model(name).kv_bytes_per_token(2) == kv_bytes


def test_linears_of_a_gqa_model():
    m = get_model("llama-3-8b")
    shapes = {l.name: (l.n, l.k, l.count) for l in m.linears()}
    assert shapes == {
        "qkv": ((32 + 2 * 8) * 128, 4096, 32),
        "o": (4096, 4096, 32),
        "gate_up": (2 * 14336, 4096, 32),
        "down": (4096, 14336, 32),
        "lm_head": (128256, 4096, 1),
    }


@pytest.mark.parametrize("alias", ["Llama-2-7B", "meta-llama/Llama-2-7b-hf", "LLAMA-2-7B"])
def test_aliases(alias):
    assert get_model(alias).name == "llama-2-7b"


def test_llama_3_1_is_its_own_preset_not_llama_3():
    m = get_model("meta-llama/Llama-3.1-8B")
    assert m.name == "llama-3.1-8b" and m.max_position == 131072
    assert m.source == "https://huggingface.co/meta-llama/Llama-3.1-8B/blob/main/config.json"
    assert get_model("llama-3-8b").max_position == 8192


def test_unknown_model_lists_presets():
    with pytest.raises(GpuprofError, match="unknown model 'gpt-5'.*llama-2-7b"):
        get_model("gpt-5")


LLAMA_CONFIG = {
    "model_type": "llama", "hidden_size": 4096, "num_hidden_layers": 32, "num_attention_heads": 32,
    "num_key_value_heads": 8, "intermediate_size": 14336, "vocab_size": 128256, "max_position_embeddings": 8192,
    "hidden_act": "silu", "rms_norm_eps": 1e-5, "tie_word_embeddings": False, "_name_or_path": "my-llama",
}


def test_hf_config_matches_the_preset(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(LLAMA_CONFIG))
    parsed = get_model(str(tmp_path))  # a folder holding config.json
    assert parsed.name == "my-llama"
    assert parsed.params() == PUBLISHED_PARAMS["llama-3-8b"]
    assert (parsed.kv_heads, parsed.head_dim, parsed.mlp, parsed.norm) == (8, 128, "gated", "rmsnorm")


def test_hf_opt_config(tmp_path):
    cfg = {"model_type": "opt", "hidden_size": 2048, "num_hidden_layers": 24, "num_attention_heads": 32,
           "ffn_dim": 8192, "vocab_size": 50272, "max_position_embeddings": 2048, "activation_function": "relu",
           "word_embed_proj_dim": 2048, "_name_or_path": "facebook/opt-1.3b"}
    path = tmp_path / "config.json"
    path.write_text(json.dumps(cfg))
    parsed = get_model(str(path))
    assert parsed.params() == PUBLISHED_PARAMS["opt-1.3b"] and parsed.norm == "layernorm" and not parsed.rotary


@pytest.mark.parametrize(
    "content, message",
    [
        ("{not json", "not a readable JSON config"),
        ("[1, 2]", "not a JSON object"),
        (json.dumps({k: v for k, v in LLAMA_CONFIG.items() if k != "num_hidden_layers"}), "lacks num_hidden_layers"),
        (json.dumps(dict(LLAMA_CONFIG, hidden_act="swiglu_custom")), "activation 'swiglu_custom'"),
        (json.dumps(dict(LLAMA_CONFIG, num_key_value_heads=5)), "do not divide"),
    ],
)
def test_bad_configs(tmp_path, content, message):
    path = tmp_path / "config.json"
    path.write_text(content)
    with pytest.raises(GpuprofError, match=message):
        get_model(str(path))
