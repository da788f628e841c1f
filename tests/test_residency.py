"""ResidencyManager: LRU eviction within a budget, pins, hints, statistics, threads."""

from __future__ import annotations

import random
import threading

import numpy as np
import pytest
from store_cases import raw_bytes, write_store

import mlxstore
from mlxstore.residency import ResidencyManager, ResidencyStats

NAMES = ["a", "b", "c", "d", "e"]


@pytest.fixture()
def store(tmp_path):
    """Five 1000-byte tensors and one compressed one."""
    tensors = {n: ("float32", np.full(250, i, np.float32)) for i, n in enumerate(NAMES)}
    tensors["z"] = ("float32", np.zeros(2500, np.float32))
    path = write_store(tmp_path / "r", tensors, compress={"z"})
    with mlxstore.open(path) as s:
        yield s


@pytest.fixture()
def hints(store, monkeypatch):
    calls = []
    real = store.advise
    monkeypatch.setattr(store, "advise", lambda name, advice: calls.append((advice, name)) or real(name, advice))
    return calls


def test_lru_eviction_order(store, hints):
    r = ResidencyManager(store, budget=2500)
    for n in ("a", "b", "c"):
        r.get(n)
    assert r.resident == ["b", "c"]  # a was least recently used
    r.get("b")  # hit: b becomes most recent
    r.get("d")
    assert r.resident == ["b", "d"]  # c went, not b
    s = r.stats
    assert (s.hits, s.misses, s.evictions) == (1, 4, 2)
    assert (s.bytes_read, s.bytes_evicted, s.bytes_materialized) == (4000, 2000, 2000)
    assert ("willneed", "a") in hints and ("dontneed", "a") in hints and ("dontneed", "c") in hints
    assert [h for h in hints if h[0] == "willneed"] == [("willneed", n) for n in "abcd"]  # misses only
    assert hints.index(("willneed", "c")) < hints.index(("dontneed", "a"))


def test_values_are_right_after_eviction_and_reload(store):
    r = ResidencyManager(store, budget="1KB")
    for _ in range(2):
        for i, n in enumerate(NAMES):
            assert raw_bytes(r.get(n)) == raw_bytes(np.full(250, i, np.float32))
    assert r.resident == ["e"]
    assert r.stats.misses == 10 and r.stats.evictions == 9


def test_pinning_prevents_eviction(store):
    r = ResidencyManager(store, budget=2500)
    r.pin("a")
    for n in ("b", "c", "d"):
        r.get(n)
    assert "a" in r and r.resident == ["a", "d"]  # pinned bytes count against the budget
    assert r.stats.pinned_bytes == 1000
    assert not r.evict("a")
    r.clear()
    assert r.resident == ["a"]
    r.unpin("a")
    assert r.stats.pinned_bytes == 0
    r.get("b"), r.get("c"), r.get("d")
    assert r.resident == ["c", "d"]  # a, now unpinned and least recent, went first


def test_pins_and_large_tensors_may_exceed_the_budget(store):
    r = ResidencyManager(store, budget=1500)
    r.pin("a"), r.pin("b")
    assert r.stats.bytes_materialized == 2000 > r.budget
    r.get("z")  # 10000 bytes: kept (just used), nothing else evictable
    assert set(r.resident) == {"a", "b", "z"}
    r.get("c")
    assert set(r.resident) == {"a", "b", "c"}
    r.unpin("b")  # over budget: b (least recent unpinned), then c, go
    assert r.resident == ["a"]


def test_pin_counts_bytes_once(store):
    r = ResidencyManager(store)
    r.get("a")
    r.pin("a"), r.pin("a"), r.pin("b")
    assert r.stats.pinned_bytes == 2000 and r.pinned == {"a", "b"}
    r.unpin("a"), r.unpin("a")
    assert r.stats.pinned_bytes == 1000


def test_stats_add_up_and_reset(store):
    r = ResidencyManager(store, budget="3000")
    rng = random.Random(0)
    calls = [rng.choice(NAMES + ["z"]) for _ in range(200)]
    for n in calls:
        r.get(n)
    s = r.stats.snapshot()
    replay = _replay(calls, r)
    misses = [n for n, hit in replay if not hit]
    assert (s.hits, s.misses) == (len(calls) - len(misses), len(misses))
    assert s.bytes_read == sum(store.tensor(n).stored_bytes for n in misses)
    assert s.bytes_materialized == sum(store.tensor(n).nbytes for n in r.resident)
    assert s.bytes_materialized + s.bytes_evicted == sum(store.tensor(n).nbytes for n in misses)
    assert s.misses - s.evictions == len(r.resident)
    r.stats.reset()
    after = r.stats.snapshot()
    assert (after.hits, after.misses, after.evictions, after.bytes_read, after.bytes_evicted) == (0,) * 5
    assert after.bytes_materialized == s.bytes_materialized  # gauges stay
    assert s.hits > 0  # the snapshot did not change
    assert isinstance(after, ResidencyStats)


def _replay(calls, r):
    """(name, was_hit) for each call, recomputed with a plain LRU of the same budget."""
    from collections import OrderedDict

    lru, out, total = OrderedDict(), [], 0
    for n in calls:
        size = r.store.tensor(n).nbytes
        if n in lru:
            lru.move_to_end(n)
            out.append((n, True))
            continue
        out.append((n, False))
        lru[n] = size
        total += size
        for old in list(lru):
            if total <= r.budget:
                break
            if old != n:
                total -= lru.pop(old)
    return out


def test_compressed_tensors_count_stored_bytes_read(store):
    r = ResidencyManager(store)
    r.get("z")
    assert r.stats.bytes_read == store.tensor("z").stored_bytes < 10000
    assert r.stats.bytes_materialized == 10000


def test_unknown_names_read_nothing(store, hints):
    r = ResidencyManager(store)
    with pytest.raises(KeyError, match="nope"):
        r.get("nope")
    with pytest.raises(KeyError):
        r.pin("nope")
    assert hints == [] and r.stats.misses == 0


def test_prefetch_only_hints(store, hints):
    r = ResidencyManager(store)
    r.prefetch(["a", "b"])
    assert hints == [("willneed", "a"), ("willneed", "b")] and r.resident == []


def test_checked_reads(tmp_path):
    from conftest import flip_byte

    path = write_store(tmp_path / "c", {"x": ("int32", np.arange(10, dtype=np.int32))})
    with mlxstore.open(path) as s:
        off = s.tensor("x").pieces[0].offset
    flip_byte(path / "model.mlxs", off)
    with mlxstore.open(path) as s:
        with pytest.raises(mlxstore.ChecksumError, match="'x'"):
            ResidencyManager(s, check=True).get("x")
        ResidencyManager(s).get("x")


def test_bad_budgets(store):
    with pytest.raises(ValueError, match="unknown unit"):
        ResidencyManager(store, budget="8 gigs")
    with pytest.raises(ValueError, match="negative"):
        ResidencyManager(store, budget=-1)


def test_threads_keep_the_books_straight(store):
    r = ResidencyManager(store, budget=2500)
    errors, per_thread, pins = [], 150, []

    def work(seed):
        rng = random.Random(seed)
        try:
            for _ in range(per_thread):
                i = rng.randrange(len(NAMES))
                assert raw_bytes(r.get(NAMES[i])) == raw_bytes(np.full(250, i, np.float32))
                if rng.random() < 0.1:
                    if rng.random() < 0.5:
                        r.pin(NAMES[i])
                        pins.append(i)
                    else:
                        r.unpin(NAMES[i])
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    s = r.stats.snapshot()
    assert s.hits + s.misses == 4 * per_thread + len(pins)  # pin() looks the tensor up too
    assert s.bytes_materialized == 1000 * len(r.resident)
    assert s.pinned_bytes == 1000 * len(r.pinned & set(r.resident))
