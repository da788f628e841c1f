"""The memory plan's promises kept on the decoder layers: `max_context`, and one layer's
activations at a time in a prompt chunk.

Any caller (`mlx_lm.generate`, the server, the CLI) feeds tokens through the decoder
layers with a cache whose `offset` counts the tokens seen, so the checks sit on the
layers: each layer's class is swapped for a subclass whose `__call__` checks first (the
parameter tree, names and weights stay as they are).

- Passing `max_context`: the plan reserved KV cache for that many tokens, no more. `stop`
  raises `ContextLimitError` before the token that would pass the limit runs; `warn` logs
  once and goes on, and then the KV cache grows past the budget.
- A prompt chunk (more than one token) evaluates each layer's output before the next
  layer runs. The plan counts one layer's activations at the prefill step, which is what
  is alive at once where each op's memory is freed once it has run (the CPU backend); MLX's
  GPU backends keep every kernel's inputs until the batch of kernels holding it has run,
  and commit a batch only every so many kernels, so several layers' attention
  intermediates were alive at once (README, "Linux with an NVIDIA GPU"). Decode steps
  (one token) are left alone: their activations are small, and a sync per layer would cost.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten

from mlxstore.sizes import format_size

from .plain import set_plain
from .plan import PAST_MAX_CONTEXT

log = logging.getLogger("mlxstore")


class ContextLimitError(ValueError):
    """The context would pass the `max_context` the memory plan reserved KV cache for."""


@dataclass
class _Limit:
    max_context: int
    mode: str
    kv_per_token: int
    warned: bool = False

    def check(self, offset: int, tokens: int) -> None:
        reach = offset + tokens
        if reach <= self.max_context:
            return
        if self.mode == "stop":
            raise ContextLimitError(
                f"context would reach {reach} tokens, past max_context {self.max_context} (the KV cache the "
                "memory plan reserved); load with a larger max_context, or past_max_context='warn' to go on "
                "beyond the memory budget"
            )
        if not self.warned:
            self.warned = True
            log.warning(
                "mlxstore: context reached %d tokens, past max_context %d (the KV cache the memory plan "
                "reserved): memory now grows past the budget by about %s per 1000 tokens "
                "(past_max_context='warn'; 'stop' would have stopped here)",
                reach, self.max_context, format_size(self.kv_per_token * 1000),
            )  # fmt: skip


_GUARDED: dict[type, type] = {}


def _guarded_class(cls: type) -> type:
    if cls not in _GUARDED:

        def __call__(self, *args, **kwargs):
            cache = kwargs.get("cache")
            if cache is None:
                cache = next((a for a in args[1:] if hasattr(a, "offset") and hasattr(a, "update_and_fetch")), None)
            x = args[0] if args else kwargs.get("x")
            tokens = x.shape[1] if getattr(x, "ndim", 0) >= 2 else 0
            if cache is not None and isinstance(getattr(cache, "offset", None), int) and tokens:
                self.mlxstore_context.check(cache.offset, tokens)
            out = cls.__call__(self, *args, **kwargs)
            if tokens > 1:
                mx.eval([v for _, v in tree_flatten(out) if isinstance(v, mx.array)])
            return out

        _GUARDED[cls] = type(cls.__name__, (cls,), {"__call__": __call__, "__module__": cls.__module__})
    return _GUARDED[cls]


def guard(model: nn.Module, max_context: int, mode: str, kv_per_token: int) -> bool:
    """Make `model`'s decoder layers check the context against `max_context` (mode "stop"
    or "warn") and evaluate prompt chunks layer by layer; False when the model has no
    `layers` list to guard."""
    if mode not in PAST_MAX_CONTEXT:
        raise ValueError(f"past_max_context must be one of {PAST_MAX_CONTEXT}, got {mode!r}")
    layers = getattr(model, "layers", None)
    if not isinstance(layers, list) or not layers:
        return False
    limit = _Limit(max_context, mode, kv_per_token)
    for layer in layers:
        if not isinstance(layer, nn.Module):
            continue
        set_plain(layer, "mlxstore_context", limit)
        layer.__class__ = _guarded_class(type(layer))
    return True
