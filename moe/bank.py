"""One MoE layer's bank of expert slots and the reads that fill it.

The bank replaces the layer's stacked `[num_experts, ...]` tensors by `[slots, ...]`
arrays inside the same mlx-lm module. A miss reads the expert's one contiguous extent
with a single scatter `preadv` straight into the slot rows of every part (weight,
scales, biases...), so there is no staging copy and no page fault on the hot path.
"""

from __future__ import annotations

import time
from concurrent.futures import Executor
from dataclasses import dataclass

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_unflatten

from mlxstore import osio
from mlxstore.buffers import MX_DTYPES
from mlxstore.formats import ChecksumError, ExpertGroup, StoreError, Tensor
from mlxstore.formats.layout import xxh3

from .policy import SlotPolicy
from .stats import LayerStats


@dataclass(frozen=True)
class BankOptions:
    page_cache: str = "keep"  # "keep" or "drop" the page cache after a miss read
    check: bool = False  # verify xxh3 of every expert read (costs a hash pass)


class ExpertBank:
    """Slots for one layer; `ensure` makes a set of experts resident and says where."""

    def __init__(
        self,
        name: str,
        module: nn.Module,
        group: ExpertGroup,
        tensors: list[Tensor],
        policy: SlotPolicy,
        fds: list[int],
        pool: Executor,
        options: BankOptions,
    ):
        self.name = name
        self.group = group
        self.tensors = tensors
        self.policy = policy
        self.num_slots = policy.num_slots
        self.num_experts = group.num_experts
        self.fds = fds
        self.pool = pool
        self.options = options
        self.stats = LayerStats()
        self.predicted: set[int] = set()
        self.fixed_slots: mx.array | None = None  # expert -> slot, once every expert is resident for good
        self.arrays: list[mx.array] = []
        self._rows: list[tuple[memoryview, int]] = []
        updates = []
        for t in tensors:
            arr = mx.zeros((self.num_slots, *t.shape[1:]), dtype=MX_DTYPES[t.dtype])
            mx.eval(arr)
            self.arrays.append(arr)
            self._rows.append((memoryview(arr).cast("B"), t.nbytes // t.shape[0]))
            updates.append((t.name[len(group.prefix) + 1 :], arr))
        module.update(tree_unflatten(updates))

    # ------------------------------------------------------------ reads

    def _read(self, expert: int, slot: int) -> None:
        extent = self.group.extents[expert]
        fd = self.fds[extent.shard]
        buffers, cursor = [], extent.offset
        for t, (view, row) in zip(self.tensors, self._rows):
            piece = t.pieces[expert]
            if piece.offset > cursor:
                buffers.append(bytearray(piece.offset - cursor))
            buffers.append(view[slot * row : (slot + 1) * row])
            cursor = piece.offset + piece.length
        osio.read_extent_into(fd, extent.offset, buffers, what=f"{self.name} expert {expert}")
        if self.options.check:
            for t, (view, row) in zip(self.tensors, self._rows):
                if xxh3(view[slot * row : (slot + 1) * row]) != t.pieces[expert].xxh3:
                    what = f"tensor {t.name!r} expert {expert}"
                    raise ChecksumError(f"{what}: checksum mismatch (data damaged on disk)", [what])
        if self.options.page_cache == "drop":
            osio.advise_dontneed(fd, extent.offset, extent.length)

    def lookup(self, experts: list[int]) -> tuple[list[int], list[tuple[int, int]]]:
        """Slots for `experts` (distinct ids) and the (expert, slot) reads still owed."""
        slots, misses = self.policy.lookup(experts)
        st = self.stats
        st.calls += 1
        st.requests += len(experts)
        st.misses += len(misses)
        st.hits += len(experts) - len(misses)
        return slots, misses

    def fill(self, misses: list[tuple[int, int]]) -> None:
        """Read the owed experts into their slots, several in parallel.

        A failed read empties its slot (the next call reads it again) and raises: the
        bank never maps an expert to a slot holding anything but that expert's bytes.
        """
        start = time.perf_counter()
        st = self.stats
        if misses:
            if self.predicted:
                st.prefetch_used += sum(1 for e, _ in misses if e in self.predicted)
            self._read_all(misses)
            st.bytes_read += sum(self.group.extents[e].length for e, _ in misses)
            st.read_seconds += time.perf_counter() - start
        self.predicted = set()
        st.wait_seconds += time.perf_counter() - start
        if misses and self.num_slots >= self.num_experts:
            resident = self.policy.resident()
            if len(resident) == self.num_experts:  # no eviction can ever happen again
                table = mx.array([resident[e] for e in range(self.num_experts)], dtype=mx.uint32)
                mx.eval(table)
                self.fixed_slots = table

    def ensure(self, experts: list[int]) -> list[int]:
        """Slots holding `experts` (distinct ids), reading the missing ones first."""
        slots, misses = self.lookup(experts)
        self.fill(misses)
        return slots

    def _read_all(self, misses: list[tuple[int, int]]) -> None:
        if len(misses) == 1:
            jobs = [(misses[0], None)]
        else:
            jobs = [((e, s), self.pool.submit(self._read, e, s)) for e, s in misses]
        failed: list[tuple[int, BaseException]] = []
        for (e, s), future in jobs:
            try:
                self._read(e, s) if future is None else future.result()
            except BaseException as exc:  # noqa: BLE001 - every failure must empty its slot
                self.policy.forget(s)
                failed.append((e, exc))
        if failed:
            e, exc = failed[0]
            if isinstance(exc, StoreError):
                raise exc
            raise StoreError(f"{self.name}: reading expert {e} failed: {exc}") from exc

    # ------------------------------------------------------------ prefetch

    def hint(self, experts) -> None:
        """Ask the OS to start reading extents of experts that are not resident."""
        resident = self.policy.resident()
        for e in experts:
            e = int(e)
            if e in resident or e in self.predicted or not 0 <= e < self.num_experts:
                continue
            extent = self.group.extents[e]
            osio.advise_willneed(self.fds[extent.shard], extent.offset, extent.length)
            self.predicted.add(e)
            self.stats.prefetch_issued += 1
            self.stats.prefetch_bytes += extent.length
