"""Streaming variants the harness can swap in (`variant=...`) to weigh a change to moe/.

The overlap of decode reads with compute, row-only prompt passes and the asynchronous
layer output, first measured here, now ship in moe/streaming.py. What stays is the
reference they replaced, so a run can still show what the overlap buys:

- "serial": read every miss first, then compute all rows (the pre-overlap decode path).
"""

from __future__ import annotations

import mlx.core as mx
import numpy as np

from mlxstore.moe.streaming import StreamingExperts


class SerialStreaming(StreamingExperts):
    """The decode path before overlap: read every miss, then compute all rows (reference)."""

    def _run(self, x, ids, dtype, experts) -> mx.array:
        slots = self.bank.ensure(experts.tolist())
        table = np.asarray(slots, dtype=np.uint32)[np.searchsorted(experts, ids)]
        return self.inner(x, mx.array(table, dtype=dtype))


VARIANTS = {"serial": SerialStreaming}


def use_variant(model, name: str) -> int:
    """Swap every StreamingExperts of `model` for the variant class; returns how many."""
    cls = VARIANTS[name]
    n = 0
    for _, m in model.named_modules():
        if type(m) is StreamingExperts:
            m.__class__ = cls
            n += 1
    return n
