"""What a router would pick: the expert ids of an MoE layer, predicted from its router alone.

Which modules are expert stacks, and where their router and top-k sit, is
`mlxstore.switches` (pack needs it too); this module only runs a router found there.
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn


def predict_experts(router: nn.Module, x: mx.array, top_k: int) -> mx.array:
    """Expert ids a router would pick for `x` (lazy): ids directly, or top-k of its logits."""
    out = router(x)
    if isinstance(out, (tuple, list)):
        return out[0]
    return mx.argpartition(-out, kth=top_k - 1, axis=-1)[..., :top_k]
