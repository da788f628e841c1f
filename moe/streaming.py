"""The module that takes a switch module's place: router ids in, slot ids out.

Router output is data: it is read to the host once per MoE layer (the one sync), mapped
to slots, missing experts are read, and the original mlx-lm module runs unchanged on slot
ids instead of expert ids. When one call needs more distinct experts than there are slots
(a long prompt chunk), the layer runs in passes over groups of experts, each pass computing
only its own (token, expert) rows. A decode call computes its resident experts' rows while
the missing ones are read. Every row is the same vector-matrix product, on the same
(sorted or unsorted) kernel path, as in the resident model, so the output is identical.
"""

from __future__ import annotations

from dataclasses import dataclass

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from mlxstore.formats import StoreError

from .bank import ExpertBank
from .discover import predict_experts

PREFETCH_MODES = ("none", "temporal", "next-layer")
SORT_THRESHOLD = 64  # mlx-lm's SwitchGLU/SwitchMLP sort rows by expert from this many on


@dataclass
class NextLayer:
    """What next-layer prefetch needs: the next MoE layer's router, top-k and bank."""

    router: nn.Module
    top_k: int
    bank: ExpertBank


class StreamingExperts(nn.Module):
    """Wraps an mlx-lm SwitchGLU / SwitchMLP whose expert tensors are a slot bank."""

    def __init__(self, inner: nn.Module, bank: ExpertBank, prefetch: str = "none"):
        super().__init__()
        self.inner = inner
        object.__setattr__(self, "bank", bank)
        object.__setattr__(self, "prefetch", prefetch)
        object.__setattr__(self, "next_layer", None)
        object.__setattr__(self, "_previous", np.empty(0, dtype=np.int64))

    def __call__(self, x: mx.array, indices: mx.array) -> mx.array:
        bank: ExpertBank = self.bank
        if bank.fixed_slots is not None and indices.size == indices.shape[-1]:
            # Every expert is resident for good and one token picks k distinct ones: map
            # ids to slots on the device, with no host sync (decode runs like resident).
            k = indices.shape[-1]
            bank.stats.calls += 1
            bank.stats.requests += k
            bank.stats.hits += k
            return self.inner(x, bank.fixed_slots[indices].astype(indices.dtype))
        nxt: NextLayer | None = self.next_layer
        if self.prefetch == "next-layer" and nxt is not None:
            predicted = predict_experts(nxt.router, x, nxt.top_k)
            mx.eval(indices, predicted)  # one sync for both
            nxt.bank.hint(np.unique(np.array(predicted)))
        ids = np.array(indices)  # the one host sync of this layer
        experts = np.unique(ids)
        if experts.size and (experts[0] < 0 or experts[-1] >= bank.num_experts):
            raise StoreError(f"{bank.name}: router chose expert {experts[-1]}, the layer has {bank.num_experts}")
        if experts.size <= bank.num_slots:
            out = self._run(x, ids, indices.dtype, experts)
        else:
            out = self._run_passes(x, ids, indices.dtype, experts)
        if self.prefetch == "temporal":
            bank.hint(np.setdiff1d(self._previous, experts, assume_unique=True))
            object.__setattr__(self, "_previous", experts)
        mx.async_eval(out)  # the experts compute while Python builds the next layer's graph
        return out

    def _slot_ids(self, ids: np.ndarray, experts: np.ndarray, slots: list[int]) -> np.ndarray:
        return np.asarray(slots, dtype=np.uint32)[np.searchsorted(experts, ids)]

    def _run(self, x, ids, dtype, experts) -> mx.array:
        bank = self.bank
        slots, misses = bank.lookup(experts.tolist())
        slot_ids = self._slot_ids(ids, experts, slots)
        if not misses or ids.size >= SORT_THRESHOLD:
            bank.fill(misses)
            return self.inner(x, mx.array(slot_ids, dtype=dtype))
        # Decode: compute the rows whose experts are resident while the misses are read.
        rows = _rows(x, ids)
        missed = np.isin(ids.reshape(-1), [e for e, _ in misses])
        flat_slots = slot_ids.reshape(-1)
        parts, order = [], []
        hit_pos = np.flatnonzero(~missed)
        if hit_pos.size:
            parts.append(self._rows_through(rows, hit_pos, flat_slots[hit_pos], dtype, False))
            mx.async_eval(parts[-1])
            order.append(hit_pos)
        bank.fill(misses)
        miss_pos = np.flatnonzero(missed)
        parts.append(self._rows_through(rows, miss_pos, flat_slots[miss_pos], dtype, False))
        order.append(miss_pos)
        return _assemble(parts, order, ids)

    def _run_passes(self, x, ids, dtype, experts) -> mx.array:
        bank = self.bank
        resident = bank.policy.resident()
        ordered = sorted(experts.tolist(), key=lambda e: e not in resident)  # hits first
        flat = ids.reshape(-1)
        rows = _rows(x, ids)
        sort_like = ids.size >= SORT_THRESHOLD
        parts, order = [], []
        for start in range(0, len(ordered), bank.num_slots):
            group = np.array(sorted(ordered[start : start + bank.num_slots]), dtype=ids.dtype)
            slots = bank.ensure(group.tolist())
            pos = np.flatnonzero(np.isin(flat, group))
            y = self._rows_through(rows, pos, self._slot_ids(flat[pos], group, slots), dtype, sort_like)
            mx.eval(y)  # the next pass overwrites slots this one reads
            parts.append(y)
            order.append(pos)
            bank.stats.passes += 1
        return _assemble(parts, order, ids)

    def _rows_through(self, rows, pos, slots, dtype, sort_like: bool) -> mx.array:
        """The switch module on the (token, rank) rows `pos`, one expert each: [len(pos), D].

        Padded to mlx-lm's sorting threshold when the whole call would have sorted, so
        every row goes through the same kernel path as in the resident model.
        """
        n = pos.size
        if sort_like and n < SORT_THRESHOLD:
            pos = np.concatenate([pos, np.full(SORT_THRESHOLD - n, pos[0])])
            slots = np.concatenate([slots, np.full(SORT_THRESHOLD - n, slots[0])])
        y = self.inner(rows[mx.array(pos)], mx.array(slots[:, None], dtype=dtype))
        return y.reshape(pos.size, -1)[:n]


def _rows(x: mx.array, ids: np.ndarray) -> mx.array:
    """x repeated once per (token, rank): [ids.size, D]."""
    flat = x.reshape(-1, x.shape[-1])
    return flat[mx.array(np.repeat(np.arange(flat.shape[0]), ids.shape[-1]))]


def _assemble(parts: list[mx.array], order: list[np.ndarray], ids: np.ndarray) -> mx.array:
    """Rows back in (token, rank) order, shaped like the switch module's output [..., k, D]."""
    y = parts[0] if len(parts) == 1 else mx.concatenate(parts, axis=0)
    inverse = np.argsort(np.concatenate(order))
    return y[mx.array(inverse)].reshape(*ids.shape, y.shape[-1])
