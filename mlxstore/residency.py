"""Which tensors are materialized, within a byte budget: pinning, LRU eviction, hints, stats.

Evicting a tensor drops mlxstore's reference to its `mx.array`. MLX frees the memory only
when nobody else holds the array either: a caller that kept the array keeps the memory,
and then the budget bounds what mlxstore holds, not what the process uses. On the read
path the page-cache copy of an evicted tensor is dropped too (DONTNEED; Linux only, macOS
has no such call), so a later use reads it from disk again.

The budget is enforced after each materialization: the least recently used unpinned
tensors go until the total fits. The tensor just materialized and pinned tensors are
never evicted, so one tensor larger than the budget, or pins beyond it, exceed it.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field, fields

import mlx.core as mx

from .sizes import parse_size
from .store import Store


@dataclass
class ResidencyStats:
    """Counters since the last reset(), and gauges of the current state."""

    bytes_mapped: int = 0  # gauge: bytes of store files currently mapped
    bytes_materialized: int = 0  # gauge: bytes of tensors mlxstore holds now
    pinned_bytes: int = 0  # gauge: of those, bytes pinned
    bytes_read: int = 0  # bytes read from store files (zero-copy arrays fault theirs in later)
    bytes_evicted: int = 0
    hits: int = 0
    misses: int = 0
    evictions: int = 0
    _lock: threading.RLock = field(default_factory=threading.RLock, repr=False, compare=False)

    _GAUGES = ("bytes_mapped", "bytes_materialized", "pinned_bytes")

    def reset(self) -> None:
        """Zero the counters; the gauges describe the present and stay."""
        with self._lock:
            for f in fields(self):
                if not f.name.startswith("_") and f.name not in self._GAUGES:
                    setattr(self, f.name, 0)

    def snapshot(self) -> ResidencyStats:
        """A consistent copy (the live object changes as tensors come and go)."""
        with self._lock:
            return ResidencyStats(**{f.name: getattr(self, f.name) for f in fields(self)
                                     if not f.name.startswith("_")})  # fmt: skip


class ResidencyManager:
    """Materializes a store's tensors on demand and keeps them within a byte budget."""

    def __init__(self, store: Store, budget: int | str | None = None, *, check: bool = False):
        self.store = store
        self.budget: int | None = None if budget is None else parse_size(budget)
        self.check = check
        self.stats = ResidencyStats()
        self._lock = self.stats._lock  # one lock guards the bookkeeping and the stats
        self._resident: OrderedDict[str, mx.array] = OrderedDict()  # LRU first
        self._sizes: dict[str, int] = {}
        self._pinned: set[str] = set()

    # ------------------------------------------------------------ queries

    def __contains__(self, name: object) -> bool:
        with self._lock:
            return name in self._resident

    @property
    def resident(self) -> list[str]:
        """Materialized tensor names, least recently used first."""
        with self._lock:
            return list(self._resident)

    @property
    def pinned(self) -> set[str]:
        with self._lock:
            return set(self._pinned)

    # ------------------------------------------------------------ use

    def get(self, name: str) -> mx.array:
        """The tensor, materialized now if it is not resident (KeyError if unknown)."""
        with self._lock:
            arr = self._resident.get(name)
            if arr is not None:
                self._resident.move_to_end(name)
                self.stats.hits += 1
                return arr
        self.store.tensor(name)  # KeyError before any I/O
        self.store.advise(name, "willneed")
        arr, nread = self.store.materialize(name, self.check)
        with self._lock:
            self.stats.misses += 1
            self.stats.bytes_read += nread
            self.stats.bytes_mapped = self.store.bytes_mapped
            other = self._resident.get(name)
            if other is not None:  # another thread got there first: keep one copy
                self._resident.move_to_end(name)
                return other
            self._resident[name] = arr
            self._sizes[name] = arr.nbytes
            self.stats.bytes_materialized += arr.nbytes
            if name in self._pinned:
                self.stats.pinned_bytes += arr.nbytes
            evicted = self._evict_over_budget(keep=name)
        self._advise_dontneed(evicted)
        return arr

    def prefetch(self, names: Iterable[str]) -> None:
        """Hint that these tensors will be needed soon (WILLNEED); reads nothing itself."""
        for name in names:
            self.store.advise(name, "willneed")

    def pin(self, name: str) -> mx.array:
        """Materialize a tensor and exempt it from eviction until unpin()."""
        self.store.tensor(name)
        with self._lock:
            if name not in self._pinned:
                self._pinned.add(name)
                self.stats.pinned_bytes += self._sizes.get(name, 0)
        return self.get(name)

    def unpin(self, name: str) -> None:
        """Make a pinned tensor evictable again (evicting now if over budget)."""
        with self._lock:
            if name not in self._pinned:
                return
            self._pinned.discard(name)
            self.stats.pinned_bytes -= self._sizes.get(name, 0)
            evicted = self._evict_over_budget(keep=None)
        self._advise_dontneed(evicted)

    def evict(self, name: str) -> bool:
        """Drop one unpinned tensor now; False if it was not resident or is pinned."""
        with self._lock:
            if name not in self._resident or name in self._pinned:
                return False
            self._drop(name)
        self._advise_dontneed([name])
        return True

    def clear(self) -> None:
        """Drop every unpinned tensor."""
        with self._lock:
            names = [n for n in self._resident if n not in self._pinned]
            for n in names:
                self._drop(n)
        self._advise_dontneed(names)

    # ------------------------------------------------------------ internals (lock held)

    def _drop(self, name: str) -> None:
        del self._resident[name]
        size = self._sizes.pop(name)
        self.stats.bytes_materialized -= size
        self.stats.bytes_evicted += size
        self.stats.evictions += 1

    def _evict_over_budget(self, keep: str | None) -> list[str]:
        if self.budget is None:
            return []
        evicted = []
        for name in list(self._resident):
            if self.stats.bytes_materialized <= self.budget:
                break
            if name != keep and name not in self._pinned:
                self._drop(name)
                evicted.append(name)
        return evicted

    def _advise_dontneed(self, names: list[str]) -> None:
        for name in names:
            self.store.advise(name, "dontneed")
