"""One MoE layer's bank of expert slots and the reads that fill it.

The bank replaces the layer's stacked `[num_experts, ...]` tensors by `[slots, ...]`
arrays inside the same mlx-lm module. Two ways to put a missed expert into its slot:

- "direct" (unified memory: Apple GPUs, the CPU backend): one scatter `preadv` of the
  expert's contiguous extent straight into the slot rows of every part (weight, scales,
  biases...), through the bank's host view. No staging copy, no page fault.
- "staged" (a GPU with memory of its own: CUDA): the layer's missed extents are read into
  the model's host staging buffers (`mlxstore.staging`: loads of whole experts, the disk
  filling one buffer while the GPU copies from the other), then copied into the slots by
  MLX ops, ordered on the GPU stream after every kernel already queued. The banks stay in
  device memory: a host view would turn them into managed memory, where each host write
  migrates pages and each GPU read faults them back.

Either way a slot is written only after the host has seen the router ids of the call
that needs it, and every kernel that read the slot's old expert was queued before that.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from itertools import accumulate

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx.utils import tree_unflatten

from mlxstore import osio
from mlxstore.buffers import MX_DTYPES, unified_memory
from mlxstore.formats import ChecksumError, ExpertGroup, StoreError, Tensor
from mlxstore.formats.layout import xxh3
from mlxstore.sizes import parse_size
from mlxstore.staging import BUFFERS, HostStaging, StagingBuffer, pack_loads, staging_bytes

from .ahead_gate import AheadGate
from .policy import SlotPolicy
from .stats import LayerStats

FILL_MODES = ("direct", "staged")
STAGED_COPIES = ("slices", "scatter")  # how a staged load reaches its slots (`ExpertBank._copy_load`)


def default_fill_mode() -> str:
    """"staged" on a GPU that is not unified memory (CUDA), else "direct"."""
    return "direct" if unified_memory() else "staged"


def staging_bytes_for(fill: str | None, load_size: int | str, largest: int, ahead: int = 0) -> Callable[[int], int]:
    """Host memory a model's staging holds for good, given its slots per layer: the staged
    fill's buffers (`fill` None: this backend's; direct fill holds none), with `largest`
    the largest expert extent of the model, and the read-ahead buffers of `ahead` bytes
    each (`ahead_bytes`; 0: no read-ahead)."""
    extra = BUFFERS * ahead
    if (fill or default_fill_mode()) != "staged":
        return lambda slots: extra
    size = parse_size(load_size)
    return lambda slots: staging_bytes(size, largest, slots) + extra


def ahead_bytes(prefetch: str, top_k: int, largest: int) -> int:
    """Bytes of one read-ahead buffer: a token's predicted experts (prefetch
    "next-layer-read"), else 0."""
    return top_k * largest if prefetch == "next-layer-read" else 0


@dataclass(frozen=True)
class BankOptions:
    """How a bank reads; `moe.load` holds the defaults."""

    page_cache: str  # "keep" or "drop" the page cache after a miss read
    check: bool  # verify xxh3 of every expert read (costs a hash pass)
    fill: str  # "direct" or "staged" (see the module docstring)
    io_threads: int  # reads of one call run on this many threads of the pool
    read_size: int  # ... in parts of at least this many bytes
    copy: str  # staged fill: "slices" or "scatter" (`ExpertBank._copy_load`)


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
        staging: HostStaging | None = None,
        ahead: HostStaging | None = None,
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
        if options.fill == "staged" and staging is None:
            raise ValueError("a staged bank needs the model's HostStaging")
        self.staging = staging
        # read-ahead (prefetch "next-layer-read"): the model's buffers, and the experts the
        # layer before read into one of them for this layer's next call (expert -> its
        # offset there and its reads)
        self.ahead = ahead
        self._ahead_buf: StagingBuffer | None = None
        self._ahead_at: dict[int, tuple[int, list]] = {}
        self.ahead_gate = AheadGate()  # whether reading ahead for this bank pays (moe.ahead_gate)
        # where each tensor sits in any expert's extent, when staged loads are scattered
        scatter = options.fill == "staged" and options.copy == "scatter"
        self._offsets = _alike_offsets(group, tensors) if scatter else None
        self.stats = LayerStats()
        self.predicted: set[int] = set()
        # Once every expert is resident for good: expert -> slot on the device, or
        # `identity` when expert e sits in slot e (the router's ids are slot ids).
        self.fixed_slots: mx.array | None = None
        self.identity = False
        # expert -> slot for optimistic steps (moe.optimistic), on the device (a missing
        # expert at slot 0) and on the host (-1); rebuilt at first use after a fill
        self._device_slots: mx.array | None = None
        self._host_slots = np.full(self.num_experts, -1, dtype=np.int64)
        self._launched = False  # a kernel reading the slots was launched in this call (`launch`)
        self.arrays: list[mx.array] = []  # the module's own parameter objects
        self._rows: list[tuple[memoryview, int]] = []  # host views (direct fill only)
        updates = []
        for t in tensors:
            arr = mx.zeros((self.num_slots, *t.shape[1:]), dtype=MX_DTYPES[t.dtype])
            mx.eval(arr)
            self.arrays.append(arr)
            if options.fill == "direct":
                self._rows.append((memoryview(arr).cast("B"), t.nbytes // t.shape[0]))
            updates.append((t.name[len(group.prefix) + 1 :], arr))
        module.update(tree_unflatten(updates))

    # ------------------------------------------------------------ reads

    def _slot_buffers(self, expert: int, slot: int) -> list:
        """The extent of `expert` as buffers: its pieces' slot rows, gaps as scratch."""
        buffers, cursor = [], self.group.extents[expert].offset
        for t, (view, row) in zip(self.tensors, self._rows):
            piece = t.pieces[expert]
            if piece.offset > cursor:
                buffers.append(bytearray(piece.offset - cursor))
            buffers.append(view[slot * row : (slot + 1) * row])
            cursor = piece.offset + piece.length
        return buffers

    def _after_read(self, expert: int, slot: int) -> None:
        """Checksums (if asked) and the page-cache choice, once an expert is in its slot."""
        extent = self.group.extents[expert]
        if self.options.check:
            for t, (view, row) in zip(self.tensors, self._rows):
                _verify(t, expert, view[slot * row : (slot + 1) * row])
        if self.options.page_cache == "drop":
            self._drop(extent)

    def _drop(self, extent) -> None:
        """Let the OS drop an extent's cached pages, on the pool: nothing waits for it (the
        pool outlives every call, and the descriptors close only after it has finished)."""
        self.pool.submit(osio.advise_dontneed, self.fds[extent.shard], extent.offset, extent.length)

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
            self._device_slots = None  # residency changes (a failed read empties its slot)
            if self.predicted:
                st.prefetch_used += sum(1 for e, _ in misses if e in self.predicted)
            try:
                self._read_all(misses)
            finally:
                self._end_ahead()
            st.bytes_read += sum(self.group.extents[e].length for e, _ in misses)
            took = time.perf_counter() - start
            st.read_seconds += took
            if self.options.fill == "direct":  # the reads are the copy (staged counts its own)
                st.file_seconds += took
        self.predicted = set()
        self._end_ahead()
        st.wait_seconds += time.perf_counter() - start
        if misses and self.num_slots >= self.num_experts:
            resident = self.policy.resident()
            if len(resident) == self.num_experts:  # no eviction can ever happen again
                order = [resident[e] for e in range(self.num_experts)]
                self.identity = order == list(range(self.num_experts))
                table = mx.array(order, dtype=mx.uint32)
                mx.eval(table)
                self.fixed_slots = table

    def device_slots(self) -> mx.array:
        """Expert -> slot as a device array, missing experts at slot 0 (whose results an
        optimistic step discards when `holds` says no)."""
        if self._device_slots is None:
            host = np.full(self.num_experts, -1, dtype=np.int64)
            for e, s in self.policy.resident().items():
                host[e] = s
            self._host_slots = host
            self._device_slots = mx.array(np.maximum(host, 0), dtype=mx.uint32)
        return self._device_slots

    def holds(self, ids: np.ndarray) -> bool:
        """Whether every expert in `ids` sat in the slot `device_slots` gave it."""
        return bool((self._host_slots[ids] >= 0).all())

    def launch(self, out: mx.array) -> None:
        """Launch `out`, which reads the slots, ahead of more fills in the same call (the
        next pass, the missed rows). A staged fill then waits for it before queuing copies
        (see `_stage`)."""
        mx.async_eval(out)
        self._launched = True

    def ensure(self, experts: list[int]) -> list[int]:
        """Slots holding `experts` (distinct ids), reading the missing ones first."""
        slots, misses = self.lookup(experts)
        self.fill(misses)
        return slots

    def _read_all(self, misses: list[tuple[int, int]]) -> None:
        ahead = [m for m in misses if m[0] in self._ahead_at]
        if ahead:
            try:
                self._fill_from_ahead(ahead)
            except BaseException as exc:  # no slot of the call can be trusted: empty them all
                for _, s in misses:
                    self.policy.forget(s)
                if isinstance(exc, StoreError):
                    raise
                raise StoreError(f"{self.name}: reading experts {[e for e, _ in ahead]} ahead failed: {exc}") from exc
            taken = {e for e, _ in ahead}
            misses = [m for m in misses if m[0] not in taken]
            if not misses:
                return
        if self.options.fill == "staged":
            try:
                self._stage(misses)
            except BaseException as exc:  # every slot of the batch is suspect: empty them all
                for _, s in misses:
                    self.policy.forget(s)
                if isinstance(exc, StoreError):
                    raise
                raise StoreError(f"{self.name}: reading experts {[e for e, _ in misses]} failed: {exc}") from exc
            return
        # Every miss's extent in parts on the pool, so a layer's one or two misses still
        # keep several reads in flight (the disk's queue, not one read's latency, bounds it).
        jobs = []
        for e, s in misses:
            extent = self.group.extents[e]
            fd, what = self.fds[extent.shard], f"{self.name} expert {e}"
            parts = osio.split_reads(extent.offset, self._slot_buffers(e, s), self.options.io_threads, self.options.read_size)
            jobs.append((e, s, [self.pool.submit(osio.read_extent_into, fd, off, views, what)
                                for off, views in parts]))  # fmt: skip
        failed: list[tuple[int, BaseException]] = []
        for e, s, futures in jobs:
            try:
                for future in futures:
                    future.result()
                self._after_read(e, s)
            except BaseException as exc:  # noqa: BLE001 - every failure must empty its slot
                self.policy.forget(s)
                failed.append((e, exc))
        if failed:
            e, exc = failed[0]
            if isinstance(exc, StoreError):
                raise exc
            raise StoreError(f"{self.name}: reading expert {e} failed: {exc}") from exc

    def _stage(self, misses: list[tuple[int, int]]) -> None:
        """A call's misses through the model's staging buffers (`mlxstore.staging`), in loads
        of whole experts: the reads of the next load run while the GPU copies this one."""
        extents = [self.group.extents[e] for e, _ in misses]
        counts = pack_loads([x.length for x in extents], self.staging.capacity)
        loads, start = [], 0
        for n in counts:
            loads.append(list(zip(misses[start : start + n], extents[start : start + n])))
            start += n
        if len(loads) > 2:  # the disk's queue: loads past the next one, read ahead by the OS
            self.pool.submit(self._read_ahead, [x for load in loads[2:] for _, x in load])
        queued = [self._read_load(loads[0])]
        try:
            for i, load in enumerate(loads):
                if i + 1 < len(loads):
                    queued.append(self._read_load(loads[i + 1]))
                buf, futures = queued[i]
                began = time.perf_counter()
                for future in futures:
                    future.result()
                self.stats.file_seconds += time.perf_counter() - began
                if self._launched:
                    # A copy is an in-place slice update only if nothing else holds the
                    # bank array when the copy is encoded, and GPU backends encode at launch
                    # and hold a kernel's inputs until it has run: copying into a bank a
                    # launched kernel still reads copies the whole bank array first. So
                    # the reads above overlap that kernel, and the copies wait for it.
                    mx.synchronize()
                    self._launched = False
                self._copy_load(buf, load)
                if i + 1 < len(loads):  # the GPU copies this load while the next one is read
                    mx.async_eval(buf.readers)
        finally:  # no read may still be landing in a buffer once this returns or raises
            for _, futures in queued:
                for future in futures:
                    future.exception()

    def _read_load(self, load) -> tuple[StagingBuffer, list]:
        """Take a staging buffer and queue the reads of one load's extents into it."""
        buf = self.staging.take()
        futures, base = [], 0
        for (e, _), extent in load:
            fd, what = self.fds[extent.shard], f"{self.name} expert {e}"
            view = buf.view[base : base + extent.length]
            futures += [self.pool.submit(osio.read_extent_into, fd, off, views, what)
                        for off, views in osio.split_reads(extent.offset, [view], self.options.io_threads, self.options.read_size)]  # fmt: skip
            base += extent.length
        return buf, futures

    def _copy_load(self, buf: StagingBuffer, load, bases: list[int] | None = None) -> None:
        """Queue the copies of one read load from its buffer into the slots (MLX ops); the
        load's extents sit one after another from the buffer's start, or at `bases`."""
        buf.readers = list(self.arrays)  # before any copy is queued: a failure below still waits
        if bases is None:
            bases = list(accumulate((x.length for _, x in load[:-1]), initial=0))
        if self.options.check:
            for ((e, _), extent), at in zip(load, bases):
                for t in self.tensors:
                    start = at + t.pieces[e].offset - extent.offset
                    _verify(t, e, buf.view[start : start + t.pieces[e].length])
        if len(load) > 1 and self._offsets is not None:
            self._scatter_load(buf, load, [at // load[0][1].length for at in bases])
        else:
            for ((e, s), extent), at in zip(load, bases):
                for t, arr in zip(self.tensors, self.arrays):
                    piece = t.pieces[e]
                    start = at + piece.offset - extent.offset
                    part = buf.array[start : start + piece.length]
                    arr[s] = part.view(arr.dtype).reshape(arr.shape[1:])  # in place: the bank holds the only reference
        if self.options.page_cache == "drop":
            for _, extent in load:
                self._drop(extent)

    def _scatter_load(self, buf: StagingBuffer, load, rows: list[int]) -> None:
        """One scatter per tensor: a load of n experts laid out alike is an [n, extent]
        array (the buffer's extent-sized `rows`), and each tensor a column range of it.
        The bytes are reinterpreted while still contiguous, so no backend copies them
        before the scatter reads them (rows other than the first n are gathered first)."""
        n, length = len(load), load[0][1].length
        if rows == list(range(n)):
            flat = buf.array[: n * length]
        else:
            flat = buf.array[: (max(rows) + 1) * length].reshape(-1, length)[mx.array(rows)].reshape(-1)
        slots = mx.array([s for (_, s), _ in load], dtype=mx.uint32)
        typed: dict = {}
        for t, arr, at in zip(self.tensors, self.arrays, self._offsets):
            size, row = arr.dtype.size, t.nbytes // t.shape[0]
            if length % size == 0 and at % size == 0:
                if arr.dtype not in typed:
                    typed[arr.dtype] = flat.view(arr.dtype).reshape(n, length // size)
                part = typed[arr.dtype][:, at // size : (at + row) // size]
            else:
                part = flat.reshape(n, length)[:, at : at + row].view(arr.dtype)
            arr[slots] = part.reshape(n, *arr.shape[1:])  # in place: the bank holds the only reference

    def _read_ahead(self, extents) -> None:
        for x in extents:
            osio.advise_willneed(self.fds[x.shard], x.offset, x.length)

    # ------------------------------------------------------------ read-ahead

    def read_ahead(self, experts) -> None:
        """Start reading predicted experts that are not resident into one of the model's
        read-ahead buffers, for this layer's next call to take instead of reading them
        (prefetch "next-layer-read", issued by the layer before once its own misses are
        in). Whole extents, as many as fit; nothing is evicted for them, so a wrong
        prediction costs only the reads."""
        if self.ahead is None:
            return
        self._end_ahead()  # a prediction no call took
        resident = self.policy.resident()
        chosen, base = {}, 0
        for e in experts:
            e = int(e)
            if e in resident or e in chosen or not 0 <= e < self.num_experts:
                continue
            length = self.group.extents[e].length
            if base + length > self.ahead.capacity:
                break
            chosen[e] = base
            base += length
        if not chosen:
            return
        buf = self.ahead.take_idle()  # its copies have run; None while earlier reads still land
        if buf is None:  # a read-ahead never waits: a wrong prediction's reads may be slow
            return
        for e, at in chosen.items():
            extent = self.group.extents[e]
            fd, what = self.fds[extent.shard], f"{self.name} expert {e} (read ahead)"
            view = buf.view[at : at + extent.length]
            futures = [self.pool.submit(osio.read_extent_into, fd, off, views, what)
                       for off, views in osio.split_reads(extent.offset, [view], self.options.io_threads, self.options.read_size)]  # fmt: skip
            buf.writes += futures
            chosen[e] = (at, futures)
            self.stats.prefetch_issued += 1
            self.stats.prefetch_bytes += extent.length
        self.predicted.update(chosen)
        self._ahead_buf, self._ahead_at = buf, chosen
        self.ahead_gate.issued(sum(self.group.extents[e].length for e in chosen))

    def wants_ahead(self) -> bool:
        """Whether the layer before should predict this bank's next experts and read them
        ahead: not while its recent read-aheads went mostly untaken (moe.ahead_gate)."""
        if self.ahead_gate.open():
            return True
        self.stats.ahead_paused += 1
        return False

    def _fill_from_ahead(self, ahead: list[tuple[int, int]]) -> None:
        """Misses the layer before read ahead: once those reads have landed, copied into
        their slots from the read-ahead buffer (staged: MLX copies; direct: host copies)."""
        buf = self._ahead_buf
        taken = [self._ahead_at.pop(e) for e, _ in ahead]  # `_end_ahead` leaves their pages to the fill
        began = time.perf_counter()
        for _, futures in taken:  # only the experts taken: a wrong prediction's reads are not waited for
            for future in futures:
                future.result()  # a failed read raises here, and `_read_all` empties the call's slots
        self.stats.file_seconds += time.perf_counter() - began
        self.stats.ahead_used += len(ahead)
        self.ahead_gate.took(sum(self.group.extents[e].length for e, _ in ahead))
        load = [((e, s), self.group.extents[e]) for e, s in ahead]
        bases = [at for at, _ in taken]
        if self.options.fill == "staged":
            if self._launched:
                mx.synchronize()  # as in `_stage`: copies wait for a launched reader of the bank
                self._launched = False
            self._copy_load(buf, load, bases)
            return
        for ((e, s), extent), at in zip(load, bases):
            for t, (view, row) in zip(self.tensors, self._rows):
                start = at + t.pieces[e].offset - extent.offset
                view[s * row : (s + 1) * row] = buf.view[start : start + row]
            self._after_read(e, s)

    def _end_ahead(self) -> None:
        """Forget this call's read-ahead; with page_cache "drop", let the OS drop the pages
        of what was read ahead and not taken too."""
        if self._ahead_buf is None:
            return
        if self.options.page_cache == "drop":
            for e in self._ahead_at:
                self._drop(self.group.extents[e])
        self._ahead_buf, self._ahead_at = None, {}

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


def _alike_offsets(group: ExpertGroup, tensors: list[Tensor]) -> list[int] | None:
    """Each tensor's offset inside an expert's extent, if every expert's extent has the same
    length and layout and holds each tensor's row whole (so a load of experts is a strided
    array of them); else None."""
    if not group.extents or len({x.length for x in group.extents}) != 1:
        return None
    first = [t.pieces[0].offset - group.extents[0].offset for t in tensors]
    for e, x in enumerate(group.extents):
        if [t.pieces[e].offset - x.offset for t in tensors] != first:
            return None
        if any(t.pieces[e].length != t.nbytes // t.shape[0] for t in tensors):
            return None
    return first


def _verify(t: Tensor, expert: int, data) -> None:
    """ChecksumError naming the tensor and expert unless `data` has the piece's xxh3."""
    if xxh3(data) != t.pieces[expert].xxh3:
        what = f"tensor {t.name!r} expert {expert}"
        raise ChecksumError(f"{what}: checksum mismatch (data damaged on disk)", [what])
