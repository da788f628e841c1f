"""Proposed changes to moe/streaming.py, measured by the harness (`variant=...`).

Not used by mlxstore itself: the lead owns moe/. Two changes, both keeping every
(token, expert) result the same kernel computation as before:

1. Overlap (P4): a call that fits the bank maps ids to slots first, starts computing the
   rows whose experts are already resident (`mx.async_eval`), and reads the missing
   experts while that runs; then computes the missed rows and puts the rows back in
   order. Today the compute thread idles during every miss read.
2. Passes compute only their own rows (P5): when a prompt chunk needs more experts than
   slots, each pass today recomputes all T x k rows and masks; with 5 passes that is 5x
   the expert compute on the CPU backend. Here each pass gathers just the rows whose
   expert is in its group.
"""

from __future__ import annotations

import time

import mlx.core as mx
import numpy as np

from mlxstore.moe.streaming import StreamingExperts

SMALL_CALL = 64  # rows below which mlx-lm's SwitchGLU takes its unsorted path


def _rows(x: mx.array, ids: np.ndarray) -> mx.array:
    """x as one row per (token, rank): [T * k, D] for ids [..., k]."""
    k = ids.shape[-1]
    flat = x.reshape(-1, x.shape[-1])
    return flat[mx.array(np.repeat(np.arange(flat.shape[0]), k))]


def _lookup(bank, experts: list[int]):
    """The policy's decision without the reads (stats as ExpertBank.ensure keeps them)."""
    start = time.perf_counter()
    slots, misses = bank.policy.lookup(experts)
    st = bank.stats
    st.calls += 1
    st.requests += len(experts)
    st.misses += len(misses)
    st.hits += len(experts) - len(misses)
    return slots, misses, start


def _read(bank, misses, start: float) -> None:
    st = bank.stats
    if misses:
        if bank.predicted:
            st.prefetch_used += sum(1 for e, _ in misses if e in bank.predicted)
        bank._read_all(misses)
        st.bytes_read += sum(bank.group.extents[e].length for e, _ in misses)
        st.read_seconds += time.perf_counter() - start
    bank.predicted = set()
    st.wait_seconds += time.perf_counter() - start


class OverlapStreaming(StreamingExperts):
    """StreamingExperts with the two proposed changes (swap in with `use_overlap(model)`)."""

    def _run(self, x, ids, dtype, experts) -> mx.array:
        bank = self.bank
        if ids.size >= SMALL_CALL:
            return super()._run(x, ids, dtype, experts)
        slots, misses, start = _lookup(bank, experts.tolist())
        slot_ids = np.asarray(slots, dtype=np.uint32)[np.searchsorted(experts, ids)].reshape(-1)
        missed = np.isin(ids.reshape(-1), [e for e, _ in misses])
        rows = _rows(x, ids)
        hit_pos, miss_pos = np.flatnonzero(~missed), np.flatnonzero(missed)
        parts, order = [], []
        if hit_pos.size:
            y = self.inner(rows[mx.array(hit_pos)], mx.array(slot_ids[hit_pos, None], dtype=dtype))
            mx.async_eval(y)  # runs while the misses are read
            parts.append(y)
            order.append(hit_pos)
        _read(bank, misses, start)
        if miss_pos.size:
            parts.append(self.inner(rows[mx.array(miss_pos)], mx.array(slot_ids[miss_pos, None], dtype=dtype)))
            order.append(miss_pos)
        return self._assemble(parts, order, ids, x)

    def _run_passes(self, x, ids, dtype, experts) -> mx.array:
        bank = self.bank
        resident = bank.policy.resident()
        order_e = sorted(experts.tolist(), key=lambda e: e not in resident)  # hits first
        flat_ids = ids.reshape(-1)
        rows = _rows(x, ids)
        parts, order = [], []
        for start in range(0, len(order_e), bank.num_slots):
            group = np.array(sorted(order_e[start : start + bank.num_slots]), dtype=ids.dtype)
            slots = np.asarray(bank.ensure(group.tolist()), dtype=np.uint32)
            pos = np.flatnonzero(np.isin(flat_ids, group))
            idx = slots[np.searchsorted(group, flat_ids[pos])]
            y = self.inner(rows[mx.array(pos)], mx.array(idx[:, None], dtype=dtype))
            mx.eval(y)  # the next pass overwrites slots this one reads
            parts.append(y)
            order.append(pos)
            bank.stats.passes += 1
        return self._assemble(parts, order, ids, x)

    @staticmethod
    def _assemble(parts, order, ids, x) -> mx.array:
        """Rows back in (token, rank) order, shaped like the switch module's own output."""
        y = mx.concatenate([p.reshape(-1, p.shape[-1]) for p in parts], axis=0)
        inverse = np.argsort(np.concatenate(order))
        return y[mx.array(inverse)].reshape(*ids.shape, y.shape[-1])


def use_overlap(model) -> int:
    """Swap every StreamingExperts of `model` for OverlapStreaming; returns how many."""
    n = 0
    for _, m in model.named_modules():
        if type(m) is StreamingExperts:
            m.__class__ = OverlapStreaming
            n += 1
    return n


class SerialStreaming(StreamingExperts):
    """The decode path before overlap: read every miss, then compute all rows (reference)."""

    def _run(self, x, ids, dtype, experts) -> mx.array:
        slots = self.bank.ensure(experts.tolist())
        table = np.asarray(slots, dtype=np.uint32)[np.searchsorted(experts, ids)]
        return self.inner(x, mx.array(table, dtype=dtype))


def use_serial(model) -> int:
    """Swap every StreamingExperts of `model` for SerialStreaming; returns how many."""
    n = 0
    for _, m in model.named_modules():
        if type(m) is StreamingExperts:
            m.__class__ = SerialStreaming
            n += 1
    return n


class AsyncOutStreaming(StreamingExperts):
    """Starts computing each layer's expert output as soon as it is built (proposal 3).

    After the per-layer sync the compute thread idles while Python builds the next layer's
    graph; `mx.async_eval` on the output lets that graph building overlap the experts'
    compute. Values are unchanged (evaluation order only); the slots it reads are not
    rewritten before this layer's next call, which comes after a later sync.
    """

    def __call__(self, x, indices):
        out = super().__call__(x, indices)
        mx.async_eval(out)
        return out


VARIANTS = {"overlap": OverlapStreaming, "serial": SerialStreaming, "asyncout": AsyncOutStreaming}


def use_variant(model, name: str) -> int:
    """Swap every StreamingExperts of `model` for the variant class; returns how many."""
    cls = VARIANTS[name]
    n = 0
    for _, m in model.named_modules():
        if type(m) is StreamingExperts:
            m.__class__ = cls
            n += 1
    return n
