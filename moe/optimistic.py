"""Optimistic decode steps: slots mapped on the device, every layer's ids checked once.

Why: a streamed layer reads its router's ids to the host to find its misses, and each
read waits for the GPU to drain its queue, then leaves it idle while Python builds the
next layer: on a fast GPU the layers' syncs cost more than the layers. A bank that holds
the working set misses nothing on most decode steps, and such a step needs the host only
once: each bank keeps an expert -> slot table on the device (a missing expert points at
slot 0), every layer maps its ids there and launches at once, and at the end of the step
all layers' ids reach the host in one read. If every id was resident the step stands: it
ran the kernels the host path runs, on the same slot ids, so its outputs are bit for bit
the host path's. If one was not, its outputs are wrong: the step's state (KV caches,
recurrent states, replay cursors) is put back as it was and the step runs again through
the host path, which reads the misses. The slot policy sees an optimistic step's lookups
only once it stands, so it decides as if the step had run on the host.

When: a decode step (one new token per sequence) runs optimistically when the step before
it, either way, missed nothing. A bank that misses often tries rarely and so wastes little;
one that holds its working set tries, and stands, on every step.

What can be put back: mlx-lm's KVCache and QuantizedKVCache (their offset), RotatingKVCache
(offset and write index; its buffers too while they are longer than the window, as after
a prompt), ArraysCache without batch padding (its state arrays, which a step replaces), and
CacheList of those; and a cache class of a model's own, outside mlx-lm's cache family,
whose state is plain attributes (arrays, numbers, lists of them: they go back as they
were). A step over any other cache takes the host path.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache as memoize

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from mlxstore.mlxlm import (
    ArraysCache,
    BaseCache,
    CacheList,
    KVCache,
    QuantizedKVCache,
    RotatingKVCache,
)

Undo = Callable[[], None]


LAUNCH_EVERY = 8  # streamed layers between launches of an optimistic step's work (README, "Linux with an NVIDIA GPU")


@dataclass
class Optimism:
    """One model's optimistic-step state, shared by its wrapper and its streamed layers."""

    launch_every: int = LAUNCH_EVERY  # with `overlap`; 0: the check's eval launches the whole step
    active: bool = False  # an optimistic step is running
    clean: bool = False  # the last step missed nothing: the next decode step may try
    missed: bool = False  # a layer of the running host-path step read a miss
    launched: list = field(default_factory=list)  # (layer, indices) the running step mapped on the device
    undo: list[Undo] = field(default_factory=list)
    confirmed: list[Callable[[], None]] = field(default_factory=list)
    waits: list[mx.array] = field(default_factory=list)  # arrays the check also waits for

    def wait_for(self, array: mx.array) -> None:
        """Make the step's check wait for `array` too (a replayed layer's own router ids,
        which a real step's check waits for: replayed ids are host data already)."""
        self.waits.append(array)

    def on_undo(self, fn: Undo) -> None:
        """Run `fn` if the running optimistic step is put back (state it advanced)."""
        self.undo.append(fn)

    def on_confirm(self, fn: Callable[[], None]) -> None:
        """Run `fn` once the running optimistic step stands (what must not happen twice)."""
        self.confirmed.append(fn)

    def run(self, step: Callable[[], mx.array], undo: Undo | None) -> mx.array:
        """`step()` optimistically when it may (`undo` puts its cache back), else on the host."""
        if undo is None or not self.clean:
            return self._host(step)
        self.active, self.launched, self.undo, self.confirmed, self.waits = True, [], [undo], [], []
        try:
            out = step()
            stands = self._check()
        except BaseException:
            self.active = False
            self._put_back()
            raise
        self.active = False
        if stands:
            for fn in self.confirmed:
                fn()
            self.launched, self.confirmed, self.undo, self.waits = [], [], [], []
            return out
        self._put_back()
        return self._host(step)

    def _host(self, step: Callable[[], mx.array]) -> mx.array:
        self.missed = False
        out = step()
        self.clean = not self.missed
        return out

    def _check(self) -> bool:
        """The step's one host sync: every layer's ids, checked against its bank's table."""
        if not self.launched:
            return True
        layers, ids = zip(*self.launched)
        start = time.perf_counter()
        mx.eval(*ids, *self.waits)
        host = [np.array(i) for i in ids]
        layers[-1].bank.stats.sync_seconds += time.perf_counter() - start
        for layer, i in zip(layers, host):
            if not layer.bank.holds(i):
                layer.bank.stats.redone += 1
                return False
        for layer, i in zip(layers, host):
            layer.defer(i)
        return True

    def _put_back(self) -> None:
        for fn in reversed(self.undo):
            fn()
        self.launched, self.confirmed, self.undo, self.waits = [], [], [], []


def undo_for(cache) -> Undo | None:
    """What puts `cache` (a model's list of layer caches, or None) back as it is now,
    or None when some cache cannot be put back (the step then runs on the host)."""
    return _nothing if cache is None else _all([_undo_one(c) for c in cache])


def _nothing() -> None:
    pass


def _all(undos: list[Undo | None]) -> Undo | None:
    """One undo for all of `undos`; None if any is None (one cache cannot go back)."""
    if any(u is None for u in undos):
        return None

    def undo() -> None:
        for u in undos:
            u()

    return undo


def _set(obj, **values) -> Undo:
    def undo() -> None:
        for name, value in values.items():
            setattr(obj, name, value)

    return undo


def _undo_one(c) -> Undo | None:
    kind = type(c)
    if kind in (KVCache, QuantizedKVCache):  # a step writes past `offset` only
        return _set(c, offset=c.offset)
    if kind is RotatingKVCache:
        # A one-token step writes at the write index (over the oldest entry once wrapped,
        # which the step run again writes first); a buffer longer than the window (after a
        # prompt) is cut by the step, so then the buffers themselves go back.
        if c.keys is not None and c.keys.shape[2] <= c.max_size:
            return _set(c, offset=c.offset, _idx=c._idx)
        return _set(c, offset=c.offset, _idx=c._idx, keys=c.keys, values=c.values)
    if isinstance(c, ArraysCache) and c.left_padding is None and c.lengths is None:
        return _set(c, cache=list(c.cache))
    if kind is CacheList:
        return _all([_undo_one(p) for p in c.caches])
    if isinstance(c, BaseCache):
        return None  # mlx-lm's other caches write into their buffers in ways not followed here
    return _undo_attributes(c)


_UNKNOWN = object()


def _kept(value):
    """`value` as it is now, or _UNKNOWN. An array is kept as a new array object of the
    same value: `a[i] = v` in a step rebinds the object `a` to a new value (which then
    copies instead of writing in place, as the old value is still held)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, mx.array):
        return mx.array(value)
    if isinstance(value, (list, tuple)):
        kept = [_kept(v) for v in value]
        return _UNKNOWN if any(k is _UNKNOWN for k in kept) else type(value)(kept)
    return _UNKNOWN


def _undo_attributes(c) -> Undo | None:
    """A cache class of a model's own (deepseek_v41's LayerCache): its attributes go
    back as they are now, if they are arrays, numbers, strings, None, or lists and tuples
    of those; else None. Attributes the step adds are removed."""
    attributes = getattr(c, "__dict__", None)
    if attributes is None:
        return None
    saved = {name: _kept(value) for name, value in attributes.items()}
    if any(v is _UNKNOWN for v in saved.values()):
        return None

    def undo() -> None:
        for name in [n for n in vars(c) if n not in saved]:
            delattr(c, name)
        for name, value in saved.items():
            setattr(c, name, _kept(value))  # a fresh copy each time: the step may run again

    return undo


def _decode_step(args: tuple, kwargs: dict) -> bool:
    """One new token per sequence: [B, 1] token ids."""
    inputs = args[0] if args else kwargs.get("inputs")
    return getattr(inputs, "ndim", 0) == 2 and inputs.shape[1] == 1


@memoize
def _optimistic_class(cls: type) -> type:
    def __call__(self, *args, **kwargs):
        optimism: Optimism = self.mlxstore_optimism
        undo = None
        if optimism.clean and _decode_step(args, kwargs):  # else nothing to put back is built
            undo = undo_for(kwargs["cache"] if "cache" in kwargs else (args[1] if len(args) > 1 else None))
        return optimism.run(lambda: cls.__call__(self, *args, **kwargs), undo)

    return type(cls.__name__, (cls,), {"__call__": __call__, "__module__": cls.__module__})


def install(model: nn.Module, optimism: Optimism) -> None:
    """Make `model`'s decode steps optimistic (its class is swapped for a subclass whose
    `__call__` runs each step through `optimism`; parameters and names stay as they are)."""
    object.__setattr__(model, "mlxstore_optimism", optimism)
    model.__class__ = _optimistic_class(type(model))
