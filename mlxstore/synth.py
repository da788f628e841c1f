"""Tiny random-weight models of real mlx-lm architectures, saved as HF-layout directories.

Tests and demos need models of every architecture we claim to support without
downloading anything. The models are built with mlx-lm's own classes, cast and quantized
the way `mlx_lm.convert` does it, and saved so that `mlx_lm.load(dir)` reproduces them
exactly. Weights are zero-mean so that routers spread tokens over the experts.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
from pathlib import Path
from typing import Any

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten, tree_unflatten

from mlxstore.mlxlm import get_classes, quantize_model, save_config

from .synth_more import MORE_ARCHITECTURES
from .synth_tokenizer import write_tokenizer

# Shared by every tiny config; an architecture's entry overrides or extends it.
_BASE: dict[str, Any] = {
    "hidden_size": 128,
    "num_hidden_layers": 2,
    "intermediate_size": 256,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 32,
    "rms_norm_eps": 1e-6,
    "vocab_size": 512,
    "max_position_embeddings": 512,
    "rope_theta": 10000.0,
    "tie_word_embeddings": False,
}

# One tiny config per architecture: data, not code paths. MoE ones have 8-16 experts,
# top-k 2-4 and expert widths of 128. Every matmul's inner dimension is a multiple of 64
# (group-64 quantization covers it) and larger than 64: MLX's CUDA kernel for Hopper GPUs
# (qmm_sm90, taken when the inner dimension is at most the group size) returns zeros, so
# smaller fixtures would not be a reference there (tests/test_synth.py keeps this true).
ARCHITECTURES: dict[str, dict[str, Any]] = {
    "llama": {},
    "qwen3_moe": {
        "num_experts": 16, "num_experts_per_tok": 4, "decoder_sparse_step": 1,
        "mlp_only_layers": [], "moe_intermediate_size": 128, "norm_topk_prob": True,
    },
    "qwen2_moe": {
        "num_experts": 8, "num_experts_per_tok": 2, "moe_intermediate_size": 128,
        "shared_expert_intermediate_size": 128,
    },
    "mixtral": {"num_local_experts": 8, "num_experts_per_tok": 2, "intermediate_size": 128},
    "olmoe": {"num_experts": 16, "num_experts_per_tok": 4, "intermediate_size": 128},
    "deepseek_v3": {
        "num_hidden_layers": 3, "first_k_dense_replace": 1, "num_key_value_heads": 4,
        "n_routed_experts": 16, "n_shared_experts": 1, "num_experts_per_tok": 4,
        "moe_intermediate_size": 128, "n_group": 2, "topk_group": 1,
        "routed_scaling_factor": 2.5, "kv_lora_rank": 128, "q_lora_rank": 128,
        "qk_rope_head_dim": 32, "qk_nope_head_dim": 128, "v_head_dim": 64,
    },
    "gpt_oss": {
        "num_local_experts": 8, "num_experts_per_tok": 2, "intermediate_size": 128,
        "sliding_window": 16, "layer_types": ["sliding_attention", "full_attention"],
        "max_position_embeddings": 131072,  # transformers' yarn defaults assume it
    },
    "qwen3_next": {
        "num_hidden_layers": 4, "full_attention_interval": 2, "partial_rotary_factor": 0.25,
        "linear_num_value_heads": 4, "linear_num_key_heads": 2, "linear_key_head_dim": 32,
        "linear_value_head_dim": 32, "linear_conv_kernel_dim": 4,
        "num_experts": 16, "num_experts_per_tok": 4, "decoder_sparse_step": 1,
        "mlp_only_layers": [], "moe_intermediate_size": 128, "shared_expert_intermediate_size": 128,
    },
    "glm4_moe": {
        "num_hidden_layers": 3, "first_k_dense_replace": 1, "n_routed_experts": 16,
        "n_shared_experts": 1, "num_experts_per_tok": 4, "moe_intermediate_size": 128,
        "n_group": 1, "topk_group": 1, "norm_topk_prob": True, "routed_scaling_factor": 2.5,
        "use_qk_norm": True, "attention_bias": False, "partial_rotary_factor": 0.5,
        "rope_scaling": None,
    },
    # Blocks that state their top-k or hold their router elsewhere than qwen3_moe's do.
    "ernie4_5_moe": {  # top-k as `self.k`
        "num_hidden_layers": 3, "use_bias": False, "moe_num_experts": 8, "moe_k": 2, "moe_intermediate_size": 128,
        "moe_num_shared_experts": 1, "moe_layer_start_index": 1, "moe_layer_interval": 1, "moe_gate_act": "softmax",
    },
    "kimi_linear": {  # top-k only in the block's args
        "num_hidden_layers": 3, "model_max_length": 512, "num_experts": 8, "num_experts_per_token": 2,
        "moe_intermediate_size": 128, "num_shared_experts": 1, "first_k_dense_replace": 1,
        "num_expert_group": 1, "topk_group": 1, "kv_lora_rank": 128, "qk_nope_head_dim": 128,
        "qk_rope_head_dim": 32, "v_head_dim": 64,
        "linear_attn_config": {"kda_layers": [1, 3], "full_attn_layers": [2], "num_heads": 2, "head_dim": 128,
                               "short_conv_kernel_size": 4},
    },
    "gemma4_text": {  # the switch module wrapped once more; router and top-k beside the wrapper
        "num_hidden_layers": 2, "head_dim": 32, "global_head_dim": 64, "num_key_value_heads": 2,
        "num_kv_shared_layers": 0, "vocab_size_per_layer_input": 512, "hidden_size_per_layer_input": 0,
        "sliding_window": 16, "layer_types": ["sliding_attention", "full_attention"], "use_double_wide_mlp": False,
        "enable_moe_block": True, "num_experts": 8, "top_k_experts": 2, "moe_intermediate_size": 128,
    },
}  # fmt: skip

# Quantization modes and their (group_size, bits), as mlx-lm's quantize_model defaults them.
MODES = {"affine": (64, 4), "mxfp4": (32, 4), "nvfp4": (16, 4), "mxfp8": (32, 8)}


def tiny_config(arch: str, **overrides: Any) -> dict[str, Any]:
    """The tiny config.json of `arch` (core or MORE_ARCHITECTURES), with `overrides` applied."""
    known = {**ARCHITECTURES, **MORE_ARCHITECTURES}
    if arch not in known:
        raise ValueError(f"no tiny config for {arch!r}; known: {sorted(known)}")
    return {"model_type": arch, **_BASE, **known[arch], **overrides}


def _fan_in(module: nn.Module, shape: tuple[int, ...]) -> int:
    """Inputs per output: the last axis, except a convolution's kernel times channels."""
    if isinstance(module, nn.Conv1d):
        return math.prod(shape[1:])
    return shape[-1]


def randomize(model: nn.Module, seed: int) -> None:
    """Replace float parameters with zero-mean uniform noise scaled by 1/sqrt(fan-in).

    Each parameter draws from its own key, so the result depends on `seed` only (not on
    MLX's global random state). Constant vectors (norm scales, zero biases) keep their
    values: they are part of the architecture's meaning. Constant matrices do not: some
    classes start routers at zero, which would send every token to the same experts.
    """
    params = []
    for path, module in model.named_modules():
        for name, value in tree_flatten(module.parameters()):
            if "." in name:
                continue  # belongs to a child module, visited on its own
            params.append((f"{path}.{name}" if path else name, module, value))
    params.sort(key=lambda p: p[0])
    keys = mx.random.split(mx.random.key(seed), max(len(params), 2))
    updates = []
    for i, (name, module, value) in enumerate(params):
        if not mx.issubdtype(value.dtype, mx.floating) or value.size == 0:
            continue
        if value.ndim < 2 and mx.all(value == value.reshape(-1)[0]).item():
            continue
        fan_in = _fan_in(module, value.shape) if value.ndim >= 2 else value.shape[0]
        bound = 1.0 / math.sqrt(max(fan_in, 1))
        new = mx.random.uniform(-bound, bound, value.shape, key=keys[i])
        updates.append((name, new.astype(value.dtype)))
    model.update(tree_unflatten(updates))
    mx.eval(model.parameters())


def build(config: dict[str, Any], seed: int = 0) -> nn.Module:
    """A model of `config`'s architecture, built with mlx-lm's class, random weights."""
    model_class, args_class = get_classes(config)
    model = model_class(args_class.from_dict(config))
    randomize(model, seed)
    return model


def cast(model: nn.Module, dtype: mx.Dtype) -> None:
    """Cast float parameters the way `mlx_lm.convert` does (honouring `cast_predicate`)."""
    keep = getattr(model, "cast_predicate", lambda _: True)
    updates = [
        (k, v.astype(dtype))
        for k, v in tree_flatten(model.parameters())
        if keep(k) and mx.issubdtype(v.dtype, mx.floating)
    ]
    model.update(tree_unflatten(updates))


def _mixed_predicate(model: nn.Module, group_size: int):
    """Mixed precision like mlx-community checkpoints: layer 0 and routers at 8 bits."""
    base = getattr(model, "quant_predicate", None)

    def predicate(path: str, module: nn.Module):
        if path.startswith("model.layers.0."):
            return {"group_size": 64, "bits": 8, "mode": "affine"}
        if path == "lm_head":
            return {"group_size": group_size, "bits": 6, "mode": "affine"}
        return base(path, module) if base is not None else True

    return predicate


def apply_quantization(
    model: nn.Module,
    config: dict[str, Any],
    *,
    mode: str = "affine",
    bits: int | None = None,
    group_size: int | None = None,
    mixed: bool = False,
) -> dict[str, Any]:
    """Quantize in place with mlx-lm's `quantize_model`; returns the config to save."""
    if mode not in MODES:
        raise ValueError(f"unknown quantization mode {mode!r}; known: {sorted(MODES)}")
    group_size = group_size or MODES[mode][0]
    bits = bits or MODES[mode][1]
    predicate = _mixed_predicate(model, group_size) if mixed else None
    with contextlib.redirect_stdout(io.StringIO()):  # it prints bits per weight
        _, config = quantize_model(
            model, config, group_size, bits, mode=mode, quant_predicate=predicate
        )
    return config


def save_weights(model: nn.Module, out_dir: Path, shards: int = 1) -> list[Path]:
    """Save parameters as `model.safetensors`, or as `shards` files plus an index json."""
    weights = sorted(tree_flatten(model.parameters()), key=lambda kv: kv[0])
    if shards < 1 or shards > len(weights):
        raise ValueError(f"cannot split {len(weights)} tensors into {shards} files")
    total = sum(v.nbytes for _, v in weights)
    groups: list[dict[str, mx.array]] = [{} for _ in range(shards)]
    slot, done = 0, 0
    for i, (k, v) in enumerate(weights):
        # Split about evenly by bytes, never leaving a file empty.
        behind = done * shards // max(total, 1) > slot
        must = len(weights) - i <= shards - 1 - slot
        if groups[slot] and slot < shards - 1 and (behind or must):
            slot += 1
        groups[slot][k] = v
        done += v.nbytes
    if shards == 1:
        names = ["model.safetensors"]
    else:
        names = [f"model-{i + 1:05d}-of-{shards:05d}.safetensors" for i in range(shards)]
    paths = []
    for name, group in zip(names, groups):
        path = out_dir / name
        mx.save_safetensors(str(path), group, metadata={"format": "mlx"})
        paths.append(path)
    if shards > 1:
        index = {
            "metadata": {"total_size": total},
            "weight_map": {k: name for name, g in zip(names, groups) for k in sorted(g)},
        }
        (out_dir / "model.safetensors.index.json").write_text(json.dumps(index, indent=4))
    return paths


def make_model_dir(
    arch: str,
    out_dir: str | Path,
    *,
    quantize: bool = True,
    mode: str = "affine",
    bits: int | None = None,
    group_size: int | None = None,
    mixed: bool = False,
    shards: int = 1,
    seed: int = 0,
    dtype: str = "bfloat16",
    config_overrides: dict[str, Any] | None = None,
) -> Path:
    """Write a tiny random `arch` model that `mlx_lm.load(out_dir)` loads; returns out_dir.

    `mode` picks the quantization (affine, mxfp4 as gpt-oss ships, ...); `mixed` puts
    layer 0 and the routers at 8 bits and the head at 6, recorded per module in
    config["quantization"] as mlx-community checkpoints do. On the CPU backend unquantized
    MoE layers need `dtype="float32"` (gather_mm supports no other type there).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with mx.stream(mx.cpu):  # the same bytes on every backend (random draws, quantization)
        return _write_model_dir(arch, out, quantize, mode, bits, group_size, mixed, shards, seed, dtype,
                                config_overrides)  # fmt: skip


def _write_model_dir(arch, out, quantize, mode, bits, group_size, mixed, shards, seed, dtype,
                     config_overrides) -> Path:  # fmt: skip
    config = tiny_config(arch, **(config_overrides or {}))
    model = build(config, seed)
    cast(model, getattr(mx, dtype))
    config["torch_dtype"] = dtype
    if quantize:
        config = apply_quantization(
            model, config, mode=mode, bits=bits, group_size=group_size, mixed=mixed
        )
    save_weights(model, out, shards)
    special = write_tokenizer(out, config["vocab_size"])
    config.update(special)
    save_config(config, out / "config.json")
    generation = {"bos_token_id": special["bos_token_id"], "eos_token_id": special["eos_token_id"]}
    (out / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")
    return out

