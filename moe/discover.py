"""What a router would pick: the expert ids of an MoE layer, predicted from its router alone.

Which modules are expert stacks, and where their router and top-k sit, is
`mlxstore.switches` (pack needs it too); this module only runs a router found there, on
the input a layer's own router was given: the hidden state, which is not always what the
experts are given (kimi_k3 projects it to a narrower latent before its experts).
"""

from __future__ import annotations

from functools import cache as memoize

import mlx.core as mx
import mlx.nn as nn

from .plain import set_plain


def predict_experts(router: nn.Module, x: mx.array, top_k: int) -> mx.array:
    """Expert ids a router would pick for `x` (lazy): ids directly, or top-k of its logits."""
    out = router(x)
    if isinstance(out, (tuple, list)):
        return out[0]
    return mx.argpartition(-out, kth=top_k - 1, axis=-1)[..., :top_k]


def remember_input(router: nn.Module) -> None:
    """Make `router` keep the input of its calls until `take_input` takes it (its class
    is swapped for a subclass; parameters and names stay as they are)."""
    set_plain(router, "mlxstore_input", None)
    router.__class__ = _remembering(type(router))


def take_input(router: nn.Module) -> mx.array | None:
    """The input of `router`'s last call since the last take, or None; held no longer
    (a prompt chunk's hidden state per layer would otherwise stay alive)."""
    x = router.mlxstore_input
    set_plain(router, "mlxstore_input", None)
    return x


@memoize
def _remembering(cls: type) -> type:
    def __call__(self, *args, **kwargs):
        set_plain(self, "mlxstore_input", args[0] if args else next(iter(kwargs.values()), None))
        return cls.__call__(self, *args, **kwargs)

    return type(cls.__name__, (cls,), {"__call__": __call__, "__module__": cls.__module__})
