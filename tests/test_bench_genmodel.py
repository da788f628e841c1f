"""`bench genmodel`: generated models load in mlx-lm, route non-degenerately, and are
written with memory bounded independently of model size."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench.harness.genmodel import (
    GROUP_SIZE,
    expert_usage,
    make_config,
    tensor_specs,
    write_model,
)
from bench.harness.scale import SCALES

ROOT = Path(__file__).resolve().parents[1]  # where `python -m bench` runs
TINY = dict(layers=2, experts=8, top_k=2, hidden=128, moe_intermediate=128, intermediate=256,
            heads=4, kv_heads=2, head_dim=32, vocab=512)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tiny")
    write_model(out, make_config(**TINY, dtype="float32"), seed=1, shard_bytes=100_000)
    return out


def test_layout_matches_mlx_community(tiny: Path) -> None:
    config = json.loads((tiny / "config.json").read_text())
    assert config["model_type"] == "qwen3_moe"
    assert config["quantization"]["group_size"] == 64 and config["quantization"]["bits"] == 4
    assert config["quantization"]["model.layers.1.mlp.gate"] == {"group_size": 64, "bits": 8}
    assert config["eos_token_id"] == 2
    index = json.loads((tiny / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 1 and shards[0] == f"model-00001-of-{len(shards):05d}.safetensors"
    assert all((tiny / s).exists() for s in shards)
    names = set(index["weight_map"])
    for part in ("gate_proj", "up_proj", "down_proj"):
        for leaf in ("weight", "scales", "biases"):
            assert f"model.layers.0.mlp.switch_mlp.{part}.{leaf}" in names
    specs = {t.name: t for t in tensor_specs(config)}
    # [experts, out, in * bits / 32] and [experts, out, in / group]
    assert specs["model.layers.0.mlp.switch_mlp.down_proj.weight"].shape == (8, 128, 128 // 8)
    assert specs["model.layers.0.mlp.switch_mlp.gate_proj.scales"].shape == (8, 128, 128 // 64)
    assert specs["model.layers.0.mlp.gate.weight"].shape == (8, 128 // 4)
    assert index["metadata"]["total_size"] == sum(t.nbytes for t in specs.values())


def test_loads_and_generates(tiny: Path) -> None:
    import mlx.core as mx
    from mlx_lm import generate, load

    model, tokenizer = load(str(tiny))
    layer = model.layers[0].mlp.switch_mlp.up_proj
    w = mx.dequantize(layer.weight, layer.scales, layer.biases, 64, 4)
    assert abs(float(w.mean())) < 0.1 * float(w.std())  # zero-mean weights
    text = generate(model, tokenizer, prompt="w10 w11 w12", max_tokens=6, verbose=False)
    assert len(tokenizer.encode(text)) >= 1


def test_routing_spreads(tiny: Path) -> None:
    used = expert_usage(tiny, tokens=32)
    assert len(used) == TINY["layers"]
    # top-2 of 8 over 32 tokens: a degenerate router would use ~2 experts per layer
    assert min(used) >= 5, used


def test_bfloat16_model_loads(tmp_path: Path) -> None:
    import mlx.core as mx
    from mlx_lm import load

    write_model(tmp_path, make_config(**{**TINY, "layers": 1}, gate_bits=4))
    model, _ = load(str(tmp_path))
    assert model.layers[0].mlp.switch_mlp.gate_proj.scales.dtype == mx.bfloat16
    assert model.layers[0].mlp.gate.bits == 4
    out = model(mx.array([[9, 10, 11]]))
    assert out.shape == (1, 3, TINY["vocab"]) and not bool(mx.isnan(out).any())


@pytest.mark.parametrize("name", sorted(SCALES))
def test_bench_models_are_wider_than_their_group(name: str) -> None:
    """As the test fixtures (tests/test_synth.py): MLX's CUDA kernel for Hopper GPUs returns
    zeros for a quantized matmul no wider than its group, so no bench model may be that narrow."""
    for shape in (SCALES[name].as_dict(), TINY):
        for key in ("hidden", "moe_intermediate", "intermediate"):
            assert shape[key] > GROUP_SIZE, f"{name}: {key}={shape[key]}"
        assert shape["heads"] * shape["head_dim"] > GROUP_SIZE, name


def test_bad_shapes_rejected() -> None:
    with pytest.raises(ValueError, match="multiple of the group size"):
        make_config(hidden=100)
    with pytest.raises(ValueError, match="top_k"):
        make_config(experts=4, top_k=8)


def test_memory_bounded(tmp_path: Path) -> None:
    """Peak RSS grows by far less than the model size while writing (~350 MB model)."""
    code = f"""
import resource, sys
sys.path.insert(0, {str(ROOT)!r})
from bench.harness.genmodel import make_config, write_model

base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
c = make_config(layers=4, experts=96, hidden=1024, moe_intermediate=512, intermediate=2048,
                heads=16, kv_heads=4, head_dim=64, vocab=16384)
info = write_model({str(tmp_path)!r}, c, shard_bytes=128 << 20)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(info["bytes"], (peak - base) * 1024)
"""
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    size, growth = map(int, p.stdout.split()[-2:])
    assert size > 300 << 20
    assert growth < 96 << 20, f"RSS grew {growth >> 20} MiB writing {size >> 20} MiB"


def test_cli_small(tmp_path: Path) -> None:
    args = [f"--{k.replace('_', '-')}={v}" for k, v in TINY.items()]
    p = subprocess.run(
        [sys.executable, "-m", "bench", "genmodel", str(tmp_path / "m"), *args,
         "--scale-dtype", "float32", "--usage", "8"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert p.returncode == 0, p.stderr
    assert "wrote" in p.stdout and "distinct experts per layer" in p.stdout
