"""Pipeline parallel over `mlx.core.distributed`: each rank owns a contiguous range of layers.

Generic over mlx-lm models whose `model.layers` is the decoder-layer list their forward
iterates (`h = layer(h, ...)`). The layers a rank does not own are replaced in that list by
`Skipped` shims that pass the hidden state through and hold no weights, so indices into the
layer list (and into the cache list) keep their meaning. The rank's first owned layer
receives the hidden state from the rank before it, its last one sends it on and then joins
an all_gather that gives every rank the final hidden state, so every rank computes the same
logits and samples the same token. The caches of layers a rank does not own are
`ShadowCache`s: they store nothing and read their clock (offset, masks) from a local cache
of the same kind, so masks the model builds from `cache[i]` stay right.
"""

from __future__ import annotations

import copy
from contextlib import contextmanager
from dataclasses import dataclass

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from mlxstore.formats import StoreError

from .plain import set_plain

_STATUS_BYTES = 512  # room for one rank's error message in the load-status exchange


@dataclass
class Stage:
    """Where this rank sits in the pipeline: layers [start, end) of the list at `prefix`."""

    group: mx.distributed.Group
    start: int
    end: int
    num_layers: int
    prefix: str
    marker: list  # the last send of this rank, which prefill must evaluate (see ShadowCache)

    @property
    def rank(self) -> int:
        return self.group.rank()

    @property
    def size(self) -> int:
        return self.group.size()

    def owns(self, name: str) -> bool:
        """Whether tensor `name` belongs on this rank (its own layers or outside the layers)."""
        if not name.startswith(self.prefix + "."):
            return True
        index = name[len(self.prefix) + 1 :].split(".", 1)[0]
        return not index.isdigit() or self.start <= int(index) < self.end


def agree(group: mx.distributed.Group, error: str | None) -> None:
    """Every rank learns whether every rank succeeded; a failure anywhere raises everywhere."""
    data = np.zeros(_STATUS_BYTES, dtype=np.uint8)
    if error is not None:
        raw = (error or "failed").encode()[: _STATUS_BYTES - 1]
        data[: len(raw)] = np.frombuffer(raw, dtype=np.uint8)
    gathered = np.array(mx.distributed.all_gather(mx.array(data)[None], group=group, stream=mx.cpu))
    failed = [(r, bytes(row).rstrip(b"\0").decode(errors="replace")) for r, row in enumerate(gathered) if row.any()]
    if failed:
        rank, message = failed[0]
        raise StoreError(f"rank {rank} of {group.size()} failed to load: {message}")


def split(sizes: list[int], parts: int) -> list[tuple[int, int]]:
    """Contiguous ranges of `sizes` (one or more items each) minimizing the largest sum."""
    n = len(sizes)
    prefix = np.concatenate([[0], np.cumsum(sizes)])
    # best[p][i]: smallest possible largest sum splitting the first i items into p parts.
    best = np.full((parts + 1, n + 1), np.inf)
    cut = np.zeros((parts + 1, n + 1), dtype=np.int64)
    best[0][0] = 0
    for p in range(1, parts + 1):
        for i in range(p, n - (parts - p) + 1):
            for j in range(p - 1, i):
                cost = max(best[p - 1][j], prefix[i] - prefix[j])
                if cost < best[p][i]:
                    best[p][i], cut[p][i] = cost, j
    ranges, i = [], n
    for p in range(parts, 0, -1):
        ranges.append((int(cut[p][i]), i))
        i = int(cut[p][i])
    return ranges[::-1]


def _layer_list(model: nn.Module) -> tuple[nn.Module, str, str]:
    """(owner, attribute, dotted path) of the list `model.layers` reads from."""
    arch = getattr(getattr(model, "args", None), "model_type", type(model).__module__)
    layers = getattr(model, "layers", None)
    if isinstance(layers, (list, tuple)) and layers:
        for path, module in model.named_modules():
            for key, value in module.items():
                if isinstance(value, list) and len(value) == len(layers) and all(a is b for a, b in zip(value, layers)):
                    return module, key, f"{path}.{key}" if path else key
    raise StoreError(f"architecture {arch!r} cannot run as a pipeline: its model has no decoder-layer list "
                     "(model.layers) that its forward iterates")  # fmt: skip


class Skipped(nn.Module):
    """A layer another rank computes: the hidden state passes through; no weights.

    Plain attributes of the replaced layer (flags such as `is_linear` that a model's loop
    reads) stay readable.
    """

    def __init__(self, layer: nn.Module):
        super().__init__()
        plain = {k: v for k, v in vars(layer).items() if not k.startswith("_")}
        set_plain(self, "_plain", plain)

    def __getattr__(self, key: str):
        plain = object.__getattribute__(self, "_plain")
        if key in plain:
            return plain[key]
        return super().__getattr__(key)

    def __call__(self, x, *args, **kwargs):
        return x


_STAGED: dict[type, type] = {}


def _staged(cls: type) -> type:
    """`cls` with the pipeline's receive before and send + gather after (same names, weights)."""
    if cls not in _STAGED:

        def __call__(self, x, *args, **kwargs):
            stage: Stage = self._stage
            if self._first and stage.rank > 0:
                x = mx.distributed.recv_like(x, stage.rank - 1, group=stage.group)
            entering = (x.shape, x.dtype)
            out = cls.__call__(self, x, *args, **kwargs)
            if not self._last:
                return out
            if not isinstance(out, mx.array) or (out.shape, out.dtype) != entering:
                raise StoreError(f"{cls.__module__}: a decoder layer returns {type(out).__name__} "
                                 f"{getattr(out, 'shape', '')}, not a hidden state like its input; "
                                 "this architecture cannot run as a pipeline")  # fmt: skip
            if stage.rank < stage.size - 1:
                out = mx.distributed.send(out, stage.rank + 1, group=stage.group)
                stage.marker[:] = [out]
            batch = out.shape[0]
            last = stage.size - 1
            return mx.distributed.all_gather(out, group=stage.group)[last * batch : (last + 1) * batch]

        _STAGED[cls] = type(f"Staged{cls.__name__}", (cls,), {"__call__": __call__})
    return _STAGED[cls]


class ShadowCache:
    """The cache of a layer another rank computes: stores nothing, keeps a local clock.

    Offsets and masks are read from `clock`, a local cache of the same kind (every cache
    of a kind has the same offset at the start of a step). Its `state` is this rank's last
    send, so mlx-lm's prefill, which evaluates only cache states, still sends.
    """

    def __init__(self, clock, stage: Stage):
        self.clock = clock
        self.stage = stage

    def __getattr__(self, key: str):
        return getattr(self.clock, key)

    @property
    def state(self):
        return list(self.stage.marker)

    @property
    def meta_state(self):
        return ""

    def trim(self, n: int) -> int:
        return min(n, self.clock.offset)

    def to_quantized(self, *args, **kwargs):
        return self

    @property
    def nbytes(self) -> int:
        return 0

    def update_and_fetch(self, *args, **kwargs):
        raise StoreError("mlxstore pipeline: a skipped layer tried to use its cache")


def _kind(cache) -> tuple:
    return (type(cache), getattr(cache, "max_size", None), getattr(cache, "keep", None))


def shard(model: nn.Module, store, group: mx.distributed.Group) -> Stage:
    """Keep this rank's layers (balanced by bytes, dense + experts) and wire the pipeline.

    Run before weights load: layers of other ranks are dropped and never materialized.
    """
    from mlxstore.mlxlm import make_prompt_cache

    owner, key, prefix = _layer_list(model)
    layers = owner[key]
    if len(layers) < group.size():
        raise StoreError(f"{len(layers)} decoder layers cannot be split over {group.size()} ranks")
    sizes = [0] * len(layers)
    for name in store.tensor_names:
        if name.startswith(prefix + "."):
            index = name[len(prefix) + 1 :].split(".", 1)[0]
            if index.isdigit() and int(index) < len(layers):
                sizes[int(index)] += store.index.tensors[name].nbytes
    start, end = split(sizes, group.size())[group.rank()]
    stage = Stage(group, start, end, len(layers), prefix, [])
    template = make_prompt_cache(model)  # before any layer is replaced: make_cache may read them
    for i, layer in enumerate(layers):
        if not start <= i < end:
            layers[i] = Skipped(layer)
    for i in {start, end - 1}:
        layer = layers[i]
        layer.__class__ = _staged(type(layer))
        set_plain(layer, "_stage", stage)
        set_plain(layer, "_first", i == start)
        set_plain(layer, "_last", i == end - 1)

    def make_cache():
        caches = copy.deepcopy(template)
        clocks = {}
        for i in range(start, end):
            clocks.setdefault(_kind(caches[i]), caches[i])
        return [c if start <= i < end else ShadowCache(clocks.get(_kind(c), c), stage) for i, c in enumerate(caches)]

    set_plain(model, "make_cache", make_cache)
    return stage


def share_seed(group: mx.distributed.Group) -> None:
    """Seed MLX's generator the same on every rank, so samplers draw the same tokens."""
    mine = int(np.random.default_rng().integers(0, 2**31 - 1)) if group.rank() == 0 else 0
    seed = mx.distributed.all_sum(mx.array(mine, dtype=mx.int64), group=group, stream=mx.cpu)
    mx.random.seed(int(seed.item()))


def describe(stage: Stage) -> str:
    return (f"mlxstore pipeline: rank {stage.rank} of {stage.size} owns layers "
            f"{stage.start}-{stage.end - 1} of {stage.num_layers}")  # fmt: skip


def rank_config(config: dict, stage: Stage) -> dict:
    """The config as this rank's memory plan sees it: only its own layers hold KV cache."""
    own = stage.end - stage.start
    if "text_config" in config:
        return {**config, "text_config": {**config["text_config"], "num_hidden_layers": own}}
    return {**config, "num_hidden_layers": own}


@contextmanager
def all_or_none(group: mx.distributed.Group | None):
    """Loading succeeds on every rank or raises on every rank (no rank left waiting).

    On success every rank's random generator gets the same seed (see share_seed).
    """
    try:
        yield
    except Exception as e:
        if group is not None:
            agree(group, str(e) or type(e).__name__)
        raise
    if group is not None:
        agree(group, None)
        share_seed(group)


def barrier(group: mx.distributed.Group | None) -> None:
    """Wait for every rank: a rank must not exit while a step another rank runs still needs it."""
    if group is not None and group.size() > 1:
        mx.eval(mx.distributed.all_sum(mx.array(1), group=group, stream=mx.cpu))
