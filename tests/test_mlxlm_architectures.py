"""Every MoE architecture of mlx-lm packs, loads, and streams bit for bit as mlx-lm runs it.

The core architectures (synth.ARCHITECTURES) go through the whole suite; the others
(synth_more.MORE_ARCHITECTURES) through this file: a tiny random model of each is packed,
loaded lazily, streamed at every bank size from all experts down to top-k slots, and with
next-layer read-ahead, and each gives mlx-lm's prompt and decode logits exactly. The first
test fails when mlx-lm gains a module with routed experts that neither table covers.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import mlx.core as mx
import mlx_lm
import numpy as np
import pytest
from conftest import logits_trace, random_prompt

import mlxstore
from mlxstore import moe
from mlxstore.mlxlm import get_classes, make_prompt_cache
from mlxstore.moe.plan import kv_bytes
from mlxstore.moe.spec import cache_options, spec_of
from mlxstore.pack import pack
from mlxstore.switches import find_switches
from mlxstore.synth import (
    ARCHITECTURES,
    apply_quantization,
    build,
    cast,
    make_model_dir,
    tiny_config,
)
from mlxstore.synth_more import MORE_ARCHITECTURES

# arch -> (routed experts, top-k) of its tiny config: what discovery must find.
EXPECTED: dict[str, tuple[int, int]] = {
    "phimoe": (8, 2), "granitemoe": (8, 2), "minimax": (8, 2), "bailing_moe": (8, 2), "dots1": (16, 4),
    "hunyuan": (8, 2), "llama4": (8, 1), "qwen3_5_moe": (16, 4), "deepseek_v2": (16, 4), "lfm2_moe": (8, 2),
    "exaone_moe": (8, 2), "afmoe": (8, 2), "glm4_moe_lite": (16, 4), "Klear": (8, 2), "step3p5": (8, 2),
    "mimo_v2_flash": (8, 2), "longcat_flash": (8, 2), "solar_open": (16, 4), "laguna": (8, 2), "dbrx": (8, 2),
    "jamba": (8, 2), "granitemoehybrid": (8, 2), "nemotron_h": (8, 2), "bailing_moe_v3": (8, 2),
    "qwen3_vl_moe": (16, 4), "deepseek_v32": (16, 4), "mistral4": (16, 4), "phixtral": (8, 2),
    "deepseek": (8, 2), "mellum": (8, 2), "bailing_moe_linear": (8, 2), "glm_moe_dsa": (16, 4),
    "longcat_flash_ngram": (8, 2), "bailing_hybrid": (8, 2), "deepseek_v41": (16, 4), "kimi_k3": (16, 4),
    "kimi_vl": (16, 4), "minimax_m3_vl": (8, 2), "muse_spark": (8, 2), "qwen3_5": (16, 4),
}  # fmt: skip

# Architectures whose experts are not one stacked switch module: they load resident.
NOT_STREAMED = {
    "dbrx": "its experts are a Python list of modules, one per expert",
}

# Architectures mlx-lm runs on Metal only: elsewhere they are packed and loaded, not run.
METAL_ONLY = {
    "muse_spark": "mlx-lm runs its attention, routing and norms as Metal kernels (mlx_lm/kernels)",
}

# Modules that mention experts but build no routed experts of their own.
NO_ROUTED_EXPERTS = {
    "llama4_text": "dense: the MoE variant is llama4",
}

_MENTIONS_EXPERTS = re.compile(r"SwitchGLU|SwitchMLP|switch_mlp|experts")


def _mlxlm_modules_with_experts() -> set[str]:
    models = Path(mlx_lm.__file__).parent / "models"
    return {p.stem for p in models.glob("*.py")
            if p.stem != "switch_layers" and _MENTIONS_EXPERTS.search(p.read_text())}  # fmt: skip


def test_every_mlxlm_moe_module_has_a_tiny_config():
    covered = set(ARCHITECTURES) | set(MORE_ARCHITECTURES) | set(NO_ROUTED_EXPERTS)
    missing = sorted(_mlxlm_modules_with_experts() - covered)
    assert not missing, f"mlx-lm modules with experts and no tiny config in mlxstore/synth_more.py: {missing}"
    assert set(EXPECTED) == set(MORE_ARCHITECTURES)


def _runs_here(arch: str) -> bool:
    return arch not in METAL_ONLY or mx.metal.is_available()


@pytest.mark.parametrize("arch", sorted(MORE_ARCHITECTURES))
def test_streamed_layers_stand_in_for_the_switch_modules(tmp_path, arch):
    """Discovery finds every MoE layer with its router and top-k, the plan is the same
    from the store, from config.json alone and as the load makes it, and each streamed
    layer answers for what the model reads off the switch module it replaced."""
    experts, top_k = EXPECTED[arch]
    src = make_model_dir(arch, tmp_path / "src")
    resident, _ = mlx_lm.load(str(src))
    sites = find_switches(resident)
    if arch in NOT_STREAMED:
        assert not sites
        return
    assert sites and all(s.top_k == top_k for s in sites), f"{arch}: top-k {[s.top_k for s in sites]}"
    assert all(s.router is not None for s in sites), f"{arch}: a MoE layer without its router"
    store = pack(src, tmp_path / "store", progress=False)
    model, _ = moe.load(store, slots_per_layer=top_k)
    streamed = dict(model.named_modules())
    assert len(moe.stats(model).layers) == len(sites)
    # the plan is the same from the store, from the config alone, and as the load made it
    from_store, from_config = spec_of(store), spec_of(src / "config.json")
    for key in ("dense_bytes", "expert_bytes", "num_layers", "num_experts", "top_k", "latent_kv", "cache_layout",
                "largest_expert_bytes"):
        assert getattr(from_store, key) == getattr(from_config, key), f"{arch}: {key}"
    assert from_store.num_experts == experts and from_store.top_k == top_k
    assert from_config.plan(None, slots_per_layer=top_k) == moe.plan_of(model)
    # a GPU's staged fill counts buffers sized by the largest expert: the same from either
    staged = {"fill": "staged", "prefetch": "next-layer-read"}
    assert from_config.plan("4GB", **staged) == from_store.plan("4GB", **staged), arch
    for site in sites:
        wrapper = streamed[site.path]
        for name, child in wrapper.inner.items():
            assert getattr(wrapper, name) is child, f"{arch} {site.path}.{name} is not reachable"


@pytest.mark.parametrize("arch", sorted(MORE_ARCHITECTURES))
def test_architecture_streams_bit_identical(tmp_path, arch, caplog):
    if not _runs_here(arch):
        pytest.skip(f"{arch}: {METAL_ONLY[arch]}")
    experts, top_k = EXPECTED[arch]
    src = make_model_dir(arch, tmp_path / "src")
    resident, _ = mlx_lm.load(str(src))
    prompt = random_prompt(24)
    want = logits_trace(resident, prompt, steps=6)
    assert all(np.isfinite(w).all() for w in want), f"{arch}: the resident model's logits are not finite"
    sites = len(find_switches(resident))
    store = pack(src, tmp_path / "store", progress=False)

    plain, _ = mlxstore.load_model(store)
    tokens = mx.array(np.random.default_rng(1).integers(3, 512, size=(2, 40)), dtype=mx.int32)
    assert np.array_equal(np.array(plain(tokens).astype(mx.float32)),
                          np.array(resident(tokens).astype(mx.float32))), f"{arch}: load_model differs"  # fmt: skip
    del plain

    if arch in NOT_STREAMED:
        with caplog.at_level("WARNING", logger="mlxstore"):
            model, _ = moe.load(store, slots_per_layer=top_k)
        assert "no experts to stream" in caplog.text
        assert moe.stats(model).layers == {}
        assert all(np.array_equal(w, g) for w, g in zip(want, logits_trace(model, prompt, steps=6)))
        return

    runs = [({"slots_per_layer": s}, f"slots={s}") for s in sorted({experts, experts // 2, top_k}, reverse=True)]
    runs.append(({"slots_per_layer": top_k, "prefetch": "next-layer-read"}, "next-layer-read"))
    for options, label in runs:
        model, _ = moe.load(store, **options)
        got = logits_trace(model, prompt, steps=6)
        for step, (w, g) in enumerate(zip(want, got)):
            assert np.array_equal(w, g), f"{arch} {label}: logits differ at step {step}"
        stats = moe.stats(model)
        assert len(stats.layers) == sites, f"{arch} {label}: {len(stats.layers)} of {sites} streamed"
        assert stats.total.misses > 0
        del model


def _own_keys(config: dict) -> dict:
    """`config` cut to the keys its architecture reads, as a real checkpoint's config.json
    has (the tiny configs share Llama-named defaults that would hide a key the plan misses)."""
    _, args = get_classes(config)
    own = {f.name for f in dataclasses.fields(args)}
    if "text_config" in own and "text_config" not in config:  # read flat as the text config
        return config
    return {k: v for k, v in config.items() if k in own or k == "model_type"}


@pytest.mark.parametrize("arch", sorted(a for a in {*ARCHITECTURES, *MORE_ARCHITECTURES} if _runs_here(a)))
def test_kv_estimate_holds_the_caches_the_model_builds(arch):
    """The plan's KV figure is at least what a prompt leaves in the model's caches, on
    every architecture (longcat_flash has two attentions a layer; dbrx and phixtral name
    their layers and heads otherwise; sparse attention keeps indexer keys)."""
    config = tiny_config(arch)
    model = build(config)
    cast(model, mx.bfloat16)  # the caches' dtype: the plan counts 2 bytes an element
    apply_quantization(model, config)  # the CPU backend gathers unquantized experts in float32 only
    cache = make_prompt_cache(model)
    tokens, step = 200, 64
    prompt = random_prompt(tokens)
    for start in range(0, tokens, step):
        model(prompt[:, start:start + step], cache=cache)
        mx.eval([c.state for c in cache])
    held = sum(c.nbytes for c in cache)
    estimate = kv_bytes(_own_keys(config), 2, tokens, step, cache_options(model))
    assert 0 < held <= estimate, f"{arch}: caches hold {held} bytes after {tokens} tokens, the plan counts {estimate}"
