"""Model shapes: presets with the source of each config, and Hugging Face `config.json` parsing.

Everything downstream (sweep grids, advisor memory arithmetic, the decode loop) needs only these numbers, never
the weights, so nothing is downloaded.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from gpuprof.errors import GpuprofError


@dataclass(frozen=True)
class Linear:
    """One weight matrix of a decode step: y[M, n] = x[M, k] @ W[n, k]^T, applied `count` times per step."""

    name: str
    n: int
    k: int
    count: int
    bias: bool = False


@dataclass(frozen=True)
class ModelShape:
    name: str
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    max_position: int
    mlp: str  # "gated" (SiLU-gated: gate, up, down) or "plain" (up, act, down)
    activation: str  # "silu", "gelu", "relu"
    norm: str  # "rmsnorm" or "layernorm"
    rotary: bool  # rotary position embedding; False means learned absolute positions
    tied_embeddings: bool
    attn_bias: str = "none"  # "none", "qkv" (Qwen2) or "all" (OPT)
    mlp_bias: bool = False
    position_offset: int = 0  # extra rows of a learned position table (OPT keeps 2 for its padding offset)
    source: str = ""

    def __post_init__(self) -> None:
        if self.heads % self.kv_heads:
            raise GpuprofError(
                f"{self.name}: {self.heads} attention heads do not divide into {self.kv_heads} key/value heads."
            )

    @property
    def group(self) -> int:
        """Query heads per key/value head (1: MHA, heads: MQA)."""
        return self.heads // self.kv_heads

    def linears(self) -> list[Linear]:
        """The weight matrices of one decode step, with how many times each is applied."""
        d, q, kv = self.hidden, self.heads * self.head_dim, self.kv_heads * self.head_dim
        up = 2 * self.intermediate if self.mlp == "gated" else self.intermediate
        return [
            Linear("qkv", q + 2 * kv, d, self.layers, bias=self.attn_bias != "none"),
            Linear("o", d, q, self.layers, bias=self.attn_bias == "all"),
            Linear("gate_up" if self.mlp == "gated" else "up", up, d, self.layers, bias=self.mlp_bias),
            Linear("down", d, self.intermediate, self.layers, bias=self.mlp_bias),
            Linear("lm_head", self.vocab, d, 1),
        ]

    def params(self) -> int:
        """Number of weights, embeddings and norms included (tied embeddings counted once)."""
        total = sum(l.n * l.k * l.count + (l.n * l.count if l.bias else 0) for l in self.linears())
        embed = self.vocab * self.hidden
        total += 0 if self.tied_embeddings else embed  # lm_head was counted above; tied means one matrix
        if not self.rotary:
            total += (self.max_position + self.position_offset) * self.hidden
        norm_width = 2 * self.hidden if self.norm == "layernorm" else self.hidden  # weight (+ bias)
        total += (2 * self.layers + 1) * norm_width
        return total

    def weight_bytes(self, dtype_bytes: int = 2) -> int:
        return self.params() * dtype_bytes

    def kv_bytes_per_token(self, dtype_bytes: int = 2) -> int:
        """KV-cache bytes one token occupies: 2 (K and V) x layers x KV heads x head_dim x dtype bytes."""
        return 2 * self.layers * self.kv_heads * self.head_dim * dtype_bytes

    def to_dict(self) -> dict:
        return asdict(self)


def _preset(name: str, source: str, **shape: object) -> ModelShape:
    return ModelShape(name=name, source=source, **shape)


_LLAMA = dict(mlp="gated", activation="silu", norm="rmsnorm", rotary=True)
_OPT = dict(mlp="plain", activation="relu", norm="layernorm", rotary=False, tied_embeddings=True, attn_bias="all",
            mlp_bias=True, vocab=50272, max_position=2048, position_offset=2)
_QWEN2 = dict(_LLAMA, attn_bias="qkv", tied_embeddings=True, vocab=151936, max_position=32768)

PRESETS: dict[str, ModelShape] = {
    m.name.lower(): m
    for m in (
        _preset("opt-1.3b", "https://huggingface.co/facebook/opt-1.3b/blob/main/config.json", layers=24, hidden=2048,
                heads=32, kv_heads=32, head_dim=64, intermediate=8192, **_OPT),
        _preset("opt-2.7b", "https://huggingface.co/facebook/opt-2.7b/blob/main/config.json", layers=32, hidden=2560,
                heads=32, kv_heads=32, head_dim=80, intermediate=10240, **_OPT),
        _preset("llama-2-7b", "https://huggingface.co/meta-llama/Llama-2-7b-hf/blob/main/config.json", layers=32,
                hidden=4096, heads=32, kv_heads=32, head_dim=128, intermediate=11008, vocab=32000, max_position=4096,
                tied_embeddings=False, **_LLAMA),
        _preset("llama-2-13b", "https://huggingface.co/meta-llama/Llama-2-13b-hf/blob/main/config.json", layers=40,
                hidden=5120, heads=40, kv_heads=40, head_dim=128, intermediate=13824, vocab=32000, max_position=4096,
                tied_embeddings=False, **_LLAMA),
        _preset("llama-3-8b", "https://huggingface.co/meta-llama/Meta-Llama-3-8B/blob/main/config.json", layers=32,
                hidden=4096, heads=32, kv_heads=8, head_dim=128, intermediate=14336, vocab=128256, max_position=8192,
                tied_embeddings=False, **_LLAMA),
        _preset("llama-3.1-8b", "https://huggingface.co/meta-llama/Llama-3.1-8B/blob/main/config.json", layers=32,
                hidden=4096, heads=32, kv_heads=8, head_dim=128, intermediate=14336, vocab=128256, max_position=131072,
                tied_embeddings=False, **_LLAMA),
        _preset("llama-3.2-1b", "https://huggingface.co/meta-llama/Llama-3.2-1B/blob/main/config.json", layers=16,
                hidden=2048, heads=32, kv_heads=8, head_dim=64, intermediate=8192, vocab=128256, max_position=131072,
                tied_embeddings=True, **_LLAMA),
        _preset("mistral-7b", "https://huggingface.co/mistralai/Mistral-7B-v0.1/blob/main/config.json", layers=32,
                hidden=4096, heads=32, kv_heads=8, head_dim=128, intermediate=14336, vocab=32000, max_position=32768,
                tied_embeddings=False, **_LLAMA),
        _preset("qwen2.5-0.5b", "https://huggingface.co/Qwen/Qwen2.5-0.5B/blob/main/config.json", layers=24,
                hidden=896, heads=14, kv_heads=2, head_dim=64, intermediate=4864, **_QWEN2),
        _preset("qwen2.5-1.5b", "https://huggingface.co/Qwen/Qwen2.5-1.5B/blob/main/config.json", layers=28,
                hidden=1536, heads=12, kv_heads=2, head_dim=128, intermediate=8960, **_QWEN2),
    )
}

# Hub ids people type, mapped to presets.
_ALIASES = {
    "facebook/opt-1.3b": "opt-1.3b",
    "facebook/opt-2.7b": "opt-2.7b",
    "meta-llama/llama-2-7b-hf": "llama-2-7b",
    "meta-llama/llama-2-13b-hf": "llama-2-13b",
    "meta-llama/meta-llama-3-8b": "llama-3-8b",
    "meta-llama/llama-3.1-8b": "llama-3.1-8b",
    "meta-llama/llama-3.2-1b": "llama-3.2-1b",
    "mistralai/mistral-7b-v0.1": "mistral-7b",
    "qwen/qwen2.5-0.5b": "qwen2.5-0.5b",
    "qwen/qwen2.5-1.5b": "qwen2.5-1.5b",
}

_ACTIVATIONS = {"silu": "silu", "swish": "silu", "gelu": "gelu", "gelu_new": "gelu", "gelu_pytorch_tanh": "gelu",
                "relu": "relu"}


def get_model(name_or_path: str) -> ModelShape:
    """A preset by name (or hub id), or the shapes of a Hugging Face config.json (file or folder holding one)."""
    path = Path(name_or_path)
    if path.is_dir():
        path = path / "config.json"
    if path.is_file():
        return from_hf_config(path)
    key = name_or_path.lower()
    key = _ALIASES.get(key, key)
    if key in PRESETS:
        return PRESETS[key]
    raise GpuprofError(
        f"unknown model {name_or_path!r}; use a preset ({', '.join(PRESETS)}) or a path to a Hugging Face config.json."
    )


def from_hf_config(path: Path) -> ModelShape:
    """Parse the fields gpuprof needs from a Hugging Face config.json (Llama, Mistral, Qwen2, OPT and alike)."""
    try:
        cfg = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise GpuprofError(f"{path} is not a readable JSON config ({e.__class__.__name__}).")
    if not isinstance(cfg, dict):
        raise GpuprofError(f"{path} is not a JSON object.")
    kind = str(cfg.get("model_type", "")).lower()
    is_opt = kind == "opt"

    def need(*keys: str) -> int:
        for k in keys:
            if isinstance(cfg.get(k), int) and cfg[k] > 0:
                return cfg[k]
        raise GpuprofError(f"{path} lacks {' or '.join(keys)} (a positive integer), which gpuprof needs.")

    hidden = need("hidden_size", "n_embd", "d_model")
    heads = need("num_attention_heads", "n_head")
    kv_heads = cfg.get("num_key_value_heads") or heads
    head_dim = cfg.get("head_dim") or hidden // heads
    act = str(cfg.get("hidden_act") or cfg.get("activation_function") or "silu").lower()
    if act not in _ACTIVATIONS:
        raise GpuprofError(f"{path}: activation {act!r} is not one gpuprof models; known: {', '.join(_ACTIVATIONS)}.")
    gated = not is_opt and kind not in ("gpt2", "gpt_neox", "phi")
    if is_opt and cfg.get("word_embed_proj_dim", hidden) != hidden:
        raise GpuprofError(f"{path}: OPT with word_embed_proj_dim != hidden_size (OPT-350m) is not supported.")
    return ModelShape(
        name=str(cfg.get("_name_or_path") or Path(path).parent.name or "custom"),
        layers=need("num_hidden_layers", "n_layer"),
        hidden=hidden,
        heads=heads,
        kv_heads=int(kv_heads),
        head_dim=int(head_dim),
        intermediate=need("intermediate_size", "ffn_dim", "n_inner"),
        vocab=need("vocab_size"),
        max_position=int(cfg.get("max_position_embeddings") or cfg.get("n_positions") or 2048),
        mlp="gated" if gated else "plain",
        activation=_ACTIVATIONS[act],
        norm="layernorm" if is_opt or "layer_norm_eps" in cfg or "layer_norm_epsilon" in cfg else "rmsnorm",
        rotary=not is_opt and kind != "gpt2",
        tied_embeddings=bool(cfg.get("tie_word_embeddings", is_opt)),
        attn_bias="all" if is_opt or cfg.get("attention_bias") else ("qkv" if kind == "qwen2" else "none"),
        mlp_bias=bool(is_opt or cfg.get("mlp_bias")),
        position_offset=2 if is_opt else 0,
        source=str(path),
    )
