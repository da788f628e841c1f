"""Issue 10: peak MLX memory stays within the budget for every prompt length up to max_context.

The plan counts prefill activations at the prefill step it picks; streamed generation at
that step, for prompts of 1, 100, 1000 and max_context tokens, peaks within the budget plus
SLACK, and generates the same tokens as resident mlx-lm. Models use float32 scales (the
MLX CPU backend computes bfloat16 about 10x slower) and a small headroom, so that the
activation estimate, not the default 64 MiB headroom, is what keeps the peak in.
"""

from __future__ import annotations

import logging

import mlx.core as mx
import mlx_lm
import numpy as np
import pytest

from mlxstore import moe
from mlxstore.formats import StoreError
from mlxstore.moe.spec import spec_of
from mlxstore.pack import pack
from mlxstore.synth import make_model_dir

MAX_CONTEXT = 1024
NEW_TOKENS = 4
HEADROOM = 1 << 20
SLACK = 256 << 10  # allocator rounding; the README states it
SHAPES = {  # experts large against the dense part, so a budget buys a fraction of them
    "qwen3_moe": {"num_experts": 64, "moe_intermediate_size": 512, "hidden_size": 128},
    "gpt_oss": {"num_local_experts": 64, "intermediate_size": 512, "hidden_size": 128},
    "deepseek_v3": {"n_routed_experts": 64, "moe_intermediate_size": 512, "hidden_size": 128},
}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("budget")
    out = {}
    for arch, shape in SHAPES.items():
        mode = "mxfp4" if arch == "gpt_oss" else "affine"
        src = make_model_dir(arch, root / f"{arch}-src", mode=mode, dtype="float32", config_overrides=shape, seed=4)
        out[arch] = (src, pack(src, root / f"{arch}.store", progress=False))
    return out


def _budget(store) -> int:
    """Dense + KV + a quarter of the experts + activations of a 32-token step (twice, for
    the plan's share) + headroom + this backend's staging buffers (none for direct fill):
    a budget where experts stream and the step is a choice."""
    spec = spec_of(store)
    at = spec.plan(None, max_context=MAX_CONTEXT, headroom=HEADROOM, slots_per_layer=1, prefill_step_size=32)
    return (spec.dense_bytes + at.kv_bytes + spec.all_expert_bytes // 4 + 2 * at.activation_bytes + HEADROOM
            + at.staging_bytes)  # fmt: skip


def _prompt(n: int) -> list[int]:
    return [int(t) for t in np.random.default_rng(n).integers(3, 500, size=n)]


def _tokens(model, tokenizer, prompt: list[int], step: int) -> list[int]:
    return [r.token for r in mlx_lm.stream_generate(model, tokenizer, prompt, max_tokens=NEW_TOKENS,
                                                    prefill_step_size=step)]  # fmt: skip


@pytest.mark.parametrize("arch", list(SHAPES))
def test_peak_within_budget_at_every_prompt_length(built, arch):
    src, store = built[arch]
    budget = _budget(store)
    model, tokenizer = moe.load(store, budget, max_context=MAX_CONTEXT, headroom=HEADROOM)
    plan = moe.plan_of(model)
    assert plan.total_bytes <= budget and plan.slots_per_layer < plan.num_experts and plan.prefill_step_size > 1
    lengths = [1, 100, 1000, MAX_CONTEXT - NEW_TOKENS]  # the last fills max_context exactly
    streamed = {}
    for n in lengths:
        mx.synchronize()  # a GPU backend frees the last run's buffers once its kernels have run
        mx.clear_cache()
        mx.reset_peak_memory()
        streamed[n] = _tokens(model, tokenizer, _prompt(n), plan.prefill_step_size)
        peak = mx.get_peak_memory()
        assert peak <= budget + SLACK, f"{arch}, {n} tokens: peak {peak} > budget {budget} + {SLACK}"
    assert moe.stats(model).total.misses > 0
    del model
    resident, tokenizer = mlx_lm.load(str(src))
    for n in lengths:
        assert _tokens(resident, tokenizer, _prompt(n), plan.prefill_step_size) == streamed[n], f"{arch}, {n} tokens"


def test_caller_prefill_step_must_fit(built):
    _, store = built["qwen3_moe"]
    budget = _budget(store)
    model, _ = moe.load(store, budget, max_context=MAX_CONTEXT, headroom=HEADROOM, prefill_step_size=16)
    assert moe.plan_of(model).prefill_step_size == 16
    with pytest.raises(StoreError, match="prefill step 2048"):
        moe.load(store, budget, max_context=MAX_CONTEXT, headroom=HEADROOM, prefill_step_size=2048)


def test_kv_estimate_follows_kv_bits_and_rotating_caches(built):
    spec = spec_of(built["qwen3_moe"][1])
    plain = spec.plan("1GB", max_context=8192).kv_bytes
    assert spec.plan("1GB", max_context=8192, kv_bits=4).kv_bytes < plain / 2
    rotating = spec.plan("1GB", max_context=8192, max_kv_size=512, prefill_step_size=256).kv_bytes
    assert rotating < plain / 4  # the window plus one prompt chunk
    assert spec.plan("1GB", max_context=8192 + 256).kv_bytes > plain  # grows with the context


def test_past_max_context_stops_or_warns(built, caplog):
    src, store = built["qwen3_moe"]
    model, tokenizer = moe.load(store, slots_per_layer=8, max_context=64)
    with pytest.raises(moe.ContextLimitError, match="past max_context 64"):
        _tokens(model, tokenizer, _prompt(70), 32)
    assert _tokens(model, tokenizer, _prompt(60), 32)  # prompt + new tokens = max_context: allowed
    model, tokenizer = moe.load(store, slots_per_layer=8, max_context=64, past_max_context="warn")
    with caplog.at_level(logging.WARNING, logger="mlxstore"):
        got = _tokens(model, tokenizer, _prompt(70), 32)
        _tokens(model, tokenizer, _prompt(80), 32)
    warnings = [r for r in caplog.records if "past max_context 64" in r.getMessage()]
    assert len(warnings) == 1
    resident, tokenizer = mlx_lm.load(str(src))
    assert got == _tokens(resident, tokenizer, _prompt(70), 32)
    with pytest.raises(ValueError, match="past_max_context"):
        moe.load(store, slots_per_layer=8, past_max_context="ignore")


def test_prompt_chunks_evaluate_each_layer(built, monkeypatch):
    """MLX's GPU backends keep a batch of kernels' inputs until it has run, so layers'
    intermediates pile up unless each is evaluated: a prompt chunk evaluates every decoder
    layer's output (the plan counts one layer's activations); a decode step does not (a
    sync per layer would cost)."""
    _, store = built["qwen3_moe"]
    model, _ = moe.load(store, slots_per_layer=8, max_context=64)
    hidden = spec_of(store).config["hidden_size"]
    seen: list[tuple] = []
    real = mx.eval
    monkeypatch.setattr(mx, "eval", lambda *a: (seen.extend(x.shape for x in a[0] if isinstance(x, mx.array))
                                                if a and isinstance(a[0], list) else None, real(*a))[1])  # fmt: skip
    cache = mlx_lm.models.cache.make_prompt_cache(model)
    mx.eval(model(mx.array([_prompt(16)]), cache=cache))
    assert seen.count((1, 16, hidden)) == len(model.layers)
    seen.clear()
    mx.eval(model(mx.array([[5]]), cache=cache))
    assert (1, 1, hidden) not in seen
