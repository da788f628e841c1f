"""The module that takes a switch module's place: router ids in, slot ids out.

Router output is data: it is read to the host once per MoE layer (the one sync), mapped
to slots, missing experts are read, and the original mlx-lm module runs unchanged on slot
ids instead of expert ids. When one call needs more distinct experts than there are slots
(a long prompt chunk), the layer runs in passes over groups of experts; each (token,
expert) result comes from exactly one pass, and every pass is the same kernel call the
resident model makes, so the output is identical.
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
        return out

    def _slot_ids(self, ids: np.ndarray, experts: np.ndarray, slots: list[int], dtype) -> mx.array:
        table = np.asarray(slots, dtype=np.uint32)
        return mx.array(table[np.searchsorted(experts, ids)], dtype=dtype)

    def _run(self, x, ids, dtype, experts) -> mx.array:
        slots = self.bank.ensure(experts.tolist())
        return self.inner(x, self._slot_ids(ids, experts, slots, dtype))

    def _run_passes(self, x, ids, dtype, experts) -> mx.array:
        bank = self.bank
        resident = bank.policy.resident()
        order = sorted(experts.tolist(), key=lambda e: e not in resident)  # hits first
        out = None
        for start in range(0, len(order), bank.num_slots):
            group = np.array(sorted(order[start : start + bank.num_slots]), dtype=ids.dtype)
            slots = bank.ensure(group.tolist())
            in_group = np.isin(ids, group)
            clipped = np.where(in_group, ids, group[0])
            y = self.inner(x, self._slot_ids(clipped, group, slots, dtype))
            out = y if out is None else mx.where(mx.array(in_group)[..., None], y, out)
            mx.eval(out)  # the next pass overwrites slots this one reads
            bank.stats.passes += 1
        return out
