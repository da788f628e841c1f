"""Routing replay: streamed and resident models request exactly the trace's experts."""

from __future__ import annotations

import mlx.core as mx
import mlx_lm
import numpy as np
import pytest

from mlxstore import moe
from mlxstore.formats.route_trace import GENERATION, PROMPT, RouteTrace, parse_route_trace
from mlxstore.mlxlm import make_prompt_cache
from mlxstore.moe.replay import pad_rows, replay, replayed, restore, rewind

EXPERTS, TOP_K = 16, 4  # the tiny qwen3_moe of mlxstore.synth


def make_trace(n_layer: int, top_k: int, steps: int, seed: int = 0, prompt: int = 2) -> RouteTrace:
    """A trace in the route-trace CSV format (mlxstore/data/traces): `prompt` prompt steps then generation."""
    rng = np.random.default_rng(seed)
    lines = ["# route_trace v1",
             f"# model=toy arch=qwen3moe n_layer={n_layer} n_expert={EXPERTS} n_expert_used={top_k}",
             "turn,phase,step,layer,slot,expert,weight,residency,expert_bytes"]  # fmt: skip
    for step in range(steps):
        phase = PROMPT if step < prompt else GENERATION
        for layer in range(n_layer):
            for slot, e in enumerate(rng.choice(EXPERTS, size=top_k, replace=False)):
                lines.append(f"0,{phase},{step},{layer},{slot},{e},0.1,0,100")
    return parse_route_trace(lines)


@pytest.fixture(scope="module")
def tiny(model_and_store):
    return model_and_store("qwen3_moe")


def _run(model, prompt_len: int, decode: int) -> list[np.ndarray]:
    cache = make_prompt_cache(model)
    tokens = mx.array(np.arange(3, 3 + prompt_len)[None], dtype=mx.int32)
    out = [np.array(model(tokens, cache=cache).astype(mx.float32))]
    for i in range(decode):
        out.append(np.array(model(mx.array([[7 + i]], dtype=mx.int32), cache=cache).astype(mx.float32)))
    return out


def test_streamed_model_requests_exactly_the_trace(tiny):
    _, store = tiny
    trace = make_trace(n_layer=2, top_k=TOP_K, steps=12)
    model, _ = moe.load(store, slots_per_layer=EXPERTS)
    wrappers = replay(model, trace)
    assert all(w.sync for w in wrappers)  # streamed layers sync on router ids, as unreplayed
    _run(model, prompt_len=3, decode=4)  # 7 tokens: the first 7 generation rows
    assert all(w.sync_seconds > 0 for w in wrappers)
    st = moe.stats(model)
    banks = {m.bank.name: m.bank for _, m in model.named_modules() if hasattr(m, "bank")}
    for n, name in enumerate(sorted(st.layers, key=lambda p: int(p.split(".")[2]))):
        rows = trace.generation_calls(n)[:7]
        want = {e for row in rows for e in row}
        layer = st.layers[name]
        assert layer.misses == len(want)  # every expert the trace used, read once
        assert set(banks[name].policy.resident()) == want  # and nothing else
        assert layer.requests == len(set(rows[0] + rows[1] + rows[2])) + sum(len(r) for r in rows[3:])


def test_replay_is_identical_streamed_and_resident(tiny):
    src, store = tiny
    trace = make_trace(n_layer=2, top_k=TOP_K, steps=10)
    resident, _ = mlx_lm.load(str(src))
    streamed, _ = moe.load(store, slots_per_layer=TOP_K)  # misses and passes on the prompt
    replay(resident, trace)
    replay(streamed, trace)
    for a, b in zip(_run(resident, 6, 3), _run(streamed, 6, 3)):
        assert np.array_equal(a, b)
    assert moe.stats(streamed).total.misses > 0


def test_recorder_layer_mapping_wraparound_and_restore(tiny):
    src, _ = tiny
    model, _ = mlx_lm.load(str(src))
    before = _run(model, 4, 1)
    trace = make_trace(n_layer=1, top_k=TOP_K, steps=5, prompt=0)  # both layers replay layer 0
    wrappers = replay(model, trace, record=True)
    assert len(wrappers) == 2 and replayed(model) == wrappers
    assert not any(w.sync for w in wrappers)  # a resident switch never syncs
    _run(model, 4, 3)  # 7 tokens over a 5-row trace: wraps around
    rows = np.array(trace.generation_calls(0))
    want = rows[np.arange(7) % 5]
    for w in wrappers:
        assert np.array_equal(np.concatenate([x.reshape(-1, TOP_K) for x in w.log]), want)
    with pytest.raises(ValueError, match="already replays"):
        replay(model, trace)
    rewind(model)
    assert all(w.cursor == 0 for w in wrappers)
    restore(model)
    assert replayed(model) == []
    assert all(np.array_equal(a, b) for a, b in zip(before, _run(model, 4, 1)))


def test_topk_cut_and_pad(tiny):
    src, _ = tiny
    model, _ = mlx_lm.load(str(src))
    wide = make_trace(n_layer=2, top_k=6, steps=4, prompt=0)
    narrow = make_trace(n_layer=2, top_k=2, steps=4, prompt=0, seed=1)
    for trace in (wide, narrow):
        restore(model)
        (w0, _) = replay(model, trace, record=True)
        _run(model, 4, 0)
        got = w0.log[0].reshape(-1, TOP_K)
        for row, ids in zip(trace.generation_calls(0), got):
            assert list(ids[: min(len(row), TOP_K)]) == list(row[:TOP_K])  # rank order kept
            assert len(set(ids.tolist())) == TOP_K  # pads are distinct


def test_pad_rows_deterministic_and_frequency_weighted():
    calls = [(0, 1)] * 50 + [(2, 3)] * 50
    a = pad_rows(calls, 3, 64, seed=5)
    assert np.array_equal(a, pad_rows(calls, 3, 64, seed=5))
    assert all(len(set(r)) == 3 for r in a.tolist())
    pads = a[:50, 2]
    assert np.mean(np.isin(pads, [2, 3])) > 0.4  # the trace's other experts are favoured
    with pytest.raises(ValueError):
        pad_rows([], 2, 8, seed=0)


def test_trace_with_more_experts_than_the_model_is_refused(tiny):
    src, _ = tiny
    model, _ = mlx_lm.load(str(src))
    lines = ["# n_layer=1 n_expert=64 n_expert_used=4",
             "turn,phase,step,layer,slot,expert,weight,residency,expert_bytes"]
    lines += [f"0,1,0,0,{s},{e},0.1,0,1" for s, e in enumerate((1, 2, 3, 40))]
    with pytest.raises(ValueError, match="experts"):
        replay(model, parse_route_trace(lines))
