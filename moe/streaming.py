"""The module that takes a switch module's place: router ids in, slot ids out.

Router output is data: it is read to the host once per MoE layer (the one sync), mapped
to slots, missing experts are read, and the original mlx-lm module runs unchanged on slot
ids instead of expert ids. When one call needs more distinct experts than there are slots
(a long prompt chunk), the layer runs in passes over groups of experts.

Exactness is a property of the calls, not of one backend's kernels: a quantized matmul
picks its kernel from the shape of the call (CUDA's `gather_qmm`, for one, switches from
a vector to a matrix kernel at eight rows), and kernels round differently. So every call
of the switch module here has the shapes of the resident model's call, with slot ids in
place of expert ids, and runs once every slot it reads holds its expert. Passes keep that
shape too ("full"): the rows of experts outside a pass are pointed at one of its slots and
their results are discarded. Where a backend's kernel is known to compute each row alone
(the CPU backend), calls may run over subsets of rows ("rows"): passes over their own rows
only, and a decode call computes its resident experts' rows while the misses are read.

In an optimistic decode step (moe.optimistic) a layer makes no host sync: it maps its ids
on the bank's device table and launches; the step checks every layer's ids once at its
end, and the layer accounts its call (lookups, counters) at its next call.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from mlxstore.formats import StoreError

from .bank import ExpertBank
from .discover import predict_experts, take_input
from .optimistic import Optimism
from .plain import set_plain
from .wrapper import Wrapper

PREFETCH_MODES = ("none", "temporal", "next-layer", "next-layer-read")
PASS_MODES = ("full", "rows")
SORT_THRESHOLD = 64  # mlx-lm's SwitchGLU/SwitchMLP sort rows by expert from this many on


def default_pass_mode() -> str:
    """"rows" where every quantized-matmul row is computed alone (the CPU backend), else "full"."""
    return "rows" if mx.default_device() == mx.cpu else "full"


@dataclass
class NextLayer:
    """What next-layer prefetch needs: the next MoE layer's router, top-k and bank, and
    this layer's router (`source`, made to remember its input: the next router is applied
    to it). `predict`, when set, replaces the router's guess (moe.replay's foresight)."""

    router: nn.Module
    top_k: int
    bank: ExpertBank
    source: nn.Module
    predict: Callable[[mx.array], mx.array] | None = None

    def experts(self, x: mx.array) -> mx.array:
        """The experts the next layer is expected to pick for `x` (lazy)."""
        return self.predict(x) if self.predict is not None else predict_experts(self.router, x, self.top_k)


class StreamingExperts(Wrapper):
    """Wraps an mlx-lm SwitchGLU / SwitchMLP whose expert tensors are a slot bank."""

    def __init__(self, inner: nn.Module, bank: ExpertBank, prefetch: str, passes: str, overlap: bool,
                 hits_first: bool):  # fmt: skip
        super().__init__(inner)
        set_plain(self, "bank", bank)
        set_plain(self, "prefetch", prefetch)
        set_plain(self, "passes", passes)
        set_plain(self, "overlap", overlap)
        set_plain(self, "hits_first", hits_first)
        set_plain(self, "next_layer", None)
        set_plain(self, "optimism", None)  # the model's Optimism when its decode steps are optimistic
        set_plain(self, "_deferred", None)  # ids of a call of an optimistic step that stood, not yet accounted
        set_plain(self, "_previous", np.empty(0, dtype=np.int64))

    def __call__(self, x: mx.array, indices: mx.array) -> mx.array:
        bank: ExpertBank = self.bank
        nxt: NextLayer | None = self.next_layer
        hidden = take_input(nxt.source) if nxt is not None else None  # what this layer's router was given
        if self._deferred is not None:
            self.settle()
        running = optimism_of(self)  # the optimistic step this call is part of, if any
        if bank.fixed_slots is not None:
            # Every expert is resident for good: no host sync, the call runs as resident
            # (requests then count (token, rank) rows, as nothing is read to count experts).
            if running is not None:
                running.on_confirm(lambda: _count_fixed(bank.stats, indices.size))
            else:
                _count_fixed(bank.stats, indices.size)
            if bank.identity:
                return self.inner(x, indices)
            return self.inner(x, bank.fixed_slots[indices].astype(indices.dtype))
        if running is not None:
            return self._on_device(x, indices)
        optimism: Optimism | None = self.optimism  # a host-path step: tell it about misses
        st = bank.stats
        t0 = time.perf_counter()
        ahead = None  # the next layer's predicted experts, to read ahead once this call's are in
        decode = indices.size <= SORT_THRESHOLD  # reads ahead are for decode calls only
        if hidden is not None and (self.prefetch != "next-layer-read" or (decode and nxt.bank.wants_ahead())):
            predicted = nxt.experts(hidden)
            mx.eval(indices, predicted)  # one sync for both
            ahead = np.unique(np.array(predicted))
            if self.prefetch == "next-layer":
                nxt.bank.hint(ahead)
                ahead = None
        ids = np.array(indices)  # the one host sync of this layer
        t1 = time.perf_counter()
        small, flat, experts = self._experts(ids)
        waited = st.wait_seconds
        if len(experts) <= bank.num_slots:
            slots, misses = bank.lookup(experts)
            if misses and optimism is not None:
                optimism.missed = True
            if small:
                where = dict(zip(experts, slots))
                slot_ids = np.array([where[e] for e in flat], dtype=np.uint32).reshape(ids.shape)
            else:
                slot_ids = np.asarray(slots, dtype=np.uint32)[np.searchsorted(experts, ids)]
            t2, waited2 = time.perf_counter(), st.wait_seconds
            if misses and self.passes == "rows" and ids.size < SORT_THRESHOLD:
                out = self._run_split(x, ids, indices.dtype, slot_ids, misses)
            elif misses and self.hits_first and small and len(misses) < len(experts):
                out = self._run_hits_first(x, ids, indices.dtype, slot_ids, misses)
            else:
                bank.fill(misses)
                out = self.inner(x, mx.array(slot_ids, dtype=indices.dtype))
        else:
            if optimism is not None:
                optimism.missed = True
            t2, waited2 = time.perf_counter(), st.wait_seconds
            run = self._run_row_passes if self.passes == "rows" else self._run_full_passes
            out = run(x, ids, indices.dtype, np.array(experts, dtype=ids.dtype))
        if self.overlap:
            mx.async_eval(out)  # the experts compute while Python builds the next layer's graph
        t3 = time.perf_counter()
        if ahead is not None and decode:  # the next layer's reads start now
            nxt.bank.read_ahead(ahead)
        st.sync_seconds += t1 - t0
        st.host_seconds += (t2 - t1) - (waited2 - waited) + (time.perf_counter() - t3)
        st.graph_seconds += (t3 - t2) - (st.wait_seconds - waited2)
        return out

    def _experts(self, ids: np.ndarray) -> tuple[bool, list | None, list[int]]:
        """(small, the ids as a flat list when small, the distinct experts sorted); issues
        the temporal prefetch hints."""
        bank = self.bank
        # Decode calls are a handful of ids: Python lists and a set beat numpy there.
        small = ids.size <= SORT_THRESHOLD
        flat = ids.ravel().tolist() if small else None
        experts = sorted(set(flat)) if small else np.unique(ids).tolist()
        if experts and (experts[0] < 0 or experts[-1] >= bank.num_experts):
            raise StoreError(f"{bank.name}: router chose expert {experts[-1]}, the layer has {bank.num_experts}")
        if self.prefetch == "temporal":
            used = np.array(experts, dtype=np.int64)
            bank.hint(np.setdiff1d(self._previous, used, assume_unique=True))
            set_plain(self, "_previous", used)
        return small, flat, experts

    def _on_device(self, x: mx.array, indices: mx.array) -> mx.array:
        """A call of an optimistic step: slots from the bank's device table, no host sync
        (moe.optimistic checks the ids once the step is built)."""
        start = time.perf_counter()
        slots = self.bank.device_slots()[indices]
        out = self.inner(x, slots if slots.dtype == indices.dtype else slots.astype(indices.dtype))
        optimism: Optimism = self.optimism
        optimism.launched.append((self, indices))
        # A launch per layer costs more than it overlaps on a fast GPU: every few layers.
        if self.overlap and optimism.launch_every and len(optimism.launched) % optimism.launch_every == 0:
            mx.async_eval(out)
        self.bank.stats.graph_seconds += time.perf_counter() - start
        return out

    def defer(self, ids: np.ndarray) -> None:
        """Keep the ids of a call of an optimistic step that stood, for `settle`."""
        set_plain(self, "_deferred", ids)

    def settle(self) -> None:
        """Account a standing optimistic call as the host path would have: its lookups
        (the policy's recency), counters and prefetch hints. Runs at the layer's next call,
        while the GPU works on the layers before it, or when stats are read."""
        ids = self._deferred
        if ids is None:
            return
        set_plain(self, "_deferred", None)
        start = time.perf_counter()
        bank = self.bank
        _, misses = bank.lookup(self._experts(ids)[2])
        if misses:  # none: the step stood because every id was resident
            bank.fill(misses)  # (an empty fill would end a read-ahead meant for the next call)
        bank.stats.optimistic += 1
        bank.stats.host_seconds += time.perf_counter() - start

    def _run_split(self, x, ids, dtype, slot_ids, misses) -> mx.array:
        """Decode where each row is computed alone ("rows"): the rows of resident experts
        compute while the misses are read, then the missed rows."""
        rows = _rows(x, ids)
        missed = np.isin(ids.reshape(-1), [e for e, _ in misses])
        flat = slot_ids.reshape(-1)
        parts, order = [], []
        hit_pos = np.flatnonzero(~missed)
        if hit_pos.size:
            parts.append(self._rows_through(rows, hit_pos, flat[hit_pos], dtype, False))
            mx.async_eval(parts[-1])
            order.append(hit_pos)
        self.bank.fill(misses)  # direct writes touch only the missed slots the hit rows do not read
        miss_pos = np.flatnonzero(missed)
        parts.append(self._rows_through(rows, miss_pos, flat[miss_pos], dtype, False))
        order.append(miss_pos)
        return _assemble(parts, order, ids)

    def _run_hits_first(self, x, ids, dtype, slot_ids, misses) -> mx.array:
        """A decode call with misses in the resident call's shape ("full"), in two calls (a
        prompt's would hold three outputs where the plan counts one): the first,
        launched before the misses are read, has every missed row pointed at a resident
        expert's slot; the second, once they are in, every resident row at a missed slot
        (so it reads only the missed experts' weights). Each row is taken from the call
        that ran it on its own expert: rows are computed alone within a call of one shape,
        as full passes rely on too. Direct writes touch only missed slots, which the first
        call does not read."""
        missed = np.isin(ids, [e for e, _ in misses])
        hit_slot, miss_slot = slot_ids[~missed].flat[0], slot_ids[missed].flat[0]
        first = self.inner(x, mx.array(np.where(missed, hit_slot, slot_ids), dtype=dtype))
        self.bank.launch(first)
        self.bank.fill(misses)
        second = self.inner(x, mx.array(np.where(missed, slot_ids, miss_slot), dtype=dtype))
        return mx.where(mx.array(missed)[..., None], second, first)

    def _groups(self, experts: np.ndarray):
        """Distinct experts in groups of at most `num_slots`, resident ones first, each
        group made resident in turn (the next group may evict the previous one's)."""
        bank = self.bank
        resident = bank.policy.resident()
        ordered = sorted(experts.tolist(), key=lambda e: e not in resident)
        for start in range(0, len(ordered), bank.num_slots):
            group = np.array(sorted(ordered[start : start + bank.num_slots]), dtype=experts.dtype)
            yield group, np.asarray(bank.ensure(group.tolist()), dtype=np.uint32)
            bank.stats.passes += 1

    def _pass_done(self, y: mx.array) -> None:
        """Let the next pass refill slots this one reads. Staged writes are MLX ops queued
        once this pass has run (`ExpertBank.launch`), so the next pass's reads overlap its
        compute; direct writes come from the host and must wait for it."""
        if self.bank.options.fill == "staged":
            self.bank.launch(y)
        else:
            mx.eval(y)

    def _run_full_passes(self, x, ids, dtype, experts) -> mx.array:
        """Each pass runs the whole call; rows of other groups use this group's first slot."""
        out = None
        for group, slots in self._groups(experts):
            table = np.full(self.bank.num_experts, slots[0], dtype=np.uint32)
            table[group] = slots
            y = self.inner(x, mx.array(table[ids], dtype=dtype))
            out = y if out is None else mx.where(mx.array(np.isin(ids, group))[..., None], y, out)
            self._pass_done(out)
        return out

    def _run_row_passes(self, x, ids, dtype, experts) -> mx.array:
        """Each pass runs only its own (token, rank) rows, one expert each."""
        flat = ids.reshape(-1)
        rows = _rows(x, ids)
        sort_like = ids.size >= SORT_THRESHOLD
        parts, order = [], []
        for group, slots in self._groups(experts):
            pos = np.flatnonzero(np.isin(flat, group))
            y = self._rows_through(rows, pos, slots[np.searchsorted(group, flat[pos])], dtype, sort_like)
            self._pass_done(y)
            parts.append(y)
            order.append(pos)
        return _assemble(parts, order, ids)

    def _rows_through(self, rows, pos, slots, dtype, sort_like: bool) -> mx.array:
        """The switch module on the (token, rank) rows `pos`, one expert each: [len(pos), D].

        Padded to mlx-lm's sorting threshold when the whole call would have sorted, so
        every row takes the sorted path as in the resident model.
        """
        n = pos.size
        if sort_like and n < SORT_THRESHOLD:
            pos = np.concatenate([pos, np.full(SORT_THRESHOLD - n, pos[0])])
            slots = np.concatenate([slots, np.full(SORT_THRESHOLD - n, slots[0])])
        y = self.inner(rows[mx.array(pos)], mx.array(slots[:, None], dtype=dtype))
        return y.reshape(pos.size, -1)[:n]


def optimism_of(module: nn.Module) -> Optimism | None:
    """The optimistic step `module` (a streamed layer, or a wrapper around one) is running
    in, or None: what wrappers need to skip their own host syncs and put their state back."""
    while module is not None and not isinstance(module, StreamingExperts):
        module = getattr(module, "inner", None)
    optimism = None if module is None else module.optimism
    return optimism if optimism is not None and optimism.active else None


def _count_fixed(st, rows: int) -> None:
    st.calls += 1
    st.requests += rows
    st.hits += rows


def _rows(x: mx.array, ids: np.ndarray) -> mx.array:
    """x repeated once per (token, rank): [ids.size, D]."""
    flat = x.reshape(-1, x.shape[-1])
    return flat[mx.array(np.repeat(np.arange(flat.shape[0]), ids.shape[-1]))]


def _assemble(parts: list[mx.array], order: list[np.ndarray], ids: np.ndarray) -> mx.array:
    """Rows back in (token, rank) order, shaped like the switch module's output [..., k, D]."""
    y = parts[0] if len(parts) == 1 else mx.concatenate(parts, axis=0)
    inverse = np.argsort(np.concatenate(order))
    return y[mx.array(inverse)].reshape(*ids.shape, y.shape[-1])
