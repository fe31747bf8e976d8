"""A decoder-only transformer decode step built from gpuprof's kernels: random weights, a paged KV cache, graphs.

The model is a `gpuprof.models.ModelShape` with random weights (nothing is downloaded). Attention and the linear
layers go through a backend object, so the same step runs on our kernels ("gpuprof": Triton decode attention over
the paged cache; GEMV or cuBLAS per weight shape, chosen by measurement) or on plain torch ("torch").

The step's small work goes through the backend too. At decode batch sizes it moves kilobytes, so its cost is the
number of kernels: plain torch launches about fifty per layer (casts, the norms' reductions, the two rotations,
the cache scatters); counted at a few microseconds each (an estimate, not yet measured), that rivals the time a
1B model's weights take to read. The gpuprof backend fuses it
into three kernels per layer (`gpuprof.kernels`: residual add + norm twice, rotary + cache write, gated
activation). On a GPU the whole step is captured as one CUDA graph per batch size.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from gpuprof import harness
from gpuprof.bench import CheckFailed, relative_error
from gpuprof.errors import GpuprofError, Unsupported
from gpuprof.models import ModelShape
from gpuprof.ops.base import DTYPES, torch_dtype

# ModelShape carries no rope_theta; the base changes the values of the rotation, never the work of the step.
ROTARY_BASE = 10000.0
NORM_EPS = 1e-5
LINEAR_TOLERANCE = {"fp32": 1e-4, "fp16": 5e-3, "bf16": 1e-2}
# Timing of one candidate linear: weights are cold in a real step (the model is far larger than L2), so flush.
CHOICE_TIMING = harness.TimingOptions(warmup_ms=5.0, max_time_s=0.2, target_precision=0.01)
_DTYPE_NAMES = {t: name for name, t in DTYPES.items()}


# ---------------------------------------------------------------------------------------------------- weights


@dataclass
class Norm:
    weight: torch.Tensor  # float32 [hidden]; norms are computed in float32
    bias: torch.Tensor | None  # LayerNorm only


@dataclass
class LayerWeights:
    attn_norm: Norm
    qkv: torch.Tensor  # [(heads + 2 kv_heads) head_dim, hidden]: q rows, then k, then v
    qkv_bias: torch.Tensor | None
    o: torch.Tensor  # [hidden, heads head_dim]
    o_bias: torch.Tensor | None
    mlp_norm: Norm
    up: torch.Tensor  # gated: [2 intermediate, hidden], gate rows then up rows; plain: [intermediate, hidden]
    up_bias: torch.Tensor | None
    down: torch.Tensor  # [hidden, intermediate]
    down_bias: torch.Tensor | None


@dataclass
class DecoderWeights:
    embed: torch.Tensor  # [vocab, hidden]
    positions: torch.Tensor | None  # learned absolute positions [max_position + offset, hidden]; None with rotary
    layers: list[LayerWeights]
    final_norm: Norm
    lm_head: torch.Tensor  # [vocab, hidden]; the embedding itself when tied

    def tensors(self) -> list[torch.Tensor]:
        found = [self.embed, self.positions, self.lm_head, self.final_norm.weight, self.final_norm.bias]
        for layer in self.layers:
            found += [t for t in vars(layer).values() if isinstance(t, torch.Tensor)]
            found += [layer.attn_norm.weight, layer.attn_norm.bias, layer.mlp_norm.weight, layer.mlp_norm.bias]
        return [t for t in found if t is not None]

    def nbytes(self) -> int:
        """Device bytes of all weights, a tied embedding counted once."""
        seen: dict[int, int] = {}
        for t in self.tensors():
            seen[t.data_ptr()] = t.numel() * t.element_size()
        return sum(seen.values())


def random_weights(shape: ModelShape, dtype: str, device: str, seed: int = 0) -> DecoderWeights:
    """Weights drawn so that activations keep unit scale through the layers (linear weights ~ N(0, 1/k))."""
    dt = torch_dtype(dtype)
    gen = torch.Generator(device=device).manual_seed(seed)

    def normal(*size: int, std: float, dtype: torch.dtype = dt) -> torch.Tensor:
        return torch.randn(*size, generator=gen, device=device, dtype=dtype).mul_(std)

    def linear(n: int, k: int) -> torch.Tensor:
        return normal(n, k, std=k**-0.5)

    def bias(n: int, wanted: bool) -> torch.Tensor | None:
        return normal(n, std=0.1) if wanted else None

    def norm() -> Norm:
        weight = normal(shape.hidden, std=0.1, dtype=torch.float32).add_(1.0)
        return Norm(weight, normal(shape.hidden, std=0.1, dtype=torch.float32) if shape.norm == "layernorm" else None)

    d, q, kv = shape.hidden, shape.heads * shape.head_dim, shape.kv_heads * shape.head_dim
    up = 2 * shape.intermediate if shape.mlp == "gated" else shape.intermediate
    layers = [
        LayerWeights(
            attn_norm=norm(),
            qkv=linear(q + 2 * kv, d),
            qkv_bias=bias(q + 2 * kv, shape.attn_bias != "none"),
            o=linear(d, q),
            o_bias=bias(d, shape.attn_bias == "all"),
            mlp_norm=norm(),
            up=linear(up, d),
            up_bias=bias(up, shape.mlp_bias),
            down=linear(d, shape.intermediate),
            down_bias=bias(d, shape.mlp_bias),
        )
        for _ in range(shape.layers)
    ]
    embed = normal(shape.vocab, d, std=1.0)
    positions = None if shape.rotary else normal(shape.max_position + shape.position_offset, d, std=1.0)
    lm_head = embed if shape.tied_embeddings else linear(shape.vocab, d)
    return DecoderWeights(embed, positions, layers, norm(), lm_head)


# ---------------------------------------------------------------------------------------------------- KV cache


@dataclass
class PagedKVCache:
    """K and V of every layer in fixed-size pages, a block table per sequence, and the sequence lengths."""

    k: torch.Tensor  # [layers, num_pages, page_size, kv_heads, head_dim]
    v: torch.Tensor
    block_table: torch.Tensor  # [batch, pages_per_seq] int32
    seq_lens: torch.Tensor  # [batch] int32: lengths INCLUDING the token being decoded

    @classmethod
    def allocate(
        cls, shape: ModelShape, batch: int, max_len: int, page_size: int, dtype: str, device: str, seed: int = 0
    ) -> PagedKVCache:
        pages_per_seq = math.ceil(max_len / page_size)
        num_pages = batch * pages_per_seq
        size = (shape.layers, num_pages, page_size, shape.kv_heads, shape.head_dim)
        # Pages are handed out in shuffled order, as an allocator hands them out after churn, so nothing may
        # assume that a sequence's pages are contiguous.
        order = torch.randperm(num_pages, generator=torch.Generator().manual_seed(seed))
        return cls(
            k=torch.empty(size, dtype=torch_dtype(dtype), device=device),
            v=torch.empty(size, dtype=torch_dtype(dtype), device=device),
            block_table=order.view(batch, pages_per_seq).to(device=device, dtype=torch.int32),
            seq_lens=torch.ones(batch, dtype=torch.int32, device=device),
        )

    @staticmethod
    def bytes_needed(shape: ModelShape, batch: int, max_len: int, page_size: int, dtype_bytes: int) -> int:
        tokens = batch * math.ceil(max_len / page_size) * page_size
        return tokens * shape.kv_bytes_per_token(dtype_bytes)

    @property
    def page_size(self) -> int:
        return self.k.shape[2]

    @property
    def max_len(self) -> int:
        return self.block_table.shape[1] * self.page_size

    def nbytes(self) -> int:
        return 2 * self.k.numel() * self.k.element_size()

    def fill_random(self, seed: int = 0) -> None:
        """Unit-normal history everywhere: uninitialised memory could hold NaN, which would poison the logits."""
        gen = torch.Generator(device=self.k.device).manual_seed(seed)
        self.k.normal_(generator=gen)
        self.v.normal_(generator=gen)

    def slots(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Page and slot of each position; positions [B] or [B, L] (one row per sequence)."""
        cols = positions // self.page_size
        if positions.dim() == 1:
            pages = self.block_table.gather(1, cols[:, None]).squeeze(1)
        else:
            pages = self.block_table.gather(1, cols)
        return pages.long(), positions % self.page_size

    def write(self, layer: int, k: torch.Tensor, v: torch.Tensor, positions: torch.Tensor) -> None:
        """Store one token per sequence: k, v [B, kv_heads, head_dim] at positions [B] (int64)."""
        pages, slots = self.slots(positions)
        self.k[layer].index_put_((pages, slots), k)
        self.v[layer].index_put_((pages, slots), v)

    def write_history(self, k: torch.Tensor, v: torch.Tensor) -> None:
        """Store positions 0..L-1 of every sequence in every layer: k, v [layers, B, L, kv_heads, head_dim]."""
        batch, length = k.shape[1], k.shape[2]
        positions = torch.arange(length, device=self.k.device).expand(batch, length)
        pages, slots = self.slots(positions)
        for layer in range(k.shape[0]):
            self.k[layer].index_put_((pages, slots), k[layer].to(self.k.dtype))
            self.v[layer].index_put_((pages, slots), v[layer].to(self.v.dtype))


# ---------------------------------------------------------------------------------------------------- backends


def paged_attention_torch(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    seq_lens: torch.Tensor,
    block_table: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    """Decode attention in plain torch: gather every page of the block table, mask past the length, softmax."""
    batch, hq, d = q.shape
    hkv = k_cache.shape[2]
    k = k_cache[block_table.long()].flatten(1, 2).float()  # [B, max_len, Hkv, D]
    v = v_cache[block_table.long()].flatten(1, 2).float()
    qg = q.float().view(batch, hkv, hq // hkv, d)
    scores = torch.einsum("bhgd,blhd->bhgl", qg, k) * scale
    past_end = torch.arange(k.shape[1], device=q.device)[None, :] >= seq_lens[:, None]
    scores = scores.masked_fill(past_end[:, None, None, :], float("-inf"))
    v = v.masked_fill(past_end[:, :, None, None], 0.0)  # slots past the end may hold anything, NaN included
    out = torch.einsum("bhgl,blhd->bhgd", scores.softmax(dim=-1), v)
    return out.reshape(batch, hq, d).to(q.dtype)


@dataclass
class LinearChoice:
    """Which implementation runs y = x @ w^T for one (m, n, k), and the evidence for it."""

    m: int
    n: int
    k: int
    impl: str
    times_us: dict[str, float] = field(default_factory=dict)  # median per candidate; empty where not measured
    rejected: dict[str, str] = field(default_factory=dict)  # candidate -> why it was not considered


class TorchBackend:
    """F.linear (cuBLAS on a GPU) and a gather-softmax attention over the paged cache."""

    name = "torch"
    attention_impl = "torch"

    def prepare_linears(self, m: int, weights: Sequence[tuple[torch.Tensor, torch.Tensor | None]]) -> list:
        return []

    def linear(self, x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        return F.linear(x, w, bias)

    def attention(self, q, k_cache, v_cache, seq_lens, block_table, scale: float) -> torch.Tensor:
        return paged_attention_torch(q, k_cache, v_cache, seq_lens, block_table, scale)

    def add_norm(self, x: torch.Tensor, delta: torch.Tensor | None, norm: Norm) -> torch.Tensor:
        if delta is not None:
            x.add_(delta)
        return _norm(x, norm)

    def rotation(self, positions: torch.Tensor, inv_freq: torch.Tensor | None) -> tuple | None:
        """cos and sin of every position's angles, computed once per step."""
        if inv_freq is None:
            return None
        angles = positions.float()[:, None] * inv_freq
        return angles.cos()[:, None, :], angles.sin()[:, None, :]

    def qkv_to_cache(self, qkv: torch.Tensor, heads: int, kv_heads: int, rotation: tuple | None,
                     slots: tuple[torch.Tensor, torch.Tensor], k_cache: torch.Tensor, v_cache: torch.Tensor
                     ) -> torch.Tensor:
        """q [B, heads, head_dim] (rotated); k (rotated) and v stored at the step's cache slots."""
        batch, head_dim = qkv.shape[0], k_cache.shape[-1]
        q, k, v = qkv.view(batch, heads + 2 * kv_heads, head_dim).split([heads, kv_heads, kv_heads], dim=1)
        if rotation is not None:
            q, k = _rotate(q, *rotation), _rotate(k, *rotation)
        k_cache.index_put_(slots, k)
        v_cache.index_put_(slots, v)
        return q.contiguous()

    def gated_activation(self, gate_up: torch.Tensor, act: str) -> torch.Tensor:
        gate, up = gate_up.chunk(2, dim=-1)
        return (_ACTIVATIONS[act](gate.float()) * up.float()).to(gate_up.dtype)


class GpuprofBackend:
    """gpuprof's decode attention, and per weight shape the faster of our GEMV and cuBLAS, chosen by measurement.

    Choices are measured once per (m, n, k) on the model's own weights, before a CUDA graph is captured, and
    cached. On the CPU (Triton's interpreter) nothing is timed: the first candidate that passes its check is used.
    """

    name = "gpuprof"

    def __init__(self, attention_impl: str = "triton", linear_impls: Sequence[str] = ("triton", "cublas"),
                 timing: harness.TimingOptions = CHOICE_TIMING) -> None:
        try:
            from gpuprof.kernels.activation import gated_activation
            from gpuprof.kernels.norm import add_norm
            from gpuprof.kernels.rotary import rotary_cache_write
            from gpuprof.ops.attention import decode_attention
            from gpuprof.ops.gemv import gemv
        except ImportError as e:
            raise GpuprofError(
                f"the gpuprof backend needs gpuprof's kernels and ops, which this install lacks "
                f"({e}); use --impl torch."
            ) from None
        if not linear_impls:
            raise GpuprofError("the gpuprof backend needs at least one linear implementation (e.g. triton,cublas).")
        self._decode_attention, self._gemv = decode_attention, gemv
        self._add_norm, self._gated_activation = add_norm, gated_activation
        self._rotary_cache_write = rotary_cache_write
        # Our cache is valid by construction: skip the attention's host-side value check (a device sync per call
        # on eager steps) where the op offers that switch.
        accepts = inspect.signature(decode_attention).parameters
        self._attention_options = {"check_values": False} if "check_values" in accepts else {}
        self.attention_impl = attention_impl
        self.linear_impls = tuple(linear_impls)
        self.timing = timing
        self.choices: dict[tuple[int, int, int], LinearChoice] = {}

    def prepare_linears(self, m: int, weights: Sequence[tuple[torch.Tensor, torch.Tensor | None]]) -> list:
        """Choose (measuring where there is a choice) the implementation of every weight for m rows."""
        return [self._choice(m, w, bias) for w, bias in weights]

    def linear(self, x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        key = (x.shape[0], w.shape[0], w.shape[1])
        choice = self.choices.get(key)
        if choice is None:
            if x.is_cuda and torch.cuda.is_current_stream_capturing():
                raise RuntimeError(f"linear {key} was not prepared before CUDA-graph capture")
            choice = self._choice(x.shape[0], w, bias)
        return self._linear(x, w, bias, impl=choice.impl)

    def attention(self, q, k_cache, v_cache, seq_lens, block_table, scale: float) -> torch.Tensor:
        return self._decode_attention(q, k_cache, v_cache, seq_lens, block_table, scale=scale, impl=self.attention_impl,
                                      **self._attention_options)

    def add_norm(self, x: torch.Tensor, delta: torch.Tensor | None, norm: Norm) -> torch.Tensor:
        return self._add_norm(x, delta, norm.weight, norm.bias, NORM_EPS)

    def rotation(self, positions: torch.Tensor, inv_freq: torch.Tensor | None) -> tuple | None:
        return None if inv_freq is None else (positions, inv_freq)

    def qkv_to_cache(self, qkv: torch.Tensor, heads: int, kv_heads: int, rotation: tuple | None,
                     slots: tuple[torch.Tensor, torch.Tensor], k_cache: torch.Tensor, v_cache: torch.Tensor
                     ) -> torch.Tensor:
        positions, inv_freq = rotation if rotation is not None else (slots[1], None)
        return self._rotary_cache_write(qkv, heads, kv_heads, inv_freq, positions, *slots, k_cache, v_cache)

    def gated_activation(self, gate_up: torch.Tensor, act: str) -> torch.Tensor:
        return self._gated_activation(gate_up, act)

    def _linear(self, x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None = None, *, impl: str,
                out: torch.Tensor | None = None) -> torch.Tensor:
        """gemv(impl=...) for our kernels; cuBLAS through F.linear, whether or not gemv itself offers it."""
        if impl == "cublas":
            return F.linear(x, w, bias)
        return self._gemv(x, w, bias, impl=impl, out=out)

    def _choice(self, m: int, w: torch.Tensor, bias: torch.Tensor | None) -> LinearChoice:
        key = (m, w.shape[0], w.shape[1])
        if key not in self.choices:
            self.choices[key] = choose_linear(self._linear, m, w, bias, self.linear_impls, self.timing)
        return self.choices[key]


def choose_linear(gemv: Callable, m: int, w: torch.Tensor, bias: torch.Tensor | None, impls: Sequence[str],
                  timing: harness.TimingOptions = CHOICE_TIMING) -> LinearChoice:
    """Check each candidate on fresh inputs with poisoned output, then (on a GPU, given a choice) time it.

    The check is against a float32 product (ample for the bf16/fp16 tolerances; fp32 weights get 1e-4).
    """
    n, k = w.shape
    gen = torch.Generator(device=w.device).manual_seed(m * 7919 + n)
    x = torch.randn(m, k, generator=gen, device=w.device, dtype=w.dtype)
    # float32 reference in slices of rows: a full float64 copy of an lm_head would take gigabytes
    ref = torch.cat([x.float() @ rows.float().T for rows in w.split(8192)], dim=1)
    if bias is not None:
        ref += bias.float()
    choice = LinearChoice(m, n, k, impl="")
    passed = []
    for impl in impls:
        out = torch.full((m, n), math.nan, dtype=w.dtype, device=w.device)
        try:
            err = relative_error(gemv(x, w, bias, impl=impl, out=out), ref)
        except Unsupported as e:
            choice.rejected[impl] = str(e)
            continue
        if not err <= LINEAR_TOLERANCE[_DTYPE_NAMES[w.dtype]]:
            choice.rejected[impl] = f"relative error {err:.3g} against the float64 reference"
            continue
        passed.append(impl)
        if w.is_cuda and len(impls) > 1:
            launch = lambda impl=impl: gemv(x, w, bias, impl=impl, out=out)  # noqa: E731
            choice.times_us[impl] = harness.time_cuda([launch], timing).stats.median
    if not passed:
        why = "; ".join(f"{i}: {r}" for i, r in choice.rejected.items())
        raise CheckFailed(f"no linear implementation runs [{m}, {k}] x [{n}, {k}]^T correctly ({why}).")
    choice.impl = min(choice.times_us, key=choice.times_us.get) if choice.times_us else passed[0]
    return choice


Backend = TorchBackend | GpuprofBackend


def make_backend(name: str, attention_impl: str = "triton", linear_impls: Sequence[str] = ("triton", "cublas")):
    if name == "torch":
        return TorchBackend()
    if name == "gpuprof":
        return GpuprofBackend(attention_impl, linear_impls)
    raise GpuprofError(f"unknown decode implementation {name!r}; valid: gpuprof, torch.")


# ---------------------------------------------------------------------------------------------------- the model


def _norm(x: torch.Tensor, norm: Norm) -> torch.Tensor:
    """LayerNorm where the norm has a bias, else RMSNorm; in float32, returned in x's dtype."""
    xf = x.float()
    if norm.bias is not None:
        out = F.layer_norm(xf, (xf.shape[-1],), norm.weight, norm.bias, NORM_EPS)
    else:
        out = xf * torch.rsqrt(xf.pow(2).mean(dim=-1, keepdim=True) + NORM_EPS) * norm.weight
    return out.to(x.dtype)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding, halves convention (Llama in Hugging Face): pairs are (i, i + head_dim/2)."""
    x1, x2 = x.float().chunk(2, dim=-1)
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1).to(x.dtype)


_ACTIVATIONS = {"silu": F.silu, "gelu": F.gelu, "relu": F.relu}


class Decoder:
    """One decode step of a decoder-only transformer: each sequence of the batch advances by one token."""

    def __init__(self, shape: ModelShape, weights: DecoderWeights, backend: Backend) -> None:
        if shape.rotary and shape.head_dim % 2:
            raise GpuprofError(f"{shape.name}: rotary embedding needs an even head_dim, not {shape.head_dim}.")
        self.shape, self.weights, self.backend = shape, weights, backend
        self.scale = shape.head_dim**-0.5
        device = weights.embed.device
        half = torch.arange(0, shape.head_dim, 2, device=device, dtype=torch.float32) / shape.head_dim
        self.inv_freq = ROTARY_BASE**-half

    @property
    def dtype(self) -> torch.dtype:
        return self.weights.embed.dtype

    @property
    def dtype_name(self) -> str:
        return _DTYPE_NAMES[self.dtype]

    @property
    def device(self) -> torch.device:
        return self.weights.embed.device

    def linear_weights(self) -> list[tuple[str, torch.Tensor, torch.Tensor | None]]:
        """One weight of each kind, as named in ModelShape.linears(): the shapes a step multiplies by."""
        first = self.weights.layers[0]
        up = "gate_up" if self.shape.mlp == "gated" else "up"
        return [("qkv", first.qkv, first.qkv_bias), ("o", first.o, first.o_bias), (up, first.up, first.up_bias),
                ("down", first.down, first.down_bias), ("lm_head", self.weights.lm_head, None)]

    def prepare(self, batch: int) -> dict[str, LinearChoice]:
        """Settle the linear implementations for this batch size (before any CUDA-graph capture)."""
        named = self.linear_weights()
        choices = self.backend.prepare_linears(batch, [(w, b) for _, w, b in named])
        return {name: c for (name, _, _), c in zip(named, choices)}

    def step(self, tokens: torch.Tensor, cache: PagedKVCache) -> torch.Tensor:
        """Logits [B, vocab] for tokens [B] (int64) at positions cache.seq_lens - 1, writing their K and V."""
        s, w, backend = self.shape, self.weights, self.backend
        batch = tokens.shape[0]
        positions = cache.seq_lens.long() - 1
        slots = cache.slots(positions)  # (page, slot) of each new token, the same in every layer
        rotation = backend.rotation(positions, self.inv_freq if s.rotary else None)
        x = F.embedding(tokens, w.embed)  # the residual stream; add_norm updates it in place
        if w.positions is not None:
            x = x + F.embedding(positions + s.position_offset, w.positions)
        delta = None  # the last sublayer's output, not yet added to x
        for i, layer in enumerate(w.layers):
            h = backend.add_norm(x, delta, layer.attn_norm)
            qkv = backend.linear(h, layer.qkv, layer.qkv_bias)
            q = backend.qkv_to_cache(qkv, s.heads, s.kv_heads, rotation, slots, cache.k[i], cache.v[i])
            attn = backend.attention(q, cache.k[i], cache.v[i], cache.seq_lens, cache.block_table, self.scale)
            h = backend.add_norm(x, backend.linear(attn.reshape(batch, -1), layer.o, layer.o_bias), layer.mlp_norm)
            delta = self._mlp(h, layer)
        return backend.linear(backend.add_norm(x, delta, w.final_norm), w.lm_head)

    def _mlp(self, h: torch.Tensor, layer: LayerWeights) -> torch.Tensor:
        up = self.backend.linear(h, layer.up, layer.up_bias)
        if self.shape.mlp == "gated":
            inner = self.backend.gated_activation(up, self.shape.activation)
        else:
            inner = _ACTIVATIONS[self.shape.activation](up)
        return self.backend.linear(inner, layer.down, layer.down_bias)


def build_decoder(shape: ModelShape, dtype: str, device: str, backend: Backend, seed: int = 0) -> Decoder:
    return Decoder(shape, random_weights(shape, dtype, device, seed), backend)


# ---------------------------------------------------------------------------------------------------- batches


class StepGraph:
    """One decode step captured as a CUDA graph on static buffers; replay() reruns it and returns the logits."""

    def __init__(self, decoder: Decoder, tokens: torch.Tensor, cache: PagedKVCache, warmup: int = 2) -> None:
        decoder.prepare(tokens.shape[0])  # linear choices are measured eagerly, never under capture
        # Warm-up runs compile kernels and make the first allocations outside capture, on a side stream as
        # torch.cuda.graphs asks; capture then runs on that same stream, whose split-K counters now exist.
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(warmup):
                decoder.step(tokens, cache)
        torch.cuda.current_stream().wait_stream(stream)
        torch.cuda.synchronize()
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph, stream=stream):
            self.logits = decoder.step(tokens, cache)

    def replay(self) -> torch.Tensor:
        self.graph.replay()
        return self.logits


@dataclass
class DecodeBatch:
    """One batch size ready to decode: its tokens and cache (static buffers), and the step to run on them."""

    decoder: Decoder
    tokens: torch.Tensor  # [B] int64, the tokens the next step consumes
    cache: PagedKVCache
    ctx: int
    linear_choices: dict[str, LinearChoice]
    graph: StepGraph | None

    def step(self) -> torch.Tensor:
        """One step at the current lengths (replays leave the lengths alone, so timing stays at one context)."""
        return self.graph.replay() if self.graph else self.decoder.step(self.tokens, self.cache)

    def advance(self, logits: torch.Tensor) -> None:
        """Greedy decoding: feed each sequence its most likely token, one position further on."""
        self.tokens.copy_(logits.argmax(dim=-1))
        self.cache.seq_lens.add_(1)

    def rewind(self) -> None:
        self.cache.seq_lens.fill_(self.ctx)


def check_context(shape: ModelShape, ctx: int, reserve: int = 0) -> None:
    """A user's context must fit the model's positions (learned position tables have no more rows)."""
    if ctx < 1 or reserve < 0:
        raise GpuprofError(f"the context must be at least 1 token and the tokens to decode not negative, "
                           f"not {ctx} and {reserve}.")
    if ctx + reserve > shape.max_position:
        raise GpuprofError(
            f"a context of {ctx} plus {reserve} decoded tokens exceeds {shape.name}'s {shape.max_position} positions."
        )


def prepare_batch(decoder: Decoder, batch: int, ctx: int, reserve: int = 0, page_size: int = 16, seed: int = 0,
                  use_graph: bool | None = None) -> DecodeBatch:
    """A batch of `batch` sequences each `ctx` tokens long (random history), with room for `reserve` more."""
    s = decoder.shape
    check_context(s, ctx, reserve)
    cache = PagedKVCache.allocate(s, batch, ctx + reserve, page_size, decoder.dtype_name, decoder.device, seed)
    cache.fill_random(seed)
    cache.seq_lens.fill_(ctx)
    gen = torch.Generator().manual_seed(seed)
    tokens = torch.randint(s.vocab, (batch,), generator=gen).to(decoder.device)
    choices = decoder.prepare(batch)
    if use_graph is None:
        use_graph = decoder.device.type == "cuda"
    graph = StepGraph(decoder, tokens, cache) if use_graph else None
    return DecodeBatch(decoder, tokens, cache, ctx, choices, graph)
