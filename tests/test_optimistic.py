"""Optimistic decode steps (moe.optimistic): exact, put back when they miss, one sync a step."""

from __future__ import annotations

import mlx.core as mx
import mlx_lm
import numpy as np
import pytest
from conftest import random_prompt

from mlxstore import moe
from mlxstore.mlxlm import (
    ArraysCache,
    BatchKVCache,
    CacheList,
    KVCache,
    QuantizedKVCache,
    RotatingKVCache,
    make_prompt_cache,
    make_sampler,
)
from mlxstore.moe import replay as rp
from mlxstore.moe.optimistic import undo_for
from mlxstore.moe.record import record, stop
from mlxstore.moe.streaming import StreamingExperts
from mlxstore.pack import pack
from mlxstore.synth import make_model_dir, tiny_config

ARCHS = ["qwen3_moe", "gpt_oss", "qwen3_next", "deepseek_v3"]  # plain KV, sliding window, recurrent state, MLA


def _experts(arch: str) -> int:
    cfg = tiny_config(arch)
    return next(cfg[k] for k in ("num_experts", "num_local_experts", "n_routed_experts") if k in cfg)


def _tokens(steps: int = 30) -> list[int]:
    """Runs of a repeated token (steps that miss nothing) broken by new ones (steps that miss)."""
    rng = np.random.default_rng(3)
    return [int(rng.integers(3, 512)) if i % 7 == 6 else 11 + (i // 7) % 2 for i in range(steps)]


def _run(model, tokens: list[int]) -> list[np.ndarray]:
    """Teacher-forced decode logits after a prompt (the gpt_oss sliding window wraps)."""
    cache = make_prompt_cache(model)
    out = [np.array(model(random_prompt(6), cache=cache).astype(mx.float32))]
    for t in tokens:
        out.append(np.array(model(mx.array([[t]]), cache=cache).astype(mx.float32)))
    return out


@pytest.fixture(scope="module")
def stores(model_and_store):
    return {arch: model_and_store("gpt_oss-mxfp4" if arch == "gpt_oss" else arch) for arch in ARCHS}


@pytest.mark.parametrize("arch", ARCHS)
def test_optimistic_steps_bit_identical_and_decide_alike(stores, arch):
    """Resident logits at every step; the same hits, misses and reads as the host path;
    steps stood and steps were put back and run again."""
    src, store = stores[arch]
    resident, _ = mlx_lm.load(str(src))
    tokens = _tokens()
    want = _run(resident, tokens)
    stood = redone = 0
    for slots in (_experts(arch) // 2, _experts(arch) * 3 // 4, _experts(arch) - 1):
        runs = {}
        for optimistic in (True, False):
            model, _ = moe.load(store, slots_per_layer=slots, optimistic=optimistic)
            got = _run(model, tokens)
            assert all(np.array_equal(w, g) for w, g in zip(want, got)), f"{arch} slots={slots} optimistic={optimistic}"
            runs[optimistic] = moe.stats(model).total
        on, off = runs[True], runs[False]
        assert (on.hits, on.misses, on.bytes_read, on.calls) == (off.hits, off.misses, off.bytes_read, off.calls)
        assert off.optimistic == off.redone == 0
        stood, redone = stood + on.optimistic, redone + on.redone
    assert stood > 0 and redone > 0, f"{arch}: the runs must have steps that stood and steps run again"


def test_generate_greedy_and_sampled_match_resident(stores):
    src, store = stores["qwen3_moe"]
    resident, tok = mlx_lm.load(str(src))
    model, _ = moe.load(store, slots_per_layer=_experts("qwen3_moe") - 2)
    for sampler in (None, make_sampler(temp=0.8)):
        texts = []
        for m in (resident, model):
            mx.random.seed(7)
            texts.append(mlx_lm.generate(m, tok, "hello hello hello", max_tokens=24, sampler=sampler))
        assert texts[0] == texts[1]
    assert moe.stats(model).total.optimistic > 0


def test_a_standing_step_syncs_once(stores, monkeypatch):
    """A step after a clean one evaluates once (the ids check), not once per layer.

    Every expert sits in a slot (a step whose routing needed a missing expert would
    rightly sync again, and which experts a step picks depends on the backend's rounding)
    but the device-side identity map is off, so the step runs optimistically."""
    _, store = stores["qwen3_next"]
    model, _ = moe.load(store, slots_per_layer=_experts("qwen3_next"), overlap=False)
    for layer in [m for m in model.modules() if isinstance(m, StreamingExperts)]:
        layer.bank.ensure(list(range(layer.bank.num_experts)))
        layer.bank.fixed_slots = None
    cache = make_prompt_cache(model)
    for _ in range(3):
        mx.eval(model(mx.array([[11]]), cache=cache))
    assert model.mlxstore_optimism.clean
    events = []
    real_eval, real_array = mx.eval, np.array
    monkeypatch.setattr(mx, "eval", lambda *a: (events.append("eval"), real_eval(*a))[1])
    monkeypatch.setattr(np, "array", lambda a, *r, **k: (
        events.append("array") if isinstance(a, mx.array) else None, real_array(a, *r, **k))[1])  # fmt: skip
    before = moe.stats(model).total.optimistic
    logits = model(mx.array([[11]]), cache=cache)
    monkeypatch.undo()
    assert events.count("eval") == 1 and events[0] == "eval", events  # the host path reads ids layer by layer
    mx.eval(logits)
    assert moe.stats(model).total.optimistic == before + tiny_config("qwen3_next")["num_hidden_layers"]


def test_recorded_and_replayed_optimistic_runs_match_host_path(stores, tmp_path):
    """A step run again is recorded once, and replays the same trace rows."""
    from mlxstore.formats.route_trace import load_route_trace

    _, store = stores["qwen3_moe"]
    slots = _experts("qwen3_moe") // 2
    traces, logs, logits = {}, {}, {}
    for optimistic in (True, False):
        model, _ = moe.load(store, slots_per_layer=slots, optimistic=optimistic)
        path = tmp_path / f"rec-{optimistic}.csv"
        record(model, path)
        _run(model, _tokens())
        stop(model)
        traces[optimistic] = path.read_text()
        assert not optimistic or moe.stats(model).total.redone > 0
    assert traces[True] == traces[False]
    trace = load_route_trace(tmp_path / "rec-False.csv")
    for optimistic in (True, False):
        model, _ = moe.load(store, slots_per_layer=slots, optimistic=optimistic)
        wrappers = rp.replay(model, trace, phases=(0, 1), record=True)
        logits[optimistic] = _run(model, _tokens())
        logs[optimistic] = [np.concatenate(w.log) for w in wrappers]
        total = moe.stats(model).total
        assert not optimistic or (total.optimistic > 0 and total.redone > 0)
    assert all(np.array_equal(a, b) for a, b in zip(logits[True], logits[False]))
    assert all(np.array_equal(a, b) for a, b in zip(logs[True], logs[False]))


def test_a_step_that_fails_is_put_back(stores):
    """An error inside an optimistic step leaves the caches where the step found them."""
    _, store = stores["qwen3_moe"]
    model, _ = moe.load(store, slots_per_layer=_experts("qwen3_moe") - 1)
    cache = make_prompt_cache(model)
    for _ in range(20):
        mx.eval(model(mx.array([[11]]), cache=cache))
        if model.mlxstore_optimism.clean:
            break
    assert model.mlxstore_optimism.clean
    offsets = [c.offset for c in cache]
    layer = next(m for _, m in model.named_modules() if isinstance(m, StreamingExperts))
    real = layer.bank.device_slots
    layer.bank.device_slots = lambda: (_ for _ in ()).throw(RuntimeError("boom"))
    with pytest.raises(RuntimeError, match="boom"):
        model(mx.array([[11]]), cache=cache)
    layer.bank.device_slots = real
    assert [c.offset for c in cache] == offsets
    assert not model.mlxstore_optimism.active


def _kv(n: int, seed: int) -> tuple[mx.array, mx.array]:
    k = mx.random.normal((1, 2, n, 32), key=mx.random.key(seed))
    return k, k + 1


def _state(c):
    if isinstance(c, CacheList):
        return [_state(p) for p in c.caches]
    if isinstance(c, ArraysCache):
        return [np.array(a) for a in c.cache]
    keys, values = c.state[:2] if not isinstance(c, QuantizedKVCache) else (c.state[0][0], c.state[1][0])
    return [np.array(keys), np.array(values), c.offset]


def _step(c, seed: int) -> None:
    if isinstance(c, CacheList):
        for p in c.caches:
            _step(p, seed)
    elif isinstance(c, ArraysCache):
        c[0] = c[0] * 2 + seed
    else:
        c.update_and_fetch(*_kv(1, seed))


@pytest.mark.parametrize("make", [
    lambda: KVCache(),
    lambda: QuantizedKVCache(group_size=32, bits=8),
    lambda: RotatingKVCache(max_size=64),  # not wrapped
    lambda: RotatingKVCache(max_size=8, keep=2),  # wrapped: the step writes over the oldest entry
    lambda: CacheList(KVCache(), RotatingKVCache(max_size=8)),
], ids=["kv", "quantized", "rotating", "rotating-wrapped", "list"])  # fmt: skip
@pytest.mark.parametrize("prompt", [0, 10])  # a prompt longer than a window leaves a longer buffer
def test_undo_puts_each_cache_back(make, prompt):
    """A step put back and a different step after it give what that step alone gives."""
    put_back, direct = make(), make()
    for c in (put_back, direct):
        for p in c.caches if isinstance(c, CacheList) else [c]:
            if prompt:
                p.update_and_fetch(*_kv(prompt, 50))
        for i in range(0 if prompt else 12):  # past the wrapped window
            _step(c, i)
    undo = undo_for([put_back])
    _step(put_back, 100)
    undo()
    _step(put_back, 200)
    _step(direct, 200)
    for a, b in zip(_flat(_state(put_back)), _flat(_state(direct))):
        assert np.array_equal(a, b)


def test_undo_puts_recurrent_state_back():
    c = ArraysCache(2)
    c[0], c[1] = mx.ones((1, 4)), mx.zeros((1, 4))
    undo = undo_for([c])
    _step(c, 5)
    undo()
    assert np.array_equal(np.array(c[0]), np.ones((1, 4)))


class _OwnCache:
    """A model's own cache class: a buffer written in place, one replaced, a count, a list."""

    def __init__(self):
        self.buffer = mx.zeros((1, 8))
        self.window = None
        self.offset = 0
        self.rows = [mx.ones((1, 2))]

    def step(self, seed: int) -> None:
        self.buffer[:, self.offset % 8] = seed  # in place: the same Python object, a new value
        self.window = mx.full((1, 3), seed) if self.window is None else self.window + seed
        self.offset += 1
        self.rows.append(mx.full((1, 2), seed))
        self.scratch = mx.array([seed])  # an attribute the step adds

    def state(self) -> list:
        return [self.buffer, self.window, mx.array(self.offset), *self.rows, getattr(self, "scratch", mx.array([-1]))]


def test_a_models_own_cache_class_is_put_back():
    """A step put back and a different one after it give what that step alone gives, for a
    cache class outside mlx-lm's (deepseek_v41's LayerCache is one), whatever it writes."""
    put_back, direct = _OwnCache(), _OwnCache()
    for c in (put_back, direct):
        c.step(1)
    undo = undo_for([put_back])
    assert undo is not None
    put_back.step(100)
    undo()
    assert np.array_equal(np.array(put_back.scratch), [1])
    fresh = _OwnCache()
    undo = undo_for([fresh])
    fresh.step(3)
    undo()
    assert not hasattr(fresh, "scratch") and fresh.offset == 0 and len(fresh.rows) == 1
    put_back.step(200)
    direct.step(200)
    got, want = put_back.state(), direct.state()
    assert len(got) == len(want) and all(np.array_equal(np.array(a), np.array(b)) for a, b in zip(got, want))


def test_caches_that_cannot_be_put_back_take_the_host_path():
    padded = ArraysCache(1, left_padding=[1])
    assert undo_for([KVCache(), padded]) is None
    assert undo_for([object()]) is None
    assert undo_for([BatchKVCache(left_padding=[0])]) is None  # mlx-lm's own: known case by case
    odd = _OwnCache()
    odd.table = {"a": mx.zeros(2)}  # a state of a kind not followed
    assert undo_for([odd]) is None
    assert undo_for(None) is not None  # no cache: nothing to put back


def test_optimistic_steps_with_a_models_own_cache(tmp_path):
    """deepseek_v41 keeps its own cache class: its decode steps stand optimistically too,
    and give resident logits."""
    src = make_model_dir("deepseek_v41", tmp_path / "src")
    store = pack(src, tmp_path / "store", progress=False)
    resident, _ = mlx_lm.load(str(src))
    tokens = _tokens(16)
    want = _run(resident, tokens)
    model, _ = moe.load(store, slots_per_layer=12)
    got = _run(model, tokens)
    assert all(np.array_equal(w, g) for w, g in zip(want, got))
    total = moe.stats(model).total
    assert total.optimistic > 0 and total.redone > 0


def _flat(x):
    if isinstance(x, list):
        for y in x:
            yield from _flat(y)
    else:
        yield x
