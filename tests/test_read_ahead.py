"""prefetch="next-layer-read": a layer reads the next layer's predicted experts into host
buffers; the next call takes its misses from there. Exact, never evicts, counted."""

from __future__ import annotations

import mlx.core as mx
import mlx_lm
import numpy as np
import pytest
from test_replay import make_trace

from mlxstore import moe, osio
from mlxstore.formats import StoreError
from mlxstore.mlxlm import make_prompt_cache
from mlxstore.moe.replay import replay, restore, rewind
from mlxstore.moe.spec import spec_of
from mlxstore.pack import pack
from mlxstore.synth import make_model_dir

LAYERS, EXPERTS, TOP_K = 4, 16, 4  # the tiny qwen3_moe of mlxstore.synth, four layers deep


@pytest.fixture(scope="module")
def deep(tmp_path_factory):
    root = tmp_path_factory.mktemp("ahead")
    src = make_model_dir("qwen3_moe", root / "src", config_overrides={"num_hidden_layers": LAYERS})
    return src, pack(src, root / "model.store", progress=False)


def _run(model, prompt_len: int, decode: int, after_prompt=None) -> list[np.ndarray]:
    cache = make_prompt_cache(model)
    tokens = mx.array(np.arange(3, 3 + prompt_len)[None], dtype=mx.int32)
    out = [np.array(model(tokens, cache=cache).astype(mx.float32))]
    if after_prompt is not None:
        after_prompt()
    for i in range(decode):
        out.append(np.array(model(mx.array([[7 + i]], dtype=mx.int32), cache=cache).astype(mx.float32)))
    return out


def _foreseeing(deep, fill: str, decode: int):
    """(the resident model's logits on a replayed trace, a streamed model reading ahead
    with foresight on the same trace, its replay wrappers)."""
    src, store = deep
    trace = make_trace(n_layer=LAYERS, top_k=TOP_K, steps=12)
    resident, _ = mlx_lm.load(str(src))
    replay(resident, trace)
    want = _run(resident, 3, decode)
    model, _ = moe.load(store, slots_per_layer=TOP_K, prefetch="next-layer-read", fill=fill, optimistic=False)
    return want, model, replay(model, trace, foresight=True)


def _banks(model):
    """The streamed layers' banks in layer order (named_modules lists them last first)."""
    banks = [m.bank for _, m in model.named_modules() if hasattr(m, "bank")]
    return sorted(banks, key=lambda b: [int(p) for p in b.name.split(".") if p.isdigit()])


@pytest.mark.parametrize("fill", ["direct", "staged"])
def test_foresight_takes_every_decode_miss_from_the_read_ahead(deep, fill, monkeypatch):
    """With the next layer's ids known (replay's foresight), each decode miss of every
    layer but the first is read ahead and taken from there, not read again; logits stay
    the resident's."""
    want, model, _ = _foreseeing(deep, fill, decode=6)
    real, reads = osio.read_extent_into, []

    def counted(fd, offset, buffers, what="store file"):
        reads.append(what)
        return real(fd, offset, buffers, what)

    def decode_only():
        moe.stats(model, reset=True)
        reads.clear()

    monkeypatch.setattr(osio, "read_extent_into", counted)
    got = _run(model, 3, 6, after_prompt=decode_only)
    assert all(np.array_equal(w, g) for w, g in zip(want, got))
    banks = _banks(model)
    assert any("read ahead" in r for r in reads)  # in decode, only the first layer reads its misses itself
    assert not [r for r in reads if "read ahead" not in r and not r.startswith(banks[0].name + " ")]
    layers = [b.stats for b in banks]
    assert layers[0].ahead_used == 0 and layers[0].misses > 0  # no layer reads ahead for the first
    for st in layers[1:]:
        assert st.misses > 0 and st.ahead_used == st.misses  # every decode miss was foreseen
        assert st.prefetch_issued == st.ahead_used  # and nothing else was read ahead
    restore(model)
    assert all(w.next_layer is None or w.next_layer.predict is None
               for _, w in model.named_modules() if hasattr(w, "next_layer"))  # fmt: skip


@pytest.mark.parametrize("fill", ["direct", "staged"])
def test_router_predictions_are_exact_and_never_evict(deep, fill):
    """The next layer's router on this layer's input: right or wrong, logits are the
    resident's, a read-ahead evicts nothing, and what is read is whole extents."""
    src, store = deep
    resident, _ = mlx_lm.load(str(src))
    want = _run(resident, 5, 6)
    model, _ = moe.load(store, slots_per_layer=TOP_K, prefetch="next-layer-read", fill=fill, check=True)
    banks = _banks(model)
    seen = []
    real = type(banks[1]).read_ahead

    def watched(bank, experts):
        before = dict(bank.policy.resident())
        real(bank, experts)
        seen.append(bank.policy.resident() == before)

    type(banks[1]).read_ahead = watched
    try:
        got = _run(model, 5, 6)
    finally:
        type(banks[1]).read_ahead = real
    assert all(np.array_equal(w, g) for w, g in zip(want, got))
    assert seen and all(seen)
    for bank in banks[1:]:
        st = bank.stats
        assert st.prefetch_issued > 0 and st.prefetch_bytes == st.prefetch_issued * bank.group.extents[0].length
        assert st.ahead_used <= st.prefetch_used <= st.prefetch_issued


@pytest.mark.parametrize("fill", ["direct", "staged"])
def test_a_failed_read_ahead_fails_only_the_call_that_takes_it(deep, fill, monkeypatch):
    """A read-ahead that failed is never an error while no call takes it; the call that
    needs it fails, and the model then reads those experts again and stays exact."""
    want, model, wrappers = _foreseeing(deep, fill, decode=4)
    real = osio.read_extent_into

    def failing(fd, offset, buffers, what="store file"):
        if "read ahead" in what:
            raise StoreError(f"{what}: short read (injected)")
        return real(fd, offset, buffers, what)

    monkeypatch.setattr(osio, "read_extent_into", failing)
    nexts = [w.inner.next_layer for w in wrappers[:-1]]
    foreseen = [n.predict for n in nexts]
    for n, after in zip(nexts, wrappers[1:]):  # every prediction wrong: experts the call will not use
        n.predict = lambda x, after=after: mx.array(
            np.setdiff1d(np.arange(EXPERTS), after.peek(x.size // x.shape[-1], TOP_K))[None])  # fmt: skip
    assert all(np.array_equal(w, g) for w, g in zip(want, _run(model, 3, 4)))
    assert sum(b.stats.prefetch_issued for b in _banks(model)) > 0
    for n, predict in zip(nexts, foreseen):  # every prediction right: the call taking one fails
        n.predict = predict
    rewind(model)
    with pytest.raises(StoreError, match="read ahead.*injected"):
        _run(model, 3, 4)
    monkeypatch.setattr(osio, "read_extent_into", real)
    rewind(model)
    assert all(np.array_equal(w, g) for w, g in zip(want, _run(model, 3, 4)))


def test_the_plan_counts_the_read_ahead_buffers(deep):
    _, store = deep
    spec = spec_of(store)
    kw = {"memory_budget": "4MiB", "headroom": "256KiB", "max_context": 256}
    for fill in ("direct", "staged"):
        model, _ = moe.load(store, fill=fill, prefetch="next-layer-read", **kw)
        plan = moe.plan_of(model)
        plain = spec.plan(kw["memory_budget"], headroom="256KiB", max_context=256, fill=fill,
                          slots_per_layer=plan.slots_per_layer)  # fmt: skip
        assert plan.staging_bytes == plain.staging_bytes + 2 * TOP_K * spec.largest_expert_bytes
        assert spec.plan(kw["memory_budget"], headroom="256KiB", max_context=256, fill=fill,
                         prefetch="next-layer-read") == plan  # fmt: skip
        assert plan.total_bytes <= plan.budget
        assert _banks(model)[0].ahead.nbytes == 2 * TOP_K * spec.largest_expert_bytes


def test_a_call_waits_only_for_the_read_aheads_it_takes(deep, monkeypatch):
    """Reads of wrongly predicted experts may still be running when the next layer's call
    needs its own: that call waits only for the experts it takes."""
    import threading

    want, model, wrappers = _foreseeing(deep, "staged", decode=3)
    wrong: dict[str, set] = {}
    for w, after in zip(wrappers, wrappers[1:]):  # each prediction: the right ids and every other one
        w.inner.next_layer.predict = lambda x, after=after: mx.array(np.arange(EXPERTS)[None])
    released, late = threading.Event(), []
    real = osio.read_extent_into

    def slow_when_wrong(fd, offset, buffers, what="store file"):
        if "read ahead" in what:
            name, expert = what.split(" expert ")[0], int(what.split(" expert ")[1].split()[0])
            if expert not in wrong.get(name, set()):
                return real(fd, offset, buffers, what)
            if not released.wait(5):
                late.append(what)  # a call sat waiting for a read it did not need
        return real(fd, offset, buffers, what)

    banks = _banks(model)
    for bank, after in zip(banks[1:], wrappers[1:]):  # wrong: what the trace never uses at that layer
        used = {int(e) for row in after.table(TOP_K) for e in row}
        wrong[bank.name] = set(range(EXPERTS)) - used
    assert any(wrong.values())
    monkeypatch.setattr(osio, "read_extent_into", slow_when_wrong)
    got = _run(model, 3, 3)
    released.set()
    assert all(np.array_equal(w, g) for w, g in zip(want, got))
    assert not late


def test_the_gate_pauses_read_ahead_that_goes_untaken():
    """A window of read-aheads mostly untaken closes the gate for PAUSE calls; one whose
    bytes were mostly taken leaves it open."""
    from mlxstore.moe.ahead_gate import MIN_USEFUL, PAUSE, WINDOW, AheadGate

    gate = AheadGate()
    for _ in range(3 * WINDOW):  # every byte taken
        assert gate.open()
        gate.issued(100)
        gate.took(100)
    for _ in range(WINDOW):  # just enough taken
        assert gate.open()
        gate.issued(100)
        gate.took(int(100 * MIN_USEFUL))
    for _ in range(WINDOW):  # nothing taken
        assert gate.open()
        gate.issued(100)
    assert [gate.open() for _ in range(PAUSE)] == [False] * PAUSE
    assert gate.open()  # and it tries again


def test_wrong_predictions_stop_being_read(deep):
    """Every prediction wrong: each layer's read-ahead pauses after one window, the model
    stays exact; every prediction right (foresight) over as many tokens: never paused."""
    from mlxstore.moe.ahead_gate import WINDOW

    decode = WINDOW + 8
    src, store = deep
    trace = make_trace(n_layer=LAYERS, top_k=TOP_K, steps=decode + 4)
    resident, _ = mlx_lm.load(str(src))
    replay(resident, trace)
    want = _run(resident, 3, decode)
    for wrong in (True, False):
        model, _ = moe.load(store, slots_per_layer=TOP_K, prefetch="next-layer-read", optimistic=False)
        wrappers = replay(model, trace, foresight=True)
        if wrong:
            for w, after in zip(wrappers, wrappers[1:]):  # experts the next call will not use
                w.inner.next_layer.predict = lambda x, after=after: mx.array(
                    np.setdiff1d(np.arange(EXPERTS), after.peek(x.size // x.shape[-1], TOP_K))[None])  # fmt: skip
        got = _run(model, 3, decode, after_prompt=lambda m=model: moe.stats(m, reset=True))
        assert all(np.array_equal(w, g) for w, g in zip(want, got))
        for bank in _banks(model)[1:]:  # decode only: the 3-token prompt read ahead once too
            st = bank.stats
            if wrong:
                assert st.ahead_used == 0 and st.prefetch_issued == (WINDOW - 1) * TOP_K, bank.name
                assert st.ahead_paused == decode - (WINDOW - 1), bank.name
            else:
                assert st.ahead_paused == 0 and st.ahead_used == st.misses > 0, bank.name
