"""A real-shape random-weight qwen3_moe model, mlx-community 4-bit (`python -m bench genmodel OUT`).

Why: I/O and memory benchmarks need a model of the real size and layout
(Qwen3-30B-A3B by default, ~17 GB) without downloading one. The files follow the
mlx-community layout exactly: affine 4-bit, group 64, stacked expert tensors
``model.layers.L.mlp.switch_mlp.{gate,up,down}_proj.{weight,scales,biases}``, sharded
safetensors with an index, so `mlx_lm.load(OUT)` loads it.

Weights are written tensor by tensor from a small random pool (never the whole model
in memory). Dequantized values are uniform over {-7.5 .. 7.5} * scale: zero-mean, so
tokens do not share a large residual component and routing spreads over the experts
(see RESEARCH.md "Synthetic models"; check with ``--usage``).
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mlxstore.synth_tokenizer import write_tokenizer

GROUP_SIZE = 64
BITS = 4
CHUNK_WORDS = 1 << 20  # uint32 words generated per write (4 MiB)
POOL_WORDS = 1 << 21  # random pool is 2 * POOL_WORDS words (16 MiB)

QWEN3_30B_A3B = {
    "layers": 48, "experts": 128, "top_k": 8, "hidden": 2048, "moe_intermediate": 768,
    "intermediate": 6144, "heads": 32, "kv_heads": 4, "head_dim": 128, "vocab": 151936,
}
_DTYPES = {"bfloat16": ("BF16", 2), "float16": ("F16", 2), "float32": ("F32", 4)}


def make_config(layers: int = 48, experts: int = 128, top_k: int = 8, hidden: int = 2048,
                moe_intermediate: int = 768, intermediate: int = 6144, heads: int = 32,
                kv_heads: int = 4, head_dim: int = 128, vocab: int = 151936,
                gate_bits: int = 8, dtype: str = "bfloat16") -> dict:
    """config.json of a Qwen3-30B-A3B-shaped model (defaults) in mlx-community 4-bit form.

    Routers are 8-bit by default, as mlx-lm's converter quantizes qwen3_moe
    (``quant_predicate``); the per-module entries in "quantization" say so.
    """
    for name, dim in (("hidden", hidden), ("moe_intermediate", moe_intermediate),
                      ("heads * head_dim", heads * head_dim)):
        if dim % GROUP_SIZE:
            raise ValueError(f"{name}={dim} must be a multiple of the group size {GROUP_SIZE}")
    if not 0 < top_k <= experts:
        raise ValueError(f"top_k={top_k} must be in [1, experts={experts}]")
    if heads % kv_heads:
        raise ValueError(f"heads={heads} must be a multiple of kv_heads={kv_heads}")
    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be one of {sorted(_DTYPES)}")
    quant: dict = {"group_size": GROUP_SIZE, "bits": BITS}
    if gate_bits != BITS:
        for layer in range(layers):
            quant[f"model.layers.{layer}.mlp.gate"] = {"group_size": GROUP_SIZE, "bits": gate_bits}
    return {
        "architectures": ["Qwen3MoeForCausalLM"],
        "model_type": "qwen3_moe",
        "attention_bias": False,
        "attention_dropout": 0.0,
        "decoder_sparse_step": 1,
        "head_dim": head_dim,
        "hidden_act": "silu",
        "hidden_size": hidden,
        "initializer_range": 0.02,
        "intermediate_size": intermediate,
        "max_position_embeddings": 40960,
        "max_window_layers": layers,
        "mlp_only_layers": [],
        "moe_intermediate_size": moe_intermediate,
        "norm_topk_prob": True,
        "num_attention_heads": heads,
        "num_experts": experts,
        "num_experts_per_tok": top_k,
        "num_hidden_layers": layers,
        "num_key_value_heads": kv_heads,
        "rms_norm_eps": 1e-06,
        "rope_scaling": None,
        "rope_theta": 1000000.0,
        "sliding_window": None,
        "tie_word_embeddings": False,
        "torch_dtype": dtype,
        "use_cache": True,
        "use_sliding_window": False,
        "vocab_size": vocab,
        "quantization": quant,
        "quantization_config": quant,
    }


@dataclass(frozen=True)
class Tensor:
    """One stored tensor: how to make it, and its place in a shard."""

    name: str
    shape: tuple[int, ...]
    dtype: str  # safetensors dtype: U32, BF16, F16, F32
    kind: str  # "qweight", "scales", "biases", "ones"
    bits: int = BITS
    fan_in: int = 0

    @property
    def nbytes(self) -> int:
        itemsize = 4 if self.dtype in ("U32", "F32") else 2
        return math.prod(self.shape) * itemsize


def _quantized(prefix: str, lead: tuple[int, ...], out_dim: int, in_dim: int, bits: int,
               fdtype: str) -> list[Tensor]:
    per_word = 32 // bits
    groups = in_dim // GROUP_SIZE
    return [
        Tensor(f"{prefix}.weight", (*lead, out_dim, in_dim // per_word), "U32", "qweight",
               bits, in_dim),
        Tensor(f"{prefix}.scales", (*lead, out_dim, groups), fdtype, "scales", bits, in_dim),
        Tensor(f"{prefix}.biases", (*lead, out_dim, groups), fdtype, "biases", bits, in_dim),
    ]


def tensor_specs(config: dict) -> list[Tensor]:
    """Every tensor of the model in mlx-lm's parameter names, in model order."""
    fd = _DTYPES[config["torch_dtype"]][0]
    h, e = config["hidden_size"], config["num_experts"]
    hd, nh, nkv = config["head_dim"], config["num_attention_heads"], config["num_key_value_heads"]
    mi, vocab = config["moe_intermediate_size"], config["vocab_size"]
    quant = config["quantization"]
    out = _quantized("model.embed_tokens", (), vocab, h, BITS, fd)
    for layer in range(config["num_hidden_layers"]):
        p = f"model.layers.{layer}"
        out.append(Tensor(f"{p}.input_layernorm.weight", (h,), fd, "ones"))
        out += _quantized(f"{p}.self_attn.q_proj", (), nh * hd, h, BITS, fd)
        out += _quantized(f"{p}.self_attn.k_proj", (), nkv * hd, h, BITS, fd)
        out += _quantized(f"{p}.self_attn.v_proj", (), nkv * hd, h, BITS, fd)
        out += _quantized(f"{p}.self_attn.o_proj", (), h, nh * hd, BITS, fd)
        out.append(Tensor(f"{p}.self_attn.q_norm.weight", (hd,), fd, "ones"))
        out.append(Tensor(f"{p}.self_attn.k_norm.weight", (hd,), fd, "ones"))
        out.append(Tensor(f"{p}.post_attention_layernorm.weight", (h,), fd, "ones"))
        gate_bits = quant.get(f"{p}.mlp.gate", {}).get("bits", BITS)
        out += _quantized(f"{p}.mlp.gate", (), e, h, gate_bits, fd)
        out += _quantized(f"{p}.mlp.switch_mlp.gate_proj", (e,), mi, h, BITS, fd)
        out += _quantized(f"{p}.mlp.switch_mlp.up_proj", (e,), mi, h, BITS, fd)
        out += _quantized(f"{p}.mlp.switch_mlp.down_proj", (e,), h, mi, BITS, fd)
    out.append(Tensor("model.norm.weight", (h,), fd, "ones"))
    out += _quantized("lm_head", (), vocab, h, BITS, fd)
    return out


def _to_dtype(x: np.ndarray, dtype: str) -> np.ndarray:
    """float32 -> stored bytes; bfloat16 by round-to-nearest-even on the top 16 bits."""
    if dtype == "F32":
        return x.astype("<f4")
    if dtype == "F16":
        return x.astype("<f2")
    u = x.astype(np.float32).view(np.uint32)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype("<u2")


class _Source:
    """Deterministic random data, cheap enough for 17 GB: a random pool of words is
    XORed with a fresh random key at a random offset for each chunk (XOR with a
    constant keeps every 4-bit field uniform)."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.pool = self.rng.integers(0, 2**32, size=2 * POOL_WORDS, dtype=np.uint32)

    def words(self, n: int) -> np.ndarray:
        start = int(self.rng.integers(0, POOL_WORDS))
        key = np.uint32(self.rng.integers(0, 2**32))
        return self.pool[start:start + n] ^ key

    def scales(self, t: Tensor) -> np.ndarray:
        """Per-group scales giving weight std ~ 1/sqrt(fan_in), jittered +-25%."""
        levels = 2**t.bits
        std_per_scale = math.sqrt((levels**2 - 1) / 12)
        base = 1.0 / (math.sqrt(t.fan_in) * std_per_scale)
        return base * (0.75 + 0.5 * self.rng.random(size=t.shape, dtype=np.float32))


def _chunks(t: Tensor, src: _Source, scales: dict[str, np.ndarray]) -> Iterator[np.ndarray]:
    if t.kind == "qweight":
        total = math.prod(t.shape)
        for start in range(0, total, CHUNK_WORDS):
            yield src.words(min(CHUNK_WORDS, total - start))
    elif t.kind == "scales":
        s = src.scales(t)
        scales[t.name.removesuffix(".scales")] = s
        yield _to_dtype(s, t.dtype)
    elif t.kind == "biases":
        # Centre the 2**bits levels on zero: q * s + b with b = -(levels - 1) / 2 * s.
        s = scales.pop(t.name.removesuffix(".biases"))
        yield _to_dtype(-(2**t.bits - 1) / 2 * s, t.dtype)
    else:
        yield _to_dtype(np.ones(t.shape, np.float32), t.dtype)


def plan_shards(specs: list[Tensor], shard_bytes: int) -> list[list[Tensor]]:
    shards: list[list[Tensor]] = [[]]
    size = 0
    for t in specs:
        if shards[-1] and size + t.nbytes > shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(t)
        size += t.nbytes
    return shards


def _header(tensors: list[Tensor]) -> bytes:
    meta: dict = {"__metadata__": {"format": "mlx"}}
    offset = 0
    for t in tensors:
        meta[t.name] = {"dtype": t.dtype, "shape": list(t.shape),
                        "data_offsets": [offset, offset + t.nbytes]}
        offset += t.nbytes
    raw = json.dumps(meta, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    return len(raw).to_bytes(8, "little") + raw


def write_model(out_dir: str | os.PathLike[str], config: dict, seed: int = 0,
                shard_bytes: int = 5 << 30) -> dict:
    """Write config, tokenizer and sharded safetensors; returns a summary dict."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    specs = tensor_specs(config)
    shards = plan_shards(specs, shard_bytes)
    src = _Source(seed)
    scales: dict[str, np.ndarray] = {}
    weight_map = {}
    n = len(shards)
    for i, tensors in enumerate(shards, start=1):
        name = f"model-{i:05d}-of-{n:05d}.safetensors"
        tmp = out / (name + ".partial")
        with open(tmp, "wb") as f:
            f.write(_header(tensors))
            for t in tensors:
                written = 0
                for chunk in _chunks(t, src, scales):
                    f.write(memoryview(np.ascontiguousarray(chunk)).cast("B"))
                    written += chunk.nbytes
                assert written == t.nbytes, (t.name, written, t.nbytes)
                weight_map[t.name] = name
        os.replace(tmp, out / name)
    total = sum(t.nbytes for t in specs)
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    config = {**config, **write_tokenizer(out, config["vocab_size"])}
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    return {"dir": str(out), "bytes": total, "tensors": len(specs), "shards": n,
            "seconds": time.perf_counter() - t0}


def expert_usage(model_dir: str | os.PathLike[str], tokens: int = 32, seed: int = 0) -> list[int]:
    """Distinct experts each MoE layer chose over ``tokens`` random prompt tokens.

    Why: a synthetic model whose router keeps picking the same few experts makes any
    memory-cap benchmark meaningless; near top_k distinct experts means degenerate.
    """
    import mlx.core as mx
    import mlx.nn as nn
    from mlx_lm import load

    model, _ = load(str(model_dir))
    seen: list[set[int]] = []

    class Recorder(nn.Module):
        def __init__(self, inner: nn.Module, sink: set[int]) -> None:
            super().__init__()
            self.inner = inner
            self.sink = sink

        def __call__(self, x: mx.array, indices: mx.array) -> mx.array:
            self.sink.update(np.array(indices).ravel().tolist())
            return self.inner(x, indices)

    for layer in model.layers:
        if hasattr(layer.mlp, "switch_mlp"):
            seen.append(set())
            layer.mlp.switch_mlp = Recorder(layer.mlp.switch_mlp, seen[-1])
    vocab = model.args.vocab_size
    ids = np.random.default_rng(seed).integers(8, vocab, size=(1, tokens))
    mx.eval(model(mx.array(ids)))
    return [len(s) for s in seen]
