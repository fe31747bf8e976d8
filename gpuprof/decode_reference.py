"""The decode step of gpuprof.decode written plainly: float32 math, a contiguous cache, one sequence at a time.

It shares nothing with gpuprof.decode but the weights, so a mistake in the paged cache, the block table, the
rotary or the norms of the fast path shows up as disagreeing logits. Meant for small models: it keeps a float32
copy of the weights and a float32 cache.
"""

from __future__ import annotations

import torch

from gpuprof.decode import NORM_EPS, ROTARY_BASE, DecoderWeights, Norm
from gpuprof.models import ModelShape


def _affine(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    y = x @ w.float().T
    return y if b is None else y + b.float()


def _normalize(x: torch.Tensor, norm: Norm, kind: str) -> torch.Tensor:
    if kind == "layernorm":
        mean = x.mean(dim=-1, keepdim=True)
        var = ((x - mean) ** 2).mean(dim=-1, keepdim=True)
        return (x - mean) / torch.sqrt(var + NORM_EPS) * norm.weight + norm.bias
    return x / torch.sqrt((x * x).mean(dim=-1, keepdim=True) + NORM_EPS) * norm.weight


def _rotary(x: torch.Tensor, position: int) -> torch.Tensor:
    """Rotate pairs (i, i + d/2) of x [heads, d] by position * base^(-2i/d), written as complex multiplication."""
    d = x.shape[-1]
    freqs = ROTARY_BASE ** (-torch.arange(0, d, 2, dtype=torch.float64, device=x.device) / d)
    turn = torch.polar(torch.ones_like(freqs), position * freqs).to(torch.complex64)
    pairs = torch.complex(x[..., : d // 2], x[..., d // 2 :]) * turn
    return torch.cat((pairs.real, pairs.imag), dim=-1)


def _activation(kind: str, x: torch.Tensor) -> torch.Tensor:
    if kind == "silu":
        return x * torch.sigmoid(x)
    if kind == "gelu":
        return 0.5 * x * (1.0 + torch.erf(x / 2**0.5))
    return x.clamp(min=0)


class ReferenceDecoder:
    """Plain float32 decoding of the same model, with its own contiguous cache [layers, B, max_len, Hkv, D]."""

    def __init__(self, shape: ModelShape, weights: DecoderWeights, batch: int, max_len: int) -> None:
        self.shape, self.w = shape, weights
        device = weights.embed.device
        size = (shape.layers, batch, max_len, shape.kv_heads, shape.head_dim)
        self.k = torch.zeros(size, dtype=torch.float32, device=device)
        self.v = torch.zeros(size, dtype=torch.float32, device=device)
        self.lengths = [0] * batch  # tokens already in the cache, per sequence

    def load_history(self, k: torch.Tensor, v: torch.Tensor, lengths: list[int]) -> None:
        """Take K, V [layers, B, L, Hkv, D] as the first lengths[b] tokens of each sequence."""
        for b, n in enumerate(lengths):
            self.k[:, b, :n] = k[:, b, :n].float()
            self.v[:, b, :n] = v[:, b, :n].float()
        self.lengths = list(lengths)

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        """Logits [B, vocab] (float32) for one new token per sequence, appended at its sequence's length."""
        rows = [self._sequence(b, int(t)) for b, t in enumerate(tokens.tolist())]
        self.lengths = [n + 1 for n in self.lengths]
        return torch.stack(rows)

    def _sequence(self, b: int, token: int) -> torch.Tensor:
        s, w = self.shape, self.w
        pos = self.lengths[b]
        x = w.embed[token].float()
        if w.positions is not None:
            x = x + w.positions[pos + s.position_offset].float()
        q_size, kv_size = s.heads * s.head_dim, s.kv_heads * s.head_dim
        for i, layer in enumerate(w.layers):
            qkv = _affine(_normalize(x, layer.attn_norm, s.norm), layer.qkv, layer.qkv_bias)
            q = qkv[:q_size].view(s.heads, s.head_dim)
            k = qkv[q_size : q_size + kv_size].view(s.kv_heads, s.head_dim)
            v = qkv[q_size + kv_size :].view(s.kv_heads, s.head_dim)
            if s.rotary:
                q, k = _rotary(q, pos), _rotary(k, pos)
            self.k[i, b, pos], self.v[i, b, pos] = k, v
            keys, values = self.k[i, b, : pos + 1], self.v[i, b, : pos + 1]  # [T, Hkv, D]
            heads = []
            for h in range(s.heads):
                kv_head = h // s.group
                scores = keys[:, kv_head] @ q[h] / s.head_dim**0.5
                heads.append(torch.softmax(scores, dim=0) @ values[:, kv_head])
            x = x + _affine(torch.cat(heads), layer.o, layer.o_bias)
            up = _affine(_normalize(x, layer.mlp_norm, s.norm), layer.up, layer.up_bias)
            if s.mlp == "gated":
                inner = _activation(s.activation, up[: s.intermediate]) * up[s.intermediate :]
            else:
                inner = _activation(s.activation, up)
            x = x + _affine(inner, layer.down, layer.down_bias)
        return _normalize(x, w.final_norm, s.norm) @ w.lm_head.float().T
