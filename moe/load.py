"""`mlxstore.moe.load`: an mlx-lm model whose dense weights are resident and experts stream.

Dense weights are materialized once and pinned; every switch module found in the model
tree gets a slot bank sized by the memory plan; the tokenizer is mlx-lm's. The result is
an ordinary mlx-lm model: `mlx_lm.generate`, `stream_generate`, prompt caches and
samplers work on it unchanged.
"""

from __future__ import annotations

import logging
import os
import weakref
from concurrent.futures import ThreadPoolExecutor

import mlx.core as mx
import mlx.nn as nn

from mlxstore import osio
from mlxstore.formats import DTYPE_SIZES, StoreError
from mlxstore.model import (
    build_model,
    check_complete,
    check_shapes,
    load_store_tokenizer,
    load_weights,
    model_config,
)
from mlxstore.store import Store
from mlxstore.store import open as open_store
from mlxstore.switches import find_switches

from . import pipeline
from .bank import BankOptions, ExpertBank
from .options import DEFAULT_IO_THREADS, DEFAULT_PAGE_CACHE, DEFAULT_PREFETCH, LoadOptions
from .plain import set_plain
from .plan import DEFAULT_MAX_CONTEXT, Plan, kv_bytes_per_token, make_plan
from .policy import DEFAULT_POLICY, make_policy
from .stats import StreamStats
from .streaming import NextLayer, StreamingExperts

log = logging.getLogger("mlxstore")

def load(
    store: str | os.PathLike | Store,
    memory_budget: int | str | None = None,
    *,
    slots_per_layer: int | None = None,
    max_context: int = DEFAULT_MAX_CONTEXT,
    headroom: int | str | None = None,
    policy: str = DEFAULT_POLICY,
    prefetch: str = DEFAULT_PREFETCH,
    page_cache: str = DEFAULT_PAGE_CACHE,
    io_threads: int = DEFAULT_IO_THREADS,
    check: bool = False,
    tokenizer_config: dict | None = None,
    reserve: int | str = 0,
    group: mx.distributed.Group | None = None,
):
    """`(model, tokenizer)` like `mlx_lm.load`, with experts streamed from the store.

    memory_budget: bytes or "8GB"; None plans from the machine's available memory.
    slots_per_layer: fixes the bank size (overrides the budget's derivation).
    max_context: tokens of KV cache the budget reserves. headroom: bytes kept free for
    activations (default 5% of the budget, at least 64 MiB). policy: slot replacement
    policy (moe.policy). prefetch: "none", "temporal" or "next-layer". page_cache:
    "keep" or "drop" a read expert's pages from the OS cache. check: verify the checksum
    of every expert read. reserve: bytes of the budget kept for the caller (the server's
    prompt cache), not given to expert slots. group: an `mx.distributed` group of more
    than one rank runs the model as a pipeline (moe.pipeline): this rank loads and streams only its own layers,
    under its own budget; every rank must call `load` and then run the same steps.
    Bad values raise `OptionError` (a ValueError) naming the option (moe/options.py).
    """
    options = LoadOptions(
        memory_budget=memory_budget, slots_per_layer=slots_per_layer, max_context=max_context,
        headroom=headroom, policy=policy, prefetch=prefetch, page_cache=page_cache,
        io_threads=io_threads, check=check, tokenizer_config=tokenizer_config, reserve=reserve,
    )  # fmt: skip
    return load_with(store, options, group)


def load_with(store: str | os.PathLike | Store, options: LoadOptions,
              group: mx.distributed.Group | None = None):  # fmt: skip
    """`load` with its options in one `LoadOptions` (what the CLI builds)."""
    owned = not isinstance(store, Store)
    group = group if group is not None and group.size() > 1 else None
    with pipeline.all_or_none(group):
        s = open_store(store) if owned else store
        try:
            return _load(s, options, group)
        finally:
            if owned:  # the banks read through descriptors of their own
                s.close()


def _load(s: Store, o: LoadOptions, group):
    config = model_config(s)
    model = build_model(config, s.quantization)
    stage = pipeline.shard(model, s, group) if group is not None else None
    names = {n for n in s.tensor_names if stage is None or stage.owns(n)}
    if stage is not None:
        log.info(pipeline.describe(stage))
        config = pipeline.rank_config(config, stage)
    sites = find_switches(model)
    groups = s.expert_groups
    if not sites or not groups:
        log.warning("mlxstore: %s has no experts to stream; loading it resident", s.path)
        check_complete(model, names)
        load_weights(model, s, names, check=o.check)
        set_plain(model, "mlxstore_plan", None)
        return model, load_store_tokenizer(s, config, o.tokenizer_config)
    missing = [site.path for site in sites if site.path not in groups]
    if missing:
        raise StoreError(f"store has no expert group for the model's MoE layers {missing[:3]}")
    dense = [n for n in names if s.index.tensors[n].expert_group is None]
    check_complete(model, names)
    check_shapes(model, s, names)
    plan = _plan(s, sites, dense, config, o)
    log.info(plan.describe())
    load_weights(model, s, dense, check=o.check)

    pool = ThreadPoolExecutor(max_workers=o.io_threads, thread_name_prefix="mlxstore-io")
    fds = [os.dup(s.fd(i)) for i in range(len(s.index.shards))]  # the model's own, whoever closes `s`
    weakref.finalize(model, _release, pool, fds)  # threads and descriptors live as long as the model
    for fd in fds:  # macOS: "drop" reads around the cache (Linux drops pages after each read)
        osio.set_nocache(fd, o.page_cache == "drop")
    bank_options = BankOptions(page_cache=o.page_cache, check=o.check)
    wrappers = []
    for site in sites:
        expert_group = groups[site.path]
        tensors = [s.index.tensors[n] for n in expert_group.tensors]
        bank = ExpertBank(site.path, site.module, expert_group, tensors,
                          make_policy(o.policy, plan.slots_per_layer, expert_group.num_experts),
                          fds, pool, bank_options)  # fmt: skip
        wrapper = StreamingExperts(site.module, bank, o.prefetch)
        setattr(site.parent, site.attr, wrapper)
        wrappers.append((site, wrapper))
    for (_, w), (nsite, nw) in zip(wrappers, wrappers[1:]):
        if nsite.router is not None and nsite.top_k:
            set_plain(w, "next_layer", NextLayer(nsite.router, nsite.top_k, nw.bank))
    set_plain(model, "mlxstore_plan", plan)
    return model, load_store_tokenizer(s, config, o.tokenizer_config)


def _release(pool: ThreadPoolExecutor, fds: list[int]) -> None:
    pool.shutdown(wait=True)
    for fd in fds:
        os.close(fd)


def _plan(s: Store, sites, dense, config, o: LoadOptions) -> Plan:
    groups = s.expert_groups
    per_slot = sum(sum(s.index.tensors[n].nbytes // groups[site.path].num_experts
                       for n in groups[site.path].tensors) for site in sites)  # fmt: skip
    num_experts = max(groups[site.path].num_experts for site in sites)
    top_k = max((site.top_k or 1) for site in sites)
    return make_plan(
        budget=o.memory_budget,
        dense_bytes=sum(s.index.tensors[n].nbytes for n in dense),
        expert_bytes=per_slot,
        num_layers=len(sites),
        num_experts=num_experts,
        top_k=top_k,
        config=config,
        itemsize=_activation_itemsize(s),
        max_context=o.max_context,
        headroom=o.headroom,
        slots_per_layer=o.slots_per_layer,
        reserve=o.reserve,
    )



def _activation_itemsize(s: Store) -> int:
    dense = {t.dtype for t in s.index.tensors.values() if t.expert_group is None}
    return min((DTYPE_SIZES[d] for d in dense & {"float16", "bfloat16", "float32"}), default=2)


def kv_cache_bytes(store: Store, tokens: int) -> int:
    """The plan's estimate of one KV cache holding `tokens` tokens of this store's model."""
    return kv_bytes_per_token(model_config(store), _activation_itemsize(store)) * tokens


def _banks(model: nn.Module) -> dict[str, ExpertBank]:
    return {m.bank.name: m.bank for _, m in model.named_modules() if isinstance(m, StreamingExperts)}


def stats(model: nn.Module, reset: bool = False) -> StreamStats:
    """Hits, misses, bytes and seconds of every streamed MoE layer (a snapshot copy)."""
    from copy import copy

    banks = _banks(model)
    out = StreamStats({name: copy(b.stats) for name, b in banks.items()})
    if reset:
        reset_stats(model)
    return out


def reset_stats(model: nn.Module) -> None:
    from .stats import LayerStats

    for bank in _banks(model).values():
        bank.stats = LayerStats()


def plan_of(model: nn.Module) -> Plan | None:
    """The memory plan `load` made for this model (None when nothing streams)."""
    return getattr(model, "mlxstore_plan", None)
