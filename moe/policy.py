"""Per-layer expert-cache (slot bank) replacement policies, plus an offline optimum.

Why: each MoE layer keeps a fixed bank of ``num_slots`` expert slots; after the router
picks experts, the streaming code asks a policy which slot holds each expert and which
slots must be (re)filled from disk. This runs once per MoE layer per token, so every
policy is O(k) dict/list work per call (heap policies O(k log S)), with no per-call
allocation beyond the small result lists.

All policies share the slot bookkeeping in ``_SlotTable`` and differ only in how they
pick a victim. Victims are never experts needed by the current call ("pinned").
"""

from __future__ import annotations

import heapq
import math
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from typing import Protocol, runtime_checkable


@runtime_checkable
class SlotPolicy(Protocol):
    num_slots: int

    def lookup(self, experts: Sequence[int]) -> tuple[list[int], list[tuple[int, int]]]:
        """Map distinct expert ids needed by one call to slots.

        Returns (slot for each given expert, misses as (expert, slot) to be filled).
        Victims are never experts in `experts`. Raises ValueError if
        len(set(experts)) > num_slots.
        """
        ...

    def forget(self, slot: int) -> None:
        """Mark slot empty (its read failed), so the next lookup reloads it."""
        ...

    def resident(self) -> dict[int, int]:
        """Expert -> slot for every filled slot (a copy)."""
        ...


class _SlotTable:
    """Slot bookkeeping shared by all policies; subclasses choose victims.

    Subclass hooks: ``_hit(e)`` on a resident expert's first use in a call,
    ``_admit(e)`` after a miss is placed, ``_victim(call)`` removes and returns an
    unpinned resident expert, ``_drop(e)`` removes an expert whose slot was forgotten.
    """

    name = "base"

    def __init__(self, num_slots: int, num_experts: int) -> None:
        if num_slots <= 0:
            raise ValueError(f"num_slots must be positive, got {num_slots}")
        if num_experts <= 0:
            raise ValueError(f"num_experts must be positive, got {num_experts}")
        self.num_slots = num_slots
        self.num_experts = num_experts
        self._slot_of: dict[int, int] = {}
        self._expert_at: list[int] = [-1] * num_slots
        self._free: list[int] = list(range(num_slots - 1, -1, -1))  # pop() yields slot 0 first
        self._call = 0
        self._last_call: list[int] = [0] * num_experts  # call id that last used each expert

    def lookup(self, experts: Sequence[int]) -> tuple[list[int], list[tuple[int, int]]]:
        n = len(experts)
        if n > self.num_slots and len(set(experts)) > self.num_slots:
            raise ValueError(
                f"{len(set(experts))} distinct experts in one call exceed {self.num_slots} slots"
            )
        self._call += 1
        call = self._call
        last = self._last_call
        slot_of = self._slot_of
        slots = [-1] * n
        missing = False
        for i, e in enumerate(experts):
            s = slot_of.get(e)
            if s is None:
                if not 0 <= e < self.num_experts:
                    self._end_call()
                    raise ValueError(f"expert id {e} out of range [0, {self.num_experts})")
                missing = True
                continue
            slots[i] = s
            if last[e] != call:
                last[e] = call
                self._hit(e)
        misses: list[tuple[int, int]] = []
        if missing:
            for i, e in enumerate(experts):
                if slots[i] >= 0:
                    continue
                s = slot_of.get(e)  # a duplicate id placed earlier in this loop
                if s is None:
                    e = int(e)
                    s = self._place(e, call)
                    slot_of[e] = s
                    self._expert_at[s] = e
                    last[e] = call
                    self._admit(e)
                    misses.append((e, s))
                slots[i] = s
        self._end_call()
        return slots, misses

    def _place(self, e: int, call: int) -> int:
        """A slot for missed expert `e`: its own slot `e` when the bank has one for every
        expert (the mapping is then the identity, and a full bank needs none), else an
        empty slot, else a victim's."""
        if self.num_slots >= self.num_experts and e in self._free:
            self._free.remove(e)
            return e
        return self._free.pop() if self._free else self._evict(call)

    def _evict(self, call: int) -> int:
        victim = self._victim(call)
        s = self._slot_of.pop(victim)
        self._expert_at[s] = -1
        return s

    def forget(self, slot: int) -> None:
        if not 0 <= slot < self.num_slots:
            raise ValueError(f"slot {slot} out of range [0, {self.num_slots})")
        e = self._expert_at[slot]
        if e < 0:
            return
        del self._slot_of[e]
        self._expert_at[slot] = -1
        self._free.append(slot)
        self._drop(e)

    def resident(self) -> dict[int, int]:
        return dict(self._slot_of)

    def _pinned(self, e: int, call: int) -> bool:
        return self._last_call[e] == call

    def _end_call(self) -> None:
        pass

    def _hit(self, e: int) -> None:
        raise NotImplementedError

    def _admit(self, e: int) -> None:
        raise NotImplementedError

    def _victim(self, call: int) -> int:
        raise NotImplementedError

    def _drop(self, e: int) -> None:
        raise NotImplementedError


class LRUPolicy(_SlotTable):
    """Least recently used: the baseline every streaming engine ships."""

    name = "lru"

    def __init__(self, num_slots: int, num_experts: int) -> None:
        super().__init__(num_slots, num_experts)
        self._order: OrderedDict[int, None] = OrderedDict()

    def _hit(self, e: int) -> None:
        self._order.move_to_end(e)

    def _admit(self, e: int) -> None:
        self._order[e] = None

    def _victim(self, call: int) -> int:
        # This call's hits were moved to the end before any miss, so the front is unpinned.
        for e in self._order:
            if not self._pinned(e, call):
                break
        del self._order[e]
        return e

    def _drop(self, e: int) -> None:
        del self._order[e]


class FIFOPolicy(LRUPolicy):
    """First in, first out: a floor to compare the others against."""

    name = "fifo"

    def _hit(self, e: int) -> None:
        pass


class _HeapPolicy(_SlotTable):
    """Evicts the unpinned resident with the smallest key; keys are fixed when pushed.

    Stale heap entries are skipped lazily and compacted when the heap grows. Entries
    made during a call enter the heap only when the call ends: those experts are pinned
    until then, so victim search never has to step over them.
    """

    def __init__(self, num_slots: int, num_experts: int) -> None:
        super().__init__(num_slots, num_experts)
        self._heap: list[tuple[float, int, int]] = []
        self._pending: list[tuple[float, int, int]] = []
        self._seq = 0
        self._live: dict[int, int] = {}  # expert -> seq of its current entry

    def _push(self, e: int, key: float) -> None:
        self._seq += 1
        self._live[e] = self._seq
        self._pending.append((key, self._seq, e))

    def _end_call(self) -> None:
        heap, live = self._heap, self._live
        for x in self._pending:
            if live.get(x[2]) == x[1]:
                heapq.heappush(heap, x)
        self._pending.clear()
        if len(heap) > 4 * self.num_slots + 64:
            self._heap = [x for x in heap if live.get(x[2]) == x[1]]
            heapq.heapify(self._heap)

    def _victim(self, call: int) -> int:
        heap, live = self._heap, self._live
        held = []
        while True:
            item = heapq.heappop(heap)
            e = item[2]
            if live.get(e) != item[1]:
                continue
            if self._pinned(e, call):
                held.append(item)
                continue
            break
        for x in held:
            heapq.heappush(heap, x)
        del live[e]
        self._evicted(e, item[0])
        return e

    def _evicted(self, e: int, key: float) -> None:
        pass

    def _drop(self, e: int) -> None:
        self._live.pop(e, None)


class LFUDAPolicy(_HeapPolicy):
    """LFU with dynamic aging (key = age + uses); the age rises to each victim's key.

    Why: frequency keeps an expert that is popular in this layer, aging stops old
    counts from pinning experts forever. ``keep_history`` keeps use counts across
    evictions (an evicted popular expert comes back with its count).
    """

    name = "lfuda"

    def __init__(self, num_slots: int, num_experts: int, keep_history: bool = False) -> None:
        super().__init__(num_slots, num_experts)
        self._count = [0] * num_experts
        self._age = 0.0
        self._keep = keep_history

    def _hit(self, e: int) -> None:
        self._count[e] += 1
        self._push(e, self._age + self._count[e])

    def _admit(self, e: int) -> None:
        self._count[e] = self._count[e] + 1 if self._keep else 1
        self._push(e, self._age + self._count[e])

    def _evicted(self, e: int, key: float) -> None:
        self._age = key


class LRFUPolicy(_HeapPolicy):
    """LRFU: each use adds 1 to a score that halves every ``half_life`` calls.

    Why: spans LFU (long half-life) to LRU (short); scores survive eviction, so an
    expert popular in this layer is kept. The heap key log2(score) + t/half_life does
    not change with time, so entries need no refresh.
    """

    name = "lrfu"

    def __init__(self, num_slots: int, num_experts: int, half_life: float = 8.0) -> None:
        super().__init__(num_slots, num_experts)
        self._rate = 1.0 / half_life
        self._key = [-math.inf] * num_experts

    def _touch(self, e: int) -> None:
        now = self._call * self._rate
        old = self._key[e]
        key = now if old == -math.inf else now + math.log2(1.0 + 2.0 ** (old - now))
        self._key[e] = key
        self._push(e, key)

    _hit = _touch
    _admit = _touch


class LRU2Policy(_HeapPolicy):
    """LRU-2: evict the expert whose second-to-last use is oldest (history kept).

    Why: an expert used once is evicted before one used twice recently, which filters
    one-off routing choices.
    """

    name = "lru2"

    def __init__(self, num_slots: int, num_experts: int) -> None:
        super().__init__(num_slots, num_experts)
        self._last = [0] * num_experts
        self._prev = [0] * num_experts

    def _touch(self, e: int) -> None:
        self._prev[e] = self._last[e]
        self._last[e] = self._call
        # Order by penultimate use, then last use (exact Python ints, call ids < 2**40).
        self._push(e, self._prev[e] * 2**40 + self._call)

    _hit = _touch
    _admit = _touch


class S3FIFOPolicy(_SlotTable):
    """S3-FIFO: a small probation FIFO, a main FIFO with reinsertion, and a ghost list.

    Why: quick demotion of one-hit experts while frequently used ones stay in main.
    """

    name = "s3fifo"

    def __init__(self, num_slots: int, num_experts: int) -> None:
        super().__init__(num_slots, num_experts)
        self._small: deque[int] = deque()
        self._main: deque[int] = deque()
        self._where: dict[int, deque[int]] = {}
        self._ghost: OrderedDict[int, None] = OrderedDict()
        self._freq = [0] * num_experts
        self._small_cap = max(1, num_slots // 10)

    def _hit(self, e: int) -> None:
        if self._freq[e] < 3:
            self._freq[e] += 1

    def _admit(self, e: int) -> None:
        self._freq[e] = 0
        if e in self._ghost:  # evicted recently and wanted again: straight to main
            del self._ghost[e]
            self._to_main(e)
        else:
            self._small.append(e)
            self._where[e] = self._small

    def _to_main(self, e: int) -> None:
        self._main.append(e)
        self._where[e] = self._main

    def _victim(self, call: int) -> int:
        small, main, freq = self._small, self._main, self._freq
        spins = 0  # pinned main entries seen since the last change
        while True:
            if small and (len(small) >= self._small_cap or not main or spins > len(main)):
                e = small.popleft()
                if self._pinned(e, call) or freq[e] > 0:
                    freq[e] = 0
                    self._to_main(e)
                    spins = 0
                    continue
                self._ghost[e] = None
                if len(self._ghost) > self.num_slots:
                    self._ghost.popitem(last=False)
                break
            e = main.popleft()
            if self._pinned(e, call):
                main.append(e)
                spins += 1
                continue
            if freq[e] > 0:
                freq[e] -= 1
                main.append(e)
                spins = 0
                continue
            break
        del self._where[e]
        return e

    def _drop(self, e: int) -> None:
        self._where.pop(e).remove(e)


POLICIES: dict[str, Callable[[int, int], SlotPolicy]] = {
    "lru": LRUPolicy,
    "fifo": FIFOPolicy,
    "lfuda": LFUDAPolicy,
    "lfuda-h": lambda s, n: LFUDAPolicy(s, n, keep_history=True),
    "lrfu": LRFUPolicy,
    "lru2": LRU2Policy,
    "s3fifo": S3FIFOPolicy,
}

# Chosen by `python -m bench policy` (figures: README, "Measured", and
# bench/results/policy.json): on the real routing traces lrfu was the best policy, or
# within noise of it, at every bank size; the gap left to Belady's optimum is mostly
# first-touch misses, which no online per-layer policy can avoid on such short traces.
DEFAULT_POLICY = "lrfu"


def make_policy(name: str, num_slots: int, num_experts: int) -> SlotPolicy:
    """Build a policy by name (see ``POLICIES``); 'default' gives DEFAULT_POLICY."""
    if name == "default":
        name = DEFAULT_POLICY
    try:
        factory = POLICIES[name]
    except KeyError:
        raise ValueError(f"unknown policy {name!r}; choose from {sorted(POLICIES)}") from None
    return factory(num_slots, num_experts)


def replay_hits(
    policy: SlotPolicy, accesses: Sequence[Sequence[int]], counted: Sequence[bool] | None = None
) -> int:
    """Hits (distinct experts per call already resident) when replaying calls in order.

    With ``counted``, only calls marked True add to the hits (the rest warm the cache).
    """
    hits = 0
    for i, call in enumerate(accesses):
        _, misses = policy.lookup(call)
        if counted is None or counted[i]:
            hits += len(set(call)) - len(misses)
    return hits


def belady_hits(
    accesses: Sequence[Sequence[int]], num_slots: int, counted: Sequence[bool] | None = None
) -> int:
    """Optimal hits for per-call batches: evict the resident used farthest in the future.

    Every expert of the current call must be resident at once, so victims are chosen
    only among residents not needed by the current call. With ``counted``, only hits in
    calls marked True count (e.g. generation after a prompt warm-up); uncounted calls
    still occupy the cache, and next uses are then measured over counted calls only
    (a heuristic there: it is optimal only when every call counts, as tests show). Offline,
    O(calls * k * S).
    """
    calls = [list(dict.fromkeys(c)) for c in accesses]
    if counted is None:
        counted = [True] * len(calls)
    elif len(counted) != len(calls):
        raise ValueError(f"counted has {len(counted)} entries for {len(calls)} calls")
    never = len(calls)
    next_use: list[dict[int, int]] = [{} for _ in calls]
    seen: dict[int, int] = {}
    for i in range(len(calls) - 1, -1, -1):
        for e in calls[i]:
            next_use[i][e] = seen.get(e, never)
        if counted[i]:
            for e in calls[i]:
                seen[e] = i
    resident: dict[int, int] = {}  # expert -> index of its next (counted) use
    hits = 0
    for i, call in enumerate(calls):
        if len(call) > num_slots:
            raise ValueError(f"{len(call)} distinct experts in call {i} exceed {num_slots} slots")
        needed = set(call)
        for e in call:
            if e in resident:
                hits += 1 if counted[i] else 0
            else:
                if len(resident) >= num_slots:
                    victim = max(
                        (x for x in resident if x not in needed), key=resident.__getitem__
                    )
                    del resident[victim]
                resident[e] = i
        for e in call:
            resident[e] = next_use[i][e]
    return hits
