"""Slot policies: invariants every policy keeps, and hand-checked hit counts."""

from __future__ import annotations

import random
from functools import cache

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mlxstore.moe.policy import (
    DEFAULT_POLICY,
    POLICIES,
    SlotPolicy,
    belady_hits,
    make_policy,
    replay_hits,
)

NAMES = sorted(POLICIES)


def checked_lookup(p: SlotPolicy, call: list[int]) -> tuple[list[int], list[tuple[int, int]]]:
    """lookup() plus every invariant the streaming code relies on."""
    before = p.resident()
    slots, misses = p.lookup(call)
    after = p.resident()
    assert len(slots) == len(call)
    assert all(0 <= s < p.num_slots for s in slots)
    # distinct experts get distinct slots, duplicates share one
    by_expert = dict(zip(call, slots))
    assert len(set(by_expert.values())) == len(by_expert)
    for e, s in zip(call, slots):
        assert by_expert[e] == s
        assert after[e] == s
    # hits keep their slot, misses are exactly the experts that were not resident
    for e in set(call):
        if e in before:
            assert before[e] == by_expert[e]
    assert sorted(e for e, _ in misses) == sorted(e for e in set(call) if e not in before)
    for e, s in misses:
        assert by_expert[e] == s
    # victims are never in the call; slot table consistent and bounded
    evicted = set(before) - set(after)
    assert not evicted & set(call)
    assert len(after) <= p.num_slots
    assert len(set(after.values())) == len(after)
    return slots, misses


@pytest.mark.parametrize("name", NAMES)
def test_protocol_and_basic_flow(name: str) -> None:
    p = make_policy(name, 4, 16)
    assert isinstance(p, SlotPolicy)
    slots, misses = checked_lookup(p, [3, 5])
    assert len(misses) == 2 and p.resident() == dict(misses)
    slots2, misses2 = checked_lookup(p, [5, 3])
    assert misses2 == [] and slots2 == slots[::-1]


@pytest.mark.parametrize("name", NAMES)
def test_too_many_and_bad_ids(name: str) -> None:
    p = make_policy(name, 3, 8)
    with pytest.raises(ValueError, match="exceed"):
        p.lookup([0, 1, 2, 3])
    checked_lookup(p, [0, 1, 1, 0, 2, 2])  # 3 distinct with duplicates is fine
    with pytest.raises(ValueError, match="out of range"):
        p.lookup([8])
    with pytest.raises(ValueError, match="out of range"):
        p.lookup([-1])
    with pytest.raises(ValueError):
        p.forget(3)


@pytest.mark.parametrize("name", NAMES)
def test_forget_reloads(name: str) -> None:
    p = make_policy(name, 4, 16)
    slots, _ = checked_lookup(p, [1, 2, 3])
    p.forget(slots[1])
    assert 2 not in p.resident()
    p.forget(slots[1])  # already empty: no-op
    _, misses = checked_lookup(p, [1, 2, 3])
    assert [e for e, _ in misses] == [2]
    # the freed slot is reused before anything is evicted
    assert set(p.resident()) == {1, 2, 3}


@pytest.mark.parametrize("name", NAMES)
def test_full_bank_evicts_only_outside_call(name: str) -> None:
    p = make_policy(name, 4, 16)
    checked_lookup(p, [0, 1, 2, 3])
    for call in ([0, 1, 2, 4], [4, 5, 0, 1], [6, 7, 4, 5], [0, 1, 2, 3]):
        checked_lookup(p, call)


def test_lru_hand_checked() -> None:
    p = make_policy("lru", 2, 8)
    assert replay_hits(p, [[1], [2], [1], [3], [2]]) == 1  # [3] evicts 2, [2] evicts 1
    assert p.resident().keys() == {3, 2}
    p = make_policy("lru", 3, 8)
    checked_lookup(p, [1, 2])
    checked_lookup(p, [3])
    _, misses = checked_lookup(p, [1, 4])  # 2 is least recent
    assert set(p.resident()) == {1, 3, 4} and [e for e, _ in misses] == [4]
    checked_lookup(p, [2, 3])  # order 1, 4, 3 after touching 3 -> evict 1
    assert set(p.resident()) == {2, 3, 4}


def test_lrfu_keeps_frequent_expert() -> None:
    calls = [[1], [1], [2], [3], [1]]
    assert replay_hits(make_policy("lru", 2, 8), calls) == 1  # [3] evicts 1
    assert replay_hits(make_policy("lrfu", 2, 8), calls) == 2  # [3] evicts 2


def test_fifo_ignores_hits() -> None:
    assert replay_hits(make_policy("fifo", 2, 8), [[1], [2], [1], [3], [1]]) == 1


def test_belady_hand_checked() -> None:
    calls = [[1], [2], [3], [1], [2]]
    assert belady_hits(calls, 2) == 1  # at [3] evict 2 (used later than 1)
    assert replay_hits(make_policy("lru", 2, 8), calls) == 0
    # a victim is never an expert of the current call
    assert belady_hits([[1, 2], [3, 1], [2]], 2) == 1
    with pytest.raises(ValueError):
        belady_hits([[1, 2, 3]], 2)
    # uncounted calls warm the cache but add no hits
    assert belady_hits([[1], [1], [1]], 1, counted=[False, False, True]) == 1


def brute_force_optimum(calls: list[list[int]], slots: int,
                        counted: list[bool] | None = None) -> int:
    """Exhaustive search over every victim choice (tiny inputs only)."""
    calls = [list(dict.fromkeys(c)) for c in calls]
    counted = counted or [True] * len(calls)

    @cache
    def best(i: int, resident: frozenset[int]) -> int:
        if i == len(calls):
            return 0
        need = set(calls[i])
        hits = len(need & resident) if counted[i] else 0
        missing = len(need - resident)
        free = slots - len(resident)
        n_evict = max(0, missing - free)
        candidates = sorted(resident - need)
        out = -1
        from itertools import combinations

        for victims in combinations(candidates, n_evict):
            out = max(out, best(i + 1, (resident - set(victims)) | need))
        return hits + out

    return best(0, frozenset())


calls_strategy = st.integers(1, 3).flatmap(
    lambda slots: st.tuples(
        st.just(slots),
        st.lists(st.lists(st.integers(0, 5), min_size=1, max_size=slots, unique=True),
                 min_size=1, max_size=9),
    )
)


@settings(max_examples=150, deadline=None)
@given(calls_strategy, st.randoms(use_true_random=False))
def test_belady_is_optimal_and_bounds_policies(case, rnd: random.Random) -> None:
    slots, calls = case
    opt = brute_force_optimum(calls, slots, None)
    assert belady_hits(calls, slots, None) == opt  # every call counted: Belady is optimal
    for name in NAMES:
        assert replay_hits(make_policy(name, slots, 6), calls, None) <= opt
    # With only some calls counted (warm-up), farthest-next-use is a heuristic: hypothesis
    # found cases it loses (e.g. 2 vs 3 hits), so it is only checked to stay feasible.
    counted = [rnd.random() < 0.7 for _ in calls]
    opt = brute_force_optimum(calls, slots, counted)
    assert belady_hits(calls, slots, counted) <= opt
    for name in NAMES:
        assert replay_hits(make_policy(name, slots, 6), calls, counted) <= opt


ops_strategy = st.lists(
    st.one_of(
        st.tuples(st.just("lookup"), st.lists(st.integers(0, 11), min_size=1, max_size=6)),
        st.tuples(st.just("forget"), st.integers(0, 5)),
    ),
    max_size=60,
)


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(NAMES), st.integers(1, 6), ops_strategy)
def test_invariants_under_random_ops(name: str, slots: int, ops) -> None:
    p = make_policy(name, slots, 12)
    for op, arg in ops:
        if op == "forget":
            if arg < slots:
                s = arg
                before = p.resident()
                p.forget(s)
                assert p.resident() == {e: x for e, x in before.items() if x != s}
            continue
        call = arg[:slots] if len(set(arg)) > slots else arg
        if len(set(call)) > slots:
            call = list(dict.fromkeys(call))[:slots]
        checked_lookup(p, call)


def test_make_policy_names() -> None:
    assert DEFAULT_POLICY in POLICIES
    assert type(make_policy("default", 4, 8)) is type(make_policy(DEFAULT_POLICY, 4, 8))
    with pytest.raises(ValueError, match="unknown policy"):
        make_policy("nope", 4, 8)
    with pytest.raises(ValueError):
        make_policy("lru", 0, 8)


@pytest.mark.parametrize("name", NAMES)
def test_long_run_stays_bounded(name: str) -> None:
    """Heap compaction and ghost lists keep memory bounded over many calls."""
    rnd = random.Random(0)
    p = make_policy(name, 8, 64)
    for _ in range(5000):
        p.lookup(rnd.sample(range(64), 6))
    assert len(p.resident()) == 8
    heap = getattr(p, "_heap", [])
    assert len(heap) <= 4 * 8 + 64 + 8


@pytest.mark.parametrize("name", sorted(POLICIES))
def test_full_bank_places_each_expert_in_its_own_slot(name) -> None:
    """A slot for every expert: expert e goes to slot e, so the router's ids are slot ids."""
    policy = make_policy(name, 8, 8)
    for call in ([5, 1], [7], [0, 2, 3], [4, 6]):
        slots, misses = policy.lookup(call)
        assert slots == call and misses == [(e, e) for e in call]
    assert policy.resident() == {e: e for e in range(8)}
    policy.forget(3)
    assert policy.lookup([3]) == ([3], [(3, 3)])
